//! The scan's benchmark cases for `tilefuse bench` and `benches/scan.rs`: complex64 with 1%
//! resets, every state and the final state only, beside a copy of the same bytes.

use num_complex::Complex32;

use super::check::{Case, Inputs, Problem};
use crate::error::Result;
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
