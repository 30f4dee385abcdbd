//! NumPy `.npz` files: the arrays that case files hold and `tilefuse run` writes (C order,
//! little endian).

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;

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
    /// uint8 (and bool).
    U8(Vec<u8>),
    /// int32.
    I32(Vec<i32>),
    /// Anything else, by its NumPy type string (e.g. `<f8`); an op that needs it says so.
    Other(String),
    /// An entry that is no readable array, and why; an op that needs it says so, and the
    /// file's other arrays still read.
    Invalid(String),
}

impl Data {
    /// NumPy's name of the type.
    pub fn dtype(&self) -> String {
        match self {
            Data::F16(_) => "float16".into(),
            Data::F32(_) => "float32".into(),
            Data::C64(_) => "complex64".into(),
            Data::U8(_) => "uint8".into(),
            Data::I32(_) => "int32".into(),
            Data::Other(type_str) => format!("dtype {type_str}"),
            Data::Invalid(why) => format!("an unreadable array ({why})"),
        }
    }
}

/// A file's arrays by name.
pub type Arrays = BTreeMap<String, Array>;

/// One array: its shape and its elements in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// The elements.
    pub data: Data,
}

impl Array {
    /// The shape as NumPy prints it, e.g. `(16, 520)`.
    pub fn shape_text(&self) -> String {
        shape_text(&self.shape)
    }
}

/// A shape as NumPy prints it.
fn shape_text(shape: &[usize]) -> String {
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

/// Reads every array of an `.npz` file, by name (without `.npy`). An entry that holds no
/// readable array (a malformed header, a shape its bytes do not fill, sizes the zip entry does
/// not hold) becomes [`Data::Invalid`], so that only an op that needs it fails.
pub fn read(path: &Path) -> Result<Arrays, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| format!("{}: not an .npz (zip) file: {e}", path.display()))?;
    let mut arrays = BTreeMap::new();
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(name) = entry.name().strip_suffix(".npy").map(str::to_string) else {
            continue;
        };
        let declared = entry.size();
        let array = entry_bytes(&mut entry, declared)
            .and_then(|bytes| parse(&bytes))
            .unwrap_or_else(|why| Array {
                shape: Vec::new(),
                data: Data::Invalid(why),
            });
        arrays.insert(name, array);
    }
    Ok(arrays)
}

/// The bytes of a zip entry that declares `declared` of them: never more than it declares,
/// and memory only for what it really holds (a central directory can claim any size).
fn entry_bytes(entry: &mut impl Read, declared: u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    entry
        .take(declared.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("the zip entry (declaring {declared} bytes) is unreadable: {e}"))?;
    if bytes.len() as u64 != declared {
        return Err(format!(
            "the zip entry declares {declared} bytes but holds {}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// A `.npy` header: the element type, Fortran order, the shape, and where the data starts.
struct Header {
    descr: String,
    fortran: bool,
    shape: Vec<u64>,
    data_offset: usize,
}

/// Reads the header of a `.npy`: the magic, the version, the header's length and the header
/// dict, whose three keys are read with overflow-checked numbers (a library that multiplies
/// the shape out first would wrap or panic on a hostile one).
fn header(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (no NUMPY magic)".into());
    }
    let (length, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(word(&bytes[8..])) as usize, 12),
        version => return Err(format!("a .npy format version {version}, not 1, 2 or 3")),
    };
    let end = start
        .checked_add(length)
        .filter(|&end| end <= bytes.len())
        .ok_or("a .npy header longer than the array")?;
    let text =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| "a .npy header that is not text")?;
    let value = |key: &str| {
        ["'", "\""]
            .iter()
            .find_map(|q| text.split_once(&format!("{q}{key}{q}")))
            .and_then(|(_, rest)| rest.trim_start().strip_prefix(':'))
            .map(str::trim_start)
            .ok_or_else(|| format!("a .npy header without {key}: {text:?}"))
    };
    let descr = value("descr")?;
    let descr = match descr.chars().next() {
        Some(q @ ('\'' | '"')) => descr[1..].split(q).next().unwrap_or_default().to_string(),
        _ => descr
            .split([',', '}'])
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    let fortran = value("fortran_order")?.starts_with("True");
    let shape = value("shape")?
        .strip_prefix('(')
        .and_then(|rest| rest.split(')').next())
        .ok_or_else(|| format!("a .npy header whose shape is no tuple: {text:?}"))?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<u64>())
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| format!("a .npy header whose shape is not whole numbers: {text:?}"))?;
    Ok(Header {
        descr,
        fortran,
        shape,
        data_offset: end,
    })
}

fn parse(bytes: &[u8]) -> Result<Array, String> {
    let header = header(bytes)?;
    let data = &bytes[header.data_offset..];
    if header.fortran && header.shape.len() > 1 {
        return Err("Fortran order; save a C-ordered array (np.ascontiguousarray)".into());
    }
    let shape: Vec<usize> = header
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("shape {:?} does not fit this machine", header.shape))?;
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let type_str = header.descr;
    let width = match type_str.as_str() {
        "|u1" | "<u1" | "|b1" => 1,
        "<f2" => 2,
        "<f4" | "<i4" => 4,
        "<c8" => 8,
        _ => {
            return Ok(Array {
                shape,
                data: Data::Other(type_str),
            });
        }
    };
    let needed = count.and_then(|n| n.checked_mul(width));
    if needed != Some(data.len()) {
        let needed = needed.map_or("more than this machine addresses".into(), |n| n.to_string());
        return Err(format!(
            "shape {} of {type_str} needs {needed} bytes, the array holds {}",
            shape_text(&shape),
            data.len()
        ));
    }
    let data = match type_str.as_str() {
        "|b1" => Data::U8(data.iter().map(|&b| u8::from(b != 0)).collect()),
        "|u1" | "<u1" => Data::U8(data.to_vec()),
        "<f2" => Data::F16(
            data.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        "<f4" => Data::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(word(c)))
                .collect(),
        ),
        "<i4" => Data::I32(
            data.chunks_exact(4)
                .map(|c| i32::from_le_bytes(word(c)))
                .collect(),
        ),
        _ => Data::C64(
            data.chunks_exact(8)
                .map(|c| {
                    Complex32::new(
                        f32::from_le_bytes(word(c)),
                        f32::from_le_bytes(word(&c[4..])),
                    )
                })
                .collect(),
        ),
    };
    Ok(Array { shape, data })
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
        Data::Other(t) | Data::Invalid(t) => {
            return Err(std::io::Error::other(format!("cannot write dtype {t}")));
        }
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

    fn read_bytes(bytes: &[u8], test: &str) -> Result<Arrays, String> {
        let path = std::env::temp_dir().join(format!("tilefuse-{test}-{}.npz", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let arrays = read(&path);
        std::fs::remove_file(&path).unwrap();
        arrays
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
            let read = read_bytes(&bytes, "forged").unwrap();
            assert_eq!(read["w"], arrays[0].1);
            match &read["x"].data {
                Data::Invalid(why) => assert!(why.contains(&size.to_string()), "{why}"),
                other => panic!("a forged size read as {other:?}"),
            }
        }
    }

    /// A header whose shape's product wraps (2^62 + 1 rows of 4) over 4 values is not an
    /// array of 4: the element count is checked against the bytes present.
    #[test]
    fn a_wrapped_header_shape_is_an_error() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let wrapped = npy_with_header("<f4", "(4611686018427387905, 4)", &data);
        let short = npy_with_header("<f4", "(2, 4)", &data);
        let bytes = npz_bytes(&[], &[("wrapped", &wrapped), ("short", &short)]);
        let read = read_bytes(&bytes, "wrapped").unwrap();
        for name in ["wrapped", "short"] {
            match &read[name].data {
                Data::Invalid(why) => assert!(why.contains("bytes"), "{name}: {why}"),
                other => panic!("{name}: read as {other:?}"),
            }
        }
    }

    /// numpy bool arrays (`|b1`) read as 0 / 1 bytes.
    #[test]
    fn bool_arrays_read_as_bytes() {
        let flags = npy_with_header("|b1", "(2, 2)", &[1, 0, 0, 1]);
        let read = read_bytes(&npz_bytes(&[], &[("reset", &flags)]), "bool").unwrap();
        assert_eq!(read["reset"].shape, [2, 2]);
        assert_eq!(read["reset"].data, Data::U8(vec![1, 0, 0, 1]));
    }

    /// A malformed array that nothing asks for does not make the file unreadable.
    #[test]
    fn a_malformed_extra_array_leaves_the_rest_readable() {
        let arrays = [("x".to_string(), f32s(&[3], vec![1.0, 2.0, 3.0]))];
        let read = read_bytes(&npz_bytes(&arrays, &[("junk", b"not an array")]), "junk").unwrap();
        assert_eq!(read["x"], arrays[0].1);
        assert!(matches!(read["junk"].data, Data::Invalid(_)));
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
        assert_eq!(read(&target).unwrap()["y"], y[0].1);
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
        let back = read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        for (name, array) in &arrays {
            assert_eq!(&back[name], array, "{name}");
        }
    }
}
