//! The scan's benchmark cases for `tilefuse bench` and `benches/scan.rs`: complex64 with 1%
//! resets, every state and the final state only, and with u and h stored in bf16, each beside
//! a copy of the same bytes.

use num_complex::Complex32;

use super::check::{BackwardProblem, Case, Inputs, OnDevice, Problem};
use super::{StateStorage, Storage};
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
        // u and h in bf16 (4 bytes a complex value), the carry in f32.
        let stored_case = Case {
            storage: Storage::Bf16,
            ..case
        };
        let stored_name = format!("c64 in bf16 b={b} t={t} p={p} resets=1%");
        cases.push(BenchCase::new(
            "scan",
            stored_name.clone(),
            states_bytes + reset_bytes + final_bytes,
            flops,
            move |backends, backend| prepare(backends, backend, &stored_case),
        ));
        cases.push(
            BenchCase::new(
                "scan",
                stored_name,
                states_bytes,
                0,
                move |backends, backend| {
                    crate::harness::prepare_copy(backends, backend, b * t * p * 4)
                },
            )
            .by("copy"),
        );
    }
    cases
}

fn prepare<'a>(
    backends: &'a Backends,
    backend: Backend,
    case: &Case,
) -> Result<Option<Runner<'a>>> {
    match case.storage {
        Storage::F32 => prepare_stored::<f32>(backends, backend, case),
        Storage::F16 => prepare_stored::<half::f16>(backends, backend, case),
        Storage::Bf16 => prepare_stored::<half::bf16>(backends, backend, case),
    }
}

// Without a GPU backend in the build, `S` has no device to choose a kernel on.
#[cfg_attr(
    not(any(feature = "cuda", feature = "wgpu")),
    allow(clippy::extra_unused_type_parameters)
)]
fn prepare_stored<'a, S: StateStorage>(
    backends: &'a Backends,
    backend: Backend,
    case: &Case,
) -> Result<Option<Runner<'a>>> {
    let scan = case.scan::<Complex32>()?;
    let inputs = Inputs::random(case, &scan, 1);
    let final_only = case.final_only;
    on_device!(backends, backend, |device| {
        let mut problem = Problem::<_, _, S>::upload(device, &scan, &inputs)?;
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
    let scan = case.forward.scan::<Complex32>()?;
    let inputs = Inputs::random(&case.forward, &scan, 1);
    let cotangents = super::random_cotangents(&scan, case.dh_last, 2);
    let recompute = case.recompute;
    on_device!(backends, backend, |device| {
        // The forward's states, when kept, are the caller's: computed once, not timed.
        let mut problem =
            BackwardProblem::<_, _, f32>::upload(device, &scan, &inputs, &cotangents)?;
        if !recompute {
            problem.forward.run(device, &scan, false)?;
        }
        Ok(Runner::new(device.clock(), move || {
            device.scan_backward(&scan, &mut problem, recompute)
        }))
    })
}
