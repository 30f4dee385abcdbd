//! The attention backward pass's foundation: the f64 reference against finite differences of
//! the forward reference, the blockwise algorithm (FlashAttention-2's structure, over the
//! transposed lists) against the reference on every mask builder, GQA, ragged and unequal
//! lengths, both head dims and block sizes and strided tensors, and the transposed lists
//! against the forward ones; on CUDA and WGSL, the kernels against the reference.

mod common;

use tilefuse::Error;
use tilefuse::attention::{
    AttentionShape, BlockKind, BlockMask, Case, ElementMask, Gradients, MaskKind, MaskShape,
    Output, blockwise_backward, check_backward, reference, reference_backward,
};
use tilefuse::harness::{Backend, Backends, Rng, Tolerance, compare};

/// Random values in [-2, 2) for a buffer of `len`.
fn random(rng: &mut Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.uniform(-2.0, 2.0)).collect()
}

/// L = Σ dO ∘ O, whose gradient the backward pass is.
fn loss(
    shape: &AttentionShape,
    [q, k, v]: [&[f64]; 3],
    d_o: &[f64],
    mask: &BlockMask,
    scale: f64,
) -> f64 {
    let o = reference(shape, q, k, v, mask, scale).unwrap().o;
    o.iter().zip(d_o).map(|(o, d)| o * d).sum()
}

/// Central differences of the loss in every element of q, k and v, against the reference's
/// gradients: within 1e-6 relative to the largest gradient (the differences' own error at a
/// step of 1e-5 is about 1e-10 times the third derivative).
fn assert_finite_differences(shape: AttentionShape, mask: BlockMask, seed: u64) -> Gradients {
    let mut rng = Rng::new(seed);
    let [q_len, k_len, v_len, o_len] = shape.min_lens();
    let (q, k, v) = (
        random(&mut rng, q_len),
        random(&mut rng, k_len),
        random(&mut rng, v_len),
    );
    let d_o = random(&mut rng, o_len);
    let scale = 0.7;
    let g = reference_backward(&shape, [&q, &k, &v], &d_o, &mask, scale).unwrap();
    let step = 1e-5;
    let mut inputs = [q, k, v];
    for (tensor, want) in [&g.dq, &g.dk, &g.dv].into_iter().enumerate() {
        let largest = want.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-3);
        for index in 0..inputs[tensor].len() {
            let at = |delta: f64, inputs: &mut [Vec<f64>; 3]| {
                let old = inputs[tensor][index];
                inputs[tensor][index] = old + delta;
                let [q, k, v] = &*inputs;
                let l = loss(&shape, [q, k, v], &d_o, &mask, scale);
                inputs[tensor][index] = old;
                l
            };
            let numeric = (at(step, &mut inputs) - at(-step, &mut inputs)) / (2.0 * step);
            let error = (numeric - want[index]).abs() / largest;
            assert!(
                error < 1e-6,
                "tensor {tensor} element {index}: numeric {numeric}, reference {} (seed {seed})",
                want[index]
            );
        }
    }
    g
}

#[test]
fn the_reference_is_the_gradient_of_the_forward() {
    let seed = common::seed();
    let small = |lq, lk, hq, hkv, d| AttentionShape::new(1, lq, lk, hq, hkv, d).unwrap();
    let blocks = |lq, lk| MaskShape {
        block_m: 64,
        block_n: 64,
        ..MaskShape::new(lq, lk)
    };
    // Causal with lq ≠ lk (bottom-right), GQA; a window; dense with two batches.
    assert_finite_differences(
        small(5, 9, 2, 1, 3),
        BlockMask::causal(blocks(5, 9)).unwrap(),
        seed,
    );
    assert_finite_differences(
        small(7, 7, 2, 2, 4),
        BlockMask::sliding_window(blocks(7, 7), 3, false).unwrap(),
        seed + 1,
    );
    let two = AttentionShape::new(2, 4, 6, 1, 1, 2).unwrap();
    assert_finite_differences(two, BlockMask::dense(blocks(4, 6)).unwrap(), seed + 2);
}

/// A query block that sees nothing (in one head) gets dq = 0 and gives k and v nothing; the
/// finite differences agree.
#[test]
fn rows_without_keys_contribute_nothing() {
    let seed = common::seed();
    let shape = AttentionShape::new(1, 70, 70, 2, 1, 2).unwrap();
    let mask_shape = MaskShape {
        heads: 2,
        block_m: 64,
        block_n: 64,
        ..MaskShape::new(70, 70)
    };
    let mask = BlockMask::from_fn(mask_shape, ElementMask::Causal, |_, h, q, kv| {
        match (h, q) {
            (1, 1) => BlockKind::Skip,
            _ if kv < q => BlockKind::Full,
            _ if kv == q => BlockKind::Partial,
            _ => BlockKind::Skip,
        }
    })
    .unwrap();
    let g = assert_finite_differences(shape, mask, seed);
    // Head 1's queries 64..70: dq rows of zeros.
    for i in 64..70 {
        let at = (i * 2 + 1) * 2;
        assert_eq!(g.dq[at..at + 2], [0.0, 0.0], "query {i} (seed {seed})");
    }
}

/// The blockwise algorithm against the reference on the check cases' masks and shapes.
#[test]
fn blockwise_agrees_with_the_reference() {
    let seed = common::seed();
    let cases = [
        Case {
            mask: MaskKind::Dense,
            ..Case::new(130, 130)
        },
        Case {
            heads_q: 4,
            heads_kv: 2,
            ..Case::new(100, 200)
        },
        Case {
            mask: MaskKind::Window(90, true),
            d: 128,
            ..Case::new(200, 150)
        },
        Case {
            mask: MaskKind::Streaming(64, 128),
            block: 128,
            batch: 2,
            ..Case::new(300, 300)
        },
        Case {
            mask: MaskKind::BigBird(1, 1, 1),
            heads_q: 2,
            ..Case::new(256, 256)
        },
        Case {
            mask: MaskKind::VerticalSlash,
            strided: true,
            ..Case::new(200, 260)
        },
        Case {
            mask: MaskKind::EmptyRows,
            heads_q: 4,
            heads_kv: 1,
            ..Case::new(140, 100)
        },
        Case {
            mask: MaskKind::Window(30, false),
            ..Case::new(1, 300)
        },
    ];
    for (n, case) in cases.into_iter().enumerate() {
        let seed = seed + n as u64;
        let shape = case.shape().unwrap();
        let mask = case.block_mask().unwrap();
        let mut rng = Rng::new(seed);
        let [q_len, k_len, v_len, o_len] = shape.min_lens();
        let (q, k, v) = (
            random(&mut rng, q_len),
            random(&mut rng, k_len),
            random(&mut rng, v_len),
        );
        let d_o = random(&mut rng, o_len);
        let scale = 1.0 / (case.d as f64).sqrt();
        let want = reference_backward(&shape, [&q, &k, &v], &d_o, &mask, scale).unwrap();
        let got = blockwise_backward(&shape, [&q, &k, &v], &d_o, &mask, scale).unwrap();
        // Two f64 algorithms: apart by f64 roundings alone.
        let bound = Tolerance {
            rel_l2: 1e-12,
            element: 1e-12,
        };
        for (name, got, want) in [
            ("dq", &got.dq, &want.dq),
            ("dk", &got.dk, &want.dk),
            ("dv", &got.dv, &want.dv),
        ] {
            let c = compare(got, want, bound);
            assert!(c.passed(), "{case} {name} (seed {seed}): {c}");
            assert!(want.iter().any(|&x| x != 0.0), "{case} {name}: all zero");
        }
    }
}

/// The transposed lists hold exactly the forward lists' blocks, by key block, with the same
/// kinds, for masks with and without their own batch and heads.
#[test]
fn transposed_lists_are_the_forward_lists_by_key_block() {
    let seed = common::seed();
    let mut rng = Rng::new(seed);
    for (batch, heads) in [(1, 1), (2, 3), (1, 2)] {
        let shape = MaskShape {
            batch,
            heads,
            block_m: 64,
            block_n: 128,
            ..MaskShape::new(500, 700)
        };
        let kinds: Vec<BlockKind> = (0..batch * heads * shape.q_blocks() * shape.kv_blocks())
            .map(|_| match (rng.unit() * 3.0) as u32 {
                0 => BlockKind::Skip,
                1 => BlockKind::Partial,
                _ => BlockKind::Full,
            })
            .collect();
        let kind_at = |b: usize, h: usize, q: usize, kv: usize| {
            kinds[((b * heads + h) * shape.q_blocks() + q) * shape.kv_blocks() + kv]
        };
        let mask = BlockMask::from_fn(shape, ElementMask::Causal, kind_at).unwrap();
        for b in 0..batch {
            for h in 0..heads {
                for kv in 0..shape.kv_blocks() {
                    let (partial, full) = mask.q_blocks_of(b, h, kv).unwrap();
                    let listed = |kind| {
                        (0..shape.q_blocks() as u32)
                            .filter(|&q| kind_at(b, h, q as usize, kv) == kind)
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(partial, listed(BlockKind::Partial), "seed {seed}");
                    assert_eq!(full, listed(BlockKind::Full), "seed {seed}");
                }
            }
        }
        let (_, partial, _, full) = mask.transposed_parts();
        let (_, forward_partial, _, forward_full) = mask.parts();
        assert_eq!(
            (partial.len(), full.len()),
            (forward_partial.len(), forward_full.len())
        );
    }
    let mask = BlockMask::causal(MaskShape::new(300, 300)).unwrap();
    assert!(matches!(
        mask.q_blocks_of(0, 0, 3),
        Err(Error::InvalidArgument { .. })
    ));
    // Broadcast: any batch and head read the one column set.
    assert_eq!(
        mask.q_blocks_of(5, 7, 1).unwrap(),
        mask.q_blocks_of(0, 0, 1).unwrap()
    );
}

#[test]
fn wrong_lengths_are_errors() {
    let shape = AttentionShape::new(1, 4, 4, 1, 1, 2).unwrap();
    let mask = BlockMask::dense(MaskShape::new(4, 4)).unwrap();
    let x = vec![0.5f64; 8];
    let short = vec![0.5f64; 7];
    let error = reference_backward(&shape, [&x, &x, &x], &short, &mask, 1.0).unwrap_err();
    assert!(matches!(error, Error::Length { what: "do", .. }), "{error}");
    let error = blockwise_backward(&shape, [&x, &short, &x], &x, &mask, 1.0).unwrap_err();
    assert!(matches!(error, Error::Length { what: "k", .. }), "{error}");
    let error = reference_backward(&shape, [&x, &x, &x], &x, &mask, f64::NAN).unwrap_err();
    assert!(matches!(error, Error::InvalidArgument { .. }), "{error}");
}

/// `tilefuse check`'s cases of the backward pass pass: on the CPU the blockwise algorithm
/// against the reference, on CUDA and WGSL the kernels.
fn every_registered_case_passes(backends: &Backends, backend: Backend) {
    common::assert_registered_cases("attention-backward", backends, backend);
}

/// [`check_backward`] on every mask builder, GQA, ragged and unequal lengths, both types,
/// head dims, block sizes and gradient types, strided tensors; on a device each case runs
/// twice and must repeat its bits.
fn every_mask_type_and_layout(backends: &Backends, backend: Backend) {
    let seed = common::seed();
    let masks = [
        MaskKind::Dense,
        MaskKind::Causal,
        MaskKind::Window(300, true),
        MaskKind::Window(200, false),
        MaskKind::Streaming(64, 128),
        MaskKind::BigBird(1, 1, 2),
        MaskKind::VerticalSlash,
        MaskKind::EmptyRows,
    ];
    for (i, mask) in masks.into_iter().enumerate() {
        let case = Case {
            mask,
            batch: 1 + i % 2,
            heads_q: 4,
            heads_kv: [4, 2, 1][i % 3],
            d: [64, 128][i % 2],
            block: [64, 128][i / 4],
            bf16: i % 3 == 1,
            strided: i % 4 == 3,
            output: [Output::F32, Output::Input][i % 2],
            ..Case::new(333 + 61 * i, 517 - 45 * i)
        };
        assert_backward(backends, backend, &case, seed);
    }
}

/// Long lists: on lavapipe, whose loop budget splits them over passes, the accumulators
/// carried from pass to pass (dq's over 33 key blocks, dk and dv's over 4 heads' q blocks).
fn long_lists(backends: &Backends, backend: Backend) {
    let case = Case {
        mask: MaskKind::Dense,
        heads_q: 4,
        heads_kv: 1,
        d: 128,
        ..Case::new(1000, 2100)
    };
    assert_backward(backends, backend, &case, common::seed());
}

fn assert_backward(backends: &Backends, backend: Backend, case: &Case, seed: u64) {
    let comparison = check_backward(backends, backend, case, seed)
        .unwrap_or_else(|e| panic!("{case}, seed {seed}: {e}"));
    if let Some(c) = comparison {
        assert!(c.passed(), "{case}, seed {seed}: {c}");
    }
}

on_backends!([cpu, cuda, wgpu] => [every_registered_case_passes, every_mask_type_and_layout, long_lists]);

/// On a device whose storage bindings hold 64 KiB, q, o, do (128 KB) and dq (128 KB in f16,
/// 256 KB in f32) and k, v, dk, dv (77 KB) span several windows, packed and strided, and the
/// gradients still match the reference. (The pass state of lavapipe's long lists is bound
/// whole: `long_lists` runs those.)
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_tensors_past_one_binding_run_in_windows() {
    let Some(backends) = common::capped_wgpu() else {
        return;
    };
    assert!(500 * 2 * 64 * 2 > common::CAPPED_BINDING as usize);
    for (strided, output) in [(false, Output::F32), (true, Output::Input)] {
        let case = Case {
            strided,
            output,
            ..Case::new(500, 600)
        };
        assert_backward(backends, Backend::Wgpu, &case, common::seed());
    }
}
