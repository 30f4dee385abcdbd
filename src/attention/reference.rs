//! The specification: dense attention in f64 with the mask materialised.

use super::{AttentionShape, BlockKind, BlockMask};
use crate::error::{Error, Result};

/// The outputs: `o [b, lq, hq, d]` and `lse [b, hq, lq]` (natural log; −inf for a query that
/// sees no key, whose `o` row is 0; NaN where non-finite inputs reach, as
/// [the op's docs](super#non-finite-inputs) say).
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// Attention outputs.
    pub o: Vec<f64>,
    /// Log-sum-exp of each query's scaled scores.
    pub lse: Vec<f64>,
}

/// `o = softmax(q·kᵀ·scale + mask)·v` in f64, with q `[b, lq, hq, d]` and k, v
/// `[b, lk, hkv, d]` laid out as `shape.layout()` says; query head h reads key/value head
/// `h / (hq / hkv)`. The outputs are packed whatever the layout of `o`. Non-finite inputs give
/// NaN where [the op's docs](super#non-finite-inputs) say.
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
        let non_finite_values: Vec<_> = (0..s.heads_kv)
            .map(|kv_head| non_finite_values(&s, &v, b, kv_head))
            .collect();
        for h in 0..s.heads_q {
            let kv_head = h / group;
            for i in 0..s.lq {
                let q_row = &q[layout.q.offset(b, i, h)..][..s.d];
                let mut max = f64::NEG_INFINITY;
                let (mut seen, mut finite) = (false, true);
                for (j, score) in scores.iter_mut().enumerate() {
                    *score = if mask.allows(b, h, i, j) {
                        let k_row = &k[layout.k.offset(b, j, kv_head)..][..s.d];
                        let dot = q_row.iter().zip(k_row).map(|(a, b)| a * b).sum::<f64>();
                        (seen, finite) = (true, finite && dot.is_finite());
                        scale * dot
                    } else {
                        f64::NEG_INFINITY
                    };
                    max = max.max(*score);
                }
                if !seen {
                    continue; // no key: o stays 0, lse −inf
                }
                let out = &mut o[((b * s.lq + i) * s.heads_q + h) * s.d..][..s.d];
                let lse_at = (b * s.heads_q + h) * s.lq + i;
                if !finite {
                    out.fill(f64::NAN);
                    lse[lse_at] = f64::NAN;
                    continue;
                }
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
                for o in out.iter_mut() {
                    *o = if o.is_finite() { *o / sum } else { f64::NAN };
                }
                nan_where_listed_blocks_reach(out, mask, (b, h, i), &non_finite_values[kv_head])?;
                lse[lse_at] = max + sum.ln();
            }
        }
    }
    Ok(Outputs { o, lse })
}

/// Each key of (batch `b`, key/value head `kv_head`) whose value row is not finite
/// everywhere, with its non-finite columns.
fn non_finite_values(
    shape: &AttentionShape,
    v: &[f64],
    b: usize,
    kv_head: usize,
) -> Vec<(usize, Vec<usize>)> {
    let columns = |j: usize| {
        let row = &v[shape.layout().v.offset(b, j, kv_head)..][..shape.d];
        (0..shape.d)
            .filter(|&c| !row[c].is_finite())
            .collect::<Vec<_>>()
    };
    (0..shape.lk)
        .map(|j| (j, columns(j)))
        .filter(|(_, columns)| !columns.is_empty())
        .collect()
}

/// NaN in the columns of query (b, h, i)'s `out` row where a key of a block the mask lists
/// for it has a non-finite value: a listed block is computed whole, and a key the element
/// mask hides there still adds 0 · v, which is NaN.
fn nan_where_listed_blocks_reach(
    out: &mut [f64],
    mask: &BlockMask,
    (b, h, i): (usize, usize, usize),
    non_finite_values: &[(usize, Vec<usize>)],
) -> Result<()> {
    let (block_m, block_n) = (mask.shape().block_m, mask.shape().block_n);
    for (j, columns) in non_finite_values {
        if mask.kind(b, h, i / block_m, j / block_n)? != BlockKind::Skip {
            columns.iter().for_each(|&c| out[c] = f64::NAN);
        }
    }
    Ok(())
}
