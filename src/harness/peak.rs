//! The `peak` entry: the Tensor-Core rate of `mma.sync` (f16 in, f32 accumulate) measured on
//! the device, the compute roof that attention's TFLOP/s are drawn against (in the same run).

use super::{Backend, Backends, BenchCase, CheckCase, Comparison, OpEntry, Runner, Tolerance};
use crate::backend::abi::{TF_PEAK_CHAINS, TF_PEAK_THREADS};
use crate::error::Result;

/// The registry entry.
pub(super) const ENTRY: OpEntry = OpEntry {
    name: "peak",
    about: "Tensor-Core mma.sync f16 rate: the compute roof of attention (CUDA)",
    kernel_modules: &["peak"],
    check_cases,
    bench_cases,
    #[cfg(feature = "cli")]
    file: None,
    #[cfg(all(feature = "cli", feature = "cuda"))]
    profile: None,
};

/// Blocks of the benchmark launch: whole waves on 132 SMs (H100) at 1, 2, 4 or 8 blocks each.
const BENCH_BLOCKS: u32 = 132 * 64;
/// mma.sync per chain in the benchmark.
const BENCH_ITERATIONS: u32 = 512;

/// FLOPs of one launch: every warp runs chains × iterations m16n8k16 products.
fn flops(blocks: u32, iterations: u32) -> u64 {
    let warps = u64::from(blocks) * u64::from(TF_PEAK_THREADS / 32);
    warps * u64::from(TF_PEAK_CHAINS) * u64::from(iterations) * 2 * 16 * 8 * 16
}

fn check_cases() -> Vec<CheckCase> {
    vec![CheckCase::new(
        "peak",
        "3 blocks x 100 mma.sync",
        |backends, backend| check(backends, backend, 3, 100),
    )]
}

/// With A = 1 and B = 0.5 everywhere, each product adds 16 · 0.5 to every accumulator:
/// every thread's sum is chains · 4 · iterations · 8, exactly.
fn check(
    backends: &Backends,
    backend: Backend,
    blocks: u32,
    iterations: u32,
) -> Result<Option<Comparison>> {
    let Some(sums) = sums(backends, backend, blocks, iterations)? else {
        return Ok(None);
    };
    let chains = f64::from(TF_PEAK_CHAINS);
    let expected = vec![chains * 4.0 * f64::from(iterations) * 8.0; sums.len()];
    let exact = Tolerance {
        rel_l2: 0.0,
        element: 0.0,
    };
    Ok(Some(super::compare(&sums, &expected, exact)))
}

fn bench_cases() -> Vec<BenchCase> {
    let name = format!("mma.sync f16 {BENCH_BLOCKS} blocks x {BENCH_ITERATIONS}");
    vec![BenchCase::new(
        "peak",
        name,
        0,
        flops(BENCH_BLOCKS, BENCH_ITERATIONS),
        prepare,
    )]
}

/// The per-thread sums of one launch of `blocks` blocks, `iterations` products per chain,
/// from a NaN-poisoned buffer.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn sums(
    backends: &Backends,
    backend: Backend,
    blocks: u32,
    iterations: u32,
) -> Result<Option<Vec<f32>>> {
    match backend {
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let cuda = backends.cuda()?;
            let threads = blocks as usize * TF_PEAK_THREADS as usize;
            let mut out = cuda.upload(&vec![f32::NAN; threads])?;
            cuda::peak(cuda, &mut out, blocks, iterations)?;
            cuda.download(&out).map(Some)
        }
        _ => Ok(None),
    }
}

fn prepare(backends: &Backends, backend: Backend) -> Result<Option<Runner<'_>>> {
    match backend {
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let cuda = backends.cuda()?;
            let threads = BENCH_BLOCKS as usize * TF_PEAK_THREADS as usize;
            let mut out = cuda.upload(&vec![0.0f32; threads])?;
            Ok(Some(Runner::new(super::Clock::Cuda(cuda), move || {
                cuda::peak(cuda, &mut out, BENCH_BLOCKS, BENCH_ITERATIONS)
            })))
        }
        _ => {
            let _ = backends;
            Ok(None)
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use cudarc::driver::CudaSlice;

    use crate::backend::abi::{TF_PEAK_THREADS, TfPeakMmaParams};
    use crate::backend::cuda::{Cuda, LaunchShape, ids};
    use crate::error::{Error, Result};

    /// Enqueues the peak kernel: `blocks` blocks, `iterations` products per chain, one sum per
    /// thread into `out`.
    pub(super) fn peak(
        cuda: &Cuda,
        out: &mut CudaSlice<f32>,
        blocks: u32,
        iterations: u32,
    ) -> Result<()> {
        let threads = blocks as usize * TF_PEAK_THREADS as usize;
        if out.len() != threads {
            return Err(Error::Length {
                what: "peak sums",
                expected: threads,
                got: out.len(),
            });
        }
        cuda.check_device("peak sums", out)?;
        let mut args = cuda.args();
        let params = TfPeakMmaParams {
            out: args.write(out),
            iterations,
            a_value: half::f16::ONE.to_bits(),
            b_value: half::f16::from_f32(0.5).to_bits(),
        };
        let kernel = ids::peak::MMA;
        // SAFETY: TfPeakMmaParams is the kernel's parameter struct; `out`, on this context
        // (checked), holds one f32 per thread of the grid (checked), the only memory the
        // kernel touches.
        unsafe {
            cuda.launch(
                kernel,
                LaunchShape::linear(blocks, TF_PEAK_THREADS),
                &params,
                args,
            )
        }
    }
}
