//! Block-sparse attention forward with FlexAttention-style block masks:
//! `o = softmax(q·kᵀ·scale + mask)·v` per batch and query head, with `lse` for merging.
//!
//! [`BlockMask`] with its builders and validation, the f64 [`reference()`] every kernel is
//! tested against, the CUDA kernel (`cuda::attention`, FlashAttention-2's design on
//! `mma.sync`; not yet run on a GPU) and the WGSL kernel (`wgpu::attention`, f32 output).
//!
//! ```
//! use tilefuse::attention::{AttentionShape, BlockMask, MaskShape, reference};
//!
//! // Two queries and two keys, causal: the first query sees key 0, the second both.
//! let shape = AttentionShape::new(1, 2, 2, 1, 1, 1)?;
//! let mask = BlockMask::causal(MaskShape { block_m: 64, block_n: 64, ..MaskShape::new(2, 2) })?;
//! let out = reference(&shape, &[1.0f32, 1.0], &[0.0, 0.0], &[1.0, 3.0], &mask, 1.0)?;
//! assert_eq!(out.o, vec![1.0, 2.0]);
//! assert!((out.lse[1] - 2f64.ln()).abs() < 1e-12);
//! # Ok::<(), tilefuse::Error>(())
//! ```

mod check;
#[cfg(feature = "cuda")]
pub mod cuda;
mod mask;
mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use check::{Case, ENTRY, MaskKind, check, run};
pub use mask::{BlockKind, BlockMask, ElementMask, MaskShape, MaskStats};
pub use reference::{Outputs, reference};

use crate::error::{Error, Result};

/// The sizes of one attention call, validated by [`AttentionShape::new`] (the only way to
/// make one outside this crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct AttentionShape {
    /// Batch.
    pub batch: usize,
    /// Query length.
    pub lq: usize,
    /// Key length.
    pub lk: usize,
    /// Query heads.
    pub heads_q: usize,
    /// Key/value heads (GQA/MQA when fewer than the query heads).
    pub heads_kv: usize,
    /// Head dimension.
    pub d: usize,
}

impl AttentionShape {
    /// Sizes of at least 1 with `heads_q` a multiple of `heads_kv`.
    pub fn new(
        batch: usize,
        lq: usize,
        lk: usize,
        heads_q: usize,
        heads_kv: usize,
        d: usize,
    ) -> Result<Self> {
        for (what, size) in [
            ("batch", batch),
            ("lq", lq),
            ("lk", lk),
            ("heads_q", heads_q),
            ("heads_kv", heads_kv),
            ("d", d),
        ] {
            if size == 0 {
                return Err(Error::invalid(what, "a size of at least 1", size));
            }
        }
        if !heads_q.is_multiple_of(heads_kv) {
            return Err(Error::invalid(
                "heads_kv",
                format!("a divisor of heads_q = {heads_q}"),
                heads_kv,
            ));
        }
        for (what, len) in [
            ("q", lq.checked_mul(heads_q)),
            ("k", lk.checked_mul(heads_kv)),
        ] {
            if len
                .and_then(|n| n.checked_mul(d))
                .and_then(|n| n.checked_mul(batch))
                .is_none_or(|n| n > i32::MAX as usize)
            {
                return Err(Error::invalid(
                    what,
                    "fewer than 2^31 elements",
                    format!("{batch} x {lq}/{lk} x heads x {d}"),
                ));
            }
        }
        Ok(AttentionShape {
            batch,
            lq,
            lk,
            heads_q,
            heads_kv,
            d,
        })
    }

    /// Checks the buffer lengths, and again the head grouping that the kernels index by
    /// (`kv_head = head / (heads_q / heads_kv)` must stay below `heads_kv`).
    pub(crate) fn check_lengths(&self, q: usize, k: usize, v: usize) -> Result<()> {
        if self.heads_kv == 0 || !self.heads_q.is_multiple_of(self.heads_kv) {
            return Err(Error::invalid(
                "heads_kv",
                format!("a divisor of heads_q = {}", self.heads_q),
                self.heads_kv,
            ));
        }
        let q_len = self.batch * self.lq * self.heads_q * self.d;
        let kv_len = self.batch * self.lk * self.heads_kv * self.d;
        for (what, expected, got) in [("q", q_len, q), ("k", kv_len, k), ("v", kv_len, v)] {
            if expected != got {
                return Err(Error::Length {
                    what,
                    expected,
                    got,
                });
            }
        }
        Ok(())
    }

    /// Everything a kernel launch needs checked: input lengths, head grouping, the mask's
    /// shape, d ∈ {64, 128}, and the lengths of `o` and of `lse` when given.
    pub(crate) fn check_call(
        &self,
        [q, k, v]: [usize; 3],
        mask: MaskShape,
        o: usize,
        lse: Option<usize>,
    ) -> Result<()> {
        self.check_lengths(q, k, v)?;
        self.check_mask_shape(mask)?;
        if self.d != 64 && self.d != 128 {
            return Err(Error::invalid("d", "64 or 128", self.d));
        }
        let rows = self.batch * self.lq * self.heads_q;
        for (what, expected, got) in [("o", rows * self.d, Some(o)), ("lse", rows, lse)] {
            if let Some(got) = got
                && got != expected
            {
                return Err(Error::Length {
                    what,
                    expected,
                    got,
                });
            }
        }
        Ok(())
    }

    /// Checks that `mask` was built for these lengths, batch and heads (or broadcasts them).
    pub fn check_mask(&self, mask: &BlockMask) -> Result<()> {
        self.check_mask_shape(mask.shape())
    }

    pub(crate) fn check_mask_shape(&self, m: MaskShape) -> Result<()> {
        if m.lq != self.lq || m.lk != self.lk {
            return Err(Error::invalid(
                "mask",
                format!("lq = {}, lk = {}", self.lq, self.lk),
                format!("lq = {}, lk = {}", m.lq, m.lk),
            ));
        }
        if m.batch != 1 && m.batch != self.batch {
            return Err(Error::invalid(
                "mask",
                format!("batch 1 or {}", self.batch),
                m.batch,
            ));
        }
        if m.heads != 1 && m.heads != self.heads_q {
            return Err(Error::invalid(
                "mask",
                format!("heads 1 or {}", self.heads_q),
                m.heads,
            ));
        }
        Ok(())
    }
}
