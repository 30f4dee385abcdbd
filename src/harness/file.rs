//! Case files: an op's inputs in a NumPy `.npz`, as `tilefuse run` and `tilefuse check
//! --input` read them. Each op's registry entry ([`OpEntry::file`](super::OpEntry::file))
//! names the arrays that mark its files and loads them, array by array, into a [`CaseFile`]
//! that runs on any backend and knows its reference and bound.

use super::npz::{Array, Arrays, Data};
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
pub type LoadFn = fn(&Arrays, FileOptions) -> Result<Box<dyn CaseFile>, String>;

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

/// How a dense weight is encoded (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SparseFormat {
    /// Flash-LLM's Tiled-CSL ([`TiledCsl`](crate::spmm::TiledCsl)).
    Tiledcsl,
}

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
}

/// The registered op whose case `arrays` holds: the first whose marks are all there.
pub fn infer(ops: &'static [OpEntry], arrays: &Arrays) -> Result<&'static OpEntry, String> {
    let with_files = || ops.iter().filter_map(|op| Some((op, op.file?)));
    let found = with_files().find(|(_, file)| file.marks.iter().all(|m| arrays.contains_key(*m)));
    if let Some((op, _)) = found {
        return Ok(op);
    }
    let names: Vec<&str> = arrays.keys().map(String::as_str).collect();
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
pub(crate) fn required<'a>(
    arrays: &'a Arrays,
    name: &str,
    needs: &str,
) -> Result<&'a Array, String> {
    optional(arrays, name)?.ok_or_else(|| format!("`{name}`: missing ({needs})"))
}

/// The array `name` if the file has one; an error if its entry is no readable array.
pub(crate) fn optional<'a>(arrays: &'a Arrays, name: &str) -> Result<Option<&'a Array>, String> {
    match arrays.get(name) {
        Some(Array {
            data: Data::Invalid(why),
            ..
        }) => Err(format!("`{name}`: {why}")),
        found => Ok(found),
    }
}

/// An error unless `array` has as many dimensions as `dims` names.
pub(crate) fn rank(array: &Array, name: &str, dims: &[&str]) -> Result<(), String> {
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
pub(crate) fn wrong_dtype(name: &str, expected: &str, array: &Array) -> String {
    format!("`{name}`: expected {expected}, got {}", array.data.dtype())
}

/// The error for an array of the wrong shape.
pub(crate) fn mismatch(name: &str, expected: String, array: &Array) -> String {
    format!(
        "`{name}`: expected shape {expected}, got {}",
        array.shape_text()
    )
}

/// The float16 array `name` of rank `dims.len()`, converted to `T`.
pub(crate) fn float16<'a, T: Float16>(
    arrays: &'a Arrays,
    name: &str,
    dims: &[&str],
    needs: &str,
) -> Result<(&'a Array, Vec<T>), String> {
    let array = required(arrays, name, needs)?;
    rank(array, name, dims)?;
    match &array.data {
        Data::F16(values) => Ok((
            array,
            values.iter().map(|v| T::from_f64(v.to_f64())).collect(),
        )),
        _ => Err(wrong_dtype(name, "float16", array)),
    }
}

/// An array's values as f64 (complex as interleaved pairs), for comparisons.
pub fn as_f64(array: &Array) -> Option<Vec<f64>> {
    match &array.data {
        Data::F16(v) => Some(v.iter().map(|x| x.to_f64()).collect()),
        Data::F32(v) => Some(v.iter().map(|&x| x.into()).collect()),
        Data::C64(v) => Some(v.iter().flat_map(|c| [c.re.into(), c.im.into()]).collect()),
        _ => None,
    }
}
