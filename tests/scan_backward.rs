//! The scan's backward pass: the f64 reference against finite differences of the forward
//! reference, against an independent algorithm, and at its edges (resets, h0, dh_last); the
//! device kernels against the reference (the CPU backend checks the independent algorithm).
// Built without CUDA, the per-backend bodies have nothing to run.
#![cfg_attr(
    not(all(feature = "cuda", feature = "wgpu")),
    allow(dead_code, unused_imports)
)]

mod common;

use num_complex::{Complex32, Complex64};
use tilefuse::Error;
use tilefuse::harness::{Backend, Backends, Rng, Tolerance, compare};
use tilefuse::scan::{
    BackwardCase, Case, Cotangents, Decay, Inputs, Layout, ResetPattern, Scan, ScanElement,
    Storage, associative_backward, check_backward, random_cotangents, reference,
    reference_backward, run_backward,
};

on_backends!([cpu, cuda, wgpu] => [
    lengths_of_time,
    resets_decays_layouts_and_h0,
    states_kept_or_recomputed,
    long_memory_stays_within_its_bound,
    sixteen_bit_cotangents_and_states,
    every_registered_case_passes,
]);
/// Properties of the GPU kernels alone.
mod gpu {
    use super::*;
    on_backends!([cuda, wgpu] => [
        runs_are_bitwise_deterministic,
        millions_of_steps,
    ]);
}

fn assert_case(backends: &Backends, backend: Backend, case: BackwardCase) {
    common::assert_seeded(&case.to_string(), |seed| {
        check_backward(backends, backend, &case, seed)
    });
}

/// u, h, dh and du in f16 and bf16 (complex as pairs), g in f32: states kept and recomputed,
/// both decays, with and without dh_last, an odd count of 16-bit values.
fn sixteen_bit_cotangents_and_states(backends: &Backends, backend: Backend) {
    for storage in [Storage::F16, Storage::Bf16] {
        for (i, recompute) in [false, true].into_iter().enumerate() {
            let forward = Case {
                storage,
                complex: i == 1,
                decay: if i == 0 {
                    Decay::TimeVarying
                } else {
                    Decay::TimeInvariant
                },
                resets: ResetPattern::Random(0.05),
                ..Case::new(3, 1500, 37)
            };
            let case = BackwardCase {
                recompute,
                dh_last: i == 0,
                ..BackwardCase::new(forward)
            };
            assert_case(backends, backend, case);
        }
    }
}

fn lengths_of_time(backends: &Backends, backend: Backend) {
    // One step; less than, exactly and just past a chunk; many chunks.
    for time in [1, 100, 128, 129, 5000] {
        assert_case(backends, backend, BackwardCase::new(Case::new(2, time, 33)));
    }
}

fn resets_decays_layouts_and_h0(backends: &Backends, backend: Backend) {
    let patterns = [
        ResetPattern::Never,
        ResetPattern::EveryStep,
        ResetPattern::AtStart,
        ResetPattern::ChunkBoundaries,
        ResetPattern::Random(0.3),
    ];
    for (i, resets) in patterns.into_iter().enumerate() {
        let forward = Case {
            complex: i % 2 == 1,
            decay: if i % 3 == 0 {
                Decay::TimeVarying
            } else {
                Decay::TimeInvariant
            },
            layout: if i % 2 == 0 {
                Layout::TimeMajor
            } else {
                Layout::BatchMajor
            },
            h0: i % 3 != 1,
            resets,
            ..Case::new(3, 700, 40)
        };
        let case = BackwardCase {
            dh_last: i % 2 == 0,
            ..BackwardCase::new(forward)
        };
        assert_case(backends, backend, case);
    }
}

fn states_kept_or_recomputed(backends: &Backends, backend: Backend) {
    for recompute in [false, true] {
        for complex in [false, true] {
            let forward = Case {
                complex,
                resets: ResetPattern::Random(0.05),
                ..Case::new(2, 3000, 70)
            };
            assert_case(
                backends,
                backend,
                BackwardCase {
                    recompute,
                    ..BackwardCase::new(forward)
                },
            );
        }
    }
}

fn long_memory_stays_within_its_bound(backends: &Backends, backend: Backend) {
    let forward = Case {
        complex: true,
        a_magnitude: (0.999, 0.9999),
        resets: ResetPattern::Never,
        ..Case::new(2, 20_000, 5)
    };
    assert_case(
        backends,
        backend,
        BackwardCase {
            recompute: true,
            ..BackwardCase::new(forward)
        },
    );
}

fn every_registered_case_passes(backends: &Backends, backend: Backend) {
    common::assert_registered_cases("scan-backward", backends, backend);
}

fn runs_are_bitwise_deterministic(backends: &Backends, backend: Backend) {
    let seed = common::seed();
    // Many chunks per row, so the look-back meets its predecessors in different states; a
    // time-invariant a, so da is the fixed-order sum.
    let forward = Case {
        complex: true,
        ..Case::new(2, 65536, 64)
    };
    let scan = forward.scan::<Complex32>().unwrap();
    let inputs = Inputs::random(&forward, &scan, seed);
    let cotangents = random_cotangents(&scan, true, seed ^ 1);
    let run = |recompute| {
        let g = run_backward::<_, f32>(backends, backend, &scan, &inputs, &cotangents, recompute)
            .unwrap()
            .expect("a device path");
        [g.du, g.da, g.dh0.unwrap_or_default()]
            .concat()
            .into_iter()
            .map(f32::to_bits)
            .collect::<Vec<_>>()
    };
    let first = run(false);
    for recompute in [false, true, true] {
        assert!(
            run(recompute) == first,
            "seed {seed}: recompute {recompute} differs"
        );
    }
}

fn millions_of_steps(backends: &Backends, backend: Backend) {
    // More chunks than one dispatch may hold (65535 · 128 steps).
    let forward = Case {
        resets: ResetPattern::Random(0.001),
        ..Case::new(1, 9_000_000, 1)
    };
    assert_case(
        backends,
        backend,
        BackwardCase {
            recompute: true,
            ..BackwardCase::new(forward)
        },
    );
}

/// `L = Σ dh·h + Σ dh_last·h_last` in f64 (plain products: the bilinear pairing whose
/// holomorphic derivatives are JAX's cotangents).
fn loss<T: ScanElement>(scan: &Scan<T>, inputs: &Inputs<T>, ct: &Cotangents<T>) -> Complex64 {
    let states = reference(
        scan,
        &inputs.a,
        &inputs.u,
        &inputs.reset,
        inputs.h0.as_deref(),
    )
    .unwrap();
    let pair = |cts: &[T], values: &[f64]| -> Complex64 {
        let values: Vec<Complex64> = match T::LANES {
            1 => values.iter().map(|&v| Complex64::new(v, 0.0)).collect(),
            _ => values
                .chunks_exact(2)
                .map(|p| Complex64::new(p[0], p[1]))
                .collect(),
        };
        cts.iter().zip(values).map(|(c, v)| c.widen() * v).sum()
    };
    let last = ct
        .dh_last
        .as_deref()
        .map_or(Complex64::default(), |d| pair(d, &states.h_last));
    pair(&ct.dh, &states.h) + last
}

/// One input of a scan, picked out of its inputs.
type Pick<T> = fn(&mut Inputs<T>) -> &mut Vec<T>;

/// The derivative of `loss` along element `i` of one input (selected by `pick`): central
/// differences, each divided by the step the f32 input really took, at two steps combined by
/// Richardson extrapolation (the loss is a polynomial of high degree in `a`, whose central
/// differences alone are off by the step squared times its third derivative).
fn finite_difference<T: ScanElement>(
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    ct: &Cotangents<T>,
    pick: Pick<T>,
    i: usize,
    direction: Complex64,
) -> Complex64 {
    let central = |step: f64| {
        let moved = |sign: f64| {
            let mut moved = inputs.clone();
            let value = &mut pick(&mut moved)[i];
            *value = T::narrow(value.widen() + direction * (sign * step));
            let taken = value.widen();
            (loss(scan, &moved, ct), taken)
        };
        let ((plus, at_plus), (minus, at_minus)) = (moved(1.0), moved(-1.0));
        // The step along `direction` that the rounded inputs took.
        let taken = ((at_plus - at_minus) / direction).re;
        (plus - minus) / taken
    };
    let (coarse, fine) = (central(1.0 / 1024.0), central(1.0 / 2048.0));
    (4.0 * fine - coarse) / 3.0
}

/// The gradient element `i` of `grads` (interleaved f64) as a complex number.
fn element<T: ScanElement>(values: &[f64], i: usize) -> Complex64 {
    match T::LANES {
        1 => Complex64::new(values[i], 0.0),
        _ => Complex64::new(values[2 * i], values[2 * i + 1]),
    }
}

fn assert_close(what: &str, got: Complex64, want: Complex64, seed: u64) {
    let scale = want.norm().max(1e-3);
    assert!(
        (got - want).norm() <= 1e-6 * scale.max(1.0),
        "{what} (seed {seed}): reference {got}, finite differences {want}"
    );
}

/// The reference's du, da and dh0 are the derivatives of the forward reference: central
/// differences on random elements, for f32 and complex64 (real and imaginary steps: the
/// derivative is holomorphic, with no conjugation), both decays and layouts, with resets.
fn matches_finite_differences<T: ScanElement>(case: Case, seed: u64) {
    let scan = case.scan::<T>().unwrap();
    let inputs = Inputs::random(&case, &scan, seed);
    let mut rng = Rng::new(seed ^ 1);
    let ct = random_cotangents(&scan, true, seed ^ 3);
    let grads = reference_backward(&scan, &inputs, &ct).unwrap();
    let directions: &[Complex64] = match T::LANES {
        1 => &[Complex64::new(1.0, 0.0)],
        _ => &[Complex64::new(1.0, 0.0), Complex64::new(0.0, 1.0)],
    };
    let picks: [(&str, Pick<T>, &[f64], usize); 3] = [
        ("du", |i| &mut i.u, &grads.du, scan.states_len()),
        ("da", |i| &mut i.a, &grads.da, scan.a_len()),
        (
            "dh0",
            |i| i.h0.as_mut().unwrap(),
            grads.dh0.as_deref().unwrap(),
            scan.final_len(),
        ),
    ];
    for (what, pick, grad, len) in picks {
        for _ in 0..6 {
            let i = (rng.unit() * len as f64) as usize % len;
            for &direction in directions {
                let want = finite_difference(&scan, &inputs, &ct, pick, i, direction);
                // The derivative along `direction` of a holomorphic loss is g · direction.
                let got = element::<T>(grad, i) * direction;
                assert_close(
                    &format!("{what}[{i}] along {direction}, {case}"),
                    got,
                    want,
                    seed,
                );
            }
        }
    }
}

#[test]
fn reference_matches_finite_differences() {
    let seed = common::seed();
    let base = Case {
        resets: ResetPattern::Random(0.2),
        ..Case::new(2, 40, 3)
    };
    matches_finite_differences::<f32>(base, seed);
    matches_finite_differences::<Complex32>(
        Case {
            decay: Decay::TimeVarying,
            layout: Layout::TimeMajor,
            ..base
        },
        seed,
    );
    matches_finite_differences::<Complex32>(base, seed);
    matches_finite_differences::<f32>(
        Case {
            decay: Decay::TimeVarying,
            resets: ResetPattern::Never,
            ..base
        },
        seed,
    );
}

/// The reference against the associative scan of the time-reversed problem.
#[test]
fn associative_backward_agrees_with_the_reference() {
    let seed = common::seed();
    let cases = [
        Case::new(3, 300, 5),
        Case {
            complex: true,
            decay: Decay::TimeVarying,
            layout: Layout::TimeMajor,
            resets: ResetPattern::Random(0.1),
            h0: false,
            ..Case::new(2, 257, 3)
        },
        Case {
            resets: ResetPattern::EveryStep,
            ..Case::new(2, 9, 2)
        },
        Case {
            complex: true,
            resets: ResetPattern::AtStart,
            ..Case::new(1, 1, 4)
        },
    ];
    for case in cases {
        for dh_last in [false, true] {
            let c = if case.complex {
                agree::<Complex32>(&case, dh_last, seed)
            } else {
                agree::<f32>(&case, dh_last, seed)
            };
            assert!(c.passed(), "{case}, dh_last {dh_last} (seed {seed}): {c}");
        }
    }
}

fn agree<T: ScanElement>(case: &Case, dh_last: bool, seed: u64) -> tilefuse::harness::Comparison {
    let scan = case.scan::<T>().unwrap();
    let inputs = Inputs::random(case, &scan, seed);
    let ct = random_cotangents(&scan, dh_last, seed ^ 2);
    let want = reference_backward(&scan, &inputs, &ct).unwrap();
    let got = associative_backward(&scan, &inputs, &ct).unwrap();
    assert_eq!(got.dh0.is_some(), case.h0);
    let flat = |g: tilefuse::scan::Gradients| [g.du, g.da, g.dh0.unwrap_or_default()].concat();
    compare(
        &flat(got),
        &flat(want),
        Tolerance {
            rel_l2: 1e-12,
            element: 1e-12,
        },
    )
}

/// At a reset the gradient stops: du before it depends only on dh before it, da and dh0
/// vanish where a reset discards what they multiply.
#[test]
fn gradients_stop_at_resets() {
    let scan = Scan::<f32>::new(
        tilefuse::scan::ScanShape::new(1, 4, 1).unwrap(),
        Layout::BatchMajor,
        Decay::TimeVarying,
    );
    let inputs = Inputs {
        a: vec![2.0, 3.0, 5.0, 7.0],
        u: vec![1.0, 1.0, 1.0, 1.0],
        reset: vec![1, 0, 1, 0],
        h0: Some(vec![10.0]),
    };
    // h = [1, 4, 1, 8]
    let ct = Cotangents {
        dh: vec![0.0, 0.0, 0.0, 1.0],
        dh_last: Some(vec![1.0]),
    };
    let grads = reference_backward(&scan, &inputs, &ct).unwrap();
    // g = [0, 0, 7·2, 2]: the reset at t = 2 stops g from reaching t = 1.
    assert_eq!(grads.du, vec![0.0, 0.0, 14.0, 2.0]);
    // da[t] = g[t]·h[t−1] where t has no reset: da[1] = 0·1, da[3] = 2·1.
    assert_eq!(grads.da, vec![0.0, 0.0, 0.0, 2.0]);
    assert_eq!(grads.dh0, Some(vec![0.0]));
}

#[test]
fn wrong_cotangent_lengths_are_errors() {
    let case = Case::new(2, 10, 3);
    let scan = case.scan::<f32>().unwrap();
    let inputs = Inputs::random(&case, &scan, 1);
    let short = Cotangents {
        dh: vec![0.0; scan.states_len() - 1],
        dh_last: None,
    };
    match reference_backward(&scan, &inputs, &short) {
        Err(Error::Length { what: "dh", .. }) => {}
        other => panic!("expected a dh length error, got {other:?}"),
    }
    let wrong_last = Cotangents {
        dh: vec![0.0; scan.states_len()],
        dh_last: Some(vec![0.0; 5]),
    };
    match associative_backward(&scan, &inputs, &wrong_last) {
        Err(Error::Length {
            what: "dh_last", ..
        }) => {}
        other => panic!("expected a dh_last length error, got {other:?}"),
    }
}

/// On a device whose bindings hold 64 KiB, dh, du, h and a time-varying a and da of several
/// windows each.
#[cfg(feature = "wgpu")]
#[test]
fn tensors_past_one_binding_run_in_windows() {
    let Some(backends) = common::capped_wgpu() else {
        return;
    };
    for decay in [Decay::TimeVarying, Decay::TimeInvariant] {
        let forward = Case {
            complex: true,
            decay,
            ..Case::new(2, 1000, 12)
        };
        assert!(2 * 1000 * 12 * 8 > common::CAPPED_BINDING as usize);
        assert_case(backends, Backend::Wgpu, BackwardCase::new(forward));
    }
}

/// One workspace serves forward and backward calls of different shapes, layout after layout:
/// each result is bitwise that of a call with a fresh workspace, and a reserved workspace
/// does not grow.
#[cfg(feature = "cuda")]
#[test]
fn a_kept_workspace_serves_forward_and_backward_calls() {
    use tilefuse::scan::cuda::{
        ScanCotangents, ScanGradients, ScanInputs, ScanWorkspace, scan_backward,
        scan_backward_with_workspace, scan_final, scan_with_workspace,
    };
    let Some(cuda) = common::cuda() else {
        return;
    };
    let seed = common::seed();
    let cases = [
        Case {
            complex: true,
            ..Case::new(2, 5000, 40)
        },
        Case {
            complex: true,
            decay: Decay::TimeVarying,
            ..Case::new(3, 1000, 70)
        },
    ];
    let mut workspace = ScanWorkspace::new();
    for case in &cases {
        let scan = case.scan::<Complex32>().unwrap();
        workspace.reserve(cuda, &scan).unwrap();
        for recompute in [false, true] {
            workspace.reserve_backward(cuda, &scan, recompute).unwrap();
        }
    }
    let reserved = workspace.bytes();
    let floats = |v: &[Complex32]| {
        cuda.upload(bytemuck::cast_slice::<Complex32, f32>(v))
            .unwrap()
    };
    for round in 0..3 {
        for case in &cases {
            let scan = case.scan::<Complex32>().unwrap();
            let inputs = Inputs::random(case, &scan, seed + round);
            let cotangents = random_cotangents(&scan, true, seed ^ round);
            let (a, u, reset) = (
                floats(&inputs.a),
                floats(&inputs.u),
                cuda.upload(&inputs.reset).unwrap(),
            );
            let h0 = inputs.h0.as_deref().map(floats);
            let (dh, dh_last) = (
                floats(&cotangents.dh),
                cotangents.dh_last.as_deref().map(floats),
            );
            let device = ScanInputs {
                a: &a,
                u: &u,
                reset: &reset,
                h0: h0.as_ref(),
            };
            let zeros = |len: usize| cuda.upload(&vec![0.0f32; 2 * len]).unwrap();
            // Forward, kept against fresh.
            let (mut h_last, mut fresh_last) = (zeros(scan.final_len()), zeros(scan.final_len()));
            let no_states = None::<&mut cudarc::driver::CudaSlice<f32>>;
            scan_with_workspace(cuda, &scan, device, no_states, &mut h_last, &mut workspace)
                .unwrap();
            scan_final(cuda, &scan, device, &mut fresh_last).unwrap();
            let what = format!("{case}, round {round} (seed {seed})");
            assert_eq!(
                bits(&cuda.download(&h_last).unwrap()),
                bits(&cuda.download(&fresh_last).unwrap()),
                "forward, {what}"
            );
            // Backward (states recomputed), kept against fresh.
            let run = |kept: Option<&mut ScanWorkspace>| {
                let (mut du, mut da, mut dh0) = (
                    zeros(scan.states_len()),
                    zeros(scan.a_len()),
                    zeros(scan.final_len()),
                );
                let cts = ScanCotangents {
                    dh: &dh,
                    dh_last: dh_last.as_ref(),
                };
                let grads = ScanGradients {
                    du: &mut du,
                    da: &mut da,
                    dh0: Some(&mut dh0),
                };
                match kept {
                    Some(w) => {
                        scan_backward_with_workspace(cuda, &scan, device, None, cts, grads, w)
                    }
                    None => scan_backward(cuda, &scan, device, None, cts, grads),
                }
                .unwrap();
                [du, da, dh0].map(|b| bits(&cuda.download(&b).unwrap()))
            };
            assert!(run(Some(&mut workspace)) == run(None), "backward, {what}");
        }
    }
    assert_eq!(workspace.bytes(), reserved, "a reserved workspace grew");
}

/// The WGSL scan's workspace: one serves forward and backward calls (bf16 states) of
/// different shapes and decays, round after round; each result is bitwise that of a call
/// with a fresh one, and after the first round it no longer grows.
#[cfg(feature = "wgpu")]
#[test]
fn a_kept_wgsl_workspace_serves_forward_and_backward_calls() {
    use tilefuse::scan::wgpu::ScanWorkspace;
    let Some(gpu) = common::wgpu() else {
        return;
    };
    let seed = common::seed();
    let cases = [
        Case {
            complex: true,
            storage: tilefuse::scan::Storage::Bf16,
            ..Case::new(2, 3000, 40)
        },
        Case {
            complex: true,
            decay: Decay::TimeVarying,
            storage: tilefuse::scan::Storage::Bf16,
            ..Case::new(3, 700, 33)
        },
    ];
    let mut workspace = ScanWorkspace::new();
    let mut after_first_round = 0;
    for round in 0..3 {
        for case in &cases {
            let what = format!("{case}, round {round} (seed {seed})");
            let kept = wgsl_calls(gpu, case, seed + round, Some(&mut workspace));
            assert!(kept == wgsl_calls(gpu, case, seed + round, None), "{what}");
        }
        if round == 0 {
            after_first_round = workspace.bytes();
        }
    }
    assert_eq!(workspace.bytes(), after_first_round, "the workspace grew");
}

/// The bits of h_last, du, da and dh0 of a final-state-only forward and a backward pass
/// (recomputing the states) of `case` through WGSL with u, dh and du in bf16, on
/// `workspace` or a fresh one.
#[cfg(feature = "wgpu")]
fn wgsl_calls(
    gpu: &tilefuse::backend::wgpu::Wgpu,
    case: &Case,
    seed: u64,
    workspace: Option<&mut tilefuse::scan::wgpu::ScanWorkspace>,
) -> Vec<Vec<u32>> {
    use tilefuse::scan::wgpu::{
        ScanCotangents, ScanGradients, ScanInputs, ScanWorkspace, scan_backward_with_workspace,
        scan_with_workspace,
    };
    let scan = case.scan::<Complex32>().unwrap();
    let inputs = Inputs::random(case, &scan, seed);
    let cotangents = random_cotangents(&scan, true, seed ^ 1);
    let bf16 = |v: &[Complex32]| {
        let floats: &[f32] = bytemuck::cast_slice(v);
        let values: Vec<half::bf16> = floats.iter().map(|&x| half::bf16::from_f32(x)).collect();
        gpu.upload(&values).unwrap()
    };
    let (a, u, reset) = (
        gpu.upload(&inputs.a).unwrap(),
        bf16(&inputs.u),
        gpu.upload(&inputs.reset).unwrap(),
    );
    let h0 = inputs.h0.as_deref().map(|h0| gpu.upload(h0).unwrap());
    let (dh, dh_last) = (
        bf16(&cotangents.dh),
        gpu.upload(cotangents.dh_last.as_deref().unwrap()).unwrap(),
    );
    let device = ScanInputs {
        a: &a,
        u: &u,
        reset: &reset,
        h0: h0.as_ref(),
    };
    let mut fresh = ScanWorkspace::new();
    let ws: &mut ScanWorkspace = match workspace {
        Some(kept) => kept,
        None => &mut fresh,
    };
    let mut h_last = gpu.zeros::<Complex32>(scan.final_len()).unwrap();
    let no_states = None::<&mut tilefuse::backend::wgpu::GpuBuffer<half::bf16>>;
    scan_with_workspace(gpu, &scan, device, no_states, &mut h_last, ws).unwrap();
    let mut du = gpu.zeros::<half::bf16>(2 * scan.states_len()).unwrap();
    let mut da = gpu.zeros::<Complex32>(scan.a_len()).unwrap();
    let mut dh0 = gpu.zeros::<Complex32>(scan.final_len()).unwrap();
    let cts = ScanCotangents {
        dh: &dh,
        dh_last: Some(&dh_last),
    };
    let grads = ScanGradients {
        du: &mut du,
        da: &mut da,
        dh0: Some(&mut dh0),
    };
    scan_backward_with_workspace(gpu, &scan, device, None, cts, grads, ws).unwrap();
    let complex_bits = |b: &tilefuse::backend::wgpu::GpuBuffer<Complex32>| {
        let values = gpu.download(b).unwrap();
        bits(bytemuck::cast_slice(&values))
    };
    let du_bits = gpu
        .download(&du)
        .unwrap()
        .iter()
        .map(|x| u32::from(x.to_bits()))
        .collect();
    vec![
        complex_bits(&h_last),
        du_bits,
        complex_bits(&da),
        complex_bits(&dh0),
    ]
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// dh0 is the cotangent of a given h0: asked for without one, the caller's buffer is left as
/// it was; with an h0 but not asked for, nothing else changes (WGSL writes it elsewhere).
#[cfg(feature = "wgpu")]
#[test]
fn dh0_follows_h0() {
    use tilefuse::scan::wgpu::{ScanCotangents, ScanGradients, ScanInputs, scan_backward};
    let Some(gpu) = common::wgpu() else {
        return;
    };
    let seed = common::seed();
    for with_h0 in [false, true] {
        let case = Case {
            h0: with_h0,
            ..Case::new(2, 300, 5)
        };
        let scan = case.scan::<f32>().unwrap();
        let inputs = Inputs::random(&case, &scan, seed);
        let cotangents = random_cotangents(&scan, true, seed ^ 1);
        let (a, u, reset) = (
            gpu.upload(&inputs.a).unwrap(),
            gpu.upload(&inputs.u).unwrap(),
            gpu.upload(&inputs.reset).unwrap(),
        );
        let h0 = inputs.h0.as_deref().map(|h0| gpu.upload(h0).unwrap());
        let dh = gpu.upload(&cotangents.dh).unwrap();
        let dh_last = gpu.upload(cotangents.dh_last.as_deref().unwrap()).unwrap();
        let run = |ask_dh0: bool| {
            let (mut du, mut da) = (
                gpu.zeros(scan.states_len()).unwrap(),
                gpu.zeros(scan.a_len()).unwrap(),
            );
            let mut dh0 = gpu.upload(&vec![7.0f32; scan.final_len()]).unwrap();
            let inputs = ScanInputs {
                a: &a,
                u: &u,
                reset: &reset,
                h0: h0.as_ref(),
            };
            let cotangents = ScanCotangents {
                dh: &dh,
                dh_last: Some(&dh_last),
            };
            let gradients = ScanGradients {
                du: &mut du,
                da: &mut da,
                dh0: ask_dh0.then_some(&mut dh0),
            };
            scan_backward(gpu, &scan, inputs, None, cotangents, gradients).unwrap();
            [du, da, dh0].map(|b| gpu.download(&b).unwrap())
        };
        let [du, da, dh0] = run(true);
        let [du_without, da_without, untouched] = run(false);
        assert!(
            du == du_without && da == da_without,
            "h0 {with_h0} (seed {seed})"
        );
        assert!(
            untouched.iter().all(|&x| x == 7.0),
            "a dh0 not asked for was written"
        );
        if !with_h0 {
            assert!(
                dh0.iter().all(|&x| x == 7.0),
                "dh0 written without an h0 (seed {seed})"
            );
        }
    }
}
