//! The correctness and benchmark harness behind `tilefuse check` and `tilefuse bench`, and
//! behind the integration tests: every op registers its check cases (run on each backend
//! against the f64 reference) and its benchmark cases in [`ops`].
//!
//! Registering a new op is one line in [`ops`] plus the op's `ENTRY`:
//!
//! ```ignore
//! pub const ENTRY: OpEntry = OpEntry {
//!     name: "spmm",
//!     about: "sparse weight x dense activations (Flash-LLM)",
//!     kernel_modules: &["spmm"],
//!     check_cases,
//!     bench_cases,
//!     #[cfg(feature = "cli")]
//!     file: Some(&super::cli::FILE),
//!     #[cfg(all(feature = "cli", feature = "cuda"))]
//!     profile: Some(&super::cli::PROFILE),
//! };
//! ```

mod baseline;
mod compare;
pub(crate) mod device;
#[cfg(feature = "cli")]
pub mod file;
#[cfg(feature = "cli")]
pub mod npz;
mod peak;
#[cfg(all(feature = "cli", feature = "cuda"))]
pub mod profile;
mod rng;
mod timing;

use std::fmt;

pub(crate) use baseline::prepare_copy;
pub use compare::{AsF64, Comparison, Tolerance, compare};
pub use rng::Rng;
pub use timing::{BenchRecord, BenchSettings, Clock, Runner, Timing};

#[cfg(feature = "cuda")]
use crate::backend::cuda::Cuda;
#[cfg(feature = "wgpu")]
use crate::backend::wgpu::Wgpu;
use crate::error::{Error, Result};

/// Every registered op, in the order `check` and `bench` run them.
pub fn ops() -> &'static [OpEntry] {
    &[
        baseline::ENTRY,
        peak::ENTRY,
        crate::smoke::ENTRY,
        crate::spmm::ENTRY,
        // Before the scan: a backward case file also holds the forward's arrays.
        crate::scan::BACKWARD_ENTRY,
        crate::scan::ENTRY,
        // Before the forward: a backward case file also holds the forward's arrays.
        crate::attention::BACKWARD_ENTRY,
        crate::attention::ENTRY,
    ]
}

/// Looks up a registered op by name.
pub fn op(name: &str) -> Option<&'static OpEntry> {
    ops().iter().find(|entry| entry.name == name)
}

/// Adds the `copy` baseline's benchmark case to `cases` if one of them moves bytes and none
/// is a copy: `% copy` compares with the copy bandwidth of the same run.
pub fn add_copy_baseline(cases: &mut Vec<BenchCase>) {
    let copy = baseline::ENTRY.name;
    if cases.iter().any(|case| case.bytes > 0) && !cases.iter().any(|case| case.op == copy) {
        cases.extend((baseline::ENTRY.bench_cases)());
    }
}

/// One registered op: its name, its kernels, and its check and benchmark cases.
#[derive(Debug, Clone, Copy)]
pub struct OpEntry {
    /// The name used on the command line, e.g. `"spmm"`.
    pub name: &'static str,
    /// One line for `tilefuse info`.
    pub about: &'static str,
    /// The `cuda/*.cu` modules the op launches.
    pub kernel_modules: &'static [&'static str],
    /// The cases `tilefuse check` runs.
    pub check_cases: fn() -> Vec<CheckCase>,
    /// The cases `tilefuse bench` runs.
    pub bench_cases: fn() -> Vec<BenchCase>,
    /// How `tilefuse run` and `tilefuse check --input` read its case files (`None`: they
    /// don't).
    #[cfg(feature = "cli")]
    pub file: Option<&'static file::FileEntry>,
    /// What `tilefuse profile` launches for it on CUDA, and its flags (`None`: nothing).
    #[cfg(all(feature = "cli", feature = "cuda"))]
    pub profile: Option<&'static profile::ProfileEntry>,
}

/// An implementation path: the CPU, CUDA or wgpu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// Host code (the reference itself, or an independent CPU algorithm).
    Cpu,
    /// The CUDA kernels.
    Cuda,
    /// The WGSL shaders through wgpu.
    Wgpu,
}

impl Backend {
    /// All backends, in table order.
    pub const ALL: [Backend; 3] = [Backend::Cpu, Backend::Cuda, Backend::Wgpu];

    /// The lower-case name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Wgpu => "wgpu",
        }
    }

    /// The error for a backend this build was compiled without.
    pub fn not_compiled(self) -> Error {
        let reason = format!("tilefuse was built without the `{}` feature", self.name());
        match self {
            Backend::Wgpu => Error::WgpuUnavailable { reason },
            _ => Error::CudaUnavailable { reason },
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The backends found on this machine, opened once and shared by every case.
pub struct Backends {
    #[cfg(feature = "cuda")]
    cuda: std::result::Result<Cuda, String>,
    #[cfg(feature = "wgpu")]
    wgpu: std::result::Result<Wgpu, String>,
}

impl Backends {
    /// Opens CUDA device 0 and the default wgpu adapter, remembering why either failed.
    /// `TILEFUSE_BACKENDS` (e.g. `cuda` or `cpu,wgpu`) leaves the others closed.
    pub fn detect() -> Self {
        let enabled = |backend: Backend| match std::env::var("TILEFUSE_BACKENDS") {
            Ok(list) if !list.split(',').any(|name| name.trim() == backend.name()) => {
                Err(format!("not in TILEFUSE_BACKENDS={list}"))
            }
            _ => Ok(()),
        };
        Backends {
            #[cfg(feature = "cuda")]
            cuda: enabled(Backend::Cuda).and_then(|()| Cuda::new(0).map_err(reason)),
            #[cfg(feature = "wgpu")]
            wgpu: enabled(Backend::Wgpu).and_then(|()| Wgpu::new().map_err(reason)),
        }
    }

    /// `gpu` as the wgpu backend and no CUDA: the harness on a device the caller opened (a
    /// framework's own, or one with capped limits).
    #[cfg(feature = "wgpu")]
    pub fn with_wgpu(gpu: Wgpu) -> Self {
        Backends {
            #[cfg(feature = "cuda")]
            cuda: Err("not opened (Backends::with_wgpu)".into()),
            wgpu: Ok(gpu),
        }
    }

    /// The CUDA handle, or why there is none.
    #[cfg(feature = "cuda")]
    pub fn cuda(&self) -> Result<&Cuda> {
        self.cuda.as_ref().map_err(|reason| Error::CudaUnavailable {
            reason: reason.clone(),
        })
    }

    /// The wgpu handle, or why there is none.
    #[cfg(feature = "wgpu")]
    pub fn wgpu(&self) -> Result<&Wgpu> {
        self.wgpu.as_ref().map_err(|reason| Error::WgpuUnavailable {
            reason: reason.clone(),
        })
    }

    /// A description of the backend's device, or why it cannot be used.
    pub fn status(&self, backend: Backend) -> std::result::Result<String, String> {
        match backend {
            Backend::Cpu => Ok(format!(
                "{} host threads",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            )),
            #[cfg(feature = "cuda")]
            Backend::Cuda => self
                .cuda
                .as_ref()
                .map(|c| c.info().to_string())
                .map_err(Clone::clone),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => self.wgpu.as_ref().map(Wgpu::describe).map_err(Clone::clone),
            #[allow(unreachable_patterns)]
            other => Err(reason(other.not_compiled())),
        }
    }

    /// Whether the backend can run here.
    pub fn has(&self, backend: Backend) -> bool {
        self.status(backend).is_ok()
    }
}

/// Why a backend could not be opened, without the "backend unavailable" prefix.
fn reason(error: Error) -> String {
    match error {
        Error::CudaUnavailable { reason } | Error::WgpuUnavailable { reason } => reason,
        other => other.to_string(),
    }
}

type CheckFn = dyn Fn(&Backends, Backend) -> Result<Option<Comparison>> + Send + Sync;
type PrepareFn = dyn for<'a> Fn(&'a Backends, Backend) -> Result<Option<Runner<'a>>> + Send + Sync;

/// One correctness case: runs the op on a backend and compares with the reference.
pub struct CheckCase {
    /// The op's name.
    pub op: &'static str,
    /// What the case covers, e.g. `"m=300 n=16 k=520"`.
    pub name: String,
    run: Box<CheckFn>,
}

impl CheckCase {
    /// A case from a closure that returns `Ok(None)` for backends the op does not have.
    pub fn new(
        op: &'static str,
        name: impl Into<String>,
        run: impl Fn(&Backends, Backend) -> Result<Option<Comparison>> + Send + Sync + 'static,
    ) -> Self {
        CheckCase {
            op,
            name: name.into(),
            run: Box::new(run),
        }
    }

    /// Runs the case on `backend`.
    pub fn run(&self, backends: &Backends, backend: Backend) -> Result<Option<Comparison>> {
        (self.run)(backends, backend)
    }
}

/// One benchmark case: a configuration, the work it does per run, and how to prepare it.
pub struct BenchCase {
    /// The op's name.
    pub op: &'static str,
    /// The case, e.g. `"m=8192 k=8192 n=16 s=80%"`; peers use the same string.
    pub name: String,
    /// Whose code runs: `"tilefuse"`, or a baseline timed in the same run (e.g. `"cublas"`).
    pub implementation: &'static str,
    /// Bytes moved per run (reads + writes of the ideal kernel), for GB/s.
    pub bytes: u64,
    /// Floating-point operations per run, for TFLOP/s.
    pub flops: u64,
    prepare: Box<PrepareFn>,
}

impl BenchCase {
    /// A tilefuse case. `prepare` puts the inputs on the backend and returns a [`Runner`]
    /// doing one run per call, or `Ok(None)` for backends the op does not have.
    pub fn new(
        op: &'static str,
        name: impl Into<String>,
        bytes: u64,
        flops: u64,
        prepare: impl for<'a> Fn(&'a Backends, Backend) -> Result<Option<Runner<'a>>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        BenchCase {
            op,
            name: name.into(),
            implementation: "tilefuse",
            bytes,
            flops,
            prepare: Box::new(prepare),
        }
    }

    /// The same case run by a baseline implementation instead of tilefuse.
    pub fn by(mut self, implementation: &'static str) -> Self {
        self.implementation = implementation;
        self
    }

    /// Prepares the case on `backend`; `Ok(None)` when the op has no such path.
    pub fn prepare<'a>(
        &self,
        backends: &'a Backends,
        backend: Backend,
    ) -> Result<Option<Runner<'a>>> {
        (self.prepare)(backends, backend)
    }

    /// Prepares and times the case on `backend`.
    pub fn run(
        &self,
        backends: &Backends,
        backend: Backend,
        settings: &BenchSettings,
    ) -> Result<Option<Timing>> {
        match self.prepare(backends, backend)? {
            Some(mut runner) => runner.time(settings).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases that move bytes bring one copy baseline, unless they have one; compute-bound
    /// ones none.
    #[test]
    fn memory_bound_cases_bring_one_copy_baseline() {
        let cases_of = |names: &[&str]| -> Vec<BenchCase> {
            names
                .iter()
                .flat_map(|name| (op(name).expect("registered").bench_cases)())
                .collect()
        };
        for (names, copies) in [(&["spmm"][..], 1), (&["copy", "spmm"], 1), (&["peak"], 0)] {
            let mut cases = cases_of(names);
            add_copy_baseline(&mut cases);
            let found = cases.iter().filter(|case| case.op == "copy").count();
            assert_eq!(found, copies, "{names:?}");
        }
    }
}
