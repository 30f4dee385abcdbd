//! The smoke op's cases for `tilefuse check`, `tilefuse bench` and the integration tests.

use half::f16;

use super::{MatmulShape, reference};
use crate::error::Result;
use crate::harness::device::{Device, on_device};
use crate::harness::{Backend, Backends, CheckCase, Comparison, OpEntry, Rng, Tolerance, compare};

/// The registry entry.
pub const ENTRY: OpEntry = OpEntry {
    name: "smoke",
    about: "plumbing test: c = a·bᵀ, f16 in, f32 out (CUDA: ldmatrix + mma.sync; WGSL: tiled)",
    kernel_modules: &["smoke"],
    check_cases,
    bench_cases: super::bench::bench_cases,
    #[cfg(feature = "cli")]
    file: None,
    #[cfg(all(feature = "cli", feature = "cuda"))]
    profile: None,
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
    let c: Option<Vec<f32>> = on_device!(backends, backend, |device| run(device, &a, &b, shape))?;
    let Some(c) = c else {
        return Ok(None);
    };
    Ok(Some(compare(
        &c,
        &reference(&a, &b, shape)?,
        Tolerance::F32,
    )))
}

/// `c = a · bᵀ` on `device`, c poisoned with NaN first.
fn run<D: OnDevice>(device: &D, a: &[f16], b: &[f16], shape: MatmulShape) -> Result<Vec<f32>> {
    let (a, b) = (device.upload(a)?, device.upload(b)?);
    let mut c = device.upload(&vec![f32::NAN; shape.m() * shape.n()])?;
    device.matmul(&a, &b, &mut c, shape)?;
    device.download(&c)
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

/// The smoke op's call on each backend.
pub(super) trait OnDevice: Device {
    /// `c = a · bᵀ`, enqueued.
    fn matmul(
        &self,
        a: &Self::Buffer<f16>,
        b: &Self::Buffer<f16>,
        c: &mut Self::Buffer<f32>,
        shape: MatmulShape,
    ) -> Result<()>;
}

/// `OnDevice` for a backend's handle: its module's function of the same name.
macro_rules! forward_to {
    ($feature:literal, $handle:ty, $module:ident) => {
        #[cfg(feature = $feature)]
        impl OnDevice for $handle {
            fn matmul(
                &self,
                a: &Self::Buffer<f16>,
                b: &Self::Buffer<f16>,
                c: &mut Self::Buffer<f32>,
                shape: MatmulShape,
            ) -> Result<()> {
                super::$module::matmul(self, a, b, c, shape)
            }
        }
    };
}
forward_to!("cuda", crate::backend::cuda::Cuda, cuda);
forward_to!("wgpu", crate::backend::wgpu::Wgpu, wgpu);
