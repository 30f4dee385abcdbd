//! The scan's benchmark cases for `tilefuse bench` and `benches/scan.rs`: complex64 with 1%
//! resets, every state and the final state only, beside a copy of the same bytes.

use num_complex::Complex32;

use super::check::{Case, Inputs, Problem};
use crate::error::Result;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
use crate::harness::Clock;
use crate::harness::device::{Device, on_device};
use crate::harness::{Backend, Backends, BenchCase, Runner};

/// The benchmark shapes (b, t, p): complex64, 1% resets, time-invariant a.
pub const BENCH_SHAPES: [(usize, usize, usize); 3] =
    [(16, 8192, 256), (64, 2048, 256), (4, 65536, 128)];

pub(super) fn bench_cases() -> Vec<BenchCase> {
    let mut cases = Vec::new();
    for (b, t, p) in BENCH_SHAPES {
        let case = Case {
            complex: true,
            h0: false,
            ..Case::new(b, t, p)
        };
        let name = format!("c64 b={b} t={t} p={p} resets=1%");
        let states_bytes = (b * t * p * 8) as u64;
        let reset_bytes = (b * t) as u64;
        let final_bytes = (b * p * 8) as u64;
        let full = 2 * states_bytes + reset_bytes + final_bytes;
        // A complex multiply-add (8 FLOP) per element: what places the scan on the roofline.
        let flops = (8 * b * t * p) as u64;
        cases.push(BenchCase::new(
            "scan",
            name.clone(),
            full,
            flops,
            move |backends, backend| prepare(backends, backend, &case),
        ));
        cases.push(
            BenchCase::new(
                "scan",
                name.clone(),
                2 * states_bytes,
                0,
                move |backends, backend| {
                    crate::harness::prepare_copy(backends, backend, b * t * p * 8)
                },
            )
            .by("copy"),
        );
        let final_case = Case {
            final_only: true,
            ..case
        };
        cases.push(BenchCase::new(
            "scan",
            format!("{name} final-only"),
            states_bytes + reset_bytes + final_bytes,
            flops,
            move |backends, backend| prepare(backends, backend, &final_case),
        ));
    }
    cases
}

fn prepare<'a>(
    backends: &'a Backends,
    backend: Backend,
    case: &Case,
) -> Result<Option<Runner<'a>>> {
    let scan = case.scan::<Complex32>()?;
    let inputs = Inputs::random(case, &scan, 1);
    let final_only = case.final_only;
    on_device!(backends, backend, |device| {
        let mut problem = Problem::upload(device, &scan, &inputs)?;
        Ok(Runner::new(device.clock(), move || {
            problem.run(device, &scan, final_only)
        }))
    })
}

/// The backward pass on the same shapes (dh_last given, h0 absent): from the forward's kept
/// states (reads dh and h, writes du) and recomputing them (a forward pass reading u, then
/// dh and u read and du written), each beside a copy that moves as many bytes.
pub(super) fn backward_bench_cases() -> Vec<BenchCase> {
    let mut cases = Vec::new();
    for (b, t, p) in BENCH_SHAPES {
        let forward = Case {
            complex: true,
            h0: false,
            ..Case::new(b, t, p)
        };
        let states_bytes = b * t * p * 8;
        let reset_bytes = b * t;
        for recompute in [false, true] {
            let name = format!(
                "c64 b={b} t={t} p={p} resets=1% backward{}",
                if recompute { " recompute" } else { "" }
            );
            let passes = if recompute { 4 } else { 3 };
            let moved = passes * states_bytes + reset_bytes * (1 + usize::from(recompute));
            // A complex multiply-add for g and a complex product for da per element.
            let flops = (14 * b * t * p) as u64;
            let case = super::BackwardCase {
                recompute,
                ..super::BackwardCase::new(forward)
            };
            cases.push(BenchCase::new(
                "scan-backward",
                name.clone(),
                moved as u64,
                flops,
                move |backends, backend| prepare_backward(backends, backend, &case),
            ));
            cases.push(
                BenchCase::new(
                    "scan-backward",
                    name,
                    (passes * states_bytes) as u64,
                    0,
                    move |backends, backend| {
                        crate::harness::prepare_copy(backends, backend, passes * states_bytes / 2)
                    },
                )
                .by("copy"),
            );
        }
    }
    cases
}

fn prepare_backward<'a>(
    backends: &'a Backends,
    backend: Backend,
    case: &super::BackwardCase,
) -> Result<Option<Runner<'a>>> {
    let problem = case.forward.scan::<Complex32>()?;
    let inputs = Inputs::random(&case.forward, &problem, 1);
    let cotangents = super::random_cotangents(&problem, case.dh_last, 2);
    match backend {
        #[cfg(feature = "cuda")]
        Backend::Cuda => cuda_backward_runner(
            backends.cuda()?,
            problem,
            inputs,
            cotangents,
            case.recompute,
        )
        .map(Some),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => wgpu_backward_runner(
            backends.wgpu()?,
            problem,
            inputs,
            cotangents,
            case.recompute,
        )
        .map(Some),
        _ => {
            let _ = (backends, problem, inputs, cotangents);
            Ok(None)
        }
    }
}

/// One backward pass per run on CUDA, with the buffers (and the forward's states unless they
/// are recomputed) prepared once and a workspace kept from run to run.
#[cfg(feature = "cuda")]
fn cuda_backward_runner(
    cuda: &crate::backend::cuda::Cuda,
    problem: super::Scan<Complex32>,
    inputs: Inputs<Complex32>,
    cotangents: super::Cotangents<Complex32>,
    recompute: bool,
) -> Result<Runner<'_>> {
    use super::cuda::{
        ScanCotangents, ScanGradients, ScanInputs, ScanWorkspace, scan,
        scan_backward_with_workspace,
    };
    let upload = |values: &[Complex32]| cuda.upload(bytemuck::cast_slice::<Complex32, f32>(values));
    let (a, u, reset) = (
        upload(&inputs.a)?,
        upload(&inputs.u)?,
        cuda.upload(&inputs.reset)?,
    );
    let dh = upload(&cotangents.dh)?;
    let dh_last = cotangents.dh_last.as_deref().map(upload).transpose()?;
    let zeros = |len: usize| cuda.upload(&vec![0.0f32; 2 * len]);
    let (mut du, mut da) = (zeros(problem.states_len())?, zeros(problem.a_len())?);
    let h = if recompute {
        None
    } else {
        let (mut h, mut h_last) = (zeros(problem.states_len())?, zeros(problem.final_len())?);
        let forward = ScanInputs {
            a: &a,
            u: &u,
            reset: &reset,
            h0: None,
        };
        scan(cuda, &problem, forward, &mut h, &mut h_last)?;
        Some(h)
    };
    let mut workspace = ScanWorkspace::new();
    Ok(Runner::new(Clock::Cuda(cuda), move || {
        let inputs = ScanInputs {
            a: &a,
            u: &u,
            reset: &reset,
            h0: None,
        };
        let cotangents = ScanCotangents {
            dh: &dh,
            dh_last: dh_last.as_ref(),
        };
        let gradients = ScanGradients {
            du: &mut du,
            da: &mut da,
            dh0: None,
        };
        scan_backward_with_workspace(
            cuda,
            &problem,
            inputs,
            h.as_ref(),
            cotangents,
            gradients,
            &mut workspace,
        )
    }))
}

/// One backward pass per run through WGSL, the buffers (and the forward's states unless they
/// are recomputed) prepared once.
#[cfg(feature = "wgpu")]
fn wgpu_backward_runner(
    gpu: &crate::backend::wgpu::Wgpu,
    problem: super::Scan<Complex32>,
    inputs: Inputs<Complex32>,
    cotangents: super::Cotangents<Complex32>,
    recompute: bool,
) -> Result<Runner<'_>> {
    use super::wgpu::{ScanCotangents, ScanGradients, ScanInputs, scan, scan_backward};
    let (a, u, reset) = (
        gpu.upload(&inputs.a)?,
        gpu.upload(&inputs.u)?,
        gpu.upload(&inputs.reset)?,
    );
    let dh = gpu.upload(&cotangents.dh)?;
    let dh_last = cotangents
        .dh_last
        .as_deref()
        .map(|d| gpu.upload(d))
        .transpose()?;
    let (mut du, mut da) = (
        gpu.zeros(problem.states_len())?,
        gpu.zeros(problem.a_len())?,
    );
    let h = if recompute {
        None
    } else {
        let (mut h, mut h_last) = (
            gpu.zeros(problem.states_len())?,
            gpu.zeros(problem.final_len())?,
        );
        let forward = ScanInputs {
            a: &a,
            u: &u,
            reset: &reset,
            h0: None,
        };
        scan(gpu, &problem, forward, &mut h, &mut h_last)?;
        Some(h)
    };
    Ok(Runner::new(Clock::Wgpu(gpu), move || {
        let inputs = ScanInputs {
            a: &a,
            u: &u,
            reset: &reset,
            h0: None,
        };
        let cotangents = ScanCotangents {
            dh: &dh,
            dh_last: dh_last.as_ref(),
        };
        let gradients = ScanGradients {
            du: &mut du,
            da: &mut da,
            dh0: None,
        };
        scan_backward(gpu, &problem, inputs, h.as_ref(), cotangents, gradients)
    }))
}
