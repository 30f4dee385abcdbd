//! cuda/attention_backward.cu run by the CPU emulator ([`crate::backend::emulator`]) with the
//! launcher's own [`BackwardPlan`], against the f64 reference backward, each case twice (the
//! second call must give the same bits).

use half::{bf16, f16};

use super::BackwardPlan;
use crate::attention::backward::{check_call, gradient_lens};
use crate::attention::check_backward::{BackwardArgs, BackwardRun, check_backward_with};
use crate::attention::{Case, MaskKind, Output};
use crate::backend::emulator::{Emulator, Guarded, Launch, Order, assert_emulated};
use crate::element::{Float16, OutputElement};
use crate::error::Result;
use crate::spmm::check::nan_bits;

/// Both launches of one backward call on the emulator, gradients in `G`; panics with the
/// emulator's message when a kernel fails (an access out of bounds, a deadlock).
fn run<T: Float16, G: OutputElement<T>>(
    emulator: &Emulator,
    order: Order,
    args: &BackwardArgs<'_, T>,
) -> Result<BackwardRun> {
    let BackwardArgs {
        shape, mask, scale, ..
    } = *args;
    let [q, k, v] = args.qkv;
    let lens = gradient_lens(shape);
    let inputs = [
        q.len(),
        k.len(),
        v.len(),
        args.o.len(),
        args.d_o.len(),
        args.lse.len(),
    ];
    check_call(shape, inputs, lens, mask.shape())?;
    let plan = BackwardPlan::new::<T, G>(shape, mask.shape(), mask.element(), scale)?;
    let mut tensors = [q, k, v, args.o, args.d_o].map(Guarded::new);
    let mut lse = Guarded::new(args.lse);
    let mut delta = Guarded::new(&vec![f32::NAN; args.lse.len()]);
    let mut gradients = lens.map(|len| Guarded::new(&vec![nan_bits::<G>(); len]));
    let (po, p, fo, f) = mask.parts();
    let (tpo, tp, tfo, tf) = mask.transposed_parts();
    let list = |values: &[u32]| Guarded::new(if values.is_empty() { &[0] } else { values });
    let mut lists = [po, p, fo, f, tpo, tp, tfo, tf].map(list);
    let params = plan.params::<T>(
        shape,
        tensors.each_mut().map(|t| t.address()),
        [lse.address(), delta.address()],
        gradients.each_mut().map(|g| g.address()),
        lists.each_mut().map(|l| l.address()),
    );
    for (kernel, launch) in [(plan.dq, plan.dq_shape()), (plan.dkdv, plan.dkdv_shape())] {
        // SAFETY: the parameters follow abi.h's attention backward contract as the CUDA
        // launcher's do: the same checks (check_call, BackwardPlan) passed, the tensors and
        // lse are the caller's with their layout's lengths, the gradients and delta have their
        // packed lengths, the mask is a validated BlockMask of this shape with its transposed
        // lists, and every buffer lives until the launch returns; the dq launch runs first.
        let ran = unsafe { emulator.launch(kernel, &params, &Launch::new(launch, order)) };
        ran.unwrap_or_else(|e| panic!("{}: {e}", kernel.name));
    }
    let read = || -> std::result::Result<[Vec<f32>; 3], String> {
        for (tensor, what) in tensors.iter().zip(["q", "k", "v", "o", "do"]) {
            tensor.read(what)?;
        }
        lse.read("lse")?;
        delta.read("delta")?;
        for list in &lists {
            list.read("mask")?;
        }
        let widened = |g: Vec<G>| g.into_iter().map(|x| x.to_f64() as f32).collect();
        let [dq, dk, dv] = &gradients;
        Ok([
            widened(dq.read("dq")?),
            widened(dk.read("dk")?),
            widened(dv.read("dv")?),
        ])
    };
    Ok(Some(
        read().unwrap_or_else(|e| panic!("{}: {e}", plan.dq.name)),
    ))
}

fn check_case(case: &Case, order: Order) {
    fn typed<T: Float16>(
        emulator: &Emulator,
        case: &Case,
        order: Order,
        seed: u64,
    ) -> Result<Option<crate::harness::Comparison>> {
        check_backward_with::<T>(case, seed, |args| match args.output {
            Output::Input => run::<T, T>(emulator, order, args),
            Output::F32 => run::<T, f32>(emulator, order, args),
        })
    }
    assert_emulated(&format!("{case}, {order:?}"), |emulator, seed| {
        if case.bf16 {
            typed::<bf16>(emulator, case, order, seed)
        } else {
            typed::<f16>(emulator, case, order, seed)
        }
    });
}

const ORDERS: [Order; 3] = [Order::Threads, Order::Reverse, Order::Shuffled(5)];

/// The generated ids pick the kernels named for the type, head dimension and gradient type.
#[test]
fn kernel_ids_follow_the_names() {
    use crate::attention::{AttentionShape, ElementMask, MaskShape};
    let names = |bf16_in: bool, d: usize, f32_out: bool| {
        let shape = AttentionShape::new(1, 256, 256, 2, 2, d).unwrap();
        let mask = MaskShape::new(256, 256);
        let plan = match (bf16_in, f32_out) {
            (true, true) => BackwardPlan::new::<bf16, f32>(&shape, mask, ElementMask::None, 0.1),
            (true, false) => BackwardPlan::new::<bf16, bf16>(&shape, mask, ElementMask::None, 0.1),
            (false, true) => BackwardPlan::new::<f16, f32>(&shape, mask, ElementMask::None, 0.1),
            (false, false) => BackwardPlan::new::<f16, f16>(&shape, mask, ElementMask::None, 0.1),
        };
        let plan = plan.unwrap();
        (plan.dq.name, plan.dkdv.name)
    };
    assert_eq!(
        names(false, 64, true),
        (
            "tilefuse_attention_backward_dq_f16_d64_f32",
            "tilefuse_attention_backward_dkdv_f16_d64_f32"
        )
    );
    assert_eq!(
        names(true, 128, false),
        (
            "tilefuse_attention_backward_dq_bf16_d128_same",
            "tilefuse_attention_backward_dkdv_bf16_d128_same"
        )
    );
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
        let case = Case {
            mask,
            output: Output::F32,
            ..Case::new(200, 200)
        };
        check_case(&case, ORDERS[i % 3]);
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
        Case {
            mask: MaskKind::EmptyRows,
            heads_q: 4,
            heads_kv: 1,
            ..Case::new(130, 190)
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        check_case(&case, ORDERS[i % 3]);
    }
}

#[test]
fn types_head_dims_blocks_strides_and_gradient_types() {
    for (i, (bf16, d, block, strided, output)) in [
        (true, 64, 64, false, Output::Input),
        (false, 128, 64, false, Output::F32),
        (false, 64, 128, false, Output::Input),
        (true, 128, 128, true, Output::F32),
        (false, 64, 64, true, Output::Input),
        (true, 64, 128, false, Output::F32),
    ]
    .into_iter()
    .enumerate()
    {
        let case = Case {
            bf16,
            d,
            block,
            strided,
            output,
            mask: [MaskKind::Causal, MaskKind::Window(90, false)][i % 2],
            ..Case::new(150, 190)
        };
        check_case(&case, ORDERS[i % 3]);
    }
}
