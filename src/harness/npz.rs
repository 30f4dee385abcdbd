//! NumPy `.npz` files: the arrays that case files hold and `tilefuse run` writes (C order,
//! little endian).

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;
use std::rc::Rc;

use half::f16;
use npyz::WriterBuilder;
use num_complex::Complex32;

/// An array's elements, of the types case files use.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// float16.
    F16(Vec<f16>),
    /// float32.
    F32(Vec<f32>),
    /// complex64.
    C64(Vec<Complex32>),
    /// uint8 (and bool, as 0 and 1).
    U8(Vec<u8>),
    /// int32.
    I32(Vec<i32>),
}

/// The element type a `.npy` header declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// float16 (`<f2`).
    F16,
    /// float32 (`<f4`).
    F32,
    /// complex64 (`<c8`).
    C64,
    /// uint8 (`|u1`).
    U8,
    /// bool (`|b1`), read as uint8 0 and 1.
    Bool,
    /// int32 (`<i4`).
    I32,
    /// Any other, by its NumPy type string (e.g. `<f8`); never read.
    Other(String),
}

impl Element {
    fn from_descr(descr: &str) -> Element {
        match descr {
            "<f2" => Element::F16,
            "<f4" => Element::F32,
            "<c8" => Element::C64,
            "|u1" | "<u1" => Element::U8,
            "|b1" => Element::Bool,
            "<i4" => Element::I32,
            other => Element::Other(other.to_string()),
        }
    }

    /// NumPy's name of the type.
    pub fn name(&self) -> String {
        match self {
            Element::F16 => "float16".into(),
            Element::F32 => "float32".into(),
            Element::C64 => "complex64".into(),
            Element::U8 => "uint8".into(),
            Element::Bool => "bool".into(),
            Element::I32 => "int32".into(),
            Element::Other(descr) => format!("dtype {descr}"),
        }
    }

    /// Whether its elements read as [`Data::U8`] (uint8 and bool).
    pub fn is_bytes(&self) -> bool {
        matches!(self, Element::U8 | Element::Bool)
    }

    /// Bytes per element, for the types tilefuse reads.
    fn width(&self) -> Option<usize> {
        match self {
            Element::U8 | Element::Bool => Some(1),
            Element::F16 => Some(2),
            Element::F32 | Element::I32 => Some(4),
            Element::C64 => Some(8),
            Element::Other(_) => None,
        }
    }
}

/// One array to write: its shape and its elements in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// The elements.
    pub data: Data,
}

/// A shape as NumPy prints it, e.g. `(16, 520)`.
pub fn shape_text(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What a run may read of a file's arrays unless told otherwise (`tilefuse --read-limit`):
/// 4 GiB.
pub const DEFAULT_READ_LIMIT: u64 = 4 << 30;

/// The longest `.npy` header read (numpy writes a few hundred bytes).
const MAX_HEADER: usize = 1 << 16;

/// The most dimensions a header may declare (NumPy's own limit).
const MAX_RANK: usize = 64;

/// How many bytes of an array are decoded at a time.
const CHUNK: usize = 1 << 20;

/// An `.npz` opened for reading. Opening reads the zip's directory only; an entry's `.npy`
/// header is read when an op first asks for it ([`Npz::get`]), and its elements when the op,
/// having checked the shapes, asks for them ([`Entry::data`]), never more bytes in all than
/// the read limit. Entries nobody asks for are never inflated, so a file costs what the op
/// reads of it.
pub struct Npz {
    archive: Rc<Archive>,
    /// Each `.npy` entry by name (without `.npy`): its index in the zip, and its header once
    /// read (or why it holds no readable array).
    entries: BTreeMap<String, (usize, OnceCell<Result<Entry, String>>)>,
}

/// One `.npy` entry of an [`Npz`]: its header, and its elements once read.
pub struct Entry {
    /// The dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// The element type.
    pub element: Element,
    source: Source,
    data: OnceCell<Result<Data, String>>,
}

/// Where an entry's elements are: the archive, its index there and the header's length.
struct Source {
    archive: Rc<Archive>,
    index: usize,
    header_bytes: u64,
}

/// The open zip file, and the bytes its arrays have read against the limit.
struct Archive {
    zip: RefCell<zip::ZipArchive<std::fs::File>>,
    limit: u64,
    read: Cell<u64>,
}

impl Npz {
    /// Opens `path` and reads its directory. At most `limit` bytes of elements may be read
    /// in all.
    pub fn open(path: &Path, limit: u64) -> Result<Npz, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let zip = zip::ZipArchive::new(file)
            .map_err(|e| format!("{}: not an .npz (zip) file: {e}", path.display()))?;
        let entries = (0..zip.len())
            .filter_map(|index| {
                let name = zip.name_for_index(index)?.strip_suffix(".npy")?;
                Some((name.to_string(), (index, OnceCell::new())))
            })
            .collect();
        let archive = Rc::new(Archive {
            zip: RefCell::new(zip),
            limit,
            read: Cell::new(0),
        });
        Ok(Npz { archive, entries })
    }

    /// The names of the file's arrays (without `.npy`), sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Whether the file has an entry `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The entry `name`, its header read on the first call: none if the file has none, an
    /// error if it holds no readable array (an entry the zip reader cannot open, a malformed
    /// header, a shape its declared size does not hold).
    pub fn get(&self, name: &str) -> Option<Result<&Entry, String>> {
        let (index, entry) = self.entries.get(name)?;
        let entry = entry.get_or_init(|| self.entry(*index));
        Some(entry.as_ref().map_err(Clone::clone))
    }

    /// The header of the entry at `index`.
    fn entry(&self, index: usize) -> Result<Entry, String> {
        let mut zip = self.archive.zip.borrow_mut();
        let mut file = zip
            .by_index(index)
            .map_err(|e| format!("the zip entry is unreadable: {e}"))?;
        let declared = file.size();
        let (header, header_bytes) = read_header(&mut file, declared)?;
        Ok(Entry {
            shape: header.shape,
            element: header.element,
            source: Source {
                archive: Rc::clone(&self.archive),
                index,
                header_bytes,
            },
            data: OnceCell::new(),
        })
    }

    /// Each array read so far that holds NaN or ±inf, with how many of its elements do
    /// (a complex element counts once).
    pub fn non_finite(&self) -> Vec<(&str, usize)> {
        let count = |data: &Data| match data {
            Data::F16(v) => v.iter().filter(|x| !x.is_finite()).count(),
            Data::F32(v) => v.iter().filter(|x| !x.is_finite()).count(),
            Data::C64(v) => v.iter().filter(|x| !x.is_finite()).count(),
            Data::U8(_) | Data::I32(_) => 0,
        };
        let read = self.entries.iter().filter_map(|(name, (_, entry))| {
            let data = entry.get()?.as_ref().ok()?.data.get()?.as_ref().ok()?;
            Some((name.as_str(), count(data)))
        });
        read.filter(|&(_, count)| count > 0).collect()
    }

    /// The bytes of elements read so far, all entries together.
    pub fn bytes_read(&self) -> u64 {
        self.archive.read.get()
    }
}

impl Entry {
    /// The shape as NumPy prints it, e.g. `(16, 520)`.
    pub fn shape_text(&self) -> String {
        shape_text(&self.shape)
    }

    /// The elements, inflated and decoded on the first call. An error if they would take the
    /// bytes read past the limit, if the entry does not hold them, or for a type tilefuse
    /// does not read.
    pub fn data(&self) -> Result<&Data, String> {
        self.data
            .get_or_init(|| self.read_data())
            .as_ref()
            .map_err(Clone::clone)
    }

    fn read_data(&self) -> Result<Data, String> {
        let Some(width) = self.element.width() else {
            return Err(format!("{} is not read", self.element.name()));
        };
        let count = self.shape.iter().product::<usize>();
        let bytes = (count * width) as u64;
        let archive = &self.source.archive;
        let total = archive.read.get().saturating_add(bytes);
        if total > archive.limit {
            return Err(format!(
                "its {bytes} bytes would take what this run reads to {total} bytes, past the \
                 limit of {} (raise it with --read-limit)",
                archive.limit
            ));
        }
        archive.read.set(total);
        let mut zip = archive.zip.borrow_mut();
        let mut file = zip
            .by_index(self.source.index)
            .map_err(|e| format!("the zip entry is unreadable: {e}"))?;
        let unreadable = |e: std::io::Error| format!("the zip entry is unreadable: {e}");
        std::io::copy(
            &mut (&mut file).take(self.source.header_bytes),
            &mut std::io::sink(),
        )
        .map_err(unreadable)?;
        let data = decode(&mut file, &self.element, count).map_err(unreadable)?;
        let mut past = [0u8];
        if file.read(&mut past).map_err(unreadable)? != 0 {
            return Err("the zip entry holds more bytes than it declares".into());
        }
        Ok(data)
    }
}

/// `count` elements of type `element` from `reader`, a chunk at a time, so that memory grows
/// only with the bytes that really arrive.
fn decode(reader: &mut impl Read, element: &Element, count: usize) -> std::io::Result<Data> {
    fn values<T>(
        reader: &mut impl Read,
        count: usize,
        width: usize,
        one: impl Fn(&[u8]) -> T,
    ) -> std::io::Result<Vec<T>> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; CHUNK.min(count * width)];
        let mut left = count * width;
        while left > 0 {
            let n = left.min(chunk.len());
            reader.read_exact(&mut chunk[..n])?;
            out.extend(chunk[..n].chunks_exact(width).map(&one));
            left -= n;
        }
        Ok(out)
    }
    let r = reader;
    Ok(match element {
        Element::F16 => Data::F16(values(r, count, 2, |c| f16::from_le_bytes([c[0], c[1]]))?),
        Element::F32 => Data::F32(values(r, count, 4, |c| f32::from_le_bytes(word(c)))?),
        Element::I32 => Data::I32(values(r, count, 4, |c| i32::from_le_bytes(word(c)))?),
        Element::U8 => Data::U8(values(r, count, 1, |c| c[0])?),
        Element::Bool => Data::U8(values(r, count, 1, |c| u8::from(c[0] != 0))?),
        Element::C64 => Data::C64(values(r, count, 8, |c| {
            Complex32::new(
                f32::from_le_bytes(word(c)),
                f32::from_le_bytes(word(&c[4..])),
            )
        })?),
        Element::Other(descr) => {
            return Err(std::io::Error::other(format!("dtype {descr} is not read")));
        }
    })
}

/// A `.npy` header: the element type, the shape, in C order.
struct Header {
    element: Element,
    shape: Vec<usize>,
}

/// Reads the `.npy` header at the start of a zip entry that declares `declared` bytes, and
/// checks that the shape's elements fill exactly the rest of them: the header and its
/// length in bytes. Only the header is inflated.
fn read_header(entry: &mut impl Read, declared: u64) -> Result<(Header, u64), String> {
    let unreadable = |e: std::io::Error| format!("the zip entry is unreadable: {e}");
    let mut prefix = [0u8; 12];
    let mut start = 10;
    entry
        .read_exact(&mut prefix[..10])
        .map_err(|_| "not a .npy array (shorter than a header)")?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (no NUMPY magic)".into());
    }
    let length = match prefix[6] {
        1 => usize::from(u16::from_le_bytes([prefix[8], prefix[9]])),
        2 | 3 => {
            entry.read_exact(&mut prefix[10..]).map_err(unreadable)?;
            start = 12;
            u32::from_le_bytes(word(&prefix[8..])) as usize
        }
        version => return Err(format!("a .npy format version {version}, not 1, 2 or 3")),
    };
    if length > MAX_HEADER {
        return Err(format!(
            "a .npy header of {length} bytes, longer than the {MAX_HEADER} read"
        ));
    }
    let mut text = vec![0u8; length];
    entry
        .read_exact(&mut text)
        .map_err(|_| "a .npy header longer than the array")?;
    let text = String::from_utf8(text).map_err(|_| "a .npy header that is not text")?;
    let header = parse_header(&text)?;
    let header_bytes = (start + length) as u64;
    let width = header.element.width();
    let count = header
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
    let needed = count
        .zip(width)
        .and_then(|(count, width)| count.checked_mul(width as u64))
        .and_then(|bytes| bytes.checked_add(header_bytes));
    match needed {
        _ if width.is_none() => {}
        Some(needed) if needed == declared && usize::try_from(needed).is_ok() => {}
        needed => {
            let needed = needed.map_or("more bytes than a u64 counts".into(), |n| {
                format!("{n} bytes with its header")
            });
            return Err(format!(
                "shape {} of {} needs {needed}, the zip entry declares {declared}",
                shape_text(&header.shape),
                header.element.name()
            ));
        }
    }
    Ok((header, header_bytes))
}

/// The header dict's three keys, read with overflow-checked numbers (a library that
/// multiplies the shape out first would wrap or panic on a hostile one).
fn parse_header(text: &str) -> Result<Header, String> {
    let shown = || {
        let mut shown: String = text.chars().take(120).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        format!("{shown:?}")
    };
    let value = |key: &str| {
        ["'", "\""]
            .iter()
            .find_map(|q| text.split_once(&format!("{q}{key}{q}")))
            .and_then(|(_, rest)| rest.trim_start().strip_prefix(':'))
            .map(str::trim_start)
            .ok_or_else(|| format!("a .npy header without {key}: {}", shown()))
    };
    let descr = value("descr")?;
    let descr = match descr.chars().next() {
        Some(q @ ('\'' | '"')) => descr[1..].split(q).next().unwrap_or_default(),
        _ => descr.split([',', '}']).next().unwrap_or_default().trim(),
    };
    let fortran = value("fortran_order")?.starts_with("True");
    let dims = value("shape")?
        .strip_prefix('(')
        .and_then(|rest| rest.split(')').next())
        .ok_or_else(|| format!("a .npy header whose shape is no tuple: {}", shown()))?
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty());
    let mut shape = Vec::new();
    for dim in dims {
        if shape.len() == MAX_RANK {
            return Err(format!("a .npy header of more than {MAX_RANK} dimensions"));
        }
        let dim = dim.trim_end_matches('L').parse::<u64>();
        let dim = dim.map_err(|_| {
            format!(
                "a .npy header whose shape is not whole numbers: {}",
                shown()
            )
        })?;
        let dim = usize::try_from(dim)
            .map_err(|_| format!("a dimension {dim} that does not fit this machine"))?;
        shape.push(dim);
    }
    if fortran && shape.len() > 1 {
        return Err("Fortran order; save a C-ordered array (np.ascontiguousarray)".into());
    }
    Ok(Header {
        element: Element::from_descr(descr),
        shape,
    })
}

/// The first four bytes of `bytes`.
fn word(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// Writes `arrays` as an `.npz` (stored, like `np.savez`) next to `path`, then renames it
/// into place, so that a failed run never leaves a partial file. A symlink at `path` is
/// followed (its target is written); a replaced file keeps its permissions; anything but a
/// regular file (a folder, a device, a pipe) is refused, never replaced.
pub fn write(path: &Path, arrays: &[(String, Array)]) -> Result<(), String> {
    let path = &output_target(path)?;
    let io = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, array) in arrays {
        zip.start_file(format!("{name}.npy"), options)
            .map_err(|e| io(&e))?;
        let bytes = npy_bytes(array).map_err(|e| io(&e))?;
        zip.write_all(&bytes).map_err(|e| io(&e))?;
    }
    let bytes = zip.finish().map_err(|e| io(&e))?.into_inner();
    let partial = path.with_extension(format!("npz.{}.partial", std::process::id()));
    let keep_permissions = |partial: &Path| match std::fs::metadata(path) {
        Ok(existing) => std::fs::set_permissions(partial, existing.permissions()),
        Err(_) => Ok(()),
    };
    let written = std::fs::write(&partial, bytes)
        .and_then(|()| keep_permissions(&partial))
        .and_then(|()| std::fs::rename(&partial, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written.map_err(|e| io(&e))
}

/// The file that writing `path` replaces: `path`, or what a symlink there leads to; an error
/// unless that is a regular file or nothing yet.
fn output_target(path: &Path) -> Result<std::path::PathBuf, String> {
    let target = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::canonicalize(path).map_err(|e| {
            format!(
                "{}: a symlink whose target cannot be resolved ({e})",
                path.display()
            )
        })?,
        _ => path.to_path_buf(),
    };
    match std::fs::metadata(&target) {
        Ok(meta) if !meta.is_file() => Err(format!(
            "{}: not a regular file (a folder, device or pipe); outputs are written to \
             regular files only",
            target.display()
        )),
        _ => Ok(target),
    }
}

fn npy_bytes(array: &Array) -> std::io::Result<Vec<u8>> {
    let shape: Vec<u64> = array.shape.iter().map(|&d| d as u64).collect();
    let mut out = Vec::new();
    macro_rules! emit {
        ($values:expr) => {{
            let mut writer = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut out)
                .begin_nd()?;
            writer.extend($values.iter().copied())?;
            writer.finish()?;
        }};
    }
    match &array.data {
        Data::F16(v) => emit!(v),
        Data::F32(v) => emit!(v),
        Data::C64(v) => emit!(v),
        Data::U8(v) => emit!(v),
        Data::I32(v) => emit!(v),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `arrays` as an npz in memory, deflated, each entry with zip64 sizes (as numpy writes
    /// large arrays), and `extra` raw entries beside them.
    fn npz_bytes(arrays: &[(String, Array)], extra: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        let raw = arrays
            .iter()
            .map(|(name, array)| (name.as_str(), npy_bytes(array).unwrap()))
            .collect::<Vec<_>>();
        let entries = raw
            .iter()
            .map(|(name, bytes)| (*name, bytes.as_slice()))
            .chain(extra.iter().copied());
        for (name, bytes) in entries {
            zip.start_file(format!("{name}.npy"), options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    /// Sets the uncompressed size that the central directory declares for `name`.npy.
    fn forge_declared_size(bytes: &mut [u8], name: &str, size: u64) {
        let u16_at = |b: &[u8], o: usize| usize::from(u16::from_le_bytes([b[o], b[o + 1]]));
        let mut at = 0;
        while let Some(found) = bytes[at..].windows(4).position(|w| w == b"PK\x01\x02") {
            let header = at + found;
            let name_len = u16_at(bytes, header + 28);
            let entry = &bytes[header + 46..header + 46 + name_len];
            if entry == format!("{name}.npy").as_bytes() {
                // The zip64 field (id 1) comes first and holds the uncompressed size first.
                let extra = header + 46 + name_len;
                assert_eq!(u16_at(bytes, extra), 1, "a zip64 extra field");
                bytes[extra + 4..extra + 12].copy_from_slice(&size.to_le_bytes());
                return;
            }
            at = header + 4;
        }
        panic!("no entry {name}.npy");
    }

    /// A file removed when it drops.
    struct TempFile(std::path::PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// `bytes` in a file of their own, opened with `limit`.
    fn open_bytes(bytes: &[u8], test: &str, limit: u64) -> (Npz, TempFile) {
        let path = std::env::temp_dir().join(format!("tilefuse-{test}-{}.npz", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        (Npz::open(&path, limit).unwrap(), TempFile(path))
    }

    fn read_bytes(bytes: &[u8], test: &str) -> (Npz, TempFile) {
        open_bytes(bytes, test, DEFAULT_READ_LIMIT)
    }

    /// The elements of `name`, or why it is no array or they cannot be read.
    fn data(npz: &Npz, name: &str) -> Result<Data, String> {
        npz.get(name).expect("an entry")?.data().cloned()
    }

    fn f32s(shape: &[usize], values: Vec<f32>) -> Array {
        Array {
            shape: shape.to_vec(),
            data: Data::F32(values),
        }
    }

    /// A `.npy` with a header written by hand: `descr` and `shape` as numpy spells them.
    fn npy_with_header(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        let mut header = dict.into_bytes();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(b' ');
        }
        header.push(b'\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header);
        out.extend(data);
        out
    }

    /// A central directory that declares an entry far larger than it holds (2^40 bytes, or
    /// 2^63 + 5) makes that array unreadable, with the sizes in the message; it neither
    /// reserves the declared size nor aborts, and the other arrays still read.
    #[test]
    fn forged_declared_sizes_are_errors() {
        for size in [1u64 << 40, (1u64 << 63) + 5] {
            let arrays = [
                ("w".to_string(), f32s(&[2, 2], vec![1.0; 4])),
                ("x".to_string(), f32s(&[2], vec![2.0; 2])),
            ];
            let mut bytes = npz_bytes(&arrays, &[]);
            forge_declared_size(&mut bytes, "x", size);
            let (read, _file) = read_bytes(&bytes, "forged");
            assert_eq!(data(&read, "w"), Ok(arrays[0].1.data.clone()));
            match data(&read, "x") {
                Err(why) => assert!(why.contains(&size.to_string()), "{why}"),
                Ok(other) => panic!("a forged size read as {other:?}"),
            }
        }
    }

    /// A header whose shape's product wraps (2^62 + 1 rows of 4) over 4 values is not an
    /// array of 4: the element count is checked against the bytes present.
    #[test]
    fn a_wrapped_header_shape_is_an_error() {
        let values: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let wrapped = npy_with_header("<f4", "(4611686018427387905, 4)", &values);
        let short = npy_with_header("<f4", "(2, 4)", &values);
        let bytes = npz_bytes(&[], &[("wrapped", &wrapped), ("short", &short)]);
        let (read, _file) = read_bytes(&bytes, "wrapped");
        for name in ["wrapped", "short"] {
            match data(&read, name) {
                Err(why) => assert!(why.contains("bytes"), "{name}: {why}"),
                Ok(other) => panic!("{name}: read as {other:?}"),
            }
        }
    }

    /// Opening reads headers only; an array's elements are read when asked for, counted
    /// against the limit, and one that would pass it is refused before it is inflated.
    #[test]
    fn only_the_arrays_asked_for_are_read_within_the_limit() {
        let arrays = [
            ("x".to_string(), f32s(&[3], vec![1.0, 2.0, 3.0])),
            ("big".to_string(), f32s(&[1 << 22], vec![0.0; 1 << 22])),
        ];
        let (read, _file) = open_bytes(&npz_bytes(&arrays, &[]), "limit", 1 << 20);
        assert_eq!(read.bytes_read(), 0);
        let big = read.get("big").unwrap().unwrap();
        assert_eq!(
            (&big.shape[..], &big.element),
            (&[1 << 22][..], &Element::F32)
        );
        assert_eq!(data(&read, "x"), Ok(arrays[0].1.data.clone()));
        assert_eq!(read.bytes_read(), 12);
        let refused = data(&read, "big").unwrap_err();
        assert!(refused.contains("--read-limit"), "{refused}");
        assert_eq!(read.bytes_read(), 12);
    }

    /// An entry whose header and declared size agree on more bytes than it holds is an error
    /// when read, not a short or padded array.
    #[test]
    fn an_entry_that_holds_less_than_it_declares_is_an_error() {
        let values: Vec<u8> = (0..16u8).collect();
        let npy = npy_with_header("<f4", "(1048576,)", &values);
        let mut bytes = npz_bytes(&[], &[("x", &npy)]);
        let header = (npy.len() - values.len()) as u64;
        forge_declared_size(&mut bytes, "x", header + (4 << 20));
        let (read, _file) = read_bytes(&bytes, "short");
        let entry = read.get("x").unwrap().unwrap();
        assert_eq!(entry.shape, [1 << 20]);
        assert!(entry.data().is_err());
    }

    /// An entry this reader cannot open (marked encrypted, in the central directory and the
    /// local header) is that array's error; the others still read (the whole file was
    /// refused before).
    #[test]
    fn an_entry_that_cannot_be_opened_fails_only_itself() {
        let arrays = [("x".to_string(), f32s(&[3], vec![1.0, 2.0, 3.0]))];
        let mut bytes = npz_bytes(&arrays, &[("junk", b"anything")]);
        for (signature, flags_at, name_at) in [(b"PK\x01\x02", 8, 46), (b"PK\x03\x04", 6, 30)] {
            let mut at = 0;
            while let Some(found) = bytes[at..].windows(4).position(|w| w == signature) {
                let header = at + found;
                if bytes[header + name_at..].starts_with(b"junk.npy") {
                    bytes[header + flags_at] |= 1; // encrypted
                }
                at = header + 4;
            }
        }
        let (read, _file) = read_bytes(&bytes, "encrypted");
        assert_eq!(data(&read, "x"), Ok(arrays[0].1.data.clone()));
        let error = data(&read, "junk").unwrap_err();
        assert!(error.contains("unreadable"), "{error}");
    }

    /// numpy bool arrays (`|b1`) read as 0 / 1 bytes.
    #[test]
    fn bool_arrays_read_as_bytes() {
        let flags = npy_with_header("|b1", "(2, 2)", &[1, 0, 0, 1]);
        let (read, _file) = read_bytes(&npz_bytes(&[], &[("reset", &flags)]), "bool");
        let reset = read.get("reset").unwrap().unwrap();
        assert_eq!(
            (&reset.shape[..], &reset.element),
            (&[2, 2][..], &Element::Bool)
        );
        assert_eq!(data(&read, "reset"), Ok(Data::U8(vec![1, 0, 0, 1])));
    }

    /// A malformed array that nothing asks for does not make the file unreadable.
    #[test]
    fn a_malformed_extra_array_leaves_the_rest_readable() {
        let arrays = [("x".to_string(), f32s(&[3], vec![1.0, 2.0, 3.0]))];
        let bytes = npz_bytes(&arrays, &[("junk", b"not an array")]);
        let (read, _file) = read_bytes(&bytes, "junk");
        assert_eq!(data(&read, "x"), Ok(arrays[0].1.data.clone()));
        assert!(data(&read, "junk").is_err());
    }

    /// Writing through a symlink writes its target and keeps the link; a replaced file keeps
    /// its permissions; a pipe (as a device would be) is refused and left as it was.
    #[cfg(unix)]
    #[test]
    fn outputs_replace_regular_files_only() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt, symlink};
        let dir = std::env::temp_dir().join(format!("tilefuse-npz-special-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let y = [("y".to_string(), f32s(&[1], vec![1.0]))];
        let target = dir.join("target.npz");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.join("link.npz");
        symlink(&target, &link).unwrap();
        write(&link, &y).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let written = Npz::open(&target, DEFAULT_READ_LIMIT).unwrap();
        assert_eq!(data(&written, "y"), Ok(y[0].1.data.clone()));
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let error = write(&fifo, &y).unwrap_err();
        assert!(error.contains("not a regular file"), "{error}");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(left, ["fifo", "link.npz", "target.npz"]);
    }

    /// A write that cannot be renamed into place (the path is a folder) leaves nothing behind.
    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("tilefuse-npz-dir-{}", std::process::id()));
        let target = dir.join("out.npz");
        std::fs::create_dir_all(&target).unwrap();
        assert!(write(&target, &[("y".to_string(), f32s(&[1], vec![1.0]))]).is_err());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(left, ["out.npz"], "left behind: {left:?}");
    }

    #[test]
    fn arrays_round_trip() {
        let arrays = vec![
            (
                "a".to_string(),
                Array {
                    shape: vec![2, 3],
                    data: Data::F32((0..6).map(|i| i as f32).collect()),
                },
            ),
            (
                "b".to_string(),
                Array {
                    shape: vec![2],
                    data: Data::C64(vec![Complex32::new(1.0, -2.0); 2]),
                },
            ),
            (
                "c".to_string(),
                Array {
                    shape: vec![],
                    data: Data::I32(vec![7]),
                },
            ),
            (
                "d".to_string(),
                Array {
                    shape: vec![3],
                    data: Data::F16(vec![f16::ONE; 3]),
                },
            ),
            (
                "e".to_string(),
                Array {
                    shape: vec![1, 2],
                    data: Data::U8(vec![0, 1]),
                },
            ),
        ];
        let path = std::env::temp_dir().join(format!("tilefuse-npz-{}.npz", std::process::id()));
        write(&path, &arrays).unwrap();
        let back = Npz::open(&path, DEFAULT_READ_LIMIT).unwrap();
        let _file = TempFile(path);
        for (name, array) in &arrays {
            let entry = back.get(name).unwrap().unwrap();
            assert_eq!(entry.shape, array.shape, "{name}");
            assert_eq!(entry.data(), Ok(&array.data), "{name}");
        }
    }
}
