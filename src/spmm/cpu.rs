//! SpMM on the CPU: `y [n, m] = x [n, k] · wᵀ` for CPU inference (what
//! `tilefuse::candle::SparseLinear` runs on candle's CPU device). Not the reference (that one
//! is f64 and dense): products and sums in f32, the weight's nonzeros in compressed rows, the
//! rows spread over rayon's threads, and each nonzero multiplied into a block of tokens at
//! once, so the inner loop is a vector multiply-add over tokens (AVX2 with FMA where the CPU
//! has it).
//!
//! ```
//! use half::f16;
//! use tilefuse::spmm::{TiledCsl, cpu::CpuWeight};
//!
//! // w = [[1, 0, 2], [0, 0, 3]], x = [[1, 1, 1], [1, 0, 0]]: y = [[3, 3], [1, 0]].
//! let w = [1.0, 0.0, 2.0, 0.0, 0.0, 3.0].map(f16::from_f32);
//! let w = CpuWeight::from_sparse(&TiledCsl::encode(&w, 2, 3)?);
//! let mut y = [0.0f32; 4];
//! w.multiply(&[1.0f32, 1.0, 1.0, 1.0, 0.0, 0.0], &mut y)?;
//! assert_eq!(y, [3.0, 3.0, 1.0, 0.0]);
//! # Ok::<(), tilefuse::Error>(())
//! ```

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::format::check_dims;
use super::reference::{SparseWeight, output_tokens};
use crate::element::Float16;
use crate::error::{Error, Result};

/// Tokens multiplied by each nonzero at once, by token count: a block of `x` stays in the
/// first cache levels while every row passes over it, and eight 8-lane vectors of partial
/// sums (`SETS` interleaved sums of `BLOCK / 8` vectors) are in flight, as many as a
/// multiply-add's latency needs.
const BLOCKS: [(usize, usize); 3] = [(8, 4), (16, 4), (32, 2)];
/// Tokens of `y` written per task from `yᵀ` (a cache line of f32s).
const TILE: usize = 16;
/// Nonzero-token products below which one thread does the whole multiply.
const SERIAL_WORK: usize = 1 << 18;

/// An element type the CPU multiply reads and writes: `f32`, [`struct@f16`] or [`bf16`].
pub trait CpuElement: sealed::Sealed + Copy + Default + Send + Sync + 'static {
    /// `values` widened to f32 (exact) into `out`, of the same length.
    fn widen(values: &[Self], out: &mut [f32]);
    /// The nearest values to `values` into `out`, of the same length.
    fn narrow(values: &[f32], out: &mut [Self]);
}

impl CpuElement for f32 {
    fn widen(values: &[Self], out: &mut [f32]) {
        out.copy_from_slice(values);
    }
    fn narrow(values: &[f32], out: &mut [Self]) {
        out.copy_from_slice(values);
    }
}

/// half's slice conversions use the CPU's conversion instructions where it has them.
macro_rules! sixteen_bit_element {
    ($($t:ty),*) => {$(
        impl CpuElement for $t {
            fn widen(values: &[Self], out: &mut [f32]) {
                values.convert_to_f32_slice(out);
            }
            fn narrow(values: &[f32], out: &mut [Self]) {
                out.convert_from_f32_slice(values);
            }
        }
    )*};
}
sixteen_bit_element!(f16, bf16);

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A sparse `[m, k]` weight in compressed rows for the CPU: each row's nonzero columns and
/// their values widened to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuWeight {
    m: usize,
    k: usize,
    /// Row `r`'s nonzeros are `row_starts[r]..row_starts[r + 1]`.
    row_starts: Vec<usize>,
    columns: Vec<u32>,
    values: Vec<f32>,
}

impl CpuWeight {
    /// The nonzeros of a weight in any sparse format (explicit zeros dropped).
    pub fn from_sparse<T: Float16 + CpuElement>(w: &impl SparseWeight<T>) -> Self {
        Self::compress(&w.dense(), w.rows(), w.columns())
    }

    /// The nonzeros of a dense row-major `[m, k]` weight.
    pub fn from_dense<T: CpuElement>(dense: &[T], m: usize, k: usize) -> Result<Self> {
        check_dims(m, k)?;
        if dense.len() != m * k {
            return Err(Error::Length {
                what: "dense",
                expected: m * k,
                got: dense.len(),
            });
        }
        Ok(Self::compress(dense, m, k))
    }

    fn compress<T: CpuElement>(dense: &[T], m: usize, k: usize) -> Self {
        let mut row_starts = Vec::with_capacity(m + 1);
        let (mut columns, mut values) = (Vec::new(), Vec::new());
        row_starts.push(0);
        let mut wide = vec![0.0f32; k];
        for row in dense.chunks_exact(k) {
            T::widen(row, &mut wide);
            for (column, &value) in wide.iter().enumerate() {
                if value != 0.0 {
                    columns.push(column as u32);
                    values.push(value);
                }
            }
            row_starts.push(columns.len());
        }
        CpuWeight {
            m,
            k,
            row_starts,
            columns,
            values,
        }
    }

    /// Rows (outputs).
    pub fn m(&self) -> usize {
        self.m
    }

    /// Columns (inputs).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Nonzeros kept.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// `y [n, m] = x [n, k] · wᵀ` with `n = x.len() / k`, products and sums in f32 (each
    /// output summed in an order fixed by the shape, so the same bits whatever the thread count).
    pub fn multiply<X: CpuElement, Y: CpuElement>(&self, x: &[X], y: &mut [Y]) -> Result<()> {
        let n = output_tokens(x.len(), y.len(), self.m, self.k)?;
        let (block, sets) = *BLOCKS
            .iter()
            .find(|&&(block, _)| n <= block)
            .unwrap_or(&BLOCKS[BLOCKS.len() - 1]);
        let padded = n.div_ceil(block) * block;
        let serial = self.nnz().saturating_mul(padded) < SERIAL_WORK;
        let xt = self.transposed_blocks(x, n, block, serial);
        let mut yt = vec![0.0f32; self.m * padded];
        let rows_per_task = if serial {
            self.m
        } else {
            self.m.div_ceil(4 * rayon::current_num_threads()).max(1)
        };
        let task = |(index, yt): (usize, &mut [f32])| {
            let rows = index * rows_per_task..(index * rows_per_task + yt.len() / padded);
            self.multiply_rows(rows, &xt, (block, sets), yt);
        };
        if serial {
            yt.chunks_mut(rows_per_task * padded)
                .enumerate()
                .for_each(task);
        } else {
            yt.par_chunks_mut(rows_per_task * padded)
                .enumerate()
                .for_each(task);
        }
        // yᵀ back to y, TILE tokens at a time: whole cache lines of yᵀ read into an f32 tile,
        // then each of its rows narrowed at once.
        let write_tile = |(tile, y_rows): (usize, &mut [Y])| {
            let (first, tokens) = (tile * TILE, y_rows.len() / self.m);
            let mut rows = vec![0.0f32; y_rows.len()];
            for o in 0..self.m {
                for (t, &value) in yt[o * padded + first..][..tokens].iter().enumerate() {
                    rows[t * self.m + o] = value;
                }
            }
            Y::narrow(&rows, y_rows);
        };
        if serial {
            y.chunks_mut(TILE * self.m).enumerate().for_each(write_tile);
        } else {
            y.par_chunks_mut(TILE * self.m)
                .enumerate()
                .for_each(write_tile);
        }
        Ok(())
    }

    /// `x` in blocks of `block` tokens, each block `[k, block]` (tokens contiguous), padded
    /// with zero tokens.
    fn transposed_blocks<X: CpuElement>(
        &self,
        x: &[X],
        n: usize,
        block: usize,
        serial: bool,
    ) -> Vec<f32> {
        let k = self.k;
        let mut xt = vec![0.0f32; n.div_ceil(block) * block * k];
        let transpose = |(b, xt_block): (usize, &mut [f32])| {
            let mut row = vec![0.0f32; k];
            for (t, x_row) in x.chunks_exact(k).skip(b * block).take(block).enumerate() {
                X::widen(x_row, &mut row);
                for (c, &value) in row.iter().enumerate() {
                    xt_block[c * block + t] = value;
                }
            }
        };
        if serial {
            xt.chunks_mut(block * k).enumerate().for_each(transpose);
        } else {
            xt.par_chunks_mut(block * k).enumerate().for_each(transpose);
        }
        xt
    }

    /// Rows `rows` of `yᵀ` (each `padded` tokens long) into `yt`.
    fn multiply_rows(
        &self,
        rows: std::ops::Range<usize>,
        xt: &[f32],
        block: (usize, usize),
        yt: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above), the only requirement of
            // a `target_feature` function; its body is safe code.
            unsafe { self.multiply_rows_avx2(rows, xt, block, yt) };
            return;
        }
        self.multiply_rows_with::<false>(rows, xt, block, yt);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn multiply_rows_avx2(
        &self,
        rows: std::ops::Range<usize>,
        xt: &[f32],
        block: (usize, usize),
        yt: &mut [f32],
    ) {
        self.multiply_rows_with::<true>(rows, xt, block, yt);
    }

    /// Token block by token block (each stays in cache while every row passes over it).
    #[inline(always)]
    fn multiply_rows_with<const FUSED: bool>(
        &self,
        rows: std::ops::Range<usize>,
        xt: &[f32],
        block: (usize, usize),
        yt: &mut [f32],
    ) {
        let (block, sets) = block;
        let padded = yt.len() / rows.len().max(1);
        for (b, xt_block) in xt.chunks_exact(block * self.k).enumerate() {
            for (row, yt_row) in rows.clone().zip(yt.chunks_exact_mut(padded)) {
                let nonzeros = self.row_starts[row]..self.row_starts[row + 1];
                let (columns, values) = (&self.columns[nonzeros.clone()], &self.values[nonzeros]);
                let out = &mut yt_row[b * block..][..block];
                match (block, sets) {
                    (8, 4) => row_times_block::<8, 4, FUSED>(columns, values, xt_block, out),
                    (16, 4) => row_times_block::<16, 4, FUSED>(columns, values, xt_block, out),
                    _ => row_times_block::<32, 2, FUSED>(columns, values, xt_block, out),
                }
            }
        }
    }
}

/// `out[t] = Σ values[i] · xt[columns[i]][t]` over a block of `B` tokens, with `SETS`
/// interleaved partial sums (added in order at the end).
#[inline(always)]
fn row_times_block<const B: usize, const SETS: usize, const FUSED: bool>(
    columns: &[u32],
    values: &[f32],
    xt: &[f32],
    out: &mut [f32],
) {
    let mut sums = [[0.0f32; B]; SETS];
    let mut add = |set: usize, column: u32, weight: f32| {
        let x: &[f32; B] = xt[column as usize * B..][..B].try_into().expect("B values");
        for (sum, &x) in sums[set].iter_mut().zip(x) {
            *sum = if FUSED {
                weight.mul_add(x, *sum)
            } else {
                *sum + weight * x
            };
        }
    };
    let (column_groups, value_groups) = (columns.chunks_exact(SETS), values.chunks_exact(SETS));
    let (rest_columns, rest_values) = (column_groups.remainder(), value_groups.remainder());
    for (group_columns, group_values) in column_groups.zip(value_groups) {
        for set in 0..SETS {
            add(set, group_columns[set], group_values[set]);
        }
    }
    for (&column, &weight) in rest_columns.iter().zip(rest_values) {
        add(0, column, weight);
    }
    for (t, out) in out.iter_mut().enumerate() {
        *out = sums.iter().map(|set| set[t]).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Rng;
    use crate::spmm::{Bitmap, Pruning, prune, reference};

    /// Token counts around every block size, against the f64 reference: f32 sums of
    /// `k` products of f16 values stay within `k · 2^-23` of the sum of magnitudes.
    #[test]
    fn matches_the_reference_for_every_token_count() {
        let seed = Rng::fresh_seed();
        let mut rng = Rng::new(seed);
        let (m, k) = (37, 203);
        let dense = rng.fill(m * k, -1.0, 1.0, f16::from_f64);
        let w = Bitmap::encode(&prune(&dense, m, k, 0.8, Pruning::Global).unwrap(), m, k).unwrap();
        let cpu = CpuWeight::from_sparse(&w);
        for n in [1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65, 130] {
            let x = rng.fill(n * k, -1.0, 1.0, f16::from_f64);
            let mut y = vec![f32::NAN; n * m];
            cpu.multiply(&x, &mut y).unwrap();
            let expected = reference(&w, &x).unwrap();
            let dense_w = w.decode();
            for (i, (&got, &want)) in y.iter().zip(&expected).enumerate() {
                let (t, o) = (i / m, i % m);
                let magnitude: f64 = (0..k)
                    .map(|c| (dense_w[o * k + c].to_f64() * x[t * k + c].to_f64()).abs())
                    .sum();
                let bound = k as f64 * 2f64.powi(-23) * magnitude;
                assert!(
                    (f64::from(got) - want).abs() <= bound,
                    "seed {seed}: n = {n}, y[{t}, {o}] = {got}, expected {want} ± {bound}"
                );
            }
        }
    }

    /// Multithreaded results are the bits of single-threaded ones, in every output type.
    #[test]
    fn threads_do_not_change_the_bits() {
        let seed = Rng::fresh_seed();
        let mut rng = Rng::new(seed);
        let (m, k, n) = (301, 509, 70);
        let dense = rng.fill(m * k, -1.0, 1.0, |v| v as f32);
        let w = CpuWeight::from_dense(&dense, m, k).unwrap();
        let x = rng.fill(n * k, -1.0, 1.0, bf16::from_f64);
        let mut many = vec![bf16::NAN; n * m];
        w.multiply(&x, &mut many).unwrap();
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut one = vec![bf16::NAN; n * m];
        one_thread.install(|| w.multiply(&x, &mut one)).unwrap();
        assert_eq!(many, one, "seed {seed}");
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let w = CpuWeight::from_dense(&[1.0f32; 6], 2, 3).unwrap();
        assert!(w.multiply(&[0.0f32; 4], &mut [0.0f32; 2]).is_err());
        assert!(w.multiply(&[0.0f32; 3], &mut [0.0f32; 3]).is_err());
        assert!(w.multiply(&[0.0f32; 0], &mut [0.0f32; 0]).is_err());
        assert!(CpuWeight::from_dense(&[1.0f32; 5], 2, 3).is_err());
        assert!(CpuWeight::from_dense(&[0.0f32; 0], 0, 3).is_err());
    }
}
