//! cuda/scan.cu run by the CPU emulator ([`crate::backend::emulator`]) with the launcher's own
//! grid and parameters, against the f64 reference. Blocks run one after another in index
//! order, so every look-back finds its predecessors finished.

use num_complex::Complex32;

use super::{Addresses, Grid, kernel};
use crate::backend::emulator::{Emulator, Guarded, Launch, Order, assert_emulated};
use crate::error::Result;
use crate::scan::check::check_with;
use crate::scan::{Case, Decay, Inputs, Layout, Outputs, ResetPattern, Scan, ScanElement};

/// One emulated launch with `check`'s arguments; panics with the emulator's message when the
/// kernel fails.
fn run<T: ScanElement>(
    emulator: &Emulator,
    order: Order,
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    final_only: bool,
) -> Result<Option<Outputs>> {
    let grid = Grid::new(scan)?;
    let floats = |values: &[T]| Guarded::<f32>::new(bytemuck::cast_slice(values));
    let (mut a, mut u) = (floats(&inputs.a), floats(&inputs.u));
    let mut reset = Guarded::new(&inputs.reset);
    let mut h0 = inputs.h0.as_deref().map(floats);
    let mut h = Guarded::new(&vec![f32::NAN; scan.states_len() * T::LANES]);
    let mut h_last = Guarded::new(&vec![f32::NAN; scan.final_len() * T::LANES]);
    // The workspace as Cuda::scratch leaves it: flags zeroed, records never written.
    let mut words = vec![u32::MAX; grid.workspace_words::<T>()];
    words[..grid.records.next_multiple_of(4)].fill(0);
    let mut workspace = Guarded::new(&words);
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
    );
    let launch = Launch::new(grid.shape(), order);
    let kernel = kernel::<T>(scan.decay, !final_only);
    // SAFETY: the parameters follow abi.h's scan contract as the CUDA launcher's do: buffers
    // of the scan's lengths (the inputs come from Inputs::random for this scan), h only when
    // states are written, and a workspace of the grid's size with zeroed flags; all live
    // until the launch returns.
    let ran = unsafe { emulator.launch(kernel, &params, &launch) };
    let read = ran.and_then(|()| {
        workspace.read("workspace")?;
        Ok(Outputs {
            h: if final_only { None } else { Some(h.read("h")?) },
            h_last: h_last.read("h_last")?,
        })
    });
    Ok(Some(
        read.unwrap_or_else(|e| panic!("{}: {e}", kernel.name)),
    ))
}

fn check_case(case: &Case, order: Order) {
    assert_emulated(&format!("{case}, {order:?}"), |emulator, seed| {
        if case.complex {
            check_with::<Complex32>(case, seed, |s, i, f| run(emulator, order, s, i, f))
        } else {
            check_with::<f32>(case, seed, |s, i, f| run(emulator, order, s, i, f))
        }
    });
}

/// The generated ids pick the kernel named for the element, decay and outputs.
#[test]
fn kernel_ids_follow_the_names() {
    let name = |complex: bool, decay, states| match complex {
        true => kernel::<Complex32>(decay, states).name,
        false => kernel::<f32>(decay, states).name,
    };
    assert_eq!(
        name(false, Decay::TimeInvariant, true),
        "tilefuse_scan_f32_const_states"
    );
    assert_eq!(
        name(true, Decay::TimeVarying, false),
        "tilefuse_scan_c64_varying_final"
    );
    assert_eq!(
        name(true, Decay::TimeInvariant, false),
        "tilefuse_scan_c64_const_final"
    );
    assert_eq!(
        name(false, Decay::TimeVarying, true),
        "tilefuse_scan_f32_varying_states"
    );
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
