//! The specification: dense attention in f64 with the mask materialised.

use super::{AttentionShape, BlockMask};
use crate::error::{Error, Result};

/// The outputs: `o [b, lq, hq, d]` and `lse [b, hq, lq]` (natural log; −inf for a query that
/// sees no key, whose `o` row is 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// Attention outputs.
    pub o: Vec<f64>,
    /// Log-sum-exp of each query's scaled scores.
    pub lse: Vec<f64>,
}

/// `o = softmax(q·kᵀ·scale + mask)·v` in f64, with q `[b, lq, hq, d]` and k, v
/// `[b, lk, hkv, d]` laid out as `shape.layout()` says; query head h reads key/value head
/// `h / (hq / hkv)`. The outputs are packed whatever the layout of `o`.
pub fn reference<T: Copy>(
    shape: &AttentionShape,
    q: &[T],
    k: &[T],
    v: &[T],
    mask: &BlockMask,
    scale: f64,
) -> Result<Outputs>
where
    f64: From<T>,
{
    shape.check_lengths([q.len(), k.len(), v.len()], None)?;
    shape.check_mask(mask)?;
    if !scale.is_finite() {
        return Err(Error::invalid("scale", "a finite number", scale));
    }
    let s = *shape;
    let wide = |x: &[T]| x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
    let (q, k, v) = (wide(q), wide(k), wide(v));
    let group = s.heads_q / s.heads_kv;
    let layout = s.layout();
    let mut o = vec![0.0; s.batch * s.lq * s.heads_q * s.d];
    let mut lse = vec![f64::NEG_INFINITY; s.batch * s.heads_q * s.lq];
    let mut scores = vec![0.0; s.lk];
    for b in 0..s.batch {
        for h in 0..s.heads_q {
            let kv_head = h / group;
            for i in 0..s.lq {
                let q_row = &q[layout.q.offset(b, i, h)..][..s.d];
                let mut max = f64::NEG_INFINITY;
                for (j, score) in scores.iter_mut().enumerate() {
                    *score = if mask.allows(b, h, i, j) {
                        let k_row = &k[layout.k.offset(b, j, kv_head)..][..s.d];
                        scale * q_row.iter().zip(k_row).map(|(a, b)| a * b).sum::<f64>()
                    } else {
                        f64::NEG_INFINITY
                    };
                    max = max.max(*score);
                }
                if max == f64::NEG_INFINITY {
                    continue; // no key: o stays 0, lse −inf
                }
                let out = &mut o[((b * s.lq + i) * s.heads_q + h) * s.d..][..s.d];
                let mut sum = 0.0;
                for (j, &score) in scores.iter().enumerate() {
                    if score == f64::NEG_INFINITY {
                        continue;
                    }
                    let p = (score - max).exp();
                    sum += p;
                    let v_row = &v[layout.v.offset(b, j, kv_head)..][..s.d];
                    out.iter_mut().zip(v_row).for_each(|(o, v)| *o += p * v);
                }
                out.iter_mut().for_each(|o| *o /= sum);
                lse[(b * s.heads_q + h) * s.lq + i] = max + sum.ln();
            }
        }
    }
    Ok(Outputs { o, lse })
}
