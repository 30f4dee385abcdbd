//! The scan backward's cases for `tilefuse check`, the CLI (`tilefuse run scan-backward`) and
//! the integration tests.

use super::backward::{BackwardCase, DeviceGradients, check_backward_with, random_cotangents};
use super::check::BackwardProblem;
use super::{
    Case, Cotangents, Decay, Inputs, Layout, ResetPattern, Scan, ScanElement, StateStorage,
    associative_backward, reference_backward,
};
use crate::error::Result;
use crate::harness::device::on_device;
use crate::harness::{Backend, Backends, CheckCase, Comparison, OpEntry, compare};

/// The registry entry of the backward pass.
pub const BACKWARD_ENTRY: OpEntry = OpEntry {
    name: "scan-backward",
    about: "the scan's backward pass: du, da, dh0 from dh, dh_last (CUDA: one pass in reverse)",
    kernel_modules: &["scan", "scan_backward"],
    check_cases,
    bench_cases: super::bench::backward_bench_cases,
    #[cfg(feature = "cli")]
    file: Some(&super::cli::BACKWARD_FILE),
    #[cfg(all(feature = "cli", feature = "cuda"))]
    profile: None,
};

/// The backends with a backward path.
#[cfg(feature = "cli")]
pub(crate) const BACKWARD_BACKENDS: &[Backend] = &[Backend::Cpu, Backend::Cuda, Backend::Wgpu];

/// Runs `case`'s backward pass on `backend` with inputs and cotangents from `seed` (outputs
/// poisoned with NaN first) and compares du, da and dh0 with the f64 reference. On the CPU it
/// checks [`associative_backward`]; `Ok(None)` on a backend without a backward path.
pub fn check_backward(
    backends: &Backends,
    backend: Backend,
    case: &BackwardCase,
    seed: u64,
) -> Result<Option<Comparison>> {
    let run = super::typed_for!(check_typed, case.forward.complex, case.forward.storage);
    run(backends, backend, case, seed)
}

fn check_typed<T: ScanElement, S: StateStorage>(
    backends: &Backends,
    backend: Backend,
    case: &BackwardCase,
    seed: u64,
) -> Result<Option<Comparison>> {
    if backend == Backend::Cpu {
        let scan = case.forward.scan::<T>()?;
        let inputs = Inputs::random(&case.forward, &scan, seed);
        let cotangents = random_cotangents(&scan, case.dh_last, seed ^ 0x6ad);
        let want = reference_backward(&scan, &inputs, &cotangents)?;
        let got = associative_backward(&scan, &inputs, &cotangents)?;
        let flat = |g: super::Gradients| [g.du, g.da, g.dh0.unwrap_or_default()].concat();
        // Two f64 algorithms, apart by f64 roundings that the recurrence's memory carries
        // (up to 1e4 steps here): far below any f32 bound.
        let bound = crate::harness::Tolerance {
            rel_l2: 1e-10,
            element: 1e-10,
        };
        return Ok(Some(compare(&flat(got), &flat(want), bound)));
    }
    check_backward_with::<T>(case, seed, |scan, inputs, cotangents| {
        run_backward::<T, S>(backends, backend, scan, inputs, cotangents, case.recompute)
    })
}

/// Runs the backward pass on a GPU backend with `u`, `h`, `dh` and `du` stored as `S`, du, da
/// and dh0 poisoned with NaN, and reads them back (widened to f32): from the states of a
/// forward run on the device, or (`recompute`) recomputing them. `Ok(None)` on the CPU.
pub fn run_backward<T: ScanElement, S: StateStorage>(
    backends: &Backends,
    backend: Backend,
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    cotangents: &Cotangents<T>,
    recompute: bool,
) -> Result<Option<DeviceGradients>> {
    on_device!(backends, backend, |device| {
        let mut problem = BackwardProblem::<_, T, S>::upload(device, scan, inputs, cotangents)?;
        problem.run(device, scan, recompute)?;
        problem.read(device)
    })
}

fn check_cases() -> Vec<CheckCase> {
    let cases = [
        BackwardCase::new(Case::new(3, 1000, 40)),
        BackwardCase {
            recompute: true,
            dh_last: false,
            ..BackwardCase::new(Case {
                complex: true,
                layout: Layout::TimeMajor,
                decay: Decay::TimeVarying,
                resets: ResetPattern::Random(0.2),
                h0: false,
                ..Case::new(2, 4097, 33)
            })
        },
        BackwardCase::new(Case {
            complex: true,
            resets: ResetPattern::ChunkBoundaries,
            ..Case::new(2, 1024, 70)
        }),
        BackwardCase::new(Case {
            resets: ResetPattern::EveryStep,
            decay: Decay::TimeVarying,
            ..Case::new(1, 1, 1)
        }),
        BackwardCase {
            recompute: true,
            ..BackwardCase::new(Case {
                complex: true,
                a_magnitude: (0.999, 0.9999),
                resets: ResetPattern::Never,
                ..Case::new(2, 20_000, 5)
            })
        },
    ];
    cases
        .into_iter()
        .map(|case| {
            CheckCase::new(
                "scan-backward",
                case.to_string(),
                move |backends, backend| check_backward(backends, backend, &case, 0x5eed),
            )
        })
        .collect()
}
