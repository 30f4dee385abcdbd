//! cuda/scan.cu run by the CPU emulator ([`crate::backend::emulator`]) with the launcher's own
//! grid and parameters, against the f64 reference. Blocks run one after another, so the first
//! to run takes every ticket and every look-back finds its predecessors finished; with one
//! block per record started last to first, a look-back that trusted block indices rather than
//! tickets would wait forever (the emulator reports that as a failure).

use num_complex::Complex32;

use super::{Addresses, FORWARD_ARRAYS, Grid, Region, check_pairs, forward_staging, kernel};
use crate::backend::abi::TF_SCAN_HEADER_WORDS;
use crate::backend::emulator::{Emulator, Guarded, Launch, Order, assert_emulated};
use crate::error::Result;
use crate::scan::check::check_with;
use crate::scan::{
    Case, Decay, Inputs, Layout, Outputs, ResetPattern, Scan, ScanElement, StateStorage, Storage,
};

/// `values`' f32s stored as `S`, in a guarded buffer.
pub(super) fn stored<T: ScanElement, S: StateStorage>(values: &[T]) -> Guarded<S> {
    let values: Vec<S> = bytemuck::cast_slice::<T, f32>(values)
        .iter()
        .map(|&v| S::from_f32(v))
        .collect();
    Guarded::new(&values)
}

/// A guarded buffer of `S`, read back and widened to f32s.
pub(super) fn widened<S: StateStorage>(
    buffer: &Guarded<S>,
    what: &str,
) -> Result<Vec<f32>, String> {
    Ok(buffer.read(what)?.into_iter().map(S::to_f32).collect())
}

/// One emulated launch with `check`'s arguments, `u` and `h` stored as `S`; panics with the
/// emulator's message when the kernel fails.
fn run<T: ScanElement, S: StateStorage>(
    emulator: &Emulator,
    order: Order,
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    final_only: bool,
) -> Result<Option<Outputs>> {
    let grid = Grid::new(scan)?;
    // A fresh workspace as ScanWorkspace clears it: header and flags zeroed, records never
    // written.
    let mut workspace = fresh_workspace(&grid);
    run_in::<T, S>(emulator, order, scan, inputs, final_only, &mut workspace)
}

/// A forward region for `grid`'s launch as a first launch finds it: header and flags zero,
/// the rest never written.
fn fresh_workspace(grid: &Grid) -> Guarded<u32> {
    let mut words = vec![u32::MAX; Region::words(grid.records, FORWARD_ARRAYS)];
    words[..Region::flag_words(grid.records)].fill(0);
    Guarded::new(&words)
}

/// [`run`] on `workspace`, a forward region laid out for the grid's records or (the length
/// tells) as many more as it holds, as a kept workspace holds it.
fn run_in<T: ScanElement, S: StateStorage>(
    emulator: &Emulator,
    order: Order,
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    final_only: bool,
    workspace: &mut Guarded<u32>,
) -> Result<Option<Outputs>> {
    let grid = Grid::new(scan)?;
    let floats = |values: &[T]| Guarded::<f32>::new(bytemuck::cast_slice(values));
    let (mut a, mut u) = (floats(&inputs.a), stored::<T, S>(&inputs.u));
    let mut reset = Guarded::new(&inputs.reset);
    let mut h0 = inputs.h0.as_deref().map(floats);
    let mut h = Guarded::new(&vec![S::from_f32(f32::NAN); scan.states_len() * T::LANES]);
    let mut h_last = Guarded::new(&vec![f32::NAN; scan.final_len() * T::LANES]);
    let capacity = capacity_of(&workspace.read("workspace").unwrap(), FORWARD_ARRAYS);
    let params = grid.params(
        scan,
        Addresses {
            a: a.address(),
            u: u.address(),
            reset: reset.address(),
            h0: h0.as_mut().map_or(0, Guarded::address),
            h: if final_only { 0 } else { h.address() },
            h_last: h_last.address(),
            workspace: workspace.address(),
        },
        capacity,
    );
    let launch = emulated_launch(&grid, forward_staging::<T, S>(scan.decay), order);
    let kernel = kernel::<T, S>(scan.decay, !final_only);
    // SAFETY: the parameters follow abi.h's scan contract as the CUDA launcher's do: buffers
    // of the scan's lengths (the inputs come from Inputs::random for this scan), h only when
    // states are written, and a workspace of at least the grid's size whose header and flags
    // are zero or left by launches of this layout (the callers'); all live until the launch
    // returns.
    let ran = unsafe { emulator.launch(kernel, &params, &launch) };
    let read = ran.and_then(|()| {
        workspace.read("workspace")?;
        Ok(Outputs {
            h: if final_only {
                None
            } else {
                Some(widened(&h, "h")?)
            },
            h_last: h_last.read("h_last")?,
        })
    });
    Ok(Some(
        read.unwrap_or_else(|e| panic!("{}: {e}", kernel.name)),
    ))
}

/// The emulated launch of `grid` in `order` with `staging` bytes of dynamic shared memory: in
/// thread order one block per record, started last to first; in reverse order three blocks;
/// shuffled, one.
pub(super) fn emulated_launch(grid: &Grid, staging: u32, order: Order) -> Launch {
    match order {
        Order::Threads => Launch::new(grid.shape(usize::MAX, staging), order).blocks_reversed(),
        Order::Reverse => Launch::new(grid.shape(3, staging), order),
        Order::Shuffled(_) => Launch::new(grid.shape(1, staging), order),
    }
}

/// The records a region of `words` is laid out for (the largest capacity it holds).
fn capacity_of(words: &[u32], arrays: usize) -> usize {
    let mut capacity = 0;
    while Region::words(capacity + 1, arrays) <= words.len() {
        capacity += 1;
    }
    capacity
}

fn check_case(case: &Case, order: Order) {
    assert_emulated(&format!("{case}, {order:?}"), |emulator, seed| {
        let run = crate::scan::typed_for!(check_typed, case.complex, case.storage);
        run(emulator, case, order, seed)
    });
}

fn check_typed<T: ScanElement, S: StateStorage>(
    emulator: &Emulator,
    case: &Case,
    order: Order,
    seed: u64,
) -> Result<Option<crate::harness::Comparison>> {
    check_with::<T>(case, seed, |s, i, f| run::<T, S>(emulator, order, s, i, f))
}

/// The generated ids pick the kernel named for the element, storage, decay and outputs.
/// A complex buffer that starts inside a pair (a view at an odd f32 offset, or at an odd
/// 16-bit one) is refused before any launch; real buffers and absent ones pass.
#[test]
fn complex_buffers_must_start_on_a_pair() {
    let ok = [("a", 0x1000), ("h0", 0)];
    assert!(check_pairs::<Complex32, f32>(&ok, &[("u", 0x2008)]).is_ok());
    let message = check_pairs::<Complex32, f32>(&ok, &[("u", 0x2004)])
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "u: expected a buffer that starts on a 8-byte element, got address 0x2004"
    );
    assert!(check_pairs::<Complex32, f32>(&[("h_last", 0x1004)], &[]).is_err());
    assert!(check_pairs::<Complex32, half::bf16>(&ok, &[("h", 0x2002)]).is_err());
    assert!(check_pairs::<Complex32, half::bf16>(&ok, &[("h", 0x2004)]).is_ok());
    assert!(check_pairs::<f32, half::f16>(&[("a", 0x1004)], &[("u", 0x2002)]).is_ok());
}

#[test]
fn kernel_ids_follow_the_names() {
    assert_eq!(
        kernel::<f32, f32>(Decay::TimeInvariant, true).name,
        "tilefuse_scan_f32_f32_const_states"
    );
    assert_eq!(
        kernel::<Complex32, half::bf16>(Decay::TimeVarying, false).name,
        "tilefuse_scan_c64_bf16_varying_final"
    );
    assert_eq!(
        kernel::<Complex32, f32>(Decay::TimeInvariant, false).name,
        "tilefuse_scan_c64_f32_const_final"
    );
    assert_eq!(
        kernel::<f32, half::f16>(Decay::TimeVarying, true).name,
        "tilefuse_scan_f32_f16_varying_states"
    );
}

/// u and h in f16 or bf16 (complex as pairs), the carry in f32: within one rounding of the
/// stored value of the reference on the same (16-bit) inputs, over many chunks, so that a
/// carry rounded to 16 bits between chunks or warps would fail the bound.
#[test]
fn sixteen_bit_states_with_an_f32_carry() {
    let cases = [
        Case {
            storage: Storage::Bf16,
            resets: ResetPattern::ChunkBoundaries,
            ..Case::new(2, 1500, 40)
        },
        Case {
            storage: Storage::F16,
            complex: true,
            layout: Layout::TimeMajor,
            decay: Decay::TimeVarying,
            ..Case::new(3, 900, 33)
        },
        Case {
            storage: Storage::Bf16,
            complex: true,
            final_only: true,
            a_magnitude: (0.999, 0.9999),
            resets: ResetPattern::Never,
            ..Case::new(1, 5000, 5)
        },
        Case {
            storage: Storage::F16,
            decay: Decay::TimeVarying,
            h0: false,
            resets: ResetPattern::Random(0.1),
            ..Case::new(2, 700, 64)
        },
        Case {
            storage: Storage::Bf16,
            complex: true,
            resets: ResetPattern::EveryStep,
            ..Case::new(1, 1, 1)
        },
    ];
    let orders = [Order::Threads, Order::Reverse, Order::Shuffled(3)];
    for (i, case) in cases.into_iter().enumerate() {
        check_case(&case, orders[i % 3]);
    }
}

#[test]
fn chunks_resets_layouts_and_modes() {
    let cases = [
        Case::new(1, 1, 1),
        Case {
            complex: true,
            resets: ResetPattern::ChunkBoundaries,
            ..Case::new(2, 3000, 40)
        },
        Case {
            layout: Layout::TimeMajor,
            decay: Decay::TimeVarying,
            resets: ResetPattern::Never,
            h0: false,
            ..Case::new(3, 1100, 33)
        },
        Case {
            final_only: true,
            resets: ResetPattern::Random(0.2),
            ..Case::new(2, 2500, 64)
        },
        Case {
            complex: true,
            final_only: true,
            resets: ResetPattern::AtStart,
            ..Case::new(1, 700, 5)
        },
    ];
    let orders = [Order::Threads, Order::Reverse, Order::Shuffled(11)];
    for (i, case) in cases.into_iter().enumerate() {
        check_case(&case, orders[i % 3]);
    }
}

/// One region serves launch after launch with nothing cleared: each launch's tag tells its
/// flags from those the launch before left (which would otherwise pass for this launch's:
/// same records, stale values), also when a smaller launch uses part of a region laid out
/// for a larger one.
#[test]
fn a_kept_workspace_serves_launch_after_launch() {
    let Some(emulator) = crate::backend::emulator::Emulator::get() else {
        return;
    };
    let seed = crate::harness::Rng::fresh_seed();
    let long = Case {
        complex: true,
        resets: ResetPattern::Random(0.02),
        ..Case::new(2, 3000, 40)
    };
    let short = Case {
        complex: true,
        final_only: true,
        ..Case::new(3, 700, 33)
    };
    let grid = |case: &Case| Grid::new(&case.scan::<Complex32>().unwrap()).unwrap();
    let capacity = grid(&long).records;
    let mut memory = vec![u32::MAX; Region::words(capacity, FORWARD_ARRAYS)];
    memory[..Region::flag_words(capacity)].fill(0);
    for (i, case) in [long, long, short, long, short, short, long]
        .into_iter()
        .enumerate()
    {
        let order = [Order::Threads, Order::Reverse, Order::Shuffled(2)][i % 3];
        let comparison = check_with::<Complex32>(&case, seed + i as u64, |s, inputs, f| {
            let mut workspace = Guarded::new(&memory);
            let out = run_in::<Complex32, f32>(emulator, order, s, inputs, f, &mut workspace);
            memory = workspace.read("workspace").unwrap();
            out
        });
        let comparison = comparison.unwrap().expect("an emulated run");
        assert!(
            comparison.passed(),
            "launch {i}, {case} (seed {seed}): {comparison}"
        );
        // The launch kept its tag (launch i + 1) and tagged every flag it set with it.
        let tag = i as u32 + 1;
        assert_eq!(memory[..3], [tag, 0, 0], "launch {i}: header");
        let header = TF_SCAN_HEADER_WORDS as usize;
        let flags = &memory[header..header + grid(&case).records];
        assert!(
            flags.iter().all(|&flag| flag >> 2 == tag && flag & 3 != 0),
            "launch {i}: a flag without this launch's tag {tag}"
        );
    }
}
