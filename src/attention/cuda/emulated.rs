//! cuda/attention.cu run by the CPU emulator ([`crate::backend::emulator`]) with the
//! launcher's own [`Plan`], against the f64 reference: the first runs of the kernel's source,
//! on any machine.

use half::{bf16, f16};

use super::hopper::HopperPlan;
use super::{Plan, SplitKv};
use crate::attention::check::{RunOutput, check_with};
use crate::attention::{AttentionShape, BlockMask, Case, MaskKind, MaskShape, Output};
use crate::backend::cuda::CudaDeviceInfo;
use crate::backend::emulator::{Emulator, Guarded, Launch, Order, assert_emulated};
use crate::element::Float16;
use crate::error::Result;

/// How a test launches the kernel: the emulator's order of threads and blocks, the splits of
/// each block's keys (the plan's choice is 1 for most tests' shapes), and whether the Hopper
/// kernel (cuda/attention_sm90a.cu) runs the plan instead of the portable one.
#[derive(Clone, Copy, Debug)]
struct Setup {
    order: Order,
    splits: usize,
    hopper: bool,
}

/// One emulated launch with `check`'s arguments; panics with the emulator's message when the
/// kernel fails (an access out of bounds, a deadlock, a split-KV counter left nonzero).
fn run<T: Float16>(
    emulator: &Emulator,
    setup: Setup,
    shape: &AttentionShape,
    [q, k, v]: [&[T]; 3],
    mask: &BlockMask,
    scale: f32,
    output: Output,
) -> Result<RunOutput> {
    if output == Output::F32 {
        return Ok(None); // as on CUDA
    }
    let o_len = shape.min_lens()[3];
    let lse_len = shape.batch * shape.lq * shape.heads_q;
    shape.check_call(
        [q.len(), k.len(), v.len()],
        mask.shape(),
        o_len,
        Some(lse_len),
    )?;
    // Two stages in thread order, three in the others.
    let stages = if matches!(setup.order, Order::Threads) {
        2
    } else {
        3
    };
    let plan = Plan::new::<T>(shape, mask.shape(), mask.element(), scale)?
        .with_stages(stages)
        .with_splits(setup.splits, mask.stats().max_blocks_per_row);
    let mut inputs = [q, k, v].map(Guarded::new);
    let mut o = Guarded::new(&vec![T::from_f64(f64::NAN); o_len]);
    let mut lse = Guarded::new(&vec![f32::NAN; lse_len]);
    let (partial_offsets, partial, full_offsets, full) = mask.parts();
    let list = |values: &[u32]| Guarded::new(if values.is_empty() { &[0] } else { values });
    let mut lists = [
        Guarded::new(partial_offsets),
        list(partial),
        Guarded::new(full_offsets),
        list(full),
    ];
    let (partial_words, counter_words) = plan.workspace_words();
    let mut partials = Guarded::new(&vec![f32::NAN; partial_words]);
    let mut counters = Guarded::new(&vec![0u32; counter_words]);
    let split_kv = match plan.splits {
        1 => SplitKv::default(),
        _ => SplitKv {
            partial_o: partials.address(),
            partial_lse: partials.address() + 4 * plan.partial_o_words() as u64,
            counters: counters.address(),
        },
    };
    let [qa, ka, va] = inputs.each_mut().map(|buffer| buffer.address());
    let params = plan.params::<T>(
        shape,
        [qa, ka, va, o.address()],
        lse.address(),
        lists.each_mut().map(|list| list.address()),
        split_kv,
    );
    let launch = Launch::new(plan.shape(), setup.order);
    // Split-KV's last block is then another one: the first split, not the last.
    let launch = match setup.order {
        Order::Reverse => launch.blocks_reversed(),
        _ => launch,
    };
    let (kernel, ran) = if setup.hopper {
        // Two persistent blocks, so that a block serves several items and the items run
        // in its order.
        let hopper = HopperPlan::of::<T>(&plan)
            .expect("a plan the Hopper kernel takes")
            .with_blocks(2);
        let hopper_params = hopper.params::<T>(
            shape,
            [qa, ka, va, o.address()],
            lse.address(),
            lists.each_mut().map(|list| list.address()),
            |map| map.emulated(),
        )?;
        let launch = Launch::new(hopper.shape(), setup.order);
        // SAFETY: as below, for abi.h's Hopper contract: the tensor maps describe q, k and v
        // as the portable parameters address them (their buffers, starts and strides), the
        // plan has one split and unpacked heads, and the shared memory is abi.h's.
        (hopper.kernel, unsafe {
            emulator.launch(hopper.kernel, &hopper_params, &launch)
        })
    } else {
        // SAFETY: the parameters follow abi.h's attention contract as the CUDA launcher's do:
        // the same checks (check_call, Plan) passed, the tensors are the caller's with their
        // layout's lengths, the mask is a validated BlockMask of this shape, lse holds b·hq·lq
        // values, split-KV's partials and zeroed counters have the plan's sizes, and every
        // buffer lives until the launch returns.
        (plan.kernel, unsafe {
            emulator.launch(plan.kernel, &params, &launch)
        })
    };
    let read = ran.and_then(|()| {
        for (buffer, what) in inputs.iter().zip(["q", "k", "v"]) {
            buffer.read(what)?;
        }
        for list in &lists {
            list.read("mask")?;
        }
        partials.read("split-KV partials")?;
        if counters.read("split-KV counters")?.iter().any(|&c| c != 0) {
            return Err("a split-KV counter was left nonzero".into());
        }
        Ok((o.read("o")?, lse.read("lse")?))
    });
    let (o, lse) = read.unwrap_or_else(|e| panic!("{}: {e}", kernel.name));
    let o = o.into_iter().map(|x| x.to_f64() as f32).collect();
    Ok(Some((o, lse)))
}

fn check_case(case: &Case, order: Order) {
    check_split(
        case,
        Setup {
            order,
            splits: 1,
            hopper: false,
        },
    );
}

/// The case on the Hopper kernel.
fn check_hopper(case: &Case, order: Order) {
    check_split(
        case,
        Setup {
            order,
            splits: 1,
            hopper: true,
        },
    );
}

fn check_split(case: &Case, setup: Setup) {
    assert_emulated(&format!("{case}, {setup:?}"), |emulator, seed| {
        if case.bf16 {
            check_with::<bf16>(case, seed, |s, i, m, sc, o| {
                run(emulator, setup, s, i, m, sc, o)
            })
        } else {
            check_with::<f16>(case, seed, |s, i, m, sc, o| {
                run(emulator, setup, s, i, m, sc, o)
            })
        }
    });
}

const ORDERS: [Order; 3] = [Order::Threads, Order::Reverse, Order::Shuffled(3)];

/// The generated ids pick the kernel named for the type, head dimension and query block.
#[test]
fn kernel_ids_follow_the_names() {
    use crate::attention::{ElementMask, MaskShape};
    let name = |bf16_in: bool, d: usize, block_m: usize| {
        let shape = AttentionShape::new(1, 256, 256, 2, 2, d).unwrap();
        let mask = MaskShape {
            block_m,
            ..MaskShape::new(256, 256)
        };
        let plan = match bf16_in {
            true => Plan::new::<bf16>(&shape, mask, ElementMask::None, 0.1),
            false => Plan::new::<f16>(&shape, mask, ElementMask::None, 0.1),
        };
        plan.unwrap().kernel.name
    };
    assert_eq!(name(false, 64, 64), "tilefuse_attention_f16_d64_bm64");
    assert_eq!(name(false, 128, 64), "tilefuse_attention_f16_d128_bm64");
    assert_eq!(name(true, 64, 128), "tilefuse_attention_bf16_d64_bm128");
    assert_eq!(name(true, 128, 128), "tilefuse_attention_bf16_d128_bm128");
}

#[test]
fn every_mask() {
    let masks = [
        MaskKind::Dense,
        MaskKind::Causal,
        MaskKind::Window(100, true),
        MaskKind::Window(70, false),
        MaskKind::Streaming(64, 64),
        MaskKind::BigBird(1, 1, 1),
        MaskKind::VerticalSlash,
        MaskKind::EmptyRows,
    ];
    for (i, mask) in masks.into_iter().enumerate() {
        check_case(
            &Case {
                mask,
                ..Case::new(200, 200)
            },
            ORDERS[i % 3],
        );
    }
}

/// The kernel decides the element mask per warp and tile (all allowed, none, or some): masks
/// whose edge passes exactly through a corner of a warp's 16 x 64 scores, where one score
/// alone is on the allowed side (lk − lq shifts the diagonal there): row 15 and key 64 on the
/// causal diagonal; the first row and the last key of a tile on a window's far edge; the
/// last row and the first key on its near edge.
#[test]
fn mask_edges_through_a_warps_corner() {
    let cases = [
        (MaskKind::Causal, 80, 129),
        (MaskKind::Window(100, false), 50, 212),
        (MaskKind::Window(100, false), 200, 214),
        (MaskKind::Window(70, true), 60, 192),
    ];
    for (i, (mask, lq, lk)) in cases.into_iter().enumerate() {
        check_case(
            &Case {
                mask,
                ..Case::new(lq, lk)
            },
            ORDERS[i % 3],
        );
    }
}

#[test]
fn ragged_lengths_and_heads() {
    let cases = [
        Case::new(1, 1),
        Case::new(100, 300),
        Case {
            mask: MaskKind::Dense,
            ..Case::new(300, 70)
        },
        Case {
            heads_q: 4,
            heads_kv: 2,
            batch: 2,
            ..Case::new(65, 129)
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        check_case(&case, ORDERS[i % 3]);
    }
}

#[test]
fn types_head_dims_blocks_and_strides() {
    for (i, (bf16, d, block, strided)) in [
        (true, 64, 64, false),
        (false, 128, 64, false),
        (false, 64, 128, false),
        (true, 128, 128, true),
        (false, 64, 64, true),
    ]
    .into_iter()
    .enumerate()
    {
        let case = Case {
            bf16,
            d,
            block,
            strided,
            ..Case::new(150, 190)
        };
        check_case(&case, ORDERS[i % 3]);
    }
}

/// NaN and ±inf in q, k and v give NaN exactly where the reference has it.
#[test]
fn non_finite_inputs() {
    for (i, (mask, bf16)) in [
        (MaskKind::Causal, false),
        (MaskKind::EmptyRows, true),
        (MaskKind::Dense, false),
    ]
    .into_iter()
    .enumerate()
    {
        let case = Case {
            mask,
            bf16,
            non_finite: true,
            ..Case::new(150, 130)
        };
        check_case(&case, ORDERS[i % 3]);
    }
}

/// Split-KV: each split of a block's key tiles writes its o and lse, and the last split to
/// finish (in reversed block order another one) merges them; across full and partial blocks,
/// rows that see no key in some splits or in all (o = 0, lse = −inf), more splits asked for
/// than a row has tiles, GQA, non-finite inputs, and a decode call split as on an H100. In
/// the windowed case with non-finite inputs, query block 1 visits key blocks 4 to 7, one per
/// split, and rows 89 on see nothing of block 4, whose v holds +inf at key 300: their split
/// 0 saw no key, yet 0 · inf makes their o NaN, as in one block.
#[test]
fn split_keys() {
    let cases = [
        (Case::new(150, 520), 3),
        (
            Case {
                mask: MaskKind::Window(100, true),
                ..Case::new(130, 400)
            },
            2,
        ),
        (
            Case {
                mask: MaskKind::EmptyRows,
                heads_q: 4,
                heads_kv: 2,
                ..Case::new(140, 330)
            },
            5,
        ),
        (
            Case {
                mask: MaskKind::Streaming(64, 64),
                bf16: true,
                d: 128,
                block: 128,
                ..Case::new(200, 600)
            },
            64,
        ),
        (
            Case {
                mask: MaskKind::Dense,
                non_finite: true,
                ..Case::new(90, 450)
            },
            4,
        ),
        (
            Case {
                mask: MaskKind::Window(70, false),
                non_finite: true,
                ..Case::new(300, 600)
            },
            5,
        ),
        (
            Case {
                mask: MaskKind::Dense,
                heads_q: 8,
                heads_kv: 2,
                d: 128,
                block: 128,
                ..Case::new(1, 4100)
            },
            16,
        ),
    ];
    for (i, (case, splits)) in cases.into_iter().enumerate() {
        let order = ORDERS[i % 3];
        let hopper = false;
        check_split(
            &case,
            Setup {
                order,
                splits,
                hopper,
            },
        );
    }
}

/// Decode: with each head's queries in one query block and one mask for all heads, a block
/// covers the rows of the query heads that share a key/value head (rows cross from head to
/// head inside a warp where lq is not a multiple of 16, and a block may start inside a
/// head), with and without splits, on packed and strided tensors.
#[test]
fn decode_packs_the_heads_of_a_group() {
    // lq = 40: 160 rows of a group in 3 blocks of 64, the second starting at query 24 of
    // head 1, the third at query 8 of head 3. Strided: the heads' rows far apart in memory.
    let cases = [
        (1, MaskKind::Dense, 3, false, false),
        (5, MaskKind::Causal, 1, true, false),
        (16, MaskKind::Window(100, true), 2, false, true),
        (7, MaskKind::Window(70, false), 4, true, false),
        (64, MaskKind::Causal, 2, false, false),
        (40, MaskKind::Window(100, true), 1, false, true),
        (40, MaskKind::Causal, 3, false, false),
    ];
    for (i, (lq, mask, splits, non_finite, strided)) in cases.into_iter().enumerate() {
        let case = Case {
            mask,
            heads_q: 8,
            heads_kv: 2,
            batch: 2,
            non_finite,
            strided,
            ..Case::new(lq, 300)
        };
        let shape = AttentionShape::new(2, lq, 300, 8, 2, 64).unwrap();
        let mask = MaskShape {
            block_m: 64,
            block_n: 64,
            ..MaskShape::new(lq, 300)
        };
        let plan = Plan::new::<f16>(&shape, mask, crate::attention::ElementMask::None, 0.1);
        assert_eq!(plan.unwrap().packed_heads, 4, "lq {lq}");
        check_split(
            &case,
            Setup {
                order: ORDERS[i % 3],
                splits,
                hopper: false,
            },
        );
    }
}

/// Heads are packed only where each has one query block and they share the mask.
#[test]
fn heads_pack_only_within_one_query_block_and_mask() {
    let shape = |lq| AttentionShape::new(1, lq, 512, 8, 2, 64).unwrap();
    let packed = |lq, heads| {
        let mask = MaskShape {
            heads,
            ..MaskShape::new(lq, 512)
        };
        let plan = Plan::new::<f16>(&shape(lq), mask, crate::attention::ElementMask::None, 0.1);
        plan.unwrap().packed_heads
    };
    assert_eq!(packed(128, 1), 4);
    assert_eq!(packed(129, 1), 1);
    assert_eq!(packed(16, 8), 1);
}

/// Three K/V stages where the device's shared memory takes them without costing a resident
/// block (an H100), two where it does not (sm_86's 99 KiB at d = 128).
#[test]
fn stages_follow_the_device() {
    let device = CudaDeviceInfo::planned;
    let shape = AttentionShape::new(1, 4096, 4096, 8, 8, 128).unwrap();
    let mask = BlockMask::causal(MaskShape::new(4096, 4096)).unwrap();
    let plan = || Plan::new::<f16>(&shape, mask.shape(), mask.element(), 0.1).unwrap();
    let h100 = plan().for_device(&device(132, 227 * 1024), 210, 32);
    assert_eq!(
        (h100.stages, h100.shared_bytes),
        (3, (128 + 6 * 64) * 128 * 2)
    );
    let sm86 = plan().for_device(&device(84, 99 * 1024), 210, 32);
    assert_eq!(
        (sm86.stages, sm86.shared_bytes),
        (2, (128 + 4 * 64) * 128 * 2)
    );
}

/// The keys are split where the blocks would leave SMs idle: decode (one query against 32k
/// keys, GQA 32/8: 8 blocks) fills an H100's 132 SMs with 16 splits of 32 tiles; a prefill of
/// 8k queries (2048 blocks) is not split, and a short row (8 tiles) only in 2 (each split
/// keeps at least 4 tiles).
#[test]
fn splits_fill_the_device() {
    let h100 = CudaDeviceInfo::planned(132, 227 * 1024);
    let splits = |lq: usize, lk: usize, heads_kv: usize| {
        let shape = AttentionShape::new(1, lq, lk, 32, heads_kv, 128).unwrap();
        let mask = BlockMask::dense(MaskShape::new(lq, lk)).unwrap();
        let plan = Plan::new::<f16>(&shape, mask.shape(), mask.element(), 0.1).unwrap();
        let plan = plan.for_device(&h100, 210, mask.stats().max_blocks_per_row);
        (plan.splits, plan.tiles_per_split, plan.shape().grid)
    };
    assert_eq!(splits(1, 32768, 8), (16, 32, [16, 8, 1]));
    assert_eq!(splits(16, 32768, 8), (16, 32, [16, 8, 1]));
    assert_eq!(splits(8192, 8192, 32).0, 1);
    assert_eq!(splits(1, 512, 8), (2, 4, [2, 8, 1]));
}

/// The Hopper kernel (cuda/attention_sm90a.cu) on every mask builder, ragged lengths, GQA,
/// both head dimensions and query blocks, bf16, strided tensors and non-finite inputs: the
/// kernel's own source, its descriptors and tensor maps decoded as the hardware would.
#[test]
fn hopper_kernel_on_every_mask() {
    let masks = [
        MaskKind::Dense,
        MaskKind::Causal,
        MaskKind::Window(100, true),
        MaskKind::Streaming(64, 64),
        MaskKind::BigBird(1, 1, 1),
        MaskKind::EmptyRows,
    ];
    for (i, mask) in masks.into_iter().enumerate() {
        // Query blocks of 128 rows: two consumer warpgroups taking turns.
        check_hopper(
            &Case {
                mask,
                block: if i % 2 == 0 { 128 } else { 64 },
                ..Case::new(200, 200)
            },
            ORDERS[i % 3],
        );
    }
}

#[test]
fn hopper_kernel_ragged_types_dims_blocks_and_strides() {
    let cases = [
        // One query of two heads that do not share K and V (shared, a plan packs them: the
        // portable kernel's decode path).
        Case {
            heads_kv: 2,
            ..Case::new(1, 1)
        },
        Case {
            non_finite: true,
            mask: MaskKind::Dense,
            ..Case::new(100, 300)
        },
        // The second consumer's rows and the key block's second tile wholly past lq and lk:
        // no TMA box wholly outside a tensor is issued.
        Case {
            block: 128,
            heads_kv: 2,
            ..Case::new(64, 64)
        },
        Case {
            heads_q: 4,
            heads_kv: 2,
            batch: 2,
            ..Case::new(65, 129)
        },
        Case {
            mask: MaskKind::Causal,
            ..Case::new(80, 129)
        },
        Case {
            bf16: true,
            d: 128,
            block: 128,
            strided: true,
            ..Case::new(150, 190)
        },
        Case {
            d: 128,
            block: 64,
            ..Case::new(150, 190)
        },
        Case {
            bf16: true,
            block: 128,
            mask: MaskKind::Window(70, false),
            ..Case::new(130, 260)
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        check_hopper(&case, ORDERS[i % 3]);
    }
}
