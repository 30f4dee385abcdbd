//! The smoke op's benchmark case for `tilefuse bench` and `benches/smoke.rs`.

use half::f16;

use super::MatmulShape;
use super::check::{OnDevice, inputs};
use crate::error::Result;
use crate::harness::device::on_device;
use crate::harness::{BenchCase, Runner};

pub(super) fn bench_cases() -> Vec<BenchCase> {
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
            on_device!(backends, backend, |device| runner(device, &a, &b, shape))
        },
    )]
}

/// A runner of `c = a · bᵀ` on `device`.
fn runner<'a, D: OnDevice>(
    device: &'a D,
    a: &[f16],
    b: &[f16],
    shape: MatmulShape,
) -> Result<Runner<'a>> {
    let (a, b) = (device.upload(a)?, device.upload(b)?);
    let mut c = device.zeros::<f32>(shape.m() * shape.n())?;
    Ok(Runner::new(device.clock(), move || {
        device.matmul(&a, &b, &mut c, shape)
    }))
}
