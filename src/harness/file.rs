//! Case files: an op's inputs in a NumPy `.npz`, as `tilefuse run` and `tilefuse check
//! --input` read them. Each op's registry entry ([`OpEntry::file`](super::OpEntry::file))
//! names the arrays that mark its files and loads them, array by array, into a [`CaseFile`]
//! that runs on any backend and knows its reference and bound.

use super::npz::{Array, Data, Element, Entry, Npz};
use super::{Backend, Backends, OpEntry, Tolerance};
use crate::element::Float16;

/// How an op reads its case files.
#[derive(Debug, Clone, Copy)]
pub struct FileEntry {
    /// The arrays whose presence says a file holds this op's case (`w` and `x` for spmm).
    pub marks: &'static [&'static str],
    /// One line on every array the op reads, for error messages.
    pub needs: &'static str,
    /// Validates the arrays and builds the case.
    pub load: LoadFn,
}

/// Builds an op's case from a file's arrays, or says which array is wrong and how.
/// It checks every name, type and shape against the headers before it reads any array's
/// elements ([`Entry::data`]) but the scalars those checks need, so that a wrong file is
/// refused before it is inflated.
pub type LoadFn = fn(&Npz, FileOptions) -> Result<Box<dyn CaseFile>, String>;

/// The command line's choices for a case file.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileOptions {
    /// The element type to compute in (`--dtype`), if given.
    pub dtype: Option<Dtype>,
    /// The sparse format to encode a dense weight to (`--format`), if given.
    pub format: Option<SparseFormat>,
}

impl FileOptions {
    /// An error unless no format was asked for: `op` has no sparse weight.
    pub fn no_format(&self, op: &str) -> Result<(), String> {
        match self.format {
            Some(_) => Err(format!("--format: only spmm has a sparse weight, not {op}")),
            None => Ok(()),
        }
    }
}

/// The element type a run computes in (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// f32.
    F32,
}

pub use crate::spmm::SparseFormat;

/// A loaded case: it runs on any backend and knows its reference and bound.
pub trait CaseFile {
    /// The backends the op has a path on (the CPU runs the reference).
    fn backends(&self) -> &'static [Backend] {
        &[Backend::Cpu, Backend::Cuda, Backend::Wgpu]
    }
    /// Runs on `backend`; the CPU runs the f64 reference. Output arrays by name.
    fn run(&self, backends: &Backends, backend: Backend) -> Result<Vec<(String, Array)>, String>;
    /// The f64 reference of each output, by name.
    fn reference(&self) -> Result<Vec<(String, Vec<f64>)>, String>;
    /// The error bound against the reference.
    fn tolerance(&self) -> Tolerance;
    /// The error bound of the output `output` (by default [`tolerance`](Self::tolerance)).
    fn tolerance_of(&self, _output: &str) -> Tolerance {
        self.tolerance()
    }
    /// What the run on `backend` uses where the op chooses (spmm: its sparse format).
    fn variant(&self, _backend: Backend) -> Option<&'static str> {
        None
    }
}

/// The registered op whose case `arrays` holds: the first whose marks are all there.
pub fn infer(ops: &'static [OpEntry], arrays: &Npz) -> Result<&'static OpEntry, String> {
    let with_files = || ops.iter().filter_map(|op| Some((op, op.file?)));
    let found = with_files().find(|(_, file)| file.marks.iter().all(|m| arrays.contains(m)));
    if let Some((op, _)) = found {
        return Ok(op);
    }
    let names: Vec<&str> = arrays.names().collect();
    let marks: Vec<String> = with_files()
        .map(|(op, file)| format!("{} needs {}", op.name, file.marks.join(" and ")))
        .collect();
    Err(format!(
        "cannot tell the op from the arrays [{}]: {} (or pass --op)",
        names.join(", "),
        marks.join(", ")
    ))
}

/// The array `name`, or an error that says what the op needs (or why the file's entry is no
/// array).
pub(crate) fn required<'a>(arrays: &'a Npz, name: &str, needs: &str) -> Result<&'a Entry, String> {
    optional(arrays, name)?.ok_or_else(|| format!("`{name}`: missing ({needs})"))
}

/// The array `name` if the file has one; an error if its entry is no readable array.
pub(crate) fn optional<'a>(arrays: &'a Npz, name: &str) -> Result<Option<&'a Entry>, String> {
    arrays
        .get(name)
        .transpose()
        .map_err(|why| format!("`{name}`: {why}"))
}

/// The elements of the array `name`, or why they cannot be read.
pub(crate) fn data<'a>(array: &'a Entry, name: &str) -> Result<&'a Data, String> {
    array.data().map_err(|why| format!("`{name}`: {why}"))
}

/// An error unless `array` has as many dimensions as `dims` names.
pub(crate) fn rank(array: &Entry, name: &str, dims: &[&str]) -> Result<(), String> {
    if array.shape.len() == dims.len() {
        return Ok(());
    }
    Err(format!(
        "`{name}`: expected {} dimensions [{}], got shape {}",
        dims.len(),
        dims.join(", "),
        array.shape_text()
    ))
}

/// The error for an array of the wrong element type.
pub(crate) fn wrong_dtype(name: &str, expected: &str, array: &Entry) -> String {
    format!(
        "`{name}`: expected {expected}, got {}",
        array.element.name()
    )
}

/// The error for an array of the wrong shape.
pub(crate) fn mismatch(name: &str, expected: String, array: &Entry) -> String {
    format!(
        "`{name}`: expected shape {expected}, got {}",
        array.shape_text()
    )
}

/// The float16 array `name` of rank `dims.len()`; its elements are read by [`float16`].
pub(crate) fn float16_entry<'a>(
    arrays: &'a Npz,
    name: &str,
    dims: &[&str],
    needs: &str,
) -> Result<&'a Entry, String> {
    let array = required(arrays, name, needs)?;
    rank(array, name, dims)?;
    match array.element {
        Element::F16 => Ok(array),
        _ => Err(wrong_dtype(name, "float16", array)),
    }
}

/// The elements of the float16 array `name` (from [`float16_entry`]), converted to `T`.
pub(crate) fn float16<T: Float16>(array: &Entry, name: &str) -> Result<Vec<T>, String> {
    match data(array, name)? {
        Data::F16(values) => Ok(values.iter().map(|v| T::from_f64(v.to_f64())).collect()),
        _ => Err(wrong_dtype(name, "float16", array)),
    }
}

/// Elements as f64 (complex as interleaved pairs), for comparisons; none for integers.
pub fn as_f64(data: &Data) -> Option<Vec<f64>> {
    match data {
        Data::F16(v) => Some(v.iter().map(|x| x.to_f64()).collect()),
        Data::F32(v) => Some(v.iter().map(|&x| x.into()).collect()),
        Data::C64(v) => Some(v.iter().flat_map(|c| [c.re.into(), c.im.into()]).collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::harness::npz::{self, DEFAULT_READ_LIMIT};

    fn zeros(shape: &[usize], element: Element) -> Array {
        let count = shape.iter().product();
        let data = match element {
            Element::F16 => Data::F16(vec![f16::ZERO; count]),
            Element::F32 => Data::F32(vec![0.0; count]),
            _ => Data::U8(vec![0; count]),
        };
        Array {
            shape: shape.to_vec(),
            data,
        }
    }

    /// Every op checks names, types and shapes against the headers before it reads any
    /// array's elements: a wrong file costs nothing of its large arrays.
    #[test]
    fn files_are_checked_before_any_array_is_read() {
        use Element::{F16, F32, U8};
        let (q, kv) = ([1, 1024, 4, 64], [1, 1024, 4, 32]);
        type Arrays<'a> = &'a [(&'a str, &'a [usize], Element)];
        let cases: [(&str, Arrays, &str); 5] = [
            (
                "spmm",
                &[("w", &[64, 4096], F16), ("x", &[16, 4095], F16)],
                "`x`",
            ),
            (
                "spmm",
                &[("w", &[64, 4096], F16), ("x", &[16, 4096], F32)],
                "`x`",
            ),
            (
                "scan",
                &[
                    ("u", &[1, 65536, 4], F32),
                    ("a", &[5], F32),
                    ("reset", &[1, 65536], U8),
                ],
                "`a`",
            ),
            (
                "scan",
                &[
                    ("u", &[1, 65536, 4], F32),
                    ("a", &[4], F32),
                    ("reset", &[1, 65536], F32),
                ],
                "`reset`",
            ),
            (
                "attention",
                &[("q", &q, F16), ("k", &q, F16), ("v", &kv, F16)],
                "`v`",
            ),
        ];
        let path =
            std::env::temp_dir().join(format!("tilefuse-checked-{}.npz", std::process::id()));
        for (op, arrays, wrong) in cases {
            let arrays: Vec<(String, Array)> = arrays
                .iter()
                .map(|(name, shape, element)| (name.to_string(), zeros(shape, element.clone())))
                .collect();
            npz::write(&path, &arrays).unwrap();
            let file = Npz::open(&path, DEFAULT_READ_LIMIT).unwrap();
            let entry = crate::harness::ops().iter().find(|o| o.name == op).unwrap();
            let loaded = (entry.file.unwrap().load)(&file, FileOptions::default());
            let error = loaded.err().expect("a wrong file");
            assert!(error.contains(wrong), "{op}: {error}");
            assert_eq!(file.bytes_read(), 0, "{op}: {error}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    /// Attention reads its int32 scalars to know the layout's shape, and nothing else of a
    /// file whose layout (or scale) is wrong.
    #[test]
    fn attention_reads_only_its_scalars_before_the_checks_pass() {
        let scalar = |value: i32| Array {
            shape: Vec::new(),
            data: Data::I32(vec![value]),
        };
        let qkv = [1, 1024, 4, 64];
        let arrays = |layout: Array, scale: Array| {
            let mut arrays: Vec<(String, Array)> = ["q", "k", "v"]
                .map(|name| (name.to_string(), zeros(&qkv, Element::F16)))
                .into();
            for (name, value) in [("block_m", 64), ("block_n", 64), ("mask_mod", 1)] {
                arrays.push((name.to_string(), scalar(value)));
            }
            arrays.push(("layout".to_string(), layout));
            arrays.push(("scale".to_string(), scale));
            arrays
        };
        let good_layout = || zeros(&[1, 16, 16], Element::U8);
        let good_scale = || zeros(&[], Element::F32);
        let cases = [
            (
                arrays(zeros(&[1, 16, 15], Element::U8), good_scale()),
                "`layout`",
            ),
            (arrays(good_layout(), zeros(&[2], Element::F32)), "`scale`"),
            (arrays(good_layout(), scalar(1)), "`scale`"),
        ];
        let path =
            std::env::temp_dir().join(format!("tilefuse-scalars-{}.npz", std::process::id()));
        for (arrays, wrong) in cases {
            npz::write(&path, &arrays).unwrap();
            let file = Npz::open(&path, DEFAULT_READ_LIMIT).unwrap();
            let entry = crate::harness::ops()
                .iter()
                .find(|o| o.name == "attention")
                .unwrap();
            let loaded = (entry.file.unwrap().load)(&file, FileOptions::default());
            let error = loaded.err().expect("a wrong file");
            assert!(error.contains(wrong), "{error}");
            assert_eq!(file.bytes_read(), 3 * 4, "{error}");
        }
        std::fs::remove_file(&path).unwrap();
    }
}
