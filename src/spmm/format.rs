//! Flash-LLM's Tiled-CSL format: the sparse weight as 128 x 64 tiles of (value, location)
//! pairs, ready for a scatter into a shared-memory tile that `ldmatrix` reads directly.
//!
//! - Tiles are [`TILE_M`] rows (of m) by [`TILE_K`] columns (of k), stored row-major over the
//!   tile grid; edge tiles cover the ragged rest of the matrix.
//! - Each nonzero is one `u32`: the value's 16 bits (f16 or bf16) in the low half, its place
//!   in the tile in the high half: `row * 64 + swizzled column`, where the column's 16-byte
//!   chunk (8 values) is XORed with `row % 8`, the layout that keeps `ldmatrix` free of
//!   shared-memory bank conflicts.
//! - A tile's entries have distinct places, in any order, and are padded to a multiple of 4
//!   (one 16-byte vector) by repeating the tile's last entry, a harmless second write of the
//!   same value; `tile_offsets` (one per tile, plus the end) count vectors.
//! - [`TiledCsl::encode`] orders each tile's entries for the CUDA kernel's scatter: the
//!   entries that one warp writes with one store instruction (the same component of 32
//!   consecutive vectors) fall in different shared-memory banks wherever the tile allows, so
//!   the scatter costs about what the tile's fullest bank forces, where increasing places
//!   cost up to 3.4 times that.
//!
//! It takes 4 bytes per nonzero, so it saves bytes over dense f16 above 50% sparsity; tiles
//! of every density, from empty to fully dense, are valid.

use std::marker::PhantomData;
use std::path::Path;

use super::saved::{self, Saved, Tensor};
use crate::element::Float16;
use crate::error::{Error, Result};

/// Rows of m per tile.
pub const TILE_M: usize = 128;
/// Columns of k per tile.
pub const TILE_K: usize = 64;
/// Entries per 16-byte vector.
const VECTOR: usize = 4;
/// The version written into saved files' metadata: "2" allows any order of a tile's entries
/// ("1" asked for increasing places, so version 1 files are read as well).
const FORMAT_VERSION: &str = "2";
const FORMAT_VERSIONS_READ: [&str; 2] = ["1", "2"];
/// Vectors that one warp's scatter instruction covers (one per lane).
const WARP_VECTORS: usize = 32;
/// Shared-memory banks (4 bytes each).
const BANKS: usize = 32;

/// Which weights magnitude pruning compares against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pruning {
    /// The smallest magnitudes of the whole matrix: rows end up with different densities.
    Global,
    /// The smallest magnitudes of each output row: every row keeps the same count.
    PerRow,
}

/// Zeroes the smallest-magnitude weights of `dense [m, k]` until `sparsity` (0 to 1) of them
/// are zero (ties broken by position, so the result is reproducible).
pub fn prune<T: Float16>(
    dense: &[T],
    m: usize,
    k: usize,
    sparsity: f64,
    scope: Pruning,
) -> Result<Vec<T>> {
    check_dims(m, k)?;
    check_len("dense", m * k, dense.len())?;
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(Error::invalid("sparsity", "a fraction in [0, 1]", sparsity));
    }
    let mut pruned = dense.to_vec();
    let mut zero_smallest = |range: std::ops::Range<usize>| {
        let count = (sparsity * range.len() as f64).round() as usize;
        let mut order: Vec<usize> = range.collect();
        order.sort_by(|&i, &j| dense[i].to_f64().abs().total_cmp(&dense[j].to_f64().abs()));
        for &i in &order[..count] {
            pruned[i] = T::default();
        }
    };
    match scope {
        Pruning::Global => zero_smallest(0..m * k),
        Pruning::PerRow => (0..m).for_each(|row| zero_smallest(row * k..(row + 1) * k)),
    }
    Ok(pruned)
}

/// A sparse `[m, k]` weight in Flash-LLM's Tiled-CSL format. Every instance is valid: built
/// by [`TiledCsl::encode`], or checked by [`TiledCsl::from_parts`] and [`TiledCsl::load`].
#[derive(Debug, Clone, PartialEq)]
pub struct TiledCsl<T: Float16> {
    m: usize,
    k: usize,
    tile_offsets: Vec<u32>,
    entries: Vec<u32>,
    nnz: usize,
    densest: (usize, usize),
    element: PhantomData<T>,
}

/// Sizes and densities of a [`TiledCsl`], for choosing formats and reading benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TiledCslStats {
    /// Stored nonzeros (padding excluded).
    pub nnz: usize,
    /// Fraction of zeros: `1 − nnz / (m·k)`.
    pub sparsity: f64,
    /// Bytes of entries and tile offsets (what a kernel reads).
    pub bytes: usize,
    /// `bytes / (m·k)`: 2 for dense f16; Tiled-CSL is smaller only above 50% sparsity.
    pub bytes_per_dense_element: f64,
    /// The tile with the most nonzeros: `(tile index, nonzeros)`.
    pub densest_tile: (usize, usize),
}

impl<T: Float16> TiledCsl<T> {
    /// Encodes a dense row-major `[m, k]` weight, dropping exact zeros (−0 too: it decodes as
    /// +0).
    pub fn encode(dense: &[T], m: usize, k: usize) -> Result<Self> {
        check_dims(m, k)?;
        check_len("dense", m * k, dense.len())?;
        let (tiles_m, tiles_k) = (m.div_ceil(TILE_M), k.div_ceil(TILE_K));
        let mut tile_offsets = Vec::with_capacity(tiles_m * tiles_k + 1);
        tile_offsets.push(0u32);
        let mut entries = Vec::new();
        for tile_m in 0..tiles_m {
            for tile_k in 0..tiles_k {
                let mut tile = Vec::new();
                for row in 0..TILE_M.min(m - tile_m * TILE_M) {
                    let mut in_row: Vec<(u16, u32)> = (0..TILE_K.min(k - tile_k * TILE_K))
                        .filter_map(|col| {
                            let value = dense[(tile_m * TILE_M + row) * k + tile_k * TILE_K + col];
                            (value.to_f64() != 0.0).then(|| {
                                let place = place_of(row, col);
                                (place, u32::from(value.bits()) | u32::from(place) << 16)
                            })
                        })
                        .collect();
                    in_row.sort_by_key(|&(place, _)| place);
                    tile.extend(in_row.into_iter().map(|(_, entry)| entry));
                }
                entries.extend(spread_over_banks(tile));
                tile_offsets.push((entries.len() / VECTOR) as u32);
            }
        }
        Self::from_parts(m, k, tile_offsets, entries)
    }

    /// Builds a weight from its parts, checking every invariant and naming the first
    /// violation: `tile_offsets` (one per tile plus the end, in 4-entry vectors, starting at
    /// 0, non-decreasing, ending at `entries.len() / 4`), and per tile at most 128·64 entries
    /// whose places are in the tile and in the matrix, all different (in any order), then at
    /// most three repeats of the last entry as padding.
    pub fn from_parts(
        m: usize,
        k: usize,
        tile_offsets: Vec<u32>,
        entries: Vec<u32>,
    ) -> Result<Self> {
        check_dims(m, k)?;
        let (tiles_m, tiles_k) = (m.div_ceil(TILE_M), k.div_ceil(TILE_K));
        let tiles = tiles_m * tiles_k;
        check_len("tile_offsets", tiles + 1, tile_offsets.len())?;
        if tile_offsets[0] != 0 {
            return Err(Error::invalid(
                "tile_offsets",
                "0 at tile 0",
                tile_offsets[0],
            ));
        }
        if !entries.len().is_multiple_of(VECTOR) {
            return Err(Error::invalid(
                "entries",
                "a whole number of 4-entry vectors",
                format!("{} entries", entries.len()),
            ));
        }
        let end = tile_offsets[tiles] as usize;
        if end * VECTOR != entries.len() {
            return Err(Error::invalid(
                "tile_offsets",
                format!(
                    "an end of {} vectors (the entries given)",
                    entries.len() / VECTOR
                ),
                end,
            ));
        }
        let mut nnz = 0;
        let mut densest = (0, 0);
        for tile in 0..tiles {
            let (start, stop) = (tile_offsets[tile] as usize, tile_offsets[tile + 1] as usize);
            if stop < start || stop > end || stop - start > TILE_M * TILE_K / VECTOR {
                return Err(Error::invalid(
                    "tile_offsets",
                    format!(
                        "non-decreasing offsets up to {end}, at most {} vectors per tile",
                        TILE_M * TILE_K / VECTOR
                    ),
                    format!("{start} then {stop} at tile {tile}"),
                ));
            }
            let rows = TILE_M.min(m - (tile / tiles_k) * TILE_M);
            let cols = TILE_K.min(k - (tile % tiles_k) * TILE_K);
            let count = check_tile(tile, &entries[start * VECTOR..stop * VECTOR], rows, cols)?;
            nnz += count;
            if count > densest.1 {
                densest = (tile, count);
            }
        }
        Ok(TiledCsl {
            m,
            k,
            tile_offsets,
            entries,
            nnz,
            densest,
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

    /// The packed entries (value bits | place << 16), tile after tile.
    pub fn entries(&self) -> &[u32] {
        &self.entries
    }

    /// Where each tile's entries start, in 4-entry vectors, and the end.
    pub fn tile_offsets(&self) -> &[u32] {
        &self.tile_offsets
    }

    /// The entries as a device buffer holds them: an all-zero weight has none, and a kernel
    /// reads none, but a buffer needs at least one vector.
    pub(crate) fn device_entries(&self) -> &[u32] {
        if self.entries.is_empty() {
            &[0; VECTOR]
        } else {
            &self.entries
        }
    }

    /// The most 4-entry vectors any tile has.
    pub fn max_tile_vectors(&self) -> usize {
        self.tile_offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    }

    /// Sizes and densities.
    pub fn stats(&self) -> TiledCslStats {
        let bytes = 4 * (self.entries.len() + self.tile_offsets.len());
        let elements = (self.m * self.k) as f64;
        TiledCslStats {
            nnz: self.nnz,
            sparsity: 1.0 - self.nnz as f64 / elements,
            bytes,
            bytes_per_dense_element: bytes as f64 / elements,
            densest_tile: self.densest,
        }
    }

    /// The dense row-major `[m, k]` weight: exactly the one encoded, bit for bit, except that
    /// a −0 comes back as +0.
    pub fn decode(&self) -> Vec<T> {
        let tiles_k = self.k.div_ceil(TILE_K);
        let mut dense = vec![T::default(); self.m * self.k];
        for (tile, bounds) in self.tile_offsets.windows(2).enumerate() {
            let (row0, col0) = ((tile / tiles_k) * TILE_M, (tile % tiles_k) * TILE_K);
            for &entry in &self.entries[bounds[0] as usize * VECTOR..bounds[1] as usize * VECTOR] {
                let (row, col) = row_col_of((entry >> 16) as u16);
                dense[(row0 + row) * self.k + col0 + col] = T::from_bits(entry as u16);
            }
        }
        dense
    }

    /// The weight as safetensors bytes: tensors `tile_offsets` and `entries` (U32), metadata
    /// `format = "tiledcsl"`, `version`, `dtype`, `m`, `k`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let tensors = [
            Tensor::of("entries", safetensors::Dtype::U32, &self.entries),
            Tensor::of("tile_offsets", safetensors::Dtype::U32, &self.tile_offsets),
        ];
        let names = ["tiledcsl", FORMAT_VERSION, T::NAME];
        saved::serialize_weight(names, [self.m, self.k], &tensors)
    }

    /// Reads [`TiledCsl::to_safetensors`] bytes back, checking the metadata (format, version,
    /// dtype) and every invariant of [`TiledCsl::from_parts`].
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let file = Saved::parse(bytes)?;
        let [m, k] = file.weight("tiledcsl", &FORMAT_VERSIONS_READ, T::NAME)?;
        let words = |name| {
            file.tensor(name, safetensors::Dtype::U32, |b| {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            })
        };
        Self::from_parts(m, k, words("tile_offsets")?, words("entries")?)
    }

    /// Writes [`TiledCsl::to_safetensors`] to a file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        saved::write(path.as_ref(), &self.to_safetensors()?)
    }

    /// Reads a file written by [`TiledCsl::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_safetensors(&saved::read(path.as_ref())?)
    }
}

/// The place of (row, col) in a tile: the column's 8-value chunk XOR row % 8.
fn place_of(row: usize, col: usize) -> u16 {
    (row * TILE_K + (((col / 8) ^ (row % 8)) * 8) + col % 8) as u16
}

/// The (row, col) of a place, the inverse of [`place_of`].
fn row_col_of(place: u16) -> (usize, usize) {
    let (row, swizzled) = (place as usize / TILE_K, place as usize % TILE_K);
    (row, ((swizzled / 8) ^ (row % 8)) * 8 + swizzled % 8)
}

/// Checks one tile's entries and returns its nonzero count (padding excluded).
fn check_tile(tile: usize, entries: &[u32], rows: usize, cols: usize) -> Result<usize> {
    let bad = |index: usize, expected: &str, got: String| {
        Err(Error::invalid(
            "entries",
            expected.to_string(),
            format!("{got} at entry {index} of tile {tile}"),
        ))
    };
    let mut previous: Option<u32> = None;
    let mut padding = 0;
    let mut seen = [0u64; TILE_M * TILE_K / 64];
    for (index, &entry) in entries.iter().enumerate() {
        let place = (entry >> 16) as usize;
        if place >= TILE_M * TILE_K {
            return bad(index, "a place below 128 * 64", format!("place {place}"));
        }
        let (row, col) = row_col_of(place as u16);
        if row >= rows || col >= cols {
            return bad(
                index,
                &format!("a place inside this {rows} x {cols} tile"),
                format!("row {row}, column {col}"),
            );
        }
        let repeated = seen[place / 64] >> (place % 64) & 1 == 1;
        match previous {
            Some(last) if entry == last && padding < VECTOR - 1 => padding += 1,
            _ if padding > 0 || repeated => {
                return bad(
                    index,
                    "places all different, then at most 3 repeats of the last entry",
                    format!("place {place} a second time"),
                );
            }
            _ => {}
        }
        seen[place / 64] |= 1 << (place % 64);
        previous = Some(entry);
    }
    Ok(entries.len() - padding)
}

/// The shared-memory bank of a place (two 16-bit values per 4-byte bank word).
fn bank_of(entry: u32) -> usize {
    (entry >> 16) as usize / 2 % BANKS
}

/// One tile's entries (distinct places) in the order that spreads each scatter instruction
/// over the banks, padded to whole vectors.
///
/// The CUDA kernel's thread `t` scatters vectors `t, t + 128, ...`, one component after the
/// other, so one store instruction of a warp writes component `j` of 32 consecutive vectors
/// (32-aligned). An instruction costs one shared-memory wavefront per entry of its most
/// repeated bank. Each instruction takes one entry from each of the fullest banks (again, while
/// it has more lanes than banks have entries), which keeps the banks' counts even, so that
/// conflicts come only where the tile's own counts are uneven.
/// The padding stays in the last vector.
pub(crate) fn spread_over_banks(tile: Vec<u32>) -> Vec<u32> {
    let count = tile.len();
    if count == 0 {
        return tile;
    }
    let vectors = count.div_ceil(VECTOR);
    let in_last = count - (vectors - 1) * VECTOR; // real entries of the last vector, 1 to 4
    let mut banks: Vec<Vec<u32>> = vec![Vec::new(); BANKS];
    for &entry in tile.iter().rev() {
        banks[bank_of(entry)].push(entry); // popped in place order
    }
    let instructions: Vec<Vec<usize>> = (0..vectors)
        .step_by(WARP_VECTORS)
        .flat_map(|group| {
            (0..VECTOR).map(move |component| {
                (group..(group + WARP_VECTORS).min(vectors))
                    .filter(|&v| v + 1 < vectors || component < in_last)
                    .map(|v| v * VECTOR + component)
                    .collect()
            })
        })
        .collect();
    let mut out = vec![0u32; vectors * VECTOR];
    for slots in instructions {
        let mut filled = 0;
        while filled < slots.len() {
            // A round: one entry from each non-empty bank, fullest first.
            let mut fullest: Vec<usize> = (0..BANKS).filter(|&b| !banks[b].is_empty()).collect();
            assert!(!fullest.is_empty(), "one entry per slot");
            fullest.sort_by_key(|&b| std::cmp::Reverse(banks[b].len()));
            for bank in fullest.into_iter().take(slots.len() - filled) {
                out[slots[filled]] = banks[bank].pop().expect("a non-empty bank");
                filled += 1;
            }
        }
    }
    let last = (vectors - 1) * VECTOR;
    for component in in_last..VECTOR {
        out[last + component] = out[last + in_last - 1];
    }
    out
}

/// Shared-memory wavefronts of the CUDA kernel's scatter of one tile's (padded) entries:
/// per store instruction, the most distinct 4-byte words it writes in any one bank.
#[cfg(test)]
fn scatter_wavefronts(entries: &[u32]) -> usize {
    let vectors = entries.len() / VECTOR;
    let mut total = 0;
    for group in (0..vectors).step_by(WARP_VECTORS) {
        for component in 0..VECTOR {
            let mut words: Vec<Vec<u32>> = vec![Vec::new(); BANKS];
            for v in group..(group + WARP_VECTORS).min(vectors) {
                let entry = entries[v * VECTOR + component];
                let word = (entry >> 16) / 2;
                if !words[bank_of(entry)].contains(&word) {
                    words[bank_of(entry)].push(word);
                }
            }
            total += words.iter().map(Vec::len).max().unwrap_or(0);
        }
    }
    total
}

pub(super) fn check_dims(m: usize, k: usize) -> Result<()> {
    for (what, size) in [("m", m), ("k", k)] {
        if size == 0 {
            return Err(Error::invalid(what, "a size of at least 1", size));
        }
    }
    if m.checked_mul(k).is_none_or(|n| n > i32::MAX as usize) {
        return Err(Error::invalid(
            "w",
            "fewer than 2^31 elements",
            format!("[{m}, {k}]"),
        ));
    }
    Ok(())
}

pub(super) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Length {
            what,
            expected,
            got,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn places_round_trip_and_swizzle_chunks() {
        for row in 0..TILE_M {
            for col in 0..TILE_K {
                assert_eq!(row_col_of(place_of(row, col)), (row, col));
            }
        }
        assert_eq!(place_of(1, 0), 64 + 8);
        assert_eq!(place_of(9, 3), 9 * 64 + 8 + 3);
    }

    /// Increasing places, padded: the order before the bank spread.
    fn increasing(tile: &[u32]) -> Vec<u32> {
        let mut sorted = tile.to_vec();
        sorted.sort_by_key(|e| e >> 16);
        while !sorted.len().is_multiple_of(VECTOR) {
            sorted.push(*sorted.last().unwrap());
        }
        sorted
    }

    #[test]
    fn the_scatter_is_spread_over_the_banks() {
        let mut rng = crate::harness::Rng::new(11);
        for density in [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0] {
            let mut tile = Vec::new();
            for row in 0..TILE_M {
                for col in 0..TILE_K {
                    if rng.unit() < density {
                        tile.push(u32::from(place_of(row, col)) << 16 | 0x3c00);
                    }
                }
            }
            let spread = spread_over_banks(tile.clone());
            // Every entry once, then the padding.
            let mut places: Vec<u32> = spread.iter().map(|e| e >> 16).collect();
            places.sort();
            places.dedup();
            assert_eq!(places.len(), tile.len());
            assert!(check_tile(0, &spread, TILE_M, TILE_K).is_ok());
            // Each instruction costs one wavefront at least, and so does each word of a bank.
            let instructions = spread.len().div_ceil(VECTOR * WARP_VECTORS) * VECTOR;
            let fullest_bank = (0..BANKS)
                .map(|bank| {
                    let words = places
                        .iter()
                        .map(|p| p / 2)
                        .filter(|w| *w as usize % BANKS == bank);
                    let mut words: Vec<u32> = words.collect();
                    words.dedup();
                    words.len()
                })
                .max()
                .unwrap_or(0);
            let bound = instructions.max(fullest_bank);
            let (spread, increasing) = (
                scatter_wavefronts(&spread),
                scatter_wavefronts(&increasing(&tile)),
            );
            eprintln!("density {density}: bound {bound}, spread {spread}, increasing {increasing}");
            assert!(
                spread as f64 <= 1.25 * bound as f64 + 4.0,
                "density {density}: {spread} wavefronts, bound {bound}"
            );
        }
    }

    #[test]
    fn version_1_files_are_read_and_unknown_versions_refused() {
        // Version 1 had increasing places, as `increasing` gives.
        let dense: Vec<f16> = (0..200 * 70)
            .map(|i| f16::from_f32((i % 5) as f32))
            .collect();
        let w = TiledCsl::encode(&dense, 200, 70).unwrap();
        let mut ordered = Vec::new();
        for tile in w.tile_offsets().windows(2) {
            let tile = &w.entries()[tile[0] as usize * VECTOR..tile[1] as usize * VECTOR];
            let mut real: Vec<u32> = tile.to_vec();
            real.sort();
            real.dedup();
            ordered.extend(increasing(&real));
        }
        let file = |version: &str| {
            let metadata = [
                ("format", "tiledcsl"),
                ("version", version),
                ("dtype", "f16"),
                ("m", "200"),
                ("k", "70"),
            ]
            .map(|(key, value)| (key, value.to_string()));
            let tensors = [
                Tensor::of("entries", safetensors::Dtype::U32, &ordered),
                Tensor::of("tile_offsets", safetensors::Dtype::U32, w.tile_offsets()),
            ];
            saved::serialize(&tensors, &metadata).unwrap()
        };
        assert_eq!(
            TiledCsl::<f16>::from_safetensors(&file("1"))
                .unwrap()
                .decode(),
            dense
        );
        let error = TiledCsl::<f16>::from_safetensors(&file("3")).unwrap_err();
        assert!(error.to_string().contains("version = 1 or 2"), "{error}");
    }

    #[test]
    fn padding_repeats_the_last_entry() {
        let dense: Vec<f16> = (0..3).map(|i| f16::from_f32(i as f32 + 1.0)).collect();
        let w = TiledCsl::encode(&dense, 1, 3).unwrap();
        assert_eq!(w.entries().len(), 4);
        assert_eq!(w.entries()[3], w.entries()[2]);
        assert_eq!(w.stats().nnz, 3);
        assert_eq!(w.decode(), dense);
    }
}
