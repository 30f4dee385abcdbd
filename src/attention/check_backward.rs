//! The attention backward's cases for `tilefuse check` and its case files (`tilefuse run
//! attention-backward`). Only the CPU has a path so far: it checks [`blockwise_backward`]
//! against [`reference_backward`].

use half::f16;

use super::{Case, MaskKind, blockwise_backward, reference_backward};
use crate::error::Result;
use crate::harness::{Backend, Backends, CheckCase, Comparison, OpEntry, Rng, Tolerance, compare};

/// The registry entry of the backward pass.
pub const BACKWARD_ENTRY: OpEntry = OpEntry {
    name: "attention-backward",
    about: "block-sparse attention backward: dq, dk, dv from do (CPU: reference and blockwise algorithm)",
    kernel_modules: &[],
    check_cases,
    bench_cases: Vec::new,
    #[cfg(feature = "cli")]
    file: Some(&super::cli::BACKWARD_FILE),
    #[cfg(all(feature = "cli", feature = "cuda"))]
    profile: None,
};

/// Runs `case`'s backward pass on `backend` with f16 inputs and dO from `seed`: on the CPU,
/// [`blockwise_backward`] against [`reference_backward`] (two f64 algorithms, within 1e-12);
/// `Ok(None)` on a backend without a backward path (every GPU backend, so far).
pub fn check_backward(
    _backends: &Backends,
    backend: Backend,
    case: &Case,
    seed: u64,
) -> Result<Option<Comparison>> {
    if backend != Backend::Cpu {
        return Ok(None);
    }
    let shape = case.shape()?;
    let mask = case.block_mask()?;
    let mut rng = Rng::new(seed);
    let [q_len, k_len, v_len, o_len] = shape.min_lens();
    let mut random = |len: usize| -> Vec<f16> {
        (0..len)
            .map(|_| f16::from_f64(rng.uniform(-2.0, 2.0)))
            .collect()
    };
    let (q, k, v, d_o) = (random(q_len), random(k_len), random(v_len), random(o_len));
    let scale = 1.0 / (shape.d as f64).sqrt();
    let want = reference_backward(&shape, [&q, &k, &v], &d_o, &mask, scale)?;
    let got = blockwise_backward(&shape, [&q, &k, &v], &d_o, &mask, scale)?;
    let bound = Tolerance {
        rel_l2: 1e-12,
        element: 1e-12,
    };
    let all = |g: super::Gradients| [g.dq, g.dk, g.dv].concat();
    Ok(Some(compare(&all(got), &all(want), bound)))
}

fn check_cases() -> Vec<CheckCase> {
    let cases = [
        Case::new(200, 200),
        Case {
            mask: MaskKind::Window(90, true),
            heads_q: 4,
            heads_kv: 2,
            ..Case::new(150, 300)
        },
        Case {
            mask: MaskKind::EmptyRows,
            d: 128,
            block: 128,
            ..Case::new(300, 260)
        },
    ];
    cases
        .into_iter()
        .map(|case| {
            CheckCase::new(
                "attention-backward",
                case.to_string(),
                move |backends, backend| check_backward(backends, backend, &case, 0x5eed),
            )
        })
        .collect()
}
