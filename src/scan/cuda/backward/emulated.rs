//! cuda/scan_backward.cu run by the CPU emulator with the launcher's own grid and parameters,
//! after the forward kernel (cuda/scan.cu) that gives it the states or the chunks' end states,
//! against the f64 reference of the backward pass.

use num_complex::Complex32;

use super::super::emulated::{emulated_launch, stored, widened};
use super::super::{
    Addresses, BACKWARD_ARRAYS, FORWARD_ARRAYS, Grid, Region, forward_staging,
    kernel as forward_kernel,
};
use super::{da_kernel, kernel, params, params_for_da};
use crate::backend::abi::TF_SCAN_WARPS;
use crate::backend::cuda::LaunchShape;
use crate::backend::emulator::{Emulator, Guarded, Launch, Order, assert_emulated};
use crate::error::Result;
use crate::scan::backward::check_backward_with;
use crate::scan::{
    BackwardCase, Case, Cotangents, Decay, DeviceGradients, Inputs, Layout, ResetPattern, Scan,
    ScanElement, StateStorage, Storage,
};

/// f32 values of `values` in a guarded buffer.
fn floats<T: ScanElement>(values: &[T]) -> Guarded<f32> {
    Guarded::new(bytemuck::cast_slice(values))
}

/// A region of `arrays` record arrays for `grid`'s records, as a first launch finds it:
/// header and flags zero, everything else never written.
fn fresh_region(grid: &Grid, arrays: usize) -> Vec<u32> {
    let mut words = vec![u32::MAX; Region::words(grid.records, arrays)];
    words[..Region::flag_words(grid.records)].fill(0);
    words
}

/// The forward kernel, emulated: every state (`states`, stored as `S`) or the final state
/// only, with its workspace returned for the chunks' end states.
fn forward<T: ScanElement, S: StateStorage>(
    emulator: &Emulator,
    order: Order,
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    states: bool,
) -> Result<(Vec<S>, Guarded<u32>), String> {
    let grid = Grid::new(scan).map_err(|e| e.to_string())?;
    let (mut a, mut u) = (floats(&inputs.a), stored::<T, S>(&inputs.u));
    let mut reset = Guarded::new(&inputs.reset);
    let mut h0 = inputs.h0.as_deref().map(floats);
    let mut h = Guarded::new(&vec![S::from_f32(f32::NAN); scan.states_len() * T::LANES]);
    let mut h_last = Guarded::new(&vec![f32::NAN; scan.final_len() * T::LANES]);
    let mut workspace = Guarded::new(&fresh_region(&grid, FORWARD_ARRAYS));
    let params = grid.params(
        scan,
        Addresses {
            a: a.address(),
            u: u.address(),
            reset: reset.address(),
            h0: h0.as_mut().map_or(0, Guarded::address),
            h: if states { h.address() } else { 0 },
            h_last: h_last.address(),
            workspace: workspace.address(),
        },
        grid.records,
    );
    let kernel = forward_kernel::<T, S>(scan.decay, states);
    // SAFETY: abi.h's scan contract, as the CUDA launcher keeps it: buffers of the scan's
    // lengths, h only when states are written, a workspace of the grid's size with zeroed
    // flags, the staging the kernel asks; all live until the launch returns.
    let launch = emulated_launch(&grid, forward_staging::<T, S>(scan.decay), order);
    unsafe { emulator.launch(kernel, &params, &launch) }?;
    h_last.read("h_last")?;
    Ok((h.read("h")?, workspace))
}

/// The backward pass, emulated with `u`, `h`, `dh` and `du` stored as `S`: the forward first
/// (states, or end states to recompute from), then the backward kernel and, time-invariant,
/// the da kernel. Outputs poisoned with NaN.
fn run<T: ScanElement, S: StateStorage>(
    emulator: &Emulator,
    order: Order,
    recompute: bool,
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    cotangents: &Cotangents<T>,
) -> Result<DeviceGradients, String> {
    let grid = Grid::new(scan).map_err(|e| e.to_string())?;
    let mut region = fresh_region(&grid, BACKWARD_ARRAYS);
    run_in::<T, S>(
        emulator,
        order,
        recompute,
        scan,
        inputs,
        cotangents,
        &mut region,
    )
}

/// [`run`] with the backward's region in `region` (laid out for the grid's records), kept
/// from launch to launch as a workspace keeps it.
fn run_in<T: ScanElement, S: StateStorage>(
    emulator: &Emulator,
    order: Order,
    recompute: bool,
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    cotangents: &Cotangents<T>,
    region: &mut Vec<u32>,
) -> Result<DeviceGradients, String> {
    let grid = Grid::new(scan).map_err(|e| e.to_string())?;
    let (states, mut forward_workspace) =
        forward::<T, S>(emulator, order, scan, inputs, !recompute)?;
    let mut h = Guarded::new(&states);
    let (mut a, mut u) = (floats(&inputs.a), stored::<T, S>(&inputs.u));
    let mut reset = Guarded::new(&inputs.reset);
    let mut h0 = inputs.h0.as_deref().map(floats);
    let mut dh = stored::<T, S>(&cotangents.dh);
    let mut dh_last = cotangents.dh_last.as_deref().map(floats);
    let nan = |len: usize| Guarded::new(&vec![f32::NAN; len * T::LANES]);
    let mut du = Guarded::new(&vec![S::from_f32(f32::NAN); scan.states_len() * T::LANES]);
    let mut da = nan(scan.a_len());
    let mut dh0 = inputs.h0.as_ref().map(|_| nan(scan.final_len()));
    let invariant = scan.decay == Decay::TimeInvariant;
    let mut workspace = Guarded::new(region);
    let capacity = grid.records;
    let mut counters = Guarded::new(&vec![0u32; grid.groups as usize]);
    let checkpoints = forward_workspace.address()
        + 4 * (Region::flag_words(capacity) + 2 * Region::array_words(capacity, T::LANES)) as u64;
    let params = params(
        scan,
        &grid,
        capacity,
        [
            a.address(),
            u.address(),
            reset.address(),
            h0.as_mut().map_or(0, Guarded::address),
            if recompute { 0 } else { h.address() },
            if recompute { checkpoints } else { 0 },
            dh.address(),
            dh_last.as_mut().map_or(0, Guarded::address),
            du.address(),
            da.address(),
            dh0.as_mut().map_or(0, Guarded::address),
            workspace.address(),
            counters.address(),
        ],
    );
    let kernel = kernel::<T, S>(scan.decay, recompute);
    // SAFETY: abi.h's scan_backward contract, as the CUDA launcher keeps it: buffers of the
    // scan's lengths, h (the forward's states) or the checkpoints (the state array of the
    // forward's workspace on this grid), a workspace of the grid's size plus partials with
    // zeroed flags, zeroed counters; all live until the launch returns.
    unsafe { emulator.launch(kernel, &params, &emulated_launch(&grid, 0, order)) }?;
    if invariant {
        let shape =
            LaunchShape::linear(grid.groups * scan.shape.batch() as u32, TF_SCAN_WARPS * 32);
        let launch = match order {
            // Another block is the last of its group.
            Order::Reverse => Launch::new(shape, order).blocks_reversed(),
            _ => Launch::new(shape, order),
        };
        let params = params_for_da(
            &params,
            [da.address(), workspace.address(), counters.address()],
        );
        // SAFETY: the same parameters, workspace (with the partials the backward launch
        // wrote) and counters, as the CUDA launcher passes them.
        unsafe { emulator.launch(da_kernel::<T>(), &params, &launch) }?;
    }
    a.read("a")?;
    for (buffer, what) in [(&u, "u"), (&h, "h"), (&dh, "dh")] {
        buffer.read(what)?;
    }
    forward_workspace.read("forward workspace")?;
    *region = workspace.read("workspace")?;
    if counters.read("counters")?.iter().any(|&c| c != 0) {
        return Err("a da counter was left nonzero".into());
    }
    Ok(DeviceGradients {
        du: widened(&du, "du")?,
        da: da.read("da")?,
        dh0: dh0.map(|d| d.read("dh0")).transpose()?,
    })
}

fn check_case(case: &BackwardCase, order: Order) {
    assert_emulated(&format!("{case}, {order:?}"), |emulator, seed| {
        let run = crate::scan::typed_for!(check_typed, case.forward.complex, case.forward.storage);
        run(emulator, case, order, seed)
    });
}

fn check_typed<T: ScanElement, S: StateStorage>(
    emulator: &Emulator,
    case: &BackwardCase,
    order: Order,
    seed: u64,
) -> Result<Option<crate::harness::Comparison>> {
    check_backward_with::<T>(case, seed, |scan, inputs, cotangents| {
        let ran = run::<T, S>(emulator, order, case.recompute, scan, inputs, cotangents);
        Ok(Some(ran.unwrap_or_else(|e| panic!("{case}: {e}"))))
    })
}

const ORDERS: [Order; 3] = [Order::Threads, Order::Reverse, Order::Shuffled(5)];

/// The generated ids pick the kernel named for the element, storage, decay and source of
/// the states.
#[test]
fn kernel_ids_follow_the_names() {
    assert_eq!(
        kernel::<f32, f32>(Decay::TimeInvariant, false).name,
        "tilefuse_scan_backward_f32_f32_const_states"
    );
    assert_eq!(
        kernel::<Complex32, half::bf16>(Decay::TimeVarying, true).name,
        "tilefuse_scan_backward_c64_bf16_varying_recompute"
    );
    assert_eq!(
        kernel::<f32, half::f16>(Decay::TimeVarying, false).name,
        "tilefuse_scan_backward_f32_f16_varying_states"
    );
    assert_eq!(
        da_kernel::<Complex32>().name,
        "tilefuse_scan_backward_da_c64"
    );
}

#[test]
fn chunks_resets_decays_and_layouts() {
    let cases = [
        BackwardCase::new(Case::new(1, 1, 1)),
        BackwardCase::new(Case {
            complex: true,
            resets: ResetPattern::ChunkBoundaries,
            ..Case::new(2, 1000, 40)
        }),
        BackwardCase {
            dh_last: false,
            ..BackwardCase::new(Case {
                layout: Layout::TimeMajor,
                decay: Decay::TimeVarying,
                resets: ResetPattern::Never,
                h0: false,
                ..Case::new(3, 700, 33)
            })
        },
        BackwardCase::new(Case {
            complex: true,
            decay: Decay::TimeVarying,
            resets: ResetPattern::EveryStep,
            ..Case::new(2, 300, 5)
        }),
        BackwardCase::new(Case {
            resets: ResetPattern::Random(0.05),
            a_magnitude: (0.99, 0.999),
            ..Case::new(2, 2000, 64)
        }),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        check_case(&case, ORDERS[i % 3]);
    }
}

#[test]
fn states_recomputed_from_the_chunks_end_states() {
    let cases = [
        Case {
            resets: ResetPattern::ChunkBoundaries,
            ..Case::new(2, 1100, 35)
        },
        Case {
            complex: true,
            decay: Decay::TimeVarying,
            layout: Layout::TimeMajor,
            resets: ResetPattern::Random(0.1),
            ..Case::new(3, 600, 7)
        },
        Case {
            complex: true,
            resets: ResetPattern::AtStart,
            h0: false,
            ..Case::new(1, 129, 3)
        },
        // Long memory: g carries each rounding over thousands of steps.
        Case {
            complex: true,
            a_magnitude: (0.999, 0.9999),
            resets: ResetPattern::Never,
            ..Case::new(2, 20_000, 5)
        },
    ];
    for (i, forward) in cases.into_iter().enumerate() {
        let case = BackwardCase {
            recompute: true,
            ..BackwardCase::new(forward)
        };
        check_case(&case, ORDERS[i % 3]);
    }
}

/// dh, du, u and h in f16 or bf16 (complex as pairs), g and the recomputed states in f32:
/// from the forward's stored states and recomputed, within one rounding of the stored value
/// (and of the stored h in each da term) of the reference on the same 16-bit inputs.
#[test]
fn sixteen_bit_cotangents_and_states() {
    let cases = [
        BackwardCase::new(Case {
            storage: Storage::Bf16,
            resets: ResetPattern::ChunkBoundaries,
            ..Case::new(2, 1000, 40)
        }),
        BackwardCase {
            recompute: true,
            ..BackwardCase::new(Case {
                storage: Storage::F16,
                complex: true,
                decay: Decay::TimeVarying,
                layout: Layout::TimeMajor,
                ..Case::new(3, 600, 7)
            })
        },
        BackwardCase {
            recompute: true,
            dh_last: false,
            ..BackwardCase::new(Case {
                storage: Storage::Bf16,
                complex: true,
                a_magnitude: (0.99, 0.999),
                ..Case::new(2, 3000, 5)
            })
        },
        BackwardCase::new(Case {
            storage: Storage::F16,
            decay: Decay::TimeVarying,
            h0: false,
            resets: ResetPattern::Random(0.1),
            ..Case::new(2, 500, 64)
        }),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        check_case(&case, ORDERS[i % 3]);
    }
}

/// Recomputed states give the same bits as the forward's, and runs the same bits as runs.
#[test]
fn recomputing_and_reading_the_states_agree_bit_for_bit() {
    let Some(emulator) = Emulator::get() else {
        return;
    };
    let seed = crate::harness::Rng::fresh_seed();
    for complex in [false, true] {
        let case = Case {
            complex,
            resets: ResetPattern::Random(0.02),
            ..Case::new(2, 900, 40)
        };
        let bits = |recompute, order| match complex {
            true => bits::<Complex32>(emulator, &case, seed, recompute, order),
            false => bits::<f32>(emulator, &case, seed, recompute, order),
        };
        let states = bits(false, Order::Threads);
        assert!(bits(true, Order::Reverse) == states, "{case} (seed {seed})");
        assert!(
            bits(false, Order::Shuffled(9)) == states,
            "{case} (seed {seed})"
        );
    }
}

/// The bits of du, da and dh0 of one emulated backward pass of `case`.
fn bits<T: ScanElement>(
    emulator: &Emulator,
    case: &Case,
    seed: u64,
    recompute: bool,
    order: Order,
) -> Vec<u32> {
    let scan = case.scan::<T>().unwrap();
    let inputs = Inputs::random(case, &scan, seed);
    let cotangents = crate::scan::random_cotangents(&scan, true, seed ^ 1);
    let g = run::<T, f32>(emulator, order, recompute, &scan, &inputs, &cotangents)
        .unwrap_or_else(|e| panic!("{case} (seed {seed}): {e}"));
    let all = [g.du, g.da, g.dh0.unwrap_or_default()].concat();
    all.into_iter().map(f32::to_bits).collect()
}

/// One backward region serves pass after pass with nothing cleared: the flags and records
/// the pass before left never pass for this one's (each pass tags its flags), time-invariant
/// and time-varying, states kept and recomputed.
#[test]
fn a_kept_region_serves_pass_after_pass() {
    let Some(emulator) = Emulator::get() else {
        return;
    };
    let seed = crate::harness::Rng::fresh_seed();
    let forward = Case {
        complex: true,
        resets: ResetPattern::Random(0.02),
        ..Case::new(2, 2000, 40)
    };
    for decay in [Decay::TimeInvariant, Decay::TimeVarying] {
        let forward = Case { decay, ..forward };
        let scan = forward.scan::<Complex32>().unwrap();
        let grid = Grid::new(&scan).unwrap();
        let mut region = fresh_region(&grid, BACKWARD_ARRAYS);
        for pass in 0..4u64 {
            let case = BackwardCase {
                recompute: pass % 2 == 1,
                ..BackwardCase::new(forward)
            };
            let order = ORDERS[pass as usize % 3];
            let checked = check_backward_with::<Complex32>(&case, seed + pass, |s, i, c| {
                let ran =
                    run_in::<Complex32, f32>(emulator, order, case.recompute, s, i, c, &mut region);
                Ok(Some(ran.unwrap_or_else(|e| panic!("{case}: {e}"))))
            });
            let comparison = checked.unwrap().expect("an emulated run");
            assert!(
                comparison.passed(),
                "pass {pass}, {case} (seed {seed}): {comparison}"
            );
            // The tag of this pass; no block counted done, no ticket handed out.
            assert_eq!(
                region[..3],
                [pass as u32 + 1, 0, 0],
                "pass {pass}: the header"
            );
        }
    }
}
