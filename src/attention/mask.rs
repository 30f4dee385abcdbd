//! `BlockMask`: which key blocks each query block attends to, FlexAttention's convention.
//!
//! Queries are cut into blocks of `block_m` rows and keys into blocks of `block_n` (each 64
//! or 128). For every (batch, head, query block) the mask lists, sorted, the key blocks that
//! are `full` (every pair inside is allowed) and those that are `partial` (the element mask
//! decides pair by pair); unlisted blocks are skipped. Batch and head may be broadcast (a
//! mask of batch 1 or heads 1 serves all). The element mask is one of a fixed set, with
//! `i' = i + lk − lq` (bottom-right alignment): causal allows key `j` iff `j ≤ i'`, sliding
//! window iff `|i' − j| < w`, causal + window iff `0 ≤ i' − j < w`. Keys past `lk` and
//! queries past `lq` (the ragged ends) are never attended, whatever the lists say.
//!
//! Beside the lists by query block, a mask keeps their transpose, built once from them (as
//! FlexAttention keeps `q_indices` beside `kv_indices`): for every (batch, head, key block),
//! sorted, the query blocks whose lists hold it as partial and as full
//! ([`BlockMask::q_blocks_of`]), which a backward pass walks key block by key block.

use crate::error::{Error, Result};
use crate::harness::Rng;

/// The element mask applied inside partial blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementMask {
    /// Every pair of a listed block is allowed.
    None,
    /// Key `j` iff `j ≤ i'`.
    Causal,
    /// Key `j` iff `|i' − j| < window`.
    SlidingWindow(usize),
    /// Key `j` iff `0 ≤ i' − j < window`.
    CausalWindow(usize),
}

impl ElementMask {
    /// The keys up to `i64::MAX` that query `i` may see, as an inclusive interval `[lo, hi]`
    /// (unbounded ends are `i64::MIN` / `i64::MAX`; `lo > hi` when there are none); every
    /// element mask allows an interval. Any indices and lengths, without overflow.
    pub fn interval(self, i: usize, lq: usize, lk: usize) -> (i64, i64) {
        let (lo, hi) = self.wide_interval(i, lq, lk);
        if lo > hi || lo > i64::MAX.into() {
            return (i64::MAX, i64::MIN);
        }
        let narrow = |x: i128| x.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        (narrow(lo), narrow(hi))
    }

    /// [`Self::interval`] in i128, where `i + lk − lq ± window` cannot overflow. Any window
    /// (up to usize::MAX) reaches every key, as in the kernels.
    fn wide_interval(self, i: usize, lq: usize, lk: usize) -> (i128, i128) {
        let aligned = i as i128 + lk as i128 - lq as i128; // i'
        let w = |w: usize| w as i128;
        match self {
            ElementMask::None => (i128::MIN, i128::MAX),
            ElementMask::Causal => (i128::MIN, aligned),
            ElementMask::SlidingWindow(window) => {
                (aligned - w(window) + 1, aligned + w(window) - 1)
            }
            ElementMask::CausalWindow(window) => (aligned - w(window) + 1, aligned),
        }
    }

    /// The kernels' encoding: `(kind, window)` with kind 0 none, 1 causal, 2 sliding window,
    /// 3 causal + window (see `cuda/abi.h`).
    pub(crate) fn kernel_code(self) -> (u32, u32) {
        let window = |w: usize| w.min(u32::MAX as usize) as u32;
        match self {
            ElementMask::None => (0, 0),
            ElementMask::Causal => (1, 0),
            ElementMask::SlidingWindow(w) => (2, window(w)),
            ElementMask::CausalWindow(w) => (3, window(w)),
        }
    }

    /// Whether query `i` may see key `j`, for `lq` queries and `lk` keys (any values).
    pub fn allows(self, i: usize, j: usize, lq: usize, lk: usize) -> bool {
        let (lo, hi) = self.wide_interval(i, lq, lk);
        (lo..=hi).contains(&(j as i128))
    }
}

/// What a query block does with one key block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Not visited.
    Skip,
    /// Visited with the element mask.
    Partial,
    /// Visited without any element mask.
    Full,
}

/// The sizes a mask is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaskShape {
    /// Batch rows of the mask: 1 (broadcast) or the attention's batch.
    pub batch: usize,
    /// Heads of the mask: 1 (broadcast) or the number of query heads.
    pub heads: usize,
    /// Query length.
    pub lq: usize,
    /// Key length.
    pub lk: usize,
    /// Queries per block: 64 or 128.
    pub block_m: usize,
    /// Keys per block: 64 or 128.
    pub block_n: usize,
}

impl MaskShape {
    /// One mask for all batches and heads, with 128 x 128 blocks.
    pub fn new(lq: usize, lk: usize) -> MaskShape {
        MaskShape {
            batch: 1,
            heads: 1,
            lq,
            lk,
            block_m: 128,
            block_n: 128,
        }
    }

    /// Query blocks.
    pub fn q_blocks(&self) -> usize {
        self.lq.div_ceil(self.block_m)
    }

    /// Key blocks.
    pub fn kv_blocks(&self) -> usize {
        self.lk.div_ceil(self.block_n)
    }

    /// Rows of the mask, (batch, head, query block); valid after `check`, which refuses
    /// shapes where this overflows.
    fn rows(&self) -> usize {
        self.checked_rows().unwrap_or(usize::MAX)
    }

    fn checked_rows(&self) -> Option<usize> {
        self.batch
            .checked_mul(self.heads)?
            .checked_mul(self.q_blocks())
    }

    fn check(&self) -> Result<()> {
        for (what, size) in [("block_m", self.block_m), ("block_n", self.block_n)] {
            if size != 64 && size != 128 {
                return Err(Error::invalid(what, "64 or 128", size));
            }
        }
        for (what, size) in [
            ("batch", self.batch),
            ("heads", self.heads),
            ("lq", self.lq),
            ("lk", self.lk),
        ] {
            if size == 0 {
                return Err(Error::invalid(what, "a size of at least 1", size));
            }
        }
        if self
            .checked_rows()
            .and_then(|rows| rows.checked_mul(self.kv_blocks()))
            .is_none_or(|n| n > u32::MAX as usize)
        {
            return Err(Error::invalid(
                "mask",
                "fewer than 2^32 block pairs",
                format!("{self:?}"),
            ));
        }
        Ok(())
    }
}

/// A validated block mask (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMask {
    shape: MaskShape,
    element: ElementMask,
    partial_offsets: Vec<u32>,
    partial: Vec<u32>,
    full_offsets: Vec<u32>,
    full: Vec<u32>,
    /// The transposed lists, by (batch, head, key block).
    transposed: Transposed,
}

/// The lists of a mask by key block: offsets per (batch, head, key block) plus the end, and
/// query blocks.
#[derive(Debug, Clone, PartialEq)]
struct Transposed {
    partial_offsets: Vec<u32>,
    partial: Vec<u32>,
    full_offsets: Vec<u32>,
    full: Vec<u32>,
}

impl Transposed {
    /// The transpose of validated lists by (batch, head, query block): a counting sort by
    /// column, which keeps each column's query blocks increasing.
    fn of(shape: MaskShape, lists: [(&[u32], &[u32]); 2]) -> Transposed {
        let (q_blocks, kv_blocks) = (shape.q_blocks(), shape.kv_blocks());
        let columns = shape.batch * shape.heads * kv_blocks;
        let [partial, full] = lists.map(|(offsets, blocks)| {
            let column = |row: usize, kv: u32| (row / q_blocks) * kv_blocks + kv as usize;
            let mut counts = vec![0u32; columns + 1];
            for row in 0..offsets.len() - 1 {
                for &kv in &blocks[offsets[row] as usize..offsets[row + 1] as usize] {
                    counts[column(row, kv) + 1] += 1;
                }
            }
            for c in 0..columns {
                counts[c + 1] += counts[c];
            }
            let mut next = counts.clone();
            let mut q_list = vec![0u32; blocks.len()];
            for row in 0..offsets.len() - 1 {
                for &kv in &blocks[offsets[row] as usize..offsets[row + 1] as usize] {
                    let slot = &mut next[column(row, kv)];
                    q_list[*slot as usize] = (row % q_blocks) as u32;
                    *slot += 1;
                }
            }
            (counts, q_list)
        });
        Transposed {
            partial_offsets: partial.0,
            partial: partial.1,
            full_offsets: full.0,
            full: full.1,
        }
    }
}

/// How many key blocks the query blocks visit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskStats {
    /// Visited blocks over all blocks.
    pub density: f64,
    /// Fewest blocks a row (batch, head, query block) visits.
    pub min_blocks_per_row: usize,
    /// Mean blocks per row.
    pub mean_blocks_per_row: f64,
    /// Most blocks a row visits.
    pub max_blocks_per_row: usize,
}

impl BlockMask {
    /// The mask `kind(batch, head, q_block, kv_block)` describes.
    pub fn from_fn(
        shape: MaskShape,
        element: ElementMask,
        kind: impl Fn(usize, usize, usize, usize) -> BlockKind,
    ) -> Result<Self> {
        shape.check()?;
        let (mut partial_offsets, mut partial, mut full_offsets, mut full) =
            (vec![0], vec![], vec![0], vec![]);
        for b in 0..shape.batch {
            for h in 0..shape.heads {
                for q in 0..shape.q_blocks() {
                    for kv in 0..shape.kv_blocks() {
                        match kind(b, h, q, kv) {
                            BlockKind::Skip => {}
                            BlockKind::Partial => partial.push(kv as u32),
                            BlockKind::Full => full.push(kv as u32),
                        }
                    }
                    partial_offsets.push(partial.len() as u32);
                    full_offsets.push(full.len() as u32);
                }
            }
        }
        Self::from_parts(shape, element, partial_offsets, partial, full_offsets, full)
    }

    /// From a dense block layout `[batch][heads][q_blocks][kv_blocks]` (shape's batch and
    /// heads, each possibly 1): 0 = skip, 1 = partial, 2 = full.
    pub fn from_layout(shape: MaskShape, element: ElementMask, layout: &[u8]) -> Result<Self> {
        shape.check()?;
        let (q_blocks, kv_blocks) = (shape.q_blocks(), shape.kv_blocks());
        let expected = shape.rows() * kv_blocks;
        if layout.len() != expected {
            return Err(Error::Length {
                what: "layout",
                expected,
                got: layout.len(),
            });
        }
        if let Some((at, &value)) = layout.iter().enumerate().find(|(_, v)| **v > 2) {
            return Err(Error::invalid(
                "layout",
                "0 (skip), 1 (partial) or 2 (full)",
                format!("{value} at {at}"),
            ));
        }
        Self::from_fn(shape, element, |b, h, q, kv| {
            match layout[((b * shape.heads + h) * q_blocks + q) * kv_blocks + kv] {
                0 => BlockKind::Skip,
                1 => BlockKind::Partial,
                _ => BlockKind::Full,
            }
        })
    }

    /// Every block full: plain attention.
    pub fn dense(shape: MaskShape) -> Result<Self> {
        Self::from_fn(shape, ElementMask::None, |_, _, _, _| BlockKind::Full)
    }

    /// Causal (bottom-right aligned when lq ≠ lk).
    pub fn causal(shape: MaskShape) -> Result<Self> {
        Self::from_element_mask(shape, ElementMask::Causal)
    }

    /// A sliding window of `window` keys around each query's aligned position, causal or not.
    pub fn sliding_window(shape: MaskShape, window: usize, causal: bool) -> Result<Self> {
        if window == 0 {
            return Err(Error::invalid("window", "at least 1 key", 0));
        }
        let element = if causal {
            ElementMask::CausalWindow(window)
        } else {
            ElementMask::SlidingWindow(window)
        };
        Self::from_element_mask(shape, element)
    }

    /// Attention sinks plus a local window (StreamingLLM), at block granularity: every query
    /// block sees the key blocks holding the first `sink` keys and the blocks within `local`
    /// keys before it; blocks crossing the diagonal are causal.
    pub fn streaming(shape: MaskShape, sink: usize, local: usize) -> Result<Self> {
        let causal = Self::causal(shape)?;
        let sink_blocks = sink.div_ceil(shape.block_n);
        let local_blocks = local.div_ceil(shape.block_n);
        Self::from_fn(shape, ElementMask::Causal, |b, h, q, kv| {
            let kind = causal.row_kind(b, h, q, kv);
            let diagonal = causal.diagonal_block(q);
            let near = diagonal.is_some_and(|d| kv + local_blocks > d);
            if kind != BlockKind::Skip && (kv < sink_blocks || near) {
                kind
            } else {
                BlockKind::Skip
            }
        })
    }

    /// BigBird at block granularity: a band of `window` blocks on each side, `global` first
    /// key blocks seen by all and first query blocks seeing all, and `random` more blocks per
    /// query block drawn from `seed` (per head). No element mask.
    pub fn bigbird(
        shape: MaskShape,
        window: usize,
        global: usize,
        random: usize,
        seed: u64,
    ) -> Result<Self> {
        shape.check()?;
        let kv_blocks = shape.kv_blocks();
        let mut chosen = vec![false; shape.rows() * kv_blocks];
        let mut rng = Rng::new(seed);
        for row in 0..shape.rows() {
            let q = row % shape.q_blocks();
            let picks = &mut chosen[row * kv_blocks..(row + 1) * kv_blocks];
            for (kv, pick) in picks.iter_mut().enumerate() {
                *pick = q.abs_diff(kv) <= window || kv < global || q < global;
            }
            for _ in 0..random.min(kv_blocks) {
                picks[rng.below(kv_blocks as u64) as usize] = true;
            }
        }
        let rows_per_batch = shape.heads * shape.q_blocks();
        Self::from_fn(shape, ElementMask::None, |b, h, q, kv| {
            let row = b * rows_per_batch + h * shape.q_blocks() + q;
            if chosen[row * kv_blocks + kv] {
                BlockKind::Full
            } else {
                BlockKind::Skip
            }
        })
    }

    /// MInference's vertical-slash pattern at block granularity, causal: the key blocks in
    /// `verticals` for every query block, and the diagonals `slashes` (0 = the block holding
    /// each query block's last aligned key, 1 = the one before, ...).
    pub fn vertical_slash(
        shape: MaskShape,
        verticals: &[usize],
        slashes: &[usize],
    ) -> Result<Self> {
        let causal = Self::causal(shape)?;
        Self::from_fn(shape, ElementMask::Causal, |b, h, q, kv| {
            let kind = causal.row_kind(b, h, q, kv);
            let on_slash = causal
                .diagonal_block(q)
                .is_some_and(|d| d >= kv && slashes.contains(&(d - kv)));
            if kind != BlockKind::Skip && (verticals.contains(&kv) || on_slash) {
                kind
            } else {
                BlockKind::Skip
            }
        })
    }

    /// Blocks classified by the element mask alone: full where it allows every pair of the
    /// block, partial where it allows some, skipped where none.
    fn from_element_mask(shape: MaskShape, element: ElementMask) -> Result<Self> {
        shape.check()?;
        Self::from_fn(shape, element, |_, _, q, kv| {
            let first = (kv * shape.block_n) as i64;
            let last = (((kv + 1) * shape.block_n).min(shape.lk) - 1) as i64;
            let (mut some, mut all) = (false, true);
            for i in q * shape.block_m..((q + 1) * shape.block_m).min(shape.lq) {
                let (lo, hi) = element.interval(i, shape.lq, shape.lk);
                some |= lo <= last && hi >= first;
                all &= lo <= first && hi >= last;
            }
            match (some, all) {
                (false, _) => BlockKind::Skip,
                (true, true) => BlockKind::Full,
                (true, false) => BlockKind::Partial,
            }
        })
    }

    /// The key block holding query block `q`'s last aligned key `i' = i + lk − lq`, if any.
    fn diagonal_block(&self, q: usize) -> Option<usize> {
        let last_query = ((q + 1) * self.shape.block_m).min(self.shape.lq) - 1;
        let aligned = last_query as i64 + self.shape.lk as i64 - self.shape.lq as i64;
        (aligned >= 0)
            .then(|| (aligned as usize / self.shape.block_n).min(self.shape.kv_blocks() - 1))
    }

    /// Builds a mask from its parts, checking that the offsets run from 0 to the list
    /// lengths without decreasing (one per row plus the end, rows = batch·heads·q_blocks),
    /// that each row's lists are strictly increasing key-block indices below kv_blocks, and
    /// that no block is in both lists.
    pub fn from_parts(
        shape: MaskShape,
        element: ElementMask,
        partial_offsets: Vec<u32>,
        partial: Vec<u32>,
        full_offsets: Vec<u32>,
        full: Vec<u32>,
    ) -> Result<Self> {
        shape.check()?;
        if let ElementMask::SlidingWindow(0) | ElementMask::CausalWindow(0) = element {
            return Err(Error::invalid(
                "element mask",
                "a window of at least 1 key",
                0,
            ));
        }
        let rows = shape.rows();
        let kv_blocks = shape.kv_blocks() as u32;
        for (what, offsets, list) in [
            ("partial", &partial_offsets, &partial),
            ("full", &full_offsets, &full),
        ] {
            if offsets.len() != rows + 1 {
                return Err(Error::Length {
                    what: "offsets",
                    expected: rows + 1,
                    got: offsets.len(),
                });
            }
            if offsets[0] != 0 || offsets[rows] as usize != list.len() {
                return Err(Error::invalid(
                    what,
                    format!("offsets from 0 to {}", list.len()),
                    format!("{} to {}", offsets[0], offsets[rows]),
                ));
            }
            for row in 0..rows {
                let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                if end < start || end > list.len() {
                    return Err(Error::invalid(
                        what,
                        "non-decreasing offsets",
                        format!("{start} then {end} at row {row}"),
                    ));
                }
                let blocks = &list[start..end];
                if let Some(bad) = blocks.iter().find(|&&kv| kv >= kv_blocks) {
                    return Err(Error::invalid(
                        what,
                        format!("key blocks below {kv_blocks}"),
                        format!("{bad} at row {row}"),
                    ));
                }
                if blocks.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::invalid(
                        what,
                        "strictly increasing key blocks per row",
                        format!("{blocks:?} at row {row}"),
                    ));
                }
            }
        }
        for row in 0..rows {
            let partial_row =
                &partial[partial_offsets[row] as usize..partial_offsets[row + 1] as usize];
            let full_row = &full[full_offsets[row] as usize..full_offsets[row + 1] as usize];
            if let Some(both) = partial_row
                .iter()
                .find(|kv| full_row.binary_search(kv).is_ok())
            {
                return Err(Error::invalid(
                    "full",
                    "no block both full and partial",
                    format!("block {both} at row {row}"),
                ));
            }
        }
        let transposed = Transposed::of(
            shape,
            [(&partial_offsets, &partial), (&full_offsets, &full)],
        );
        Ok(BlockMask {
            shape,
            element,
            partial_offsets,
            partial,
            full_offsets,
            full,
            transposed,
        })
    }

    /// The sizes.
    pub fn shape(&self) -> MaskShape {
        self.shape
    }

    /// The element mask of partial blocks.
    pub fn element(&self) -> ElementMask {
        self.element
    }

    /// The row of (batch, head, query block), with batch and head broadcast.
    fn row(&self, b: usize, h: usize, q: usize) -> usize {
        let (b, h) = (
            if self.shape.batch == 1 { 0 } else { b },
            if self.shape.heads == 1 { 0 } else { h },
        );
        (b * self.shape.heads + h) * self.shape.q_blocks() + q
    }

    /// An error unless (batch, head, query block) is a row of this mask: b below its batch
    /// and h below its heads (any, where it broadcasts), q below its query blocks.
    fn check_row(&self, b: usize, h: usize, q: usize) -> Result<()> {
        let s = self.shape;
        let limits = [
            ("batch index", b, (s.batch > 1).then_some(s.batch)),
            ("head index", h, (s.heads > 1).then_some(s.heads)),
            ("query block", q, Some(s.q_blocks())),
        ];
        for (what, index, limit) in limits {
            if let Some(limit) = limit.filter(|&limit| index >= limit) {
                return Err(Error::invalid(what, format!("below {limit}"), index));
            }
        }
        Ok(())
    }

    /// The partial and full key blocks of (batch, head, query block); an error for a row the
    /// mask does not have.
    pub fn blocks(&self, b: usize, h: usize, q: usize) -> Result<(&[u32], &[u32])> {
        self.check_row(b, h, q)?;
        Ok(self.row_blocks(b, h, q))
    }

    fn row_blocks(&self, b: usize, h: usize, q: usize) -> (&[u32], &[u32]) {
        let row = self.row(b, h, q);
        let range = |offsets: &[u32]| offsets[row] as usize..offsets[row + 1] as usize;
        (
            &self.partial[range(&self.partial_offsets)],
            &self.full[range(&self.full_offsets)],
        )
    }

    /// What (batch, head, query block) does with key block `kv` (`Skip` past the last key
    /// block); an error for a row the mask does not have.
    pub fn kind(&self, b: usize, h: usize, q: usize, kv: usize) -> Result<BlockKind> {
        self.check_row(b, h, q)?;
        Ok(self.row_kind(b, h, q, kv))
    }

    pub(super) fn row_kind(&self, b: usize, h: usize, q: usize, kv: usize) -> BlockKind {
        let (partial, full) = self.row_blocks(b, h, q);
        let Ok(kv) = u32::try_from(kv) else {
            return BlockKind::Skip;
        };
        if full.binary_search(&kv).is_ok() {
            BlockKind::Full
        } else if partial.binary_search(&kv).is_ok() {
            BlockKind::Partial
        } else {
            BlockKind::Skip
        }
    }

    /// Whether query `i` of (batch, head) sees key `j`: false past the ends, and for a batch
    /// or head the mask does not have.
    pub fn allows(&self, b: usize, h: usize, i: usize, j: usize) -> bool {
        let s = self.shape;
        if i >= s.lq || j >= s.lk || self.check_row(b, h, i / s.block_m).is_err() {
            return false;
        }
        match self.row_kind(b, h, i / s.block_m, j / s.block_n) {
            BlockKind::Skip => false,
            BlockKind::Full => true,
            BlockKind::Partial => self.element.allows(i, j, s.lq, s.lk),
        }
    }

    /// The query blocks whose lists hold key block `kv` of (batch, head), as partial and as
    /// full, each increasing; an error for a batch, head or key block the mask does not have.
    /// Batch and head broadcast as in [`Self::blocks`].
    pub fn q_blocks_of(&self, b: usize, h: usize, kv: usize) -> Result<(&[u32], &[u32])> {
        self.check_row(b, h, 0)?;
        let kv_blocks = self.shape.kv_blocks();
        if kv >= kv_blocks {
            return Err(Error::invalid(
                "key block",
                format!("below {kv_blocks}"),
                kv,
            ));
        }
        let column = self.row(b, h, 0) / self.shape.q_blocks() * kv_blocks + kv;
        let t = &self.transposed;
        let range = |offsets: &[u32]| offsets[column] as usize..offsets[column + 1] as usize;
        Ok((
            &t.partial[range(&t.partial_offsets)],
            &t.full[range(&t.full_offsets)],
        ))
    }

    /// The transposed CSR parts, by (batch, head, key block) of the mask's own batch and
    /// heads: partial offsets, partial query blocks, full offsets, full query blocks.
    pub fn transposed_parts(&self) -> (&[u32], &[u32], &[u32], &[u32]) {
        let t = &self.transposed;
        (&t.partial_offsets, &t.partial, &t.full_offsets, &t.full)
    }

    /// The CSR parts: partial offsets, partial blocks, full offsets, full blocks.
    pub fn parts(&self) -> (&[u32], &[u32], &[u32], &[u32]) {
        (
            &self.partial_offsets,
            &self.partial,
            &self.full_offsets,
            &self.full,
        )
    }

    /// Density and blocks per row.
    pub fn stats(&self) -> MaskStats {
        let rows = self.shape.rows();
        let per_row = |row: usize| {
            (self.partial_offsets[row + 1] - self.partial_offsets[row] + self.full_offsets[row + 1]
                - self.full_offsets[row]) as usize
        };
        let counts: Vec<usize> = (0..rows).map(per_row).collect();
        let total: usize = counts.iter().sum();
        MaskStats {
            density: total as f64 / (rows * self.shape.kv_blocks()) as f64,
            min_blocks_per_row: counts.iter().copied().min().unwrap_or(0),
            mean_blocks_per_row: total as f64 / rows as f64,
            max_blocks_per_row: counts.iter().copied().max().unwrap_or(0),
        }
    }
}
