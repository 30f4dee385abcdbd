//! The backward pass's specification (dense, in f64, the mask materialised) and an
//! independent CPU algorithm with the structure the kernels follow (FlashAttention-2's: `D`
//! first, then `dK`, `dV` key block by key block over the transposed lists, and `dQ` query
//! block by query block over the forward lists), which must agree with it.

use super::{AttentionShape, BlockKind, BlockMask, MaskShape, Strides, reference};
use crate::error::{Error, Result};

/// The cotangents of q, k and v in f64, packed: `dq [b, lq, hq, d]`, `dk` and `dv`
/// `[b, lk, hkv, d]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    /// Of q.
    pub dq: Vec<f64>,
    /// Of k (summed over the query heads that share each key/value head).
    pub dk: Vec<f64>,
    /// Of v (summed likewise).
    pub dv: Vec<f64>,
}

/// The backward pass of [`reference()`] in f64: given `d_o`, the cotangent of `o` (laid out
/// as `o` is, `shape.layout().o`), with `S = scale·q·kᵀ` (−inf where the mask disallows),
/// `P = softmax(S)` per query (0 for a query that sees no key) and `O = P·v`:
///
/// ```text
/// dV = Pᵀ·dO    dP = dO·vᵀ    D = rowsum(dO ∘ O)    dS = P ∘ (dP − D)
/// dQ = scale · dS·k    dK = scale · dSᵀ·q
/// ```
///
/// per batch and query head; with GQA each key/value head's `dK`, `dV` sum over the query
/// heads that read it. A query that sees no key contributes nothing. Defined for finite
/// inputs (non-finite ones give NaN where the products carry them).
pub fn reference_backward<T: Copy>(
    shape: &AttentionShape,
    [q, k, v]: [&[T]; 3],
    d_o: &[T],
    mask: &BlockMask,
    scale: f64,
) -> Result<Gradients>
where
    f64: From<T>,
{
    let inputs = Inputs::new(shape, [q, k, v], d_o, mask, scale)?;
    let s = *shape;
    let mut g = Gradients::zeros(&s);
    let mut p = vec![0.0; s.lk];
    for b in 0..s.batch {
        for h in 0..s.heads_q {
            for i in 0..s.lq {
                if !inputs.probabilities(b, h, i, &mut p) {
                    continue;
                }
                let row = inputs.rows(b, h, i);
                let d = inputs.delta(&p, b, h, i);
                for (j, &pj) in p.iter().enumerate() {
                    if pj == 0.0 {
                        continue;
                    }
                    let (k_row, v_row) = inputs.key(b, h, j);
                    let dp = dot(row.d_o, v_row);
                    let ds = pj * (dp - d);
                    g.add_to_q(&s, (b, h, i), k_row, scale * ds);
                    g.add_to_kv(&s, (b, h, j), [row.q, row.d_o], [scale * ds, pj]);
                }
            }
        }
    }
    Ok(g)
}

/// The same gradients as [`reference_backward`], as the kernels compute them: the forward's
/// `lse` and `D = rowsum(dO ∘ O)` first; then for every key block the query blocks that list
/// it ([`BlockMask::q_blocks_of`], partial and full), `P = exp(S − lse)` block by block,
/// accumulating `dK` and `dV`; then for every query block its own lists, accumulating `dQ`.
/// Agrees with the reference up to f64 rounding.
pub fn blockwise_backward<T: Copy>(
    shape: &AttentionShape,
    [q, k, v]: [&[T]; 3],
    d_o: &[T],
    mask: &BlockMask,
    scale: f64,
) -> Result<Gradients>
where
    f64: From<T>,
{
    let inputs = Inputs::new(shape, [q, k, v], d_o, mask, scale)?;
    let s = *shape;
    let forward = reference(shape, q, k, v, mask, scale)?;
    let lse = |b: usize, h: usize, i: usize| forward.lse[(b * s.heads_q + h) * s.lq + i];
    let mut delta = vec![0.0; s.batch * s.heads_q * s.lq];
    for b in 0..s.batch {
        for i in 0..s.lq {
            for h in 0..s.heads_q {
                let o = &forward.o[((b * s.lq + i) * s.heads_q + h) * s.d..][..s.d];
                delta[(b * s.heads_q + h) * s.lq + i] = dot(inputs.rows(b, h, i).d_o, o);
            }
        }
    }
    let m = mask.shape();
    let mut g = Gradients::zeros(&s);
    // P and dS of one (query, key) pair of a listed block: None where the pair is masked or
    // past the ends, or the query sees no key.
    let pair = |b: usize, h: usize, i: usize, j: usize, kind: BlockKind| {
        if i >= s.lq || j >= s.lk {
            return None;
        }
        let lse = lse(b, h, i);
        if lse == f64::NEG_INFINITY {
            return None;
        }
        if kind == BlockKind::Partial && !mask.element().allows(i, j, s.lq, s.lk) {
            return None;
        }
        let (row, (k_row, v_row)) = (inputs.rows(b, h, i), inputs.key(b, h, j));
        let p = (scale * dot(row.q, k_row) - lse).exp();
        let ds = p * (dot(row.d_o, v_row) - delta[(b * s.heads_q + h) * s.lq + i]);
        Some((p, ds))
    };
    for b in 0..s.batch {
        for h in 0..s.heads_q {
            for kv in 0..m.kv_blocks() {
                let (partial, full) = mask.q_blocks_of(b, h, kv)?;
                for (blocks, kind) in [(partial, BlockKind::Partial), (full, BlockKind::Full)] {
                    for &qb in blocks {
                        for i in (qb as usize * m.block_m..).take(m.block_m) {
                            for j in (kv * m.block_n..).take(m.block_n) {
                                if let Some((p, ds)) = pair(b, h, i, j, kind) {
                                    let row = inputs.rows(b, h, i);
                                    g.add_to_kv(&s, (b, h, j), [row.q, row.d_o], [scale * ds, p]);
                                }
                            }
                        }
                    }
                }
            }
            for qb in 0..m.q_blocks() {
                let (partial, full) = mask.blocks(b, h, qb)?;
                for (blocks, kind) in [(partial, BlockKind::Partial), (full, BlockKind::Full)] {
                    for &kv in blocks {
                        for i in (qb * m.block_m..).take(m.block_m) {
                            for j in (kv as usize * m.block_n..).take(m.block_n) {
                                if let Some((_, ds)) = pair(b, h, i, j, kind) {
                                    let k_row = inputs.key(b, h, j).0;
                                    g.add_to_q(&s, (b, h, i), k_row, scale * ds);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(g)
}

/// dO is laid out as o: its rows must lie in its buffer of `len` elements (as a packed o,
/// exactly).
pub(crate) fn check_d_o(shape: &AttentionShape, len: usize) -> Result<()> {
    let o = shape.layout().o;
    let sizes = [shape.batch, shape.lq, shape.heads_q];
    let end = o.end(sizes, shape.d).unwrap_or(usize::MAX);
    let packed = o == Strides::packed(shape.lq, shape.heads_q, shape.d);
    if len < end || (packed && len != end) {
        return Err(Error::Length {
            what: "do",
            expected: end,
            got: len,
        });
    }
    Ok(())
}

/// Every length and shape a device backward depends on: the forward's rules for q, k, v, o
/// and the mask (d 64 or 128, starts and strides multiples of 8), `do` laid out as o, `lse`
/// `b·hq·lq`, and packed gradients.
pub(crate) fn check_call(
    shape: &AttentionShape,
    [q, k, v, o, d_o, lse]: [usize; 6],
    gradients: [usize; 3],
    mask: MaskShape,
) -> Result<()> {
    shape.check_call([q, k, v], mask, o, Some(lse))?;
    check_d_o(shape, d_o)?;
    let names = ["dq", "dk", "dv"];
    for ((what, got), expected) in names.into_iter().zip(gradients).zip(gradient_lens(shape)) {
        if got != expected {
            return Err(Error::Length {
                what,
                expected,
                got,
            });
        }
    }
    Ok(())
}

/// The lengths of packed gradients: dq `b·lq·hq·d`, dk and dv `b·lk·hkv·d`.
pub(crate) fn gradient_lens(s: &AttentionShape) -> [usize; 3] {
    let kv = s.batch * s.lk * s.heads_kv * s.d;
    [s.batch * s.lq * s.heads_q * s.d, kv, kv]
}

/// The inputs of a backward pass, checked and widened to f64.
struct Inputs<'a> {
    shape: &'a AttentionShape,
    mask: &'a BlockMask,
    scale: f64,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    d_o: Vec<f64>,
}

/// The rows of one query: q and dO.
struct QueryRows<'a> {
    q: &'a [f64],
    d_o: &'a [f64],
}

impl<'a> Inputs<'a> {
    fn new<T: Copy>(
        shape: &'a AttentionShape,
        [q, k, v]: [&[T]; 3],
        d_o: &[T],
        mask: &'a BlockMask,
        scale: f64,
    ) -> Result<Self>
    where
        f64: From<T>,
    {
        shape.check_lengths([q.len(), k.len(), v.len()], None)?;
        check_d_o(shape, d_o.len())?;
        shape.check_mask(mask)?;
        if !scale.is_finite() {
            return Err(Error::invalid("scale", "a finite number", scale));
        }
        let wide = |x: &[T]| x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        Ok(Inputs {
            shape,
            mask,
            scale,
            q: wide(q),
            k: wide(k),
            v: wide(v),
            d_o: wide(d_o),
        })
    }

    fn rows(&self, b: usize, h: usize, i: usize) -> QueryRows<'_> {
        let (l, d) = (self.shape.layout(), self.shape.d);
        QueryRows {
            q: &self.q[l.q.offset(b, i, h)..][..d],
            d_o: &self.d_o[l.o.offset(b, i, h)..][..d],
        }
    }

    /// The k and v rows of key `j` for query head `h`.
    fn key(&self, b: usize, h: usize, j: usize) -> (&[f64], &[f64]) {
        let (l, d) = (self.shape.layout(), self.shape.d);
        let kv_head = h / (self.shape.heads_q / self.shape.heads_kv);
        (
            &self.k[l.k.offset(b, j, kv_head)..][..d],
            &self.v[l.v.offset(b, j, kv_head)..][..d],
        )
    }

    /// Query (b, h, i)'s probabilities over the keys into `p` (0 where masked); false when it
    /// sees no key.
    fn probabilities(&self, b: usize, h: usize, i: usize, p: &mut [f64]) -> bool {
        let q_row = self.rows(b, h, i).q;
        let mut max = f64::NEG_INFINITY;
        for (j, pj) in p.iter_mut().enumerate() {
            *pj = if self.mask.allows(b, h, i, j) {
                self.scale * dot(q_row, self.key(b, h, j).0)
            } else {
                f64::NEG_INFINITY
            };
            max = max.max(*pj);
        }
        if max == f64::NEG_INFINITY {
            p.fill(0.0);
            return false;
        }
        let mut sum = 0.0;
        for pj in p.iter_mut() {
            *pj = (*pj - max).exp();
            sum += *pj;
        }
        p.iter_mut().for_each(|pj| *pj /= sum);
        true
    }

    /// D = rowsum(dO ∘ O) of query (b, h, i), O from its probabilities `p`.
    fn delta(&self, p: &[f64], b: usize, h: usize, i: usize) -> f64 {
        let d_o = self.rows(b, h, i).d_o;
        let mut o = vec![0.0; self.shape.d];
        for (j, &pj) in p.iter().enumerate() {
            if pj != 0.0 {
                let v_row = self.key(b, h, j).1;
                o.iter_mut().zip(v_row).for_each(|(o, v)| *o += pj * v);
            }
        }
        dot(d_o, &o)
    }
}

impl Gradients {
    fn zeros(s: &AttentionShape) -> Gradients {
        let [dq, dk, dv] = gradient_lens(s).map(|len| vec![0.0; len]);
        Gradients { dq, dk, dv }
    }

    /// dq[b, i, h] += factor · row.
    fn add_to_q(
        &mut self,
        s: &AttentionShape,
        (b, h, i): (usize, usize, usize),
        row: &[f64],
        factor: f64,
    ) {
        let at = Strides::packed(s.lq, s.heads_q, s.d).offset(b, i, h);
        let dq = &mut self.dq[at..][..s.d];
        dq.iter_mut().zip(row).for_each(|(g, x)| *g += factor * x);
    }

    /// dk[b, j, h's kv head] += factors[0] · rows[0]; dv likewise with rows[1], factors[1].
    fn add_to_kv(
        &mut self,
        s: &AttentionShape,
        (b, h, j): (usize, usize, usize),
        rows: [&[f64]; 2],
        factors: [f64; 2],
    ) {
        let kv_head = h / (s.heads_q / s.heads_kv);
        let at = Strides::packed(s.lk, s.heads_kv, s.d).offset(b, j, kv_head);
        for (gradient, (row, factor)) in [&mut self.dk, &mut self.dv]
            .into_iter()
            .zip(rows.into_iter().zip(factors))
        {
            let g = &mut gradient[at..][..s.d];
            g.iter_mut().zip(row).for_each(|(g, x)| *g += factor * x);
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    /// Each buffer of a call is checked before anything is enqueued, with a typed error that
    /// names it.
    #[test]
    fn wrong_lengths_name_the_buffer() {
        let shape = AttentionShape::new(1, 100, 70, 2, 1, 64).unwrap();
        let mask = MaskShape::new(100, 70);
        let (q, kv) = (100 * 2 * 64, 70 * 64);
        let lens = [q, kv, kv, q, q, 200];
        let gradients = [q, kv, kv];
        check_call(&shape, lens, gradients, mask).unwrap();
        let named = |lens: [usize; 6], gradients: [usize; 3]| match check_call(
            &shape, lens, gradients, mask,
        ) {
            Err(Error::Length { what, .. }) => what,
            other => panic!("{other:?}"),
        };
        assert_eq!(named([q, kv, kv, q, q - 1, 200], gradients), "do");
        assert_eq!(named([q, kv, kv, q, q, 199], gradients), "lse");
        assert_eq!(named(lens, [q + 1, kv, kv]), "dq");
        assert_eq!(named(lens, [q, kv, kv - 64]), "dv");
        let other = MaskShape::new(100, 71);
        assert!(matches!(
            check_call(&shape, lens, gradients, other),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
