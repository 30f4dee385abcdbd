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
        match self.shape.as_slice() {
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
}

/// Reads every array of an `.npz` file, by name (without `.npy`).
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
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: `{name}`: {e}", path.display()))?;
        let array = parse(&bytes).map_err(|e| format!("`{name}`: {e}"))?;
        arrays.insert(name, array);
    }
    Ok(arrays)
}

fn parse(bytes: &[u8]) -> Result<Array, String> {
    let npy = npyz::NpyFile::new(bytes).map_err(|e| format!("not a .npy array: {e}"))?;
    if npy.order() == npyz::Order::Fortran && npy.shape().len() > 1 {
        return Err("Fortran order; save a C-ordered array (np.ascontiguousarray)".into());
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let type_str = match npy.dtype() {
        npyz::DType::Plain(type_str) => type_str.to_string(),
        other => {
            return Ok(Array {
                shape,
                data: Data::Other(format!("{other:?}")),
            });
        }
    };
    let bad = |e: std::io::Error| format!("unreadable data: {e}");
    let data = match type_str.as_str() {
        "<f2" => Data::F16(npy.into_vec().map_err(bad)?),
        "<f4" => Data::F32(npy.into_vec().map_err(bad)?),
        "<c8" => Data::C64(npy.into_vec().map_err(bad)?),
        "|u1" | "<u1" | "|b1" => Data::U8(npy.into_vec::<u8>().map_err(bad)?),
        "<i4" => Data::I32(npy.into_vec().map_err(bad)?),
        _ => Data::Other(type_str),
    };
    Ok(Array { shape, data })
}

/// Writes `arrays` as an `.npz` (stored, like `np.savez`) next to `path`, then renames it
/// into place, so that a failed run never leaves a partial file.
pub fn write(path: &Path, arrays: &[(String, Array)]) -> Result<(), String> {
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
    let partial = path.with_extension("npz.partial");
    std::fs::write(&partial, bytes).map_err(|e| io(&e))?;
    std::fs::rename(&partial, path).map_err(|e| io(&e))
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
        Data::Other(t) => {
            return Err(std::io::Error::other(format!("cannot write dtype {t}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
