//! Case files: an op's inputs from a NumPy `.npz`, loaded by the op's registry entry
//! ([`OpEntry::file`]), run on a backend or on the reference, and its outputs as arrays.

use std::path::Path;

use tilefuse::harness::file::{CaseFile, FileOptions, as_f64};
use tilefuse::harness::npz::{self, Npz};
use tilefuse::harness::{self, Backend, Backends, Comparison, OpEntry};

/// The registered op named `name` that reads case files.
pub fn op_with_files(name: &str) -> Result<&'static OpEntry, String> {
    let with_files = || harness::ops().iter().filter(|op| op.file.is_some());
    with_files()
        .find(|op| op.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            let names: Vec<&str> = with_files().map(|op| op.name).collect();
            format!("{name}: expected one of {}", names.join(", "))
        })
}

/// `op`'s case in `arrays`.
pub fn load(op: &OpEntry, arrays: &Npz, options: FileOptions) -> Result<Box<dyn CaseFile>, String> {
    let file = op
        .file
        .ok_or_else(|| format!("{} reads no case files", op.name))?;
    (file.load)(arrays, options)
}

/// `tilefuse run`: the op on one backend, outputs written to `output` (nothing on failure);
/// returns the backend and what it used where the op chooses ([`CaseFile::variant`]). The
/// file is read and checked before any backend is opened.
pub fn run_file(
    op: &OpEntry,
    input: &Path,
    output: &Path,
    backend: Option<Backend>,
    options: FileOptions,
    read_limit: u64,
) -> Result<(Backend, Option<&'static str>), String> {
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if same(input, output) {
        return Err(format!(
            "--output {}: that is the input file; write the outputs elsewhere",
            output.display()
        ));
    }
    let arrays = Npz::open(input, read_limit)?;
    let case = load(op, &arrays, options)?;
    let backends = &Backends::detect();
    let backend = match backend {
        Some(backend) => {
            backends
                .status(backend)
                .map_err(|why| format!("--backend {backend}: {why}"))?;
            backend
        }
        None => [Backend::Cuda, Backend::Wgpu, Backend::Cpu]
            .into_iter()
            .find(|&b| case.backends().contains(&b) && backends.has(b))
            .unwrap_or(Backend::Cpu),
    };
    let outputs = case.run(backends, backend)?;
    npz::write(output, &outputs)?;
    Ok((backend, case.variant(backend)))
}

/// One row of `tilefuse check --input`: a backend's output against the reference or against
/// an `expect_` array of the file.
pub struct FileCheck {
    pub backend: Backend,
    pub output: String,
    pub against: String,
    pub result: Result<Comparison, String>,
}

/// `tilefuse check --input`: the op on every runnable backend against the reference and,
/// with `expect`, against the file's `expect_<output>` arrays.
pub fn check_case(
    backends: &Backends,
    case: &dyn CaseFile,
    arrays: &Npz,
    runnable: &[Backend],
    expect: bool,
) -> Result<Vec<FileCheck>, String> {
    let reference = case.reference()?;
    let mut rows = Vec::new();
    for &backend in runnable.iter().filter(|b| case.backends().contains(b)) {
        let outputs = case.run(backends, backend);
        for (name, want) in &reference {
            let got = match &outputs {
                Ok(outputs) => outputs
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, a)| as_f64(&a.data)),
                Err(e) => {
                    rows.push(FileCheck {
                        backend,
                        output: name.clone(),
                        against: "reference".into(),
                        result: Err(e.clone()),
                    });
                    continue;
                }
            };
            let Some(got) = got else { continue };
            let tolerance = case.tolerance_of(name);
            let compare = |want: &[f64]| harness::compare(&got, want, tolerance);
            rows.push(FileCheck {
                backend,
                output: name.clone(),
                against: "reference".into(),
                result: Ok(compare(want)),
            });
            let expected_name = format!("expect_{name}");
            if let (true, Some(expected)) = (expect, arrays.get(&expected_name)) {
                let result = expected
                    .map_err(|why| format!("`{expected_name}`: {why}"))
                    .and_then(|expected| expectation(&expected_name, expected, want.len()))
                    .map(|values| compare(&values));
                rows.push(FileCheck {
                    backend,
                    output: name.clone(),
                    against: expected_name,
                    result,
                });
            }
        }
    }
    Ok(rows)
}

/// The values of `expect_<output>`, if it holds `count` floats.
fn expectation(name: &str, expected: &npz::Entry, count: usize) -> Result<Vec<f64>, String> {
    let wrong = || {
        format!(
            "`{name}`: expected {count} values of the output's type, got {} {}",
            expected.element.name(),
            expected.shape_text()
        )
    };
    let lanes = match expected.element {
        npz::Element::F16 | npz::Element::F32 => 1,
        npz::Element::C64 => 2,
        _ => return Err(wrong()),
    };
    if expected.shape.iter().product::<usize>() * lanes != count {
        return Err(wrong());
    }
    let data = expected.data().map_err(|why| format!("`{name}`: {why}"))?;
    as_f64(data).ok_or_else(wrong)
}
