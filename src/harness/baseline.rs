//! The `copy` entry: device-to-device copy, the bandwidth every memory-bound kernel is
//! measured against (in the same run), and a round trip through device memory as the
//! simplest plumbing check of each backend.

use super::{
    Backend, Backends, BenchCase, CheckCase, Comparison, OpEntry, Rng, Runner, Tolerance, compare,
};
use crate::error::Result;

/// The registry entry.
pub(super) const ENTRY: OpEntry = OpEntry {
    name: "copy",
    about: "device-to-device copy: the bandwidth baseline of every memory-bound case",
    kernel_modules: &[],
    check_cases,
    bench_cases,
    #[cfg(feature = "cli")]
    file: None,
    #[cfg(all(feature = "cli", feature = "cuda"))]
    profile: None,
};

/// Bytes copied by the benchmark: far above any L2.
const BENCH_BYTES: usize = 256 << 20;

fn check_cases() -> Vec<CheckCase> {
    [1usize, 3, 1 << 20 | 1]
        .into_iter()
        .map(|len| {
            CheckCase::new("copy", format!("{len} x f16"), move |backends, backend| {
                round_trip(backends, backend, len, 0x5eed ^ len as u64)
            })
        })
        .collect()
}

/// Uploads `len` random f16 values, copies them on the device into a NaN-poisoned buffer,
/// reads the copy back, and compares bit for bit (a zero tolerance).
fn round_trip(
    backends: &Backends,
    backend: Backend,
    len: usize,
    seed: u64,
) -> Result<Option<Comparison>> {
    let data = Rng::new(seed).fill(len, -4.0, 4.0, half::f16::from_f64);
    let Some(out) = copy_on(backends, backend, &data)? else {
        return Ok(None);
    };
    let reference: Vec<f64> = data.iter().map(|&x| x.into()).collect();
    let exact = Tolerance {
        rel_l2: 0.0,
        element: 0.0,
    };
    Ok(Some(compare(&out, &reference, exact)))
}

fn copy_on(
    backends: &Backends,
    backend: Backend,
    data: &[half::f16],
) -> Result<Option<Vec<half::f16>>> {
    let poison = vec![half::f16::NAN; data.len()];
    match backend {
        Backend::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            use crate::error::CudaResultExt;
            let cuda = backends.cuda()?;
            let (src, mut dst) = (cuda.upload(data)?, cuda.upload(&poison)?);
            let copied = cuda.stream().memcpy_dtod(&src, &mut dst);
            copied.during(|| "copying on the device".into())?;
            cuda.download(&dst).map(Some)
        }
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            let gpu = backends.wgpu()?;
            let src = gpu.upload(data)?;
            let mut dst = gpu.upload(&poison)?;
            gpu.copy_buffer(&src, &mut dst)?;
            gpu.download(&dst).map(Some)
        }
        #[allow(unreachable_patterns)]
        other => Err(other.not_compiled()),
    }
}

fn bench_cases() -> Vec<BenchCase> {
    let name = format!("{} MiB", BENCH_BYTES >> 20);
    vec![BenchCase::new(
        "copy",
        name,
        2 * BENCH_BYTES as u64,
        0,
        |backends, backend| prepare_copy(backends, backend, BENCH_BYTES),
    )]
}

/// A runner copying `bytes` (rounded up to 4) from one device buffer to another: the
/// same-bytes baseline of a memory-bound case.
pub(crate) fn prepare_copy(
    backends: &Backends,
    backend: Backend,
    bytes: usize,
) -> Result<Option<Runner<'_>>> {
    let words = bytes.div_ceil(4);
    match backend {
        Backend::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            use crate::error::CudaResultExt;
            let cuda = backends.cuda()?;
            let stream = cuda.stream();
            let src = stream
                .alloc_zeros::<u32>(words)
                .during(|| "allocating".into())?;
            let mut dst = stream
                .alloc_zeros::<u32>(words)
                .during(|| "allocating".into())?;
            let copy = move || {
                stream
                    .memcpy_dtod(&src, &mut dst)
                    .during(|| "copying".into())
            };
            Ok(Some(Runner::new(super::Clock::Cuda(cuda), copy)))
        }
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            let gpu = backends.wgpu()?;
            let src = gpu.zeros::<u32>(words)?;
            let mut dst = gpu.zeros::<u32>(words)?;
            Ok(Some(Runner::new(super::Clock::Wgpu(gpu), move || {
                gpu.copy_buffer(&src, &mut dst)
            })))
        }
        #[allow(unreachable_patterns)]
        other => Err(other.not_compiled()),
    }
}
