//! The bitmap format: the sparse weight as 8 x 8 blocks, each a 64-bit mask of its nonzeros
//! and those values, laid out so that a warp decodes them straight into `mma.sync` A
//! fragments.
//!
//! - A unit is [`UNIT_M`] rows by [`UNIT_K`] columns: one warp's work for one k stage, four
//!   `m16n8k16` steps of sixteen columns. Units are stored row-major over the unit grid;
//!   edge units cover the ragged rest of the matrix, their bits past it clear.
//! - A unit holds 16 blocks, step by step, each step's four in the order of the A
//!   fragment's register pairs: rows 0–7 and columns 0–7 of the step (`a0, a1`), rows 8–15
//!   and columns 0–7 (`a2, a3`), rows 0–7 and columns 8–15 (`a4, a5`), rows 8–15 and columns
//!   8–15 (`a6, a7`).
//! - Bit `8·row + col` of a block's mask is its element (row, col). Lane `l` of the warp
//!   holds elements (l / 4, 2·(l % 4)) and the next of every block, bits `2l` and `2l + 1`:
//!   it finds its values with a shift and a popcount, without any other lane.
//! - A unit's nonzero values follow each other in block and bit order (16-bit f16 or bf16),
//!   padded with zeros to a multiple of 8 (16 bytes); `unit_offsets` (one per unit, plus the
//!   end) count values.
//!
//! It takes 2 bytes per nonzero and 1 bit per element, so it saves bytes over dense f16 at
//! any sparsity above about 6%; blocks of every density, from empty to full, are valid.

use std::marker::PhantomData;
use std::path::Path;

use super::format::{TiledCsl, check_dims, check_len};
use super::saved::{self, Saved, Tensor};
use crate::element::Float16;
use crate::error::{Error, Result};

/// Rows of m per unit.
pub const UNIT_M: usize = 16;
/// Columns of k per unit.
pub const UNIT_K: usize = 64;
/// 8 x 8 blocks per unit.
const BLOCKS: usize = UNIT_M * UNIT_K / 64;
/// Values per 16 bytes: units start 16-byte aligned.
const ALIGN: usize = 8;
/// The version written into saved files' metadata.
const FORMAT_VERSION: &str = "1";

/// A sparse `[m, k]` weight in the bitmap format (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Bitmap<T> {
    m: usize,
    k: usize,
    masks: Vec<u64>,
    unit_offsets: Vec<u32>,
    values: Vec<u16>,
    nnz: usize,
    element: PhantomData<T>,
}

/// Sizes and density of a [`Bitmap`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BitmapStats {
    /// Nonzero weights.
    pub nnz: usize,
    /// The fraction of zeros.
    pub sparsity: f64,
    /// Bytes of masks, offsets and values (padding included).
    pub bytes: usize,
    /// `bytes` per element of the dense weight (dense f16 takes 2).
    pub bytes_per_dense_element: f64,
}

/// The first row and column, within its unit, of block `b`.
fn block_origin(b: usize) -> (usize, usize) {
    let (step, pair) = (b / 4, b % 4);
    (8 * (pair % 2), 16 * step + 8 * (pair / 2))
}

/// The (row, col) in the matrix of every element of block `b` of unit (`um`, `uk`), by bit.
fn block_elements(um: usize, uk: usize, b: usize) -> impl Iterator<Item = (usize, (usize, usize))> {
    let (row0, col0) = block_origin(b);
    (0..64).map(move |bit| {
        let place = (um * UNIT_M + row0 + bit / 8, uk * UNIT_K + col0 + bit % 8);
        (bit, place)
    })
}

impl<T: Float16> Bitmap<T> {
    /// Encodes a dense row-major `[m, k]` weight, dropping exact zeros (−0 too: it decodes
    /// as +0).
    pub fn encode(dense: &[T], m: usize, k: usize) -> Result<Self> {
        check_dims(m, k)?;
        check_len("dense", m * k, dense.len())?;
        let units = [m.div_ceil(UNIT_M), k.div_ceil(UNIT_K)];
        let mut masks = Vec::with_capacity(units[0] * units[1] * BLOCKS);
        let mut unit_offsets = vec![0u32];
        let mut values = Vec::new();
        for um in 0..units[0] {
            for uk in 0..units[1] {
                for b in 0..BLOCKS {
                    let mut mask = 0u64;
                    for (bit, (row, col)) in block_elements(um, uk, b) {
                        let value = (row < m && col < k).then(|| dense[row * k + col]);
                        if let Some(value) = value.filter(|v| v.to_f64() != 0.0) {
                            mask |= 1 << bit;
                            values.push(value.bits());
                        }
                    }
                    masks.push(mask);
                }
                values.resize(values.len().next_multiple_of(ALIGN), 0);
                unit_offsets.push(offset(values.len())?);
            }
        }
        Self::from_parts(m, k, unit_offsets, masks, values)
    }

    /// The same weight as a [`TiledCsl`] holds.
    pub fn from_tiled_csl(w: &TiledCsl<T>) -> Result<Self> {
        Self::encode(&w.decode(), w.m(), w.k())
    }

    /// Builds a weight from its parts, checking every invariant and naming the first
    /// violation: 16 masks per unit with no bit past the matrix; `unit_offsets` (one per
    /// unit plus the end) starting at 0, each unit's values the popcount of its masks (none
    /// of them ±0) padded with zeros to a multiple of 8, ending at `values.len()`.
    pub fn from_parts(
        m: usize,
        k: usize,
        unit_offsets: Vec<u32>,
        masks: Vec<u64>,
        values: Vec<u16>,
    ) -> Result<Self> {
        check_dims(m, k)?;
        let units = [m.div_ceil(UNIT_M), k.div_ceil(UNIT_K)];
        let count = units[0] * units[1];
        check_len("masks", count * BLOCKS, masks.len())?;
        check_len("unit_offsets", count + 1, unit_offsets.len())?;
        check_len("values", unit_offsets[count] as usize, values.len())?;
        if unit_offsets[0] != 0 {
            return Err(Error::invalid(
                "unit_offsets",
                "0 at unit 0",
                unit_offsets[0],
            ));
        }
        let mut nnz = 0;
        for unit in 0..count {
            let unit_masks = &masks[unit * BLOCKS..(unit + 1) * BLOCKS];
            check_edges(unit, unit_masks, [m, k], units[1])?;
            let ones: usize = unit_masks.iter().map(|m| m.count_ones() as usize).sum();
            let (start, stop) = (unit_offsets[unit] as usize, unit_offsets[unit + 1] as usize);
            let padded = ones.next_multiple_of(ALIGN);
            if stop < start || stop - start != padded {
                return Err(Error::invalid(
                    "unit_offsets",
                    format!("{padded} values for unit {unit} (its {ones} bits, padded to 8)"),
                    format!("{start} then {stop}"),
                ));
            }
            if let Some(at) = values[start..start + ones]
                .iter()
                .position(|&v| v & 0x7fff == 0)
            {
                return Err(Error::invalid(
                    "values",
                    "a nonzero value for every set bit",
                    format!("a zero at value {at} of unit {unit}"),
                ));
            }
            if values[start + ones..stop].iter().any(|&v| v != 0) {
                return Err(Error::invalid(
                    "values",
                    format!("zero padding after the {ones} values of unit {unit}"),
                    format!("{:?}", &values[start + ones..stop]),
                ));
            }
            nnz += ones;
        }
        Ok(Bitmap {
            m,
            k,
            masks,
            unit_offsets,
            values,
            nnz,
            element: PhantomData,
        })
    }

    /// Rows (outputs).
    pub fn m(&self) -> usize {
        self.m
    }

    /// Columns (inputs).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The blocks' masks, 16 per unit, unit after unit.
    pub fn masks(&self) -> &[u64] {
        &self.masks
    }

    /// Where each unit's values start, and the end.
    pub fn unit_offsets(&self) -> &[u32] {
        &self.unit_offsets
    }

    /// The values' bits, unit after unit.
    pub fn values(&self) -> &[u16] {
        &self.values
    }

    /// Values (padding included) of the tile — the [`TILE_M`](super::TILE_M) / [`UNIT_M`]
    /// unit rows of one unit column — that has the most: what a stage of the CUDA kernel holds.
    #[cfg(feature = "cuda")]
    pub(crate) fn max_tile_values(&self) -> usize {
        let units_k = self.k.div_ceil(UNIT_K);
        let unit_rows = super::TILE_M / UNIT_M;
        let unit_values =
            |unit: usize| (self.unit_offsets[unit + 1] - self.unit_offsets[unit]) as usize;
        (0..self.m.div_ceil(UNIT_M))
            .step_by(unit_rows)
            .flat_map(|um0| {
                let rows = um0..(um0 + unit_rows).min(self.m.div_ceil(UNIT_M));
                (0..units_k)
                    .map(move |uk| rows.clone().map(|um| unit_values(um * units_k + uk)).sum())
            })
            .max()
            .unwrap_or(0)
    }

    /// Sizes and density.
    pub fn stats(&self) -> BitmapStats {
        let bytes = 8 * self.masks.len() + 4 * self.unit_offsets.len() + 2 * self.values.len();
        let elements = (self.m * self.k) as f64;
        BitmapStats {
            nnz: self.nnz,
            sparsity: 1.0 - self.nnz as f64 / elements,
            bytes,
            bytes_per_dense_element: bytes as f64 / elements,
        }
    }

    /// The dense row-major `[m, k]` weight: exactly the one encoded, bit for bit, except that
    /// a −0 comes back as +0.
    pub fn decode(&self) -> Vec<T> {
        let units_k = self.k.div_ceil(UNIT_K);
        let mut dense = vec![T::default(); self.m * self.k];
        for (unit, masks) in self.masks.chunks_exact(BLOCKS).enumerate() {
            let mut next = self.unit_offsets[unit] as usize;
            for (b, &mask) in masks.iter().enumerate() {
                for (bit, (row, col)) in block_elements(unit / units_k, unit % units_k, b) {
                    if mask >> bit & 1 == 1 {
                        dense[row * self.k + col] = T::from_bits(self.values[next]);
                        next += 1;
                    }
                }
            }
        }
        dense
    }

    /// The weight as safetensors bytes: tensors `unit_offsets` (U32), `masks` (U64) and
    /// `values` (U16), metadata `format = "bitmap"`, `version`, `dtype`, `m`, `k`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let tensors = [
            Tensor::of("unit_offsets", safetensors::Dtype::U32, &self.unit_offsets),
            Tensor::of("masks", safetensors::Dtype::U64, &self.masks),
            Tensor::of("values", safetensors::Dtype::U16, &self.values),
        ];
        let names = ["bitmap", FORMAT_VERSION, T::NAME];
        saved::serialize_weight(names, [self.m, self.k], &tensors)
    }

    /// Reads [`Bitmap::to_safetensors`] bytes back, checking the metadata (format, version,
    /// dtype) and every invariant of [`Bitmap::from_parts`].
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let file = Saved::parse(bytes)?;
        let [m, k] = file.weight("bitmap", &[FORMAT_VERSION], T::NAME)?;
        let u32s = file.tensor("unit_offsets", safetensors::Dtype::U32, |b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })?;
        let u64s = file.tensor("masks", safetensors::Dtype::U64, |b| {
            u64::from_le_bytes(b.try_into().expect("8 bytes"))
        })?;
        let u16s = file.tensor("values", safetensors::Dtype::U16, |b| {
            u16::from_le_bytes([b[0], b[1]])
        })?;
        Self::from_parts(m, k, u32s, u64s, u16s)
    }

    /// Writes [`Bitmap::to_safetensors`] to a file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        saved::write(path.as_ref(), &self.to_safetensors()?)
    }

    /// Reads a file written by [`Bitmap::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_safetensors(&saved::read(path.as_ref())?)
    }
}

/// A value count as a `u32` offset, or an error past what offsets count.
fn offset(values: usize) -> Result<u32> {
    u32::try_from(values).map_err(|_| Error::invalid("weight", "fewer than 2^32 values", values))
}

/// An error if a mask of `unit` has a bit for an element past the `[m, k]` matrix.
fn check_edges(unit: usize, masks: &[u64], [m, k]: [usize; 2], units_k: usize) -> Result<()> {
    let (um, uk) = (unit / units_k, unit % units_k);
    for (b, &mask) in masks.iter().enumerate() {
        let outside = block_elements(um, uk, b)
            .find(|&(bit, (row, col))| mask >> bit & 1 == 1 && (row >= m || col >= k));
        if let Some((bit, (row, col))) = outside {
            return Err(Error::invalid(
                "masks",
                format!("no bit past the [{m}, {k}] matrix"),
                format!("bit {bit} of block {b} of unit {unit}: element ({row}, {col})"),
            ));
        }
    }
    Ok(())
}
