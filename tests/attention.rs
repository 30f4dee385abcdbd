//! Attention: BlockMask builders and validation, the f64 reference, and the kernels against it.

// Built without wgpu, the per-backend bodies have nothing to run.
#![cfg_attr(
    not(all(feature = "cuda", feature = "wgpu")),
    allow(dead_code, unused_imports)
)]

mod common;

use half::f16;
use proptest::prelude::*;
use tilefuse::Error;
use tilefuse::attention::{
    AttentionShape, BlockKind, BlockMask, Case, ElementMask, Layout, MaskKind, MaskShape, Output,
    Strides, check, reference,
};
use tilefuse::harness::{Backend, Backends, Rng, Tolerance, compare};

on_backends!([cuda, wgpu] => [
    every_builder_and_both_types,
    lengths_equal_unequal_and_ragged,
    gqa_ratios_and_head_dims,
    rows_without_keys_give_zero_and_minus_infinity,
    non_finite_inputs_give_nan_where_they_reach,
    full_blocks_equal_partial_blocks_on_the_device,
    strided_tensors_in_both_orders,
    misaligned_strides_are_refused_at_launch,
    one_qkv_buffer,
    long_rows,
    decode_shapes,
    dense_mask_is_plain_attention,
    every_registered_case_passes,
]);

fn assert_case(backends: &Backends, backend: Backend, case: Case) {
    common::assert_seeded(&case.to_string(), |seed| {
        check(backends, backend, &case, seed)
    });
}

fn every_builder_and_both_types(backends: &Backends, backend: Backend) {
    let masks = [
        MaskKind::Dense,
        MaskKind::Causal,
        MaskKind::Window(90, false),
        MaskKind::Window(90, true),
        MaskKind::Streaming(64, 128),
        MaskKind::BigBird(1, 1, 1),
        MaskKind::VerticalSlash,
    ];
    for mask in masks {
        for bf16 in [false, true] {
            assert_case(
                backends,
                backend,
                Case {
                    mask,
                    bf16,
                    ..Case::new(320, 320)
                },
            );
        }
    }
}

fn lengths_equal_unequal_and_ragged(backends: &Backends, backend: Backend) {
    // Long rows: every key of 1100, d = 128 (an invocation of the WGSL kernel loops over them).
    assert_case(
        backends,
        backend,
        Case {
            mask: MaskKind::Dense,
            d: 128,
            ..Case::new(130, 1100)
        },
    );
    assert_case(
        backends,
        backend,
        Case {
            mask: MaskKind::Window(128, true),
            ..Case::new(1000, 777)
        },
    );
    assert_case(
        backends,
        backend,
        Case {
            block: 128,
            ..Case::new(513, 513)
        },
    );
    assert_case(backends, backend, Case::new(100, 777));
    assert_case(
        backends,
        backend,
        Case {
            mask: MaskKind::Window(50, false),
            ..Case::new(777, 100)
        },
    );
    assert_case(
        backends,
        backend,
        Case {
            batch: 2,
            ..Case::new(1, 1)
        },
    );
}

fn gqa_ratios_and_head_dims(backends: &Backends, backend: Backend) {
    for heads_kv in [8, 2, 1] {
        for d in [64, 128] {
            assert_case(
                backends,
                backend,
                Case {
                    heads_q: 8,
                    heads_kv,
                    d,
                    ..Case::new(130, 200)
                },
            );
        }
    }
}

fn rows_without_keys_give_zero_and_minus_infinity(backends: &Backends, backend: Backend) {
    // Causal with lq > lk: the first lq − lk queries see no key, beside whole empty blocks.
    assert_case(
        backends,
        backend,
        Case {
            mask: MaskKind::EmptyRows,
            heads_q: 4,
            ..Case::new(300, 200)
        },
    );
}

fn non_finite_inputs_give_nan_where_they_reach(backends: &Backends, backend: Backend) {
    let cases = [
        (MaskKind::Causal, false, Output::Input),
        (MaskKind::EmptyRows, true, Output::Input),
        (MaskKind::Dense, false, Output::F32),
        (MaskKind::Window(70, false), true, Output::Input),
    ];
    for (mask, bf16, output) in cases {
        let case = Case {
            mask,
            bf16,
            output,
            non_finite: true,
            heads_q: 4,
            ..Case::new(200, 150)
        };
        assert_case(backends, backend, case);
    }
}

fn full_blocks_equal_partial_blocks_on_the_device(backends: &Backends, backend: Backend) {
    let mut rng = Rng::new(common::seed());
    let attention = AttentionShape::new(1, 200, 130, 2, 1, 64).unwrap();
    let mut random = |len: usize| -> Vec<f16> {
        (0..len)
            .map(|_| f16::from_f64(rng.uniform(-1.0, 1.0)))
            .collect()
    };
    let (q, k, v) = (random(200 * 2 * 64), random(130 * 64), random(130 * 64));
    let full = BlockMask::dense(shape(200, 130, 64)).unwrap();
    let all_partial = |_, _, _, _| BlockKind::Partial;
    let partial = BlockMask::from_fn(shape(200, 130, 64), ElementMask::None, all_partial).unwrap();
    let run = |mask| {
        let inputs = [&q[..], &k, &v];
        let out = tilefuse::attention::run(
            backends,
            backend,
            &attention,
            inputs,
            mask,
            0.125,
            Output::Input,
        );
        out.unwrap().expect("a device path")
    };
    assert_eq!(run(&full), run(&partial));
}

fn strided_tensors_in_both_orders(backends: &Backends, backend: Backend) {
    // q, k as [b, l, h, d] and v, o as [b, h, l, d], with gaps (NaN in the inputs, poison in
    // o) between rows, heads and batches: the gaps must be neither read nor written.
    let cases = [
        Case {
            batch: 2,
            heads_q: 4,
            ..Case::new(130, 200)
        },
        Case {
            mask: MaskKind::Window(100, true),
            heads_q: 8,
            heads_kv: 2,
            d: 128,
            bf16: true,
            ..Case::new(257, 129)
        },
        Case {
            mask: MaskKind::EmptyRows,
            block: 128,
            heads_q: 4,
            ..Case::new(300, 200)
        },
    ];
    for case in cases {
        assert_case(
            backends,
            backend,
            Case {
                strided: true,
                ..case
            },
        );
    }
}

fn long_rows(backends: &Backends, backend: Backend) {
    // Thousands of keys per query: on lavapipe, whose loops stop after 65535 iterations per
    // invocation, the WGSL kernel splits such rows over passes (with rows that list fewer
    // blocks than a pass skips, and rows that list none).
    let cases = [
        Case {
            mask: MaskKind::Dense,
            d: 128,
            ..Case::new(70, 5000)
        },
        Case {
            bf16: true,
            ..Case::new(3000, 3000)
        },
        Case {
            mask: MaskKind::EmptyRows,
            d: 128,
            block: 128,
            heads_q: 4,
            strided: true,
            ..Case::new(300, 4000)
        },
    ];
    for case in cases {
        assert_case(backends, backend, case);
    }
}

fn decode_shapes(backends: &Backends, backend: Backend) {
    // A few queries against thousands of keys with GQA: on CUDA the heads of a group share a
    // block, and the keys are split over the SMs and merged.
    let cases = [
        (1, MaskKind::Dense, false),
        (16, MaskKind::Causal, true),
        (5, MaskKind::Window(1000, true), false),
        (3, MaskKind::Streaming(64, 512), true),
    ];
    for (lq, mask, bf16) in cases {
        let case = Case {
            mask,
            bf16,
            heads_q: 8,
            heads_kv: 2,
            d: 128,
            block: 128,
            ..Case::new(lq, 4100)
        };
        assert_case(backends, backend, case);
    }
}

/// Each forward kernel forced: the portable one on any GPU, and on a GPU of compute
/// capability 9.0 the Hopper one (which the launcher picks there by itself), on every mask
/// builder, GQA, both head dimensions and query blocks, bf16 and strided tensors; elsewhere
/// the Hopper kernel is a typed error, and so is a decode plan it does not take.
#[cfg(feature = "cuda")]
#[test]
fn each_forward_kernel_forced() {
    use tilefuse::attention::check_cuda_kernel;
    use tilefuse::attention::cuda::ForwardKernel;
    let Some(cuda) = common::cuda() else {
        return;
    };
    let hopper = cuda.info().compute_capability == (9, 0);
    let mut cases: Vec<Case> = [
        MaskKind::Dense,
        MaskKind::Causal,
        MaskKind::Window(300, true),
        MaskKind::Streaming(64, 256),
        MaskKind::BigBird(1, 1, 2),
        MaskKind::EmptyRows,
    ]
    .into_iter()
    .map(|mask| Case {
        mask,
        heads_q: 4,
        heads_kv: 2,
        ..Case::new(700, 900)
    })
    .collect();
    cases.push(Case {
        bf16: true,
        d: 128,
        block: 128,
        strided: true,
        ..Case::new(513, 1000)
    });
    for case in &cases {
        for kernel in [ForwardKernel::Portable, ForwardKernel::Hopper] {
            let what = format!("{case}, {kernel:?}");
            if kernel == ForwardKernel::Hopper && !hopper {
                let error = check_cuda_kernel(cuda, case, 1, kernel).expect_err(&what);
                assert!(
                    error.to_string().contains("compute capability 9.0"),
                    "{what}: {error}"
                );
                continue;
            }
            common::assert_seeded(&what, |seed| check_cuda_kernel(cuda, case, seed, kernel));
        }
    }
    if hopper {
        // One query of a GQA group against a long row: the launcher packs the heads and
        // splits the keys, which only the portable kernel does.
        let decode = Case {
            heads_q: 8,
            heads_kv: 2,
            ..Case::new(1, 8200)
        };
        let error = check_cuda_kernel(cuda, &decode, 1, ForwardKernel::Hopper).expect_err("decode");
        assert!(error.to_string().contains("not a decode shape"), "{error}");
    }
}

/// One split-KV workspace serves decode calls of different shapes: each call's results are
/// bitwise those of a call with a fresh workspace, and a reserved workspace does not grow.
#[cfg(feature = "cuda")]
#[test]
fn a_kept_workspace_serves_decode_calls_of_any_shape() {
    use tilefuse::attention::cuda::{
        AttentionWorkspace, DeviceBlockMask, Inputs, Outputs, attention, attention_with_workspace,
    };
    let Some(cuda) = common::cuda() else {
        return;
    };
    let seed = common::seed();
    let mut rng = Rng::new(seed);
    let shapes = [
        AttentionShape::new(1, 1, 8200, 8, 2, 128).unwrap(),
        AttentionShape::new(2, 16, 3000, 16, 4, 64).unwrap(),
    ];
    let masks = shapes.map(|s| BlockMask::causal(MaskShape::new(s.lq, s.lk)).unwrap());
    let mut workspace = AttentionWorkspace::new();
    let mut fresh = Vec::new();
    for (shape, mask) in shapes.iter().zip(&masks) {
        let [q, k, v, o] = shape.min_lens().map(|len| random(len, &mut rng));
        let [q, k, v, mut o] = [q, k, v, o].map(|x| cuda.upload(&x).unwrap());
        let mask = DeviceBlockMask::upload(cuda, mask).unwrap();
        workspace.reserve::<f16>(cuda, shape, &mask).unwrap();
        attention(
            cuda,
            shape,
            Inputs {
                q: &q,
                k: &k,
                v: &v,
            },
            &mask,
            &mut o,
            None,
            0.1,
        )
        .unwrap();
        fresh.push((q, k, v, mask, cuda.download(&o).unwrap()));
    }
    let reserved = workspace.bytes();
    assert!(
        reserved > 0,
        "decode shapes split the keys, so they need a workspace"
    );
    for _ in 0..2 {
        for (shape, (q, k, v, mask, want)) in shapes.iter().zip(&fresh) {
            let mut o = cuda.upload(&vec![f16::NAN; want.len()]).unwrap();
            let inputs = Inputs { q, k, v };
            let outputs = Outputs {
                o: &mut o,
                lse: None,
            };
            attention_with_workspace(cuda, shape, inputs, mask, outputs, 0.1, &mut workspace)
                .unwrap();
            let got = cuda.download(&o).unwrap();
            let same = got
                .iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{shape:?} (seed {seed}): differs from a call with a fresh workspace"
            );
        }
    }
    assert_eq!(workspace.bytes(), reserved, "a reserved workspace grew");
}

fn dense_mask_is_plain_attention(backends: &Backends, backend: Backend) {
    // softmax(q·kᵀ·scale)·v computed here from its definition, against the device with the
    // dense mask (ragged lengths: the last key block is part padding).
    let seed = common::seed();
    let mut rng = Rng::new(seed);
    let (lq, lk, d) = (100, 150, 64);
    let attention = AttentionShape::new(1, lq, lk, 1, 1, d).unwrap();
    let (q, k, v) = (
        random(lq * d, &mut rng),
        random(lk * d, &mut rng),
        random(lk * d, &mut rng),
    );
    let rows = |x: &[f16], n: usize| -> Vec<Vec<f64>> {
        (0..n)
            .map(|r| x[r * d..][..d].iter().map(|&v| v.into()).collect())
            .collect()
    };
    let (queries, keys, values) = (rows(&q, lq), rows(&k, lk), rows(&v, lk));
    let mut want = (Vec::new(), Vec::new());
    for query in &queries {
        let (o, lse) = naive_row(query, &keys, &values, &vec![true; lk], 0.125);
        want.0.extend(o);
        want.1.push(lse);
    }
    let mask = BlockMask::dense(shape(lq, lk, 64)).unwrap();
    let inputs = [&q[..], &k, &v];
    let out = tilefuse::attention::run(
        backends,
        backend,
        &attention,
        inputs,
        &mask,
        0.125,
        Output::Input,
    );
    let (o, lse) = out.unwrap().expect("a device path");
    let c = compare(&o, &want.0, Tolerance::F16);
    assert!(c.passed(), "o (seed {seed}): {c}");
    let c = compare(&lse, &want.1, Tolerance::F16);
    assert!(c.passed(), "lse (seed {seed}): {c}");
}

fn misaligned_strides_are_refused_at_launch(backends: &Backends, backend: Backend) {
    let shape = AttentionShape::new(1, 4, 4, 2, 2, 64).unwrap();
    let packed = shape.layout();
    let mask = BlockMask::dense(MaskShape::new(4, 4)).unwrap();
    let k_seq = Strides {
        seq: 2 * 64 + 4,
        ..packed.k
    };
    let v_head = Strides {
        head: 64 + 4,
        ..packed.v
    };
    let o_start = Strides {
        start: 4,
        ..packed.o
    };
    let layouts = [
        ("k", Layout { k: k_seq, ..packed }),
        (
            "v",
            Layout {
                v: v_head,
                ..packed
            },
        ),
        (
            "o",
            Layout {
                o: o_start,
                ..packed
            },
        ),
    ];
    for (name, layout) in layouts {
        let shape = shape.with_layout(layout).unwrap();
        let [q_len, k_len, v_len, _] = shape.min_lens();
        let q = vec![f16::ONE; q_len];
        let (k, v) = (vec![f16::ONE; k_len], vec![f16::ONE; v_len]);
        let out = tilefuse::attention::run(
            backends,
            backend,
            &shape,
            [&q, &k, &v],
            &mask,
            1.0,
            Output::Input,
        );
        match out {
            Err(Error::InvalidArgument { what, .. }) => assert_eq!(what, name),
            other => panic!("{name}: expected InvalidArgument, got {other:?}"),
        }
    }
}

fn one_qkv_buffer(backends: &Backends, backend: Backend) {
    // q, k and v rows interleaved in one [b, l, 3, h, d] projection, told apart by their
    // starts; the same data serves as all three inputs.
    let seed = common::seed();
    let mut rng = Rng::new(seed);
    let (b, l, h, d) = (2, 150, 4, 64);
    let qkv = Strides {
        start: 0,
        batch: l * 3 * h * d,
        seq: 3 * h * d,
        head: d,
    };
    let layout = Layout {
        q: qkv,
        k: Strides {
            start: h * d,
            ..qkv
        },
        v: Strides {
            start: 2 * h * d,
            ..qkv
        },
        o: Strides::packed(l, h, d),
    };
    let shape = AttentionShape::new(b, l, l, h, h, d).unwrap();
    let shape = shape.with_layout(layout).unwrap();
    let buffer = random(b * l * 3 * h * d, &mut rng);
    let mask = BlockMask::causal(self::shape(l, l, 64)).unwrap();
    let run = tilefuse::attention::run(
        backends,
        backend,
        &shape,
        [&buffer, &buffer, &buffer],
        &mask,
        0.125,
        Output::Input,
    );
    let (o, lse) = run.unwrap().expect("a device path");
    let want = reference(&shape, &buffer, &buffer, &buffer, &mask, 0.125).unwrap();
    let c = compare(&o, &want.o, Tolerance::F16);
    assert!(c.passed(), "o (seed {seed}): {c}");
    let c = compare(&lse, &want.lse, Tolerance::F16);
    assert!(c.passed(), "lse (seed {seed}): {c}");
}

#[cfg(feature = "wgpu")]
#[test]
fn wgsl_writes_f32_outputs_within_the_f32_bound() {
    if common::available(Backend::Wgpu).is_none() {
        return;
    }
    let backends = common::backends();
    for mask in [
        MaskKind::Causal,
        MaskKind::Window(90, false),
        MaskKind::EmptyRows,
    ] {
        for (bf16, strided) in [(false, false), (true, true)] {
            let case = Case {
                mask,
                bf16,
                strided,
                heads_q: 4,
                output: Output::F32,
                ..Case::new(300, 250)
            };
            assert_case(backends, Backend::Wgpu, case);
        }
    }
}

fn every_registered_case_passes(backends: &Backends, backend: Backend) {
    common::assert_registered_cases("attention", backends, backend);
}

fn shape(lq: usize, lk: usize, block: usize) -> MaskShape {
    MaskShape {
        block_m: block,
        block_n: block,
        ..MaskShape::new(lq, lk)
    }
}

/// Every (i, j) the mask allows, checked against a predicate over positions.
fn assert_allows(mask: &BlockMask, expected: impl Fn(usize, usize) -> bool, what: &str) {
    let s = mask.shape();
    for i in 0..s.lq {
        for j in 0..s.lk {
            assert_eq!(
                mask.allows(0, 0, i, j),
                expected(i, j),
                "{what}: query {i}, key {j}"
            );
        }
    }
}

#[test]
fn element_masks_follow_bottom_right_alignment() {
    for (lq, lk) in [(300, 300), (200, 513), (513, 200), (1, 777)] {
        let aligned = |i: usize| i as i64 + lk as i64 - lq as i64;
        let causal = BlockMask::causal(shape(lq, lk, 64)).unwrap();
        assert_allows(&causal, |i, j| j as i64 <= aligned(i), "causal");
        let window = BlockMask::sliding_window(shape(lq, lk, 128), 100, false).unwrap();
        assert_allows(
            &window,
            |i, j| (aligned(i) - j as i64).abs() < 100,
            "window",
        );
        let causal_window = BlockMask::sliding_window(shape(lq, lk, 64), 70, true).unwrap();
        assert_allows(
            &causal_window,
            |i, j| (0..70).contains(&(aligned(i) - j as i64)),
            "causal window",
        );
        let dense = BlockMask::dense(shape(lq, lk, 128)).unwrap();
        assert_allows(&dense, |_, _| true, "dense");
    }
    // Windows past any length reach every key (causal: every earlier key), without overflow.
    for w in [1 << 40, i64::MAX as usize, usize::MAX] {
        for (i, j) in [(0, 0), (0, 776), (99, 0), (99, 776)] {
            assert!(ElementMask::SlidingWindow(w).allows(i, j, 100, 777));
            let earlier = j <= i + 677;
            assert_eq!(ElementMask::CausalWindow(w).allows(i, j, 100, 777), earlier);
        }
    }
}

#[test]
fn classified_blocks_are_full_only_where_every_pair_is_allowed() {
    let mask = BlockMask::sliding_window(shape(1000, 777, 64), 150, true).unwrap();
    let s = mask.shape();
    for q in 0..s.q_blocks() {
        for kv in 0..s.kv_blocks() {
            let pairs: Vec<bool> = (q * 64..((q + 1) * 64).min(s.lq))
                .flat_map(|i| (kv * 64..((kv + 1) * 64).min(s.lk)).map(move |j| (i, j)))
                .map(|(i, j)| ElementMask::CausalWindow(150).allows(i, j, s.lq, s.lk))
                .collect();
            let expected = match (pairs.iter().any(|&p| p), pairs.iter().all(|&p| p)) {
                (false, _) => BlockKind::Skip,
                (true, true) => BlockKind::Full,
                (true, false) => BlockKind::Partial,
            };
            assert_eq!(
                mask.kind(0, 0, q, kv).unwrap(),
                expected,
                "block ({q}, {kv})"
            );
        }
    }
}

#[test]
fn streaming_keeps_sinks_and_the_local_band() {
    let mask = BlockMask::streaming(shape(1024, 1024, 128), 128, 256).unwrap();
    for q in 0..8 {
        let (partial, full) = mask.blocks(0, 0, q).unwrap();
        let mut visited: Vec<u32> = partial.iter().chain(full).copied().collect();
        visited.sort();
        let mut expected: Vec<u32> = [0, q.saturating_sub(1) as u32, q as u32].into();
        expected.dedup();
        assert_eq!(visited, expected, "query block {q}");
        assert_eq!(partial, &[q as u32], "the diagonal block is the causal one");
    }
}

#[test]
fn bigbird_has_band_globals_and_seeded_random_blocks() {
    let s = MaskShape {
        heads: 2,
        ..shape(2048, 2048, 64)
    };
    let mask = BlockMask::bigbird(s, 1, 1, 2, 7).unwrap();
    assert_eq!(
        mask,
        BlockMask::bigbird(s, 1, 1, 2, 7).unwrap(),
        "same seed, same mask"
    );
    assert_ne!(mask, BlockMask::bigbird(s, 1, 1, 2, 8).unwrap());
    for h in 0..2 {
        for q in 0..32 {
            for kv in 0..32 {
                let kind = mask.kind(0, h, q, kv).unwrap();
                if q.abs_diff(kv) <= 1 || q == 0 || kv == 0 {
                    assert_eq!(kind, BlockKind::Full, "band or global ({h}, {q}, {kv})");
                }
                assert_ne!(kind, BlockKind::Partial, "BigBird has no element mask");
            }
            let (_, full) = mask.blocks(0, h, q).unwrap();
            assert!(full.len() <= 3 + 1 + 2 || q == 0, "row {q}: {full:?}");
        }
    }
}

#[test]
fn vertical_slash_picks_columns_and_diagonals_causally() {
    let mask = BlockMask::vertical_slash(shape(1024, 1024, 128), &[0, 3], &[0, 2]).unwrap();
    for q in 0..8usize {
        for kv in 0..8usize {
            let expected = kv <= q && (kv == 0 || kv == 3 || kv == q || kv + 2 == q);
            assert_eq!(
                mask.kind(0, 0, q, kv).unwrap() != BlockKind::Skip,
                expected,
                "({q}, {kv})"
            );
        }
    }
}

#[test]
fn closures_and_layouts_build_the_same_mask() {
    let s = MaskShape {
        heads: 3,
        ..shape(300, 200, 64)
    };
    let kind = |_: usize, h: usize, q: usize, kv: usize| match (h + q + kv) % 3 {
        0 => BlockKind::Skip,
        1 => BlockKind::Partial,
        _ => BlockKind::Full,
    };
    let from_fn = BlockMask::from_fn(s, ElementMask::Causal, kind).unwrap();
    let layout: Vec<u8> = (0..3)
        .flat_map(|h| (0..5).flat_map(move |q| (0..4).map(move |kv| ((h + q + kv) % 3) as u8)))
        .collect();
    assert_eq!(
        BlockMask::from_layout(s, ElementMask::Causal, &layout).unwrap(),
        from_fn
    );
    let stats = from_fn.stats();
    assert!((stats.density - 40.0 / 60.0).abs() < 1e-12, "{stats:?}");
    assert!(matches!(
        BlockMask::from_layout(s, ElementMask::None, &layout[1..]),
        Err(Error::Length { .. })
    ));
    let mut bad = layout.clone();
    bad[5] = 3;
    assert!(matches!(
        BlockMask::from_layout(s, ElementMask::None, &bad),
        Err(Error::InvalidArgument { what: "layout", .. })
    ));
}

#[test]
fn shapes_are_validated() {
    assert!(
        BlockMask::dense(MaskShape {
            block_m: 32,
            ..MaskShape::new(10, 10)
        })
        .is_err()
    );
    assert!(BlockMask::dense(MaskShape::new(0, 10)).is_err());
    assert!(BlockMask::sliding_window(MaskShape::new(10, 10), 0, true).is_err());
    assert!(matches!(
        AttentionShape::new(1, 8, 8, 6, 4, 64),
        Err(Error::InvalidArgument {
            what: "heads_kv",
            ..
        })
    ));
    let attention = AttentionShape::new(2, 100, 100, 4, 2, 64).unwrap();
    let wrong_heads = BlockMask::dense(MaskShape {
        heads: 2,
        ..MaskShape::new(100, 100)
    })
    .unwrap();
    assert!(attention.check_mask(&wrong_heads).is_err());
    let wrong_length = BlockMask::dense(MaskShape::new(100, 99)).unwrap();
    assert!(attention.check_mask(&wrong_length).is_err());
    // The fields are public: sizes changed after `new` are checked again before any use.
    let mut grown = AttentionShape::new(1, 1, 1, 1, 1, 8).unwrap();
    grown.lk = 1 << 31;
    let (one, tiny) = (
        [f16::ONE; 8],
        BlockMask::dense(MaskShape::new(1, 1)).unwrap(),
    );
    assert!(matches!(
        reference(&grown, &one, &one, &one, &tiny, 1.0),
        Err(Error::InvalidArgument { what: "k", .. })
    ));
}

#[test]
fn layouts_are_validated() {
    let shape = AttentionShape::new(2, 100, 60, 4, 2, 64).unwrap();
    let packed = shape.layout();
    assert_eq!(packed.q, Strides::packed(100, 4, 64));
    assert_eq!(
        shape.min_lens(),
        [
            2 * 100 * 4 * 64,
            2 * 60 * 2 * 64,
            2 * 60 * 2 * 64,
            2 * 100 * 4 * 64
        ]
    );
    let with = |layout: Layout| shape.with_layout(layout);
    let invalid = |result: Result<AttentionShape, Error>, name: &str| match result {
        Err(Error::InvalidArgument { what, .. }) => assert_eq!(what, name),
        other => panic!("{name}: expected InvalidArgument, got {other:?}"),
    };
    // Not a multiple of 8 elements: a valid layout (the reference takes it); kernels refuse
    // it at launch (misaligned_strides_are_refused_at_launch).
    let q = Strides {
        seq: 4 * 64 + 4,
        ..packed.q
    };
    assert!(with(Layout { q, ..packed }).is_ok());
    // Rows of o overlapping (head stride below d), or two positions on one row.
    let o = Strides {
        head: 32,
        ..packed.o
    };
    invalid(with(Layout { o, ..packed }), "o");
    let o = Strides { seq: 0, ..packed.o };
    invalid(with(Layout { o, ..packed }), "o");
    // The same strides on an input are fine (reads may overlap: a broadcast key).
    let k = Strides { seq: 0, ..packed.k };
    assert!(with(Layout { k, ..packed }).is_ok());
    // Past 2^31 elements.
    let v = Strides {
        batch: 1 << 31,
        ..packed.v
    };
    invalid(with(Layout { v, ..packed }), "v");
    let v = Strides {
        batch: usize::MAX / 2,
        ..packed.v
    };
    invalid(with(Layout { v, ..packed }), "v");
    // A dimension of one element may have any stride.
    let one = AttentionShape::new(1, 1, 60, 1, 1, 64).unwrap();
    let q = Strides {
        start: 0,
        batch: 3,
        seq: 5,
        head: usize::MAX,
    };
    let one = one.with_layout(Layout { q, ..one.layout() }).unwrap();
    assert_eq!(one.min_lens()[0], 64);
}

#[test]
fn the_reference_reads_strided_inputs() {
    let seed = common::seed();
    let mut rng = Rng::new(seed);
    let case = Case {
        batch: 2,
        heads_q: 4,
        strided: true,
        ..Case::new(70, 90)
    };
    let strided = case.shape().unwrap();
    let packed = Case {
        strided: false,
        ..case
    }
    .shape()
    .unwrap();
    let mask = case.block_mask().unwrap();
    // Packed inputs, then the same rows placed at the strided offsets.
    let tensors = [
        (strided.layout().q, packed.layout().q, [2, 70, 4], 0),
        (strided.layout().k, packed.layout().k, [2, 90, 1], 1),
        (strided.layout().v, packed.layout().v, [2, 90, 1], 2),
    ];
    let mut inputs: [(Vec<f64>, Vec<f64>); 3] = Default::default();
    for (to, from, [b, l, h], i) in tensors {
        let values: Vec<f64> = (0..b * l * h * 64)
            .map(|_| rng.uniform(-1.0, 1.0))
            .collect();
        let mut spread = vec![f64::NAN; strided.min_lens()[i]];
        for (bb, ll, hh) in
            (0..b).flat_map(|bb| (0..l).flat_map(move |ll| (0..h).map(move |hh| (bb, ll, hh))))
        {
            spread[to.offset(bb, ll, hh)..][..64]
                .copy_from_slice(&values[from.offset(bb, ll, hh)..][..64]);
        }
        inputs[i] = (values, spread);
    }
    let [(q, qs), (k, ks), (v, vs)] = inputs;
    let want = reference(&packed, &q, &k, &v, &mask, 0.125).unwrap();
    let got = reference(&strided, &qs, &ks, &vs, &mask, 0.125).unwrap();
    assert_eq!(got, want, "seed {seed}");
    // A buffer that stops short of the last row is refused.
    let short = &qs[..qs.len() - 1];
    assert!(reference(&strided, short, &ks, &vs, &mask, 0.125).is_err());
}

fn random(len: usize, rng: &mut Rng) -> Vec<f16> {
    (0..len)
        .map(|_| f16::from_f64(rng.uniform(-1.0, 1.0)))
        .collect()
}

/// Plain softmax attention of one (batch, head, query) row over the keys `allowed`.
fn naive_row(
    q: &[f64],
    keys: &[Vec<f64>],
    values: &[Vec<f64>],
    allowed: &[bool],
    scale: f64,
) -> (Vec<f64>, f64) {
    let scores: Vec<f64> = keys
        .iter()
        .map(|k| scale * q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>())
        .collect();
    let weights: Vec<f64> = scores
        .iter()
        .zip(allowed)
        .map(|(s, &a)| if a { s.exp() } else { 0.0 })
        .collect();
    let sum: f64 = weights.iter().sum();
    if sum == 0.0 {
        return (vec![0.0; q.len()], f64::NEG_INFINITY);
    }
    let out = (0..q.len())
        .map(|c| {
            weights
                .iter()
                .zip(values)
                .map(|(w, v)| w * v[c])
                .sum::<f64>()
                / sum
        })
        .collect();
    (out, sum.ln())
}

#[test]
fn reference_is_masked_softmax_with_gqa_and_empty_rows() {
    let seed = common::seed();
    let mut rng = Rng::new(seed);
    let s = AttentionShape::new(2, 70, 90, 4, 2, 8).unwrap();
    let (q, k, v) = (
        random(2 * 70 * 4 * 8, &mut rng),
        random(2 * 90 * 2 * 8, &mut rng),
        random(2 * 90 * 2 * 8, &mut rng),
    );
    // Query block 0 of head 1 sees nothing; the rest is causal.
    let mask = BlockMask::from_fn(
        MaskShape {
            heads: 4,
            ..shape(70, 90, 64)
        },
        ElementMask::Causal,
        |_, h, q, kv| {
            if h == 1 && q == 0 {
                BlockKind::Skip
            } else if kv == 0 {
                BlockKind::Full
            } else {
                BlockKind::Partial
            }
        },
    )
    .unwrap();
    let out = reference(&s, &q, &k, &v, &mask, 0.35).unwrap();
    // Row `l` of (batch b, head h) in a [b, len, heads, 8] tensor.
    let row = |x: &[f16], b: usize, l: usize, len: usize, heads: usize, h: usize| -> Vec<f64> {
        x[((b * len + l) * heads + h) * 8..][..8]
            .iter()
            .map(|&v| v.into())
            .collect()
    };
    for b in 0..2 {
        for h in 0..4 {
            let kv_head = h / 2;
            let keys: Vec<Vec<f64>> = (0..90).map(|j| row(&k, b, j, 90, 2, kv_head)).collect();
            let values: Vec<Vec<f64>> = (0..90).map(|j| row(&v, b, j, 90, 2, kv_head)).collect();
            for i in 0..70 {
                let allowed: Vec<bool> = (0..90).map(|j| mask.allows(b, h, i, j)).collect();
                let (o, lse) = naive_row(&row(&q, b, i, 70, 4, h), &keys, &values, &allowed, 0.35);
                let got = &out.o[((b * 70 + i) * 4 + h) * 8..][..8];
                for (g, w) in got.iter().zip(&o) {
                    assert!((g - w).abs() < 1e-12, "seed {seed}: ({b}, {h}, {i})");
                }
                let got_lse = out.lse[(b * 4 + h) * 70 + i];
                assert!(
                    got_lse == lse || (got_lse - lse).abs() < 1e-12,
                    "seed {seed}: lse ({b}, {h}, {i})"
                );
                if h == 1 && i < 64 {
                    assert_eq!(got_lse, f64::NEG_INFINITY);
                    assert!(got.iter().all(|&x| x == 0.0));
                }
            }
        }
    }
}

/// The reference's NaN semantics, spelled out, with a causal mask over 140 queries and keys
/// in blocks of 64 (query i sees keys 0..=i): a NaN in query 5 makes row 5 NaN (o and lse);
/// a −inf in key 130 makes every row from 130 on NaN; a NaN and a +inf in the values of keys
/// 100 and 65 (key block 1) make columns 3 and 6 NaN in every row of the query blocks that
/// list key block 1 (rows 64 on, those before 100 too: a listed block is computed whole),
/// leaving lse alone; head 1's first block sees no key and stays o = 0, lse = −inf.
#[test]
fn the_reference_makes_nan_what_non_finite_inputs_reach() {
    let seed = common::seed();
    let mut rng = Rng::new(seed);
    let s = AttentionShape::new(1, 140, 140, 2, 1, 8).unwrap();
    let (mut q, mut k, mut v) = (
        random(140 * 2 * 8, &mut rng),
        random(140 * 8, &mut rng),
        random(140 * 8, &mut rng),
    );
    let causal = BlockMask::causal(shape(140, 140, 64)).unwrap();
    let heads = MaskShape {
        heads: 2,
        ..shape(140, 140, 64)
    };
    let mask = BlockMask::from_fn(heads, ElementMask::Causal, |b, h, qb, kv| {
        if h == 1 && qb == 0 {
            BlockKind::Skip
        } else {
            causal.kind(b, 0, qb, kv).unwrap()
        }
    })
    .unwrap();
    for h in 0..2 {
        q[(5 * 2 + h) * 8] = f16::NAN;
    }
    k[130 * 8 + 2] = f16::NEG_INFINITY;
    v[100 * 8 + 3] = f16::NAN;
    v[65 * 8 + 6] = f16::INFINITY;
    let out = reference(&s, &q, &k, &v, &mask, 0.35).unwrap();
    for h in 0..2 {
        for i in 0..140 {
            let o = &out.o[(i * 2 + h) * 8..][..8];
            let lse = out.lse[h * 140 + i];
            let what = format!("seed {seed}: head {h}, query {i}: o {o:?}, lse {lse}");
            if h == 1 && i < 64 {
                assert!(
                    o.iter().all(|&x| x == 0.0) && lse == f64::NEG_INFINITY,
                    "{what}"
                );
            } else if i == 5 || i >= 130 {
                assert!(o.iter().all(|x| x.is_nan()) && lse.is_nan(), "{what}");
            } else {
                assert!(lse.is_finite(), "{what}");
                for (c, x) in o.iter().enumerate() {
                    let reached = i >= 64 && (c == 3 || c == 6);
                    assert_eq!(x.is_nan(), reached, "{what}, column {c}");
                    assert!(x.is_nan() || x.is_finite(), "{what}, column {c}");
                }
            }
        }
    }
}

#[test]
fn full_blocks_equal_partial_blocks_without_an_element_mask() {
    let mut rng = Rng::new(common::seed());
    let s = AttentionShape::new(1, 200, 130, 2, 1, 16).unwrap();
    let (q, k, v) = (
        random(200 * 2 * 16, &mut rng),
        random(130 * 16, &mut rng),
        random(130 * 16, &mut rng),
    );
    let full = BlockMask::dense(shape(200, 130, 64)).unwrap();
    let partial = BlockMask::from_fn(shape(200, 130, 64), ElementMask::None, |_, _, _, _| {
        BlockKind::Partial
    })
    .unwrap();
    let (a, b) = (
        reference(&s, &q, &k, &v, &full, 0.25).unwrap(),
        reference(&s, &q, &k, &v, &partial, 0.25).unwrap(),
    );
    assert_eq!(a, b);
}

/// A mask's shape and CSR parts: partial offsets, partial blocks, full offsets, full blocks.
type Parts = (MaskShape, Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>);

/// Valid parts of a random mask, and one corruption that must be rejected.
fn corrupted(seed: u64, kind: u8) -> Option<Parts> {
    let s = MaskShape {
        heads: 2,
        ..shape(500, 400, 128)
    };
    let mut rng = Rng::new(seed);
    let layout: Vec<u8> = (0..2 * 4 * 4).map(|_| rng.below(3) as u8).collect();
    let mask = BlockMask::from_layout(s, ElementMask::Causal, &layout).ok()?;
    let (po, p, fo, f) = mask.parts();
    let (mut po, mut p, mut fo, mut f) = (po.to_vec(), p.to_vec(), fo.to_vec(), f.to_vec());
    match kind % 6 {
        0 if !p.is_empty() => {
            let at = rng.below(p.len() as u64) as usize;
            p[at] = 4; // out of range
        }
        1 if po.len() > 2 => po[0] = 1,
        2 => *fo.last_mut()? += 1,
        3 if p.len() >= 2 && po[1] >= 2 => p.swap(0, 1), // not increasing in row 0
        4 if !p.is_empty() && po[1] >= 1 => {
            // block 0 of row 0 both partial and full
            let block = p[0];
            if !f[..fo[1] as usize].contains(&block) {
                f.insert(0, block);
                f[..fo[1] as usize + 1].sort();
                fo.iter_mut().skip(1).for_each(|o| *o += 1);
            } else {
                return None;
            }
        }
        5 => {
            po.pop();
        }
        _ => return None,
    }
    Some((s, po, p, fo, f))
}

proptest! {
    #[test]
    fn corrupted_masks_are_errors(seed in any::<u64>(), kind in 0u8..6) {
        let parts = corrupted(seed, kind);
        prop_assume!(parts.is_some());
        let (s, po, p, fo, f) = parts.unwrap();
        prop_assert!(BlockMask::from_parts(s, ElementMask::Causal, po, p, fo, f).is_err());
    }

    #[test]
    fn arbitrary_parts_never_panic(
        po in proptest::collection::vec(any::<u32>(), 0..10),
        p in proptest::collection::vec(0u32..8, 0..20),
        fo in proptest::collection::vec(any::<u32>(), 0..10),
        f in proptest::collection::vec(0u32..8, 0..20),
    ) {
        let _ = BlockMask::from_parts(shape(500, 400, 128), ElementMask::None, po, p, fo, f);
    }
}

proptest! {
    /// Sizes whose rows (batch x heads x query blocks) overflow a usize are an error, not a
    /// wrapped count that passes validation.
    #[test]
    fn overflowing_mask_sizes_are_errors(
        batch in 1usize..=usize::MAX,
        heads in 1usize..=usize::MAX,
        lq in 1usize..=usize::MAX,
    ) {
        let s = MaskShape { batch, heads, ..MaskShape::new(lq, 128) };
        let rows = batch.checked_mul(heads).and_then(|n| n.checked_mul(lq.div_ceil(128)));
        prop_assume!(rows.is_none_or(|r| r > u32::MAX as usize));
        prop_assert!(BlockMask::causal(s).is_err());
        prop_assert!(BlockMask::from_layout(s, ElementMask::None, &[]).is_err());
    }

    /// Rows past the mask's own (batch, head, query block) are an error from `blocks` and
    /// `kind`, and see nothing through `allows`; no index panics or reads another row. A
    /// broadcast batch or head takes any index.
    #[test]
    fn out_of_range_rows_are_errors(
        b in any::<usize>(),
        h in any::<usize>(),
        q in any::<usize>(),
        kv in any::<usize>(),
        i in any::<usize>(),
        j in any::<usize>(),
        broadcast in any::<bool>(),
    ) {
        let (batch, heads) = if broadcast { (1, 1) } else { (2, 3) };
        let s = MaskShape { batch, heads, ..MaskShape::new(300, 200) };
        let mask = BlockMask::causal(s).unwrap();
        let b = if b % 2 == 0 { b % 3 } else { b };
        let h = if h % 2 == 0 { h % 4 } else { h };
        let q = if q % 2 == 0 { q % 4 } else { q };
        let row_exists = (broadcast || (b < 2 && h < 3)) && q < 3;
        prop_assert_eq!(mask.blocks(b, h, q).is_ok(), row_exists);
        prop_assert_eq!(mask.kind(b, h, q, kv).is_ok(), row_exists);
        let seen = mask.allows(b, h, i % 400, j % 300);
        if !(broadcast || (b < 2 && h < 3)) {
            prop_assert!(!seen);
        }
    }
}

proptest! {
    /// Element masks take any indices and lengths: the answer is the definition's, computed
    /// without overflow (i + lk − lq wrapped or panicked for lengths near usize::MAX).
    #[test]
    fn element_masks_take_any_indices(
        (i, j) in (common::any_size(), common::any_size()),
        (lq, lk, window) in (common::any_size(), common::any_size(), common::any_size()),
        kind in 0u8..4,
    ) {
        let element = match kind {
            0 => ElementMask::None,
            1 => ElementMask::Causal,
            2 => ElementMask::SlidingWindow(window),
            _ => ElementMask::CausalWindow(window),
        };
        let behind = i as i128 + lk as i128 - lq as i128 - j as i128; // i' − j
        let want = match kind {
            0 => true,
            1 => behind >= 0,
            2 => behind.abs() < window as i128,
            _ => behind >= 0 && behind < window as i128,
        };
        prop_assert_eq!(element.allows(i, j, lq, lk), want);
        if let Ok(key) = i64::try_from(j) {
            let (lo, hi) = element.interval(i, lq, lk);
            prop_assert_eq!((lo..=hi).contains(&key), want);
        }
    }

    /// Any sizes and strides: a shape is an error, or its tensors (every row of d elements)
    /// end below element 2^31.
    #[test]
    fn shapes_and_layouts_take_any_sizes(
        (b, lq, lk) in (common::any_size(), common::any_size(), common::any_size()),
        (hq, hkv, d) in (common::any_size(), common::any_size(), common::any_size()),
        (start, batch, seq, head) in (common::any_size(), common::any_size(), common::any_size(), common::any_size()),
    ) {
        if let Ok(shape) = AttentionShape::new(b, lq, lk, hq, hkv, d) {
            prop_assert!(shape.min_lens().iter().all(|&len| len <= i32::MAX as usize));
        }
        let strides = Strides { start, batch, seq, head };
        let layout = Layout { q: strides, k: strides, v: strides, o: strides };
        let small = AttentionShape::new(2, 3, 5, 2, 1, 8).unwrap();
        if let Ok(shape) = small.with_layout(layout) {
            let last = strides.offset(1, 4, 0) + 8; // k's last row: b = 2, lk = 5, one head
            prop_assert!(last <= shape.min_lens()[1] && last <= i32::MAX as usize);
        }
    }

    /// Every mask builder takes any sizes, windows and counts: an error, or a valid mask
    /// (built only where its block pairs are few: a valid mask costs what it holds).
    #[test]
    fn mask_builders_take_any_sizes(
        (batch, heads, lq, lk) in (common::any_size(), common::any_size(), common::any_size(), common::any_size()),
        (block_m, block_n) in (prop_oneof![Just(64usize), Just(128), common::any_size()], prop_oneof![Just(64usize), Just(128), common::any_size()]),
        (window, sink, local, random) in (common::any_size(), common::any_size(), common::any_size(), common::any_size()),
        causal in any::<bool>(),
        layout in proptest::collection::vec(0u8..4, 0..40),
    ) {
        let s = MaskShape { batch, heads, lq, lk, block_m, block_n };
        let pairs = [batch, heads, lq.div_ceil(block_m.max(1)), lk.div_ceil(block_n.max(1))]
            .into_iter()
            .try_fold(1usize, |n, x| n.checked_mul(x));
        let valid = [batch, heads, lq, lk].iter().all(|&x| x > 0)
            && [block_m, block_n].iter().all(|b| [64, 128].contains(b))
            && pairs.is_some_and(|p| p <= u32::MAX as usize);
        if valid && pairs.is_some_and(|p| p > 4096) {
            return Ok(());
        }
        let built = [
            BlockMask::dense(s),
            BlockMask::causal(s),
            BlockMask::sliding_window(s, window, causal),
            BlockMask::streaming(s, sink, local),
            BlockMask::bigbird(s, window, sink, random, 7),
            BlockMask::vertical_slash(s, &[window, sink], &[local, 0]),
            BlockMask::from_fn(s, ElementMask::SlidingWindow(window), |_, _, q, kv| {
                if (q + kv) % 3 == 0 { BlockKind::Partial } else { BlockKind::Full }
            }),
            BlockMask::from_layout(s, ElementMask::Causal, &layout),
        ];
        for (n, mask) in built.into_iter().enumerate() {
            match mask {
                Ok(mask) => {
                    prop_assert!(valid, "builder {} accepted {:?}", n, s);
                    let _ = mask.stats();
                }
                Err(_) => prop_assert!(!valid || n >= 2, "builder {} refused {:?}", n, s),
            }
        }
    }
}

/// On a device whose storage bindings hold 64 KiB, q and o of 150 KB and k, v of 75 KB span
/// several windows, packed and strided, and attention still matches the reference; with
/// 2000 keys (two passes on lavapipe) one head's pass state of 158 KB spans three.
#[cfg(feature = "wgpu")]
#[test]
fn tensors_past_one_binding_run_in_windows() {
    let Some(backends) = common::capped_wgpu() else {
        return;
    };
    assert!(600 * 2 * 64 * 2 > common::CAPPED_BINDING as usize);
    for strided in [false, true] {
        let case = Case {
            strided,
            ..Case::new(600, 600)
        };
        assert_case(backends, Backend::Wgpu, case);
    }
    let long = Case {
        mask: MaskKind::Dense,
        ..Case::new(600, 2000)
    };
    assert_case(backends, Backend::Wgpu, long);
}
