//! The smoke op's cases for `tilefuse check`, `tilefuse bench` and the integration tests.

use half::f16;

use super::{MatmulShape, reference};
use crate::error::Result;
use crate::harness::{
    Backend, Backends, BenchCase, CheckCase, Clock, Comparison, OpEntry, Rng, Runner, Tolerance,
    compare,
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
    let poison = vec![f32::NAN; shape.m() * shape.n()];
    let Some(mut on_device) = OnDevice::new(backends, backend, &a, &b, &poison)? else {
        return Ok(None);
    };
    on_device.run(shape)?;
    let out = on_device.read_c()?;
    Ok(Some(compare(
        &out,
        &reference(&a, &b, shape)?,
        Tolerance::F32,
    )))
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
        move |backends, backend| {
            let shape = MatmulShape::new(m, n, k)?;
            let (a, b) = inputs(shape, 1);
            let Some(mut on_device) = OnDevice::new(backends, backend, &a, &b, &vec![0.0; m * n])?
            else {
                return Ok(None);
            };
            let clock = on_device.clock();
            Ok(Some(Runner::new(clock, move || on_device.run(shape))))
        },
    )]
}

/// Values in [-1, 1] on a grid of 1/8: products are multiples of 1/64 no larger than 1, so a
/// sum of them is exact in f32, in any order (k split over passes too), while no partial
/// sum reaches 2^18: always for k ≤ 2^18, and beyond all odds for random signs at larger k.
pub(crate) fn inputs(shape: MatmulShape, seed: u64) -> (Vec<f16>, Vec<f16>) {
    let mut rng = Rng::new(seed);
    let on_grid = |x: f64| f16::from_f64((x * 8.0).round() / 8.0);
    let a = rng.fill(shape.m() * shape.k(), -1.0, 1.0, on_grid);
    let b = rng.fill(shape.n() * shape.k(), -1.0, 1.0, on_grid);
    (a, b)
}

/// The op's operands on one backend, ready to run.
enum OnDevice<'a> {
    #[cfg(feature = "cuda")]
    Cuda {
        cuda: &'a crate::backend::cuda::Cuda,
        a: cudarc::driver::CudaSlice<f16>,
        b: cudarc::driver::CudaSlice<f16>,
        c: cudarc::driver::CudaSlice<f32>,
    },
    #[cfg(feature = "wgpu")]
    Wgpu {
        gpu: &'a crate::backend::wgpu::Wgpu,
        a: crate::backend::wgpu::GpuBuffer<f16>,
        b: crate::backend::wgpu::GpuBuffer<f16>,
        c: crate::backend::wgpu::GpuBuffer<f32>,
    },
    #[doc(hidden)]
    _Lifetime(std::marker::PhantomData<&'a ()>),
}

impl<'a> OnDevice<'a> {
    /// Uploads the operands and `c`'s initial contents; `None` on the CPU.
    fn new(
        backends: &'a Backends,
        backend: Backend,
        a: &[f16],
        b: &[f16],
        c: &[f32],
    ) -> Result<Option<Self>> {
        match backend {
            Backend::Cpu => Ok(None),
            #[cfg(feature = "cuda")]
            Backend::Cuda => {
                let cuda = backends.cuda()?;
                let (a, b, c) = (cuda.upload(a)?, cuda.upload(b)?, cuda.upload(c)?);
                Ok(Some(OnDevice::Cuda { cuda, a, b, c }))
            }
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => {
                let gpu = backends.wgpu()?;
                let (a, b, c) = (gpu.upload(a)?, gpu.upload(b)?, gpu.upload(c)?);
                Ok(Some(OnDevice::Wgpu { gpu, a, b, c }))
            }
            #[allow(unreachable_patterns)]
            other => Err(other.not_compiled()),
        }
    }

    fn run(&mut self, shape: MatmulShape) -> Result<()> {
        match self {
            #[cfg(feature = "cuda")]
            OnDevice::Cuda { cuda, a, b, c } => super::cuda::matmul(cuda, a, b, c, shape),
            #[cfg(feature = "wgpu")]
            OnDevice::Wgpu { gpu, a, b, c } => super::wgpu::matmul(gpu, a, b, c, shape),
            OnDevice::_Lifetime(_) => unreachable!("never constructed"),
        }
    }

    fn read_c(&self) -> Result<Vec<f32>> {
        match self {
            #[cfg(feature = "cuda")]
            OnDevice::Cuda { cuda, c, .. } => cuda.download(c),
            #[cfg(feature = "wgpu")]
            OnDevice::Wgpu { gpu, c, .. } => gpu.download(c),
            OnDevice::_Lifetime(_) => unreachable!("never constructed"),
        }
    }

    fn clock(&self) -> Clock<'a> {
        match self {
            #[cfg(feature = "cuda")]
            OnDevice::Cuda { cuda, .. } => Clock::Cuda(cuda),
            #[cfg(feature = "wgpu")]
            OnDevice::Wgpu { gpu, .. } => Clock::Wgpu(gpu),
            OnDevice::_Lifetime(_) => unreachable!("never constructed"),
        }
    }
}
