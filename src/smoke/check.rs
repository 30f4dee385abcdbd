//! The smoke op's cases for `tilefuse check`, `tilefuse bench` and the integration tests.

use half::f16;

use super::{MatmulShape, reference};
use crate::error::Result;
use crate::harness::{
    Backend, Backends, BenchCase, CheckCase, Comparison, OpEntry, Rng, Runner, Tolerance, compare,
};

/// The registry entry.
pub const ENTRY: OpEntry = OpEntry {
    name: "smoke",
    about: "plumbing test: c = a·bᵀ, f16 in, f32 out (CUDA: ldmatrix + mma.sync; WGSL: tiled)",
    kernel_modules: &["smoke"],
    check_cases,
    bench_cases,
};

/// Shapes `tilefuse check` runs: tiny, ragged in every dimension, and exact tiles.
const CHECK_SHAPES: [(usize, usize, usize); 5] = [
    (1, 1, 1),
    (16, 8, 16),
    (17, 9, 33),
    (64, 48, 256),
    (300, 70, 520),
];

fn check_cases() -> Vec<CheckCase> {
    CHECK_SHAPES
        .into_iter()
        .map(|(m, n, k)| {
            CheckCase::new(
                "smoke",
                format!("m={m} n={n} k={k}"),
                move |backends, backend| {
                    check(backends, backend, MatmulShape::new(m, n, k)?, 0x5eed)
                },
            )
        })
        .collect()
}

/// Runs the op on `backend` with random inputs from `seed` (outputs poisoned with NaN first)
/// and compares with the f64 reference. `Ok(None)`: the op has no CPU path of its own.
pub fn check(
    backends: &Backends,
    backend: Backend,
    shape: MatmulShape,
    seed: u64,
) -> Result<Option<Comparison>> {
    let (a, b) = inputs(shape, seed);
    let Some(out) = run_on(backends, backend, &a, &b, shape)? else {
        return Ok(None);
    };
    Ok(Some(compare(
        &out,
        &reference(&a, &b, shape)?,
        Tolerance::F32,
    )))
}

fn inputs(shape: MatmulShape, seed: u64) -> (Vec<f16>, Vec<f16>) {
    let mut rng = Rng::new(seed);
    let a = rng.fill(shape.m * shape.k, -1.0, 1.0, f16::from_f64);
    let b = rng.fill(shape.n * shape.k, -1.0, 1.0, f16::from_f64);
    (a, b)
}

/// `c` computed on `backend` into a NaN-poisoned buffer.
fn run_on(
    backends: &Backends,
    backend: Backend,
    a: &[f16],
    b: &[f16],
    shape: MatmulShape,
) -> Result<Option<Vec<f32>>> {
    let poison = vec![f32::NAN; shape.m * shape.n];
    match backend {
        Backend::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            use crate::error::CudaResultExt;
            let cuda = backends.cuda()?;
            let stream = cuda.stream();
            let upload = || "uploading inputs".to_string();
            let (a, b) = (
                stream.clone_htod(a).during(upload)?,
                stream.clone_htod(b).during(upload)?,
            );
            let mut c = stream.clone_htod(&poison).during(upload)?;
            super::cuda::matmul(cuda, &a, &b, &mut c, shape)?;
            stream
                .clone_dtoh(&c)
                .during(|| "reading back c".into())
                .map(Some)
        }
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            let gpu = backends.wgpu()?;
            let (a, b) = (gpu.upload(a)?, gpu.upload(b)?);
            let mut c = gpu.upload(&poison)?;
            super::wgpu::matmul(gpu, &a, &b, &mut c, shape)?;
            gpu.download(&c).map(Some)
        }
        #[allow(unreachable_patterns)]
        other => Err(other.not_compiled()),
    }
}

fn bench_cases() -> Vec<BenchCase> {
    let (m, n, k) = (1024, 1024, 1024);
    let bytes = (2 * (m * k + n * k) + 4 * m * n) as u64;
    let flops = (2 * m * n * k) as u64;
    vec![BenchCase::new(
        "smoke",
        format!("m={m} n={n} k={k}"),
        bytes,
        flops,
        move |backends, backend| prepare(backends, backend, MatmulShape::new(m, n, k)?),
    )]
}

fn prepare(
    backends: &Backends,
    backend: Backend,
    shape: MatmulShape,
) -> Result<Option<Runner<'_>>> {
    let (a, b) = inputs(shape, 1);
    match backend {
        Backend::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            use crate::error::CudaResultExt;
            let cuda = backends.cuda()?;
            let stream = cuda.stream();
            let upload = || "uploading inputs".to_string();
            let (a, b) = (
                stream.clone_htod(&a).during(upload)?,
                stream.clone_htod(&b).during(upload)?,
            );
            let mut c = stream
                .alloc_zeros::<f32>(shape.m * shape.n)
                .during(upload)?;
            let run = move || super::cuda::matmul(cuda, &a, &b, &mut c, shape);
            Ok(Some(Runner::new(crate::harness::Clock::Cuda(cuda), run)))
        }
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            let gpu = backends.wgpu()?;
            let (a, b) = (gpu.upload(&a)?, gpu.upload(&b)?);
            let mut c = gpu.zeros::<f32>(shape.m * shape.n)?;
            let run = move || super::wgpu::matmul(gpu, &a, &b, &mut c, shape);
            Ok(Some(Runner::new(crate::harness::Clock::Wgpu(gpu), run)))
        }
        #[allow(unreachable_patterns)]
        other => Err(other.not_compiled()),
    }
}
