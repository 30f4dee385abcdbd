//! Block-sparse attention forward with FlexAttention-style block masks:
//! `o = softmax(q·kᵀ·scale + mask)·v` per batch and query head, with `lse` for merging.
//!
//! [`BlockMask`] with its builders and validation, the f64 [`reference()`] every kernel is
//! tested against, the CUDA kernel (`cuda::attention`, FlashAttention-2's design on
//! `mma.sync`; not yet run on a GPU) and the WGSL kernel (`wgpu::attention`, f32 arithmetic,
//! output in the inputs' type or f32). q, k, v and o may be strided views
//! ([`AttentionShape::with_layout`]).
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
//!
//! # Backward
//!
//! [`reference_backward`] gives the cotangents of q, k and v from `dO`, the cotangent of `o`
//! (its docs state the formulas); [`blockwise_backward`] computes the same as the kernels
//! do, key block by key block over the mask's transposed lists ([`BlockMask::q_blocks_of`]).
//! [`cuda::attention_backward`] and [`wgpu::attention_backward`] take the forward's `o` and
//! `lse` and write the gradients in f32 or the inputs' type, the same values call after call
//! (no atomics). `tilefuse run attention-backward` runs any of them on a case file.
//!
//! ```
//! use tilefuse::attention::{AttentionShape, BlockMask, MaskShape, reference_backward};
//!
//! // The causal example above with dO = 1: the second query weighs both keys by 1/2.
//! let shape = AttentionShape::new(1, 2, 2, 1, 1, 1)?;
//! let mask = BlockMask::causal(MaskShape { block_m: 64, block_n: 64, ..MaskShape::new(2, 2) })?;
//! let (q, k, v, d_o) = ([1.0f32, 1.0], [0.0, 0.0], [1.0, 3.0], [1.0, 1.0]);
//! let g = reference_backward(&shape, [&q[..], &k[..], &v[..]], &d_o, &mask, 1.0)?;
//! assert_eq!(g.dv, vec![1.5, 0.5]);
//! assert_eq!(g.dk, vec![-0.5, 0.5]);
//! assert_eq!(g.dq, vec![0.0, 0.0]);
//! # Ok::<(), tilefuse::Error>(())
//! ```
//!
//! # Non-finite inputs
//!
//! The same on every backend (the reference, CUDA, WGSL), and never mistaken for "masked":
//!
//! - A query that sees no key gives `o = 0`, `lse = −inf`, whatever its inputs hold.
//! - A NaN or ±inf in a row of q, or in a row of k that a query sees, makes that query's
//!   score non-finite, and its whole `o` row and its `lse` NaN.
//! - A NaN or ±inf in a row of v makes NaN the column it is in, in the `o` row of every query
//!   (that sees some key) whose query block the mask lists with the key's block, partial or
//!   full: a listed block is computed whole, and a key the element mask hides there still
//!   adds `0 · v`, which is NaN. `lse` is not affected.
//!
//! A finite input never gives NaN, except where an f32 score overflows (bf16 inputs near
//! its largest values).

mod backward;
mod bench;
mod check;
mod check_backward;
#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "cuda")]
pub mod cuda;
mod mask;
mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use backward::{Gradients, blockwise_backward, reference_backward};
#[cfg(feature = "cuda")]
pub use check::check_cuda_kernel;
pub use check::{Case, ENTRY, MaskKind, Output, check, run};
pub use check_backward::{BACKWARD_ENTRY, check_backward};
pub use mask::{BlockKind, BlockMask, ElementMask, MaskShape, MaskStats};
pub use reference::{Outputs, reference};

use crate::error::{Error, Result};

/// Where the rows of a `[b, l, h, d]` tensor live in its buffer: element `(b, l, h, c)` is at
/// `start + b·batch + l·seq + h·head + c` (in elements; `d` is contiguous, as in
/// FlashAttention; `start` is PyTorch's storage offset).
///
/// ```
/// use tilefuse::attention::Strides;
///
/// // q, k and v in one packed qkv buffer [b, l, 3, h, d] (h = 8, d = 64): each one's rows
/// // skip the other two; k starts one head block in, v two.
/// let q = Strides { start: 0, batch: 100 * 3 * 8 * 64, seq: 3 * 8 * 64, head: 64 };
/// let v = Strides { start: 2 * 8 * 64, ..q };
/// assert_eq!(v.offset(1, 2, 3), 1024 + 153_600 + 2 * 1536 + 3 * 64);
/// assert_eq!(Strides::packed(100, 8, 64), Strides { start: 0, batch: 51_200, seq: 512, head: 64 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Strides {
    /// The element where `(0, 0, 0, 0)` is.
    pub start: usize,
    /// Elements from one batch to the next.
    pub batch: usize,
    /// Elements from one position (query or key) to the next.
    pub seq: usize,
    /// Elements from one head to the next.
    pub head: usize,
}

impl Strides {
    /// The strides of a contiguous `[b, len, heads, d]` tensor at the buffer's start.
    pub const fn packed(len: usize, heads: usize, d: usize) -> Strides {
        Strides {
            start: 0,
            batch: len.saturating_mul(heads).saturating_mul(d),
            seq: heads.saturating_mul(d),
            head: d,
        }
    }

    /// The index of element `(b, l, h, 0)`.
    pub const fn offset(&self, b: usize, l: usize, h: usize) -> usize {
        self.start
            .saturating_add(b.saturating_mul(self.batch))
            .saturating_add(l.saturating_mul(self.seq))
            .saturating_add(h.saturating_mul(self.head))
    }

    /// (size, stride) of the batch, position and head dimensions.
    fn dims(&self, [batch, len, heads]: [usize; 3]) -> [(usize, usize); 3] {
        [(batch, self.batch), (len, self.seq), (heads, self.head)]
    }

    /// One past the last element of a tensor of these sizes, or `None` past `usize`.
    fn end(&self, sizes: [usize; 3], d: usize) -> Option<usize> {
        self.dims(sizes)
            .into_iter()
            .try_fold(self.start.checked_add(d)?, |end, (size, stride)| {
                end.checked_add(size.saturating_sub(1).checked_mul(stride)?)
            })
    }

    /// Whether no two rows of `d` elements share an element: sorted by stride, each
    /// dimension's stride is at least the span of the dimensions below it. (Sufficient, and
    /// what every non-overlapping layout in practice satisfies.) Needs [`Self::end`] finite.
    fn rows_disjoint(&self, sizes: [usize; 3], d: usize) -> bool {
        let mut dims = self.dims(sizes);
        dims.sort_by_key(|&(_, stride)| stride);
        let mut span = d;
        for (size, stride) in dims.into_iter().filter(|&(size, _)| size > 1) {
            if stride < span {
                return false;
            }
            span += (size - 1) * stride;
        }
        true
    }
}

/// The strides of the four tensors of a call (see [`AttentionShape::with_layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Queries `[b, lq, hq, d]`.
    pub q: Strides,
    /// Keys `[b, lk, hkv, d]`.
    pub k: Strides,
    /// Values `[b, lk, hkv, d]`.
    pub v: Strides,
    /// Outputs `[b, lq, hq, d]`.
    pub o: Strides,
}

/// The sizes of one attention call and the strides of its tensors, validated by
/// [`AttentionShape::new`] (the only way to make one outside this crate) and
/// [`AttentionShape::with_layout`].
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
    layout: Layout,
}

impl AttentionShape {
    /// Sizes of at least 1 with `heads_q` a multiple of `heads_kv`, every tensor packed
    /// ([`Strides::packed`]).
    pub fn new(
        batch: usize,
        lq: usize,
        lk: usize,
        heads_q: usize,
        heads_kv: usize,
        d: usize,
    ) -> Result<Self> {
        let shape = AttentionShape {
            batch,
            lq,
            lk,
            heads_q,
            heads_kv,
            d,
            layout: Layout {
                q: Strides::packed(lq, heads_q, d),
                k: Strides::packed(lk, heads_kv, d),
                v: Strides::packed(lk, heads_kv, d),
                o: Strides::packed(lq, heads_q, d),
            },
        };
        shape.check_sizes()?;
        Ok(shape)
    }

    /// Sizes of at least 1, `heads_q` a multiple of `heads_kv`, every tensor under 2^31
    /// elements. Checked again before every launch: the fields are public.
    fn check_sizes(&self) -> Result<()> {
        let s = self;
        for (what, size) in [
            ("batch", s.batch),
            ("lq", s.lq),
            ("lk", s.lk),
            ("heads_q", s.heads_q),
            ("heads_kv", s.heads_kv),
            ("d", s.d),
        ] {
            if size == 0 {
                return Err(Error::invalid(what, "a size of at least 1", size));
            }
        }
        if !s.heads_q.is_multiple_of(s.heads_kv) {
            return Err(Error::invalid(
                "heads_kv",
                format!("a divisor of heads_q = {}", s.heads_q),
                s.heads_kv,
            ));
        }
        for (what, len) in [
            ("q", s.lq.checked_mul(s.heads_q)),
            ("k", s.lk.checked_mul(s.heads_kv)),
        ] {
            if len
                .and_then(|n| n.checked_mul(s.d))
                .and_then(|n| n.checked_mul(s.batch))
                .is_none_or(|n| n > i32::MAX as usize)
            {
                return Err(Error::invalid(
                    what,
                    "fewer than 2^31 elements",
                    format!("{} x {}/{} x heads x {}", s.batch, s.lq, s.lk, s.d),
                ));
            }
        }
        Ok(())
    }

    /// The same sizes with strided tensors, for views into larger buffers (a packed qkv
    /// projection passed as q, k and v alike, a padded cache, heads or batches taken apart).
    /// Starts and strides are in elements; each tensor ends below element 2^31 of its buffer;
    /// the rows of `o` must not overlap. The kernels also need the start and every stride of
    /// a dimension of more than one element to be multiples of 8 (16 bytes, for their vector
    /// loads), checked at launch. A tensor given non-packed strides may sit in a larger buffer
    /// (its length is at least one past the last element); a packed one must fill its buffer
    /// exactly.
    ///
    /// ```
    /// use tilefuse::attention::{AttentionShape, Layout, Strides};
    ///
    /// // q, k, v from one [b, l, 3, h, d] projection buffer; o packed.
    /// let shape = AttentionShape::new(2, 100, 100, 8, 8, 64)?;
    /// let q = Strides { start: 0, batch: 100 * 3 * 512, seq: 3 * 512, head: 64 };
    /// let (k, v) = (Strides { start: 512, ..q }, Strides { start: 1024, ..q });
    /// let shape = shape.with_layout(Layout { q, k, v, o: shape.layout().o })?;
    /// assert_eq!(shape.min_lens()[2], 2 * 100 * 1536); // v ends the buffer
    ///
    /// // Rows of o that overlap are refused.
    /// let o = Strides { head: 32, ..Strides::packed(100, 8, 64) };
    /// assert!(shape.with_layout(Layout { o, ..shape.layout() }).is_err());
    /// # Ok::<(), tilefuse::Error>(())
    /// ```
    pub fn with_layout(self, layout: Layout) -> Result<Self> {
        let shape = AttentionShape { layout, ..self };
        shape.check_layout()?;
        Ok(shape)
    }

    /// The strides of q, k, v and o.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The fewest elements the buffers of q, k, v and o may hold: one past each tensor's last
    /// element (0 for a layout [`Self::with_layout`] would refuse).
    pub fn min_lens(&self) -> [usize; 4] {
        self.tensors()
            .map(|(_, strides, sizes)| strides.end(sizes, self.d).unwrap_or(0))
    }

    /// Name, strides and (batch, length, heads) of q, k, v and o.
    fn tensors(&self) -> [(&'static str, Strides, [usize; 3]); 4] {
        let (b, l) = (self.batch, &self.layout);
        [
            ("q", l.q, [b, self.lq, self.heads_q]),
            ("k", l.k, [b, self.lk, self.heads_kv]),
            ("v", l.v, [b, self.lk, self.heads_kv]),
            ("o", l.o, [b, self.lq, self.heads_q]),
        ]
    }

    /// Tensors under 2^31 elements, rows of `o` disjoint.
    fn check_layout(&self) -> Result<()> {
        for (what, strides, sizes) in self.tensors() {
            if strides
                .end(sizes, self.d)
                .is_none_or(|end| end > i32::MAX as usize)
            {
                return Err(Error::invalid(
                    what,
                    "a start and strides that keep the tensor below element 2^31",
                    format!("{strides:?}"),
                ));
            }
        }
        let o_sizes = [self.batch, self.lq, self.heads_q];
        if !self.layout.o.rows_disjoint(o_sizes, self.d) {
            return Err(Error::invalid(
                "o",
                format!("strides whose rows of d = {} do not overlap", self.d),
                format!("{:?}", self.layout.o),
            ));
        }
        Ok(())
    }

    /// Checks the sizes again (the head grouping the kernels index by, `kv_head = head /
    /// (heads_q / heads_kv)`, must stay below `heads_kv`; lengths must fit 32-bit kernel
    /// arithmetic), the layout, and the buffer lengths of q, k, v (and o when given).
    pub(crate) fn check_lengths(&self, [q, k, v]: [usize; 3], o: Option<usize>) -> Result<()> {
        self.check_sizes()?;
        self.check_layout()?;
        let lens = [Some(q), Some(k), Some(v), o];
        for ((what, strides, sizes), len) in self.tensors().into_iter().zip(lens) {
            let (Some(len), Some(end)) = (len, strides.end(sizes, self.d)) else {
                continue;
            };
            if strides == Strides::packed(sizes[1], sizes[2], self.d) && len != end {
                return Err(Error::Length {
                    what,
                    expected: end,
                    got: len,
                });
            }
            if len < end {
                return Err(Error::invalid(
                    what,
                    format!("a buffer of at least {end} elements (its strides reach that far)"),
                    format!("{len} elements"),
                ));
            }
        }
        Ok(())
    }

    /// Everything a kernel launch needs checked: the layout, buffer lengths, head grouping,
    /// the mask's shape, d ∈ {64, 128}, strides that are multiples of 8 elements (the
    /// kernels' 16-byte vector loads), and the length of `lse` (`[b, hq, lq]`) when given.
    pub(crate) fn check_call(
        &self,
        inputs: [usize; 3],
        mask: MaskShape,
        o: usize,
        lse: Option<usize>,
    ) -> Result<()> {
        self.check_lengths(inputs, Some(o))?;
        self.check_mask_shape(mask)?;
        if self.d != 64 && self.d != 128 {
            return Err(Error::invalid("d", "64 or 128", self.d));
        }
        for (what, strides, sizes) in self.tensors() {
            let mut dims = strides.dims(sizes).into_iter();
            let misaligned = dims.find(|&(size, stride)| size > 1 && stride % 8 != 0);
            if strides.start % 8 != 0 || misaligned.is_some() {
                return Err(Error::invalid(
                    what,
                    "a start and strides that are multiples of 8 elements (16 bytes)",
                    format!("{strides:?}"),
                ));
            }
        }
        let rows = self.batch * self.lq * self.heads_q;
        if let Some(got) = lse
            && got != rows
        {
            return Err(Error::Length {
                what: "lse",
                expected: rows,
                got,
            });
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
