//! SpMM on every backend against the f64 reference, and the Tiled-CSL format's invariants.
// Built without a GPU backend, the per-backend bodies have nothing to run.
#![cfg_attr(
    not(all(feature = "cuda", feature = "wgpu")),
    allow(dead_code, unused_imports, unused_variables, unreachable_code)
)]

mod common;

use half::{bf16, f16};
use proptest::prelude::*;
use tilefuse::Error;
use tilefuse::element::{DeviceOutput, OutputElement};
use tilefuse::harness::{Backend, Backends, Rng};
use tilefuse::spmm::{
    Bitmap, Case, Pattern, Pruning, SparseFormat, TILE_K, TILE_M, TiledCsl, check, prune, reference,
};

/// Every format a weight goes to a device in.
const FORMATS: [SparseFormat; 2] = [SparseFormat::TiledCsl, SparseFormat::Bitmap];

on_backends!([cuda, wgpu] => [
    ragged_shape_every_token_count,
    every_sparsity,
    dense_and_empty_tiles,
    patterns_types_and_outputs,
    tiny_and_unaligned_shapes,
    long_k,
    sixteen_bit_outputs_overflow_to_infinity,
    rejects_wrong_lengths,
    one_workspace_serves_call_after_call,
    a_reserved_workspace_does_not_grow,
    results_are_bitwise_repeatable,
    every_registered_case_passes,
]);

/// `case` in every format.
fn assert_case(backends: &Backends, backend: Backend, case: Case) {
    for format in FORMATS {
        let case = Case { format, ..case };
        common::assert_seeded(&case.to_string(), |seed| {
            check(backends, backend, &case, seed)
        });
    }
}

fn ragged_shape_every_token_count(backends: &Backends, backend: Backend) {
    for n in [1, 7, 8, 16, 31, 32, 64, 65, 128] {
        assert_case(backends, backend, Case::new(300, 520, n, 0.8));
    }
}

fn every_sparsity(backends: &Backends, backend: Backend) {
    for sparsity in [0.0, 0.5, 0.7, 0.8, 0.9, 0.99, 1.0] {
        assert_case(
            backends,
            backend,
            Case {
                pattern: Pattern::Uniform,
                ..Case::new(300, 520, 16, sparsity)
            },
        );
        assert_case(backends, backend, Case::new(256, 192, 8, sparsity));
    }
}

fn long_k(backends: &Backends, backend: Backend) {
    // k = 70001: over a thousand k tiles per output row (split over blocks or workgroups;
    // the WGSL unit tests force few splits, so that lavapipe takes each in several dispatches).
    for out_f32 in [false, true] {
        let case = Case {
            out_f32,
            ..Case::new(130, 70_001, 9, 0.8)
        };
        assert_case(backends, backend, case);
    }
}

fn sixteen_bit_outputs_overflow_to_infinity(backends: &Backends, backend: Backend) {
    // Rows summing to ±120 000 and ±65 512 (past f16's 65 504 and its rounding midpoint 65 520
    // or not), 60 000, and NaN: f16 output rounds like IEEE (±inf, 65 504, NaN stays NaN).
    let big = f16::from_f32(60_000.0);
    let w = [
        [big, big],
        [-big, -big],
        [f16::from_f32(65_504.0), f16::from_f32(8.0)],
        [big, f16::ZERO],
        [f16::NAN, f16::ONE],
    ];
    let w = TiledCsl::encode(&w.concat(), 5, 2).unwrap();
    for format in FORMATS {
        let y = tilefuse::spmm::run::<f16, f16>(backends, backend, format, &w, &[f16::ONE; 2]);
        let y: Vec<f32> = y
            .unwrap()
            .expect("a device path")
            .iter()
            .map(|v| v.to_f32())
            .collect();
        assert_eq!(
            y[..4],
            [f32::INFINITY, f32::NEG_INFINITY, 65_504.0, 60_000.0],
            "{format:?}: {y:?}"
        );
        assert!(y[4].is_nan(), "{format:?}: {y:?}");
    }
}

fn dense_and_empty_tiles(backends: &Backends, backend: Backend) {
    for bf16 in [false, true] {
        for sparsity in [0.5, 0.9] {
            let case = Case {
                bf16,
                pattern: Pattern::DenseAndEmptyTiles,
                ..Case::new(300, 520, 16, sparsity)
            };
            assert_case(backends, backend, case);
        }
    }
}

fn patterns_types_and_outputs(backends: &Backends, backend: Backend) {
    for pattern in [
        Pattern::Uniform,
        Pattern::MagnitudeGlobal,
        Pattern::MagnitudePerRow,
    ] {
        for bf16 in [false, true] {
            for out_f32 in [false, true] {
                let case = Case {
                    pattern,
                    bf16,
                    out_f32,
                    ..Case::new(384, 256, 32, 0.7)
                };
                assert_case(backends, backend, case);
            }
        }
    }
}

fn tiny_and_unaligned_shapes(backends: &Backends, backend: Backend) {
    for (m, k, n) in [
        (1, 1, 1),
        (1, 7, 3),
        (129, 65, 9),
        (130, 130, 17),
        (5, 1000, 2),
        (1000, 5, 40),
    ] {
        assert_case(backends, backend, Case::new(m, k, n, 0.5));
        assert_case(
            backends,
            backend,
            Case {
                bf16: true,
                out_f32: true,
                ..Case::new(m, k, n, 0.3)
            },
        );
    }
}

/// Shapes with different split-K counts, 16-bit and f32 outputs, through one workspace: each
/// call must find what it needs there whatever the calls before it left.
fn one_workspace_serves_call_after_call(backends: &Backends, backend: Backend) {
    let cases = [
        Case::new(256, 3000, 16, 0.8),
        Case::new(300, 520, 40, 0.5),
        Case {
            out_f32: true,
            ..Case::new(129, 5000, 8, 0.9)
        },
        Case::new(2000, 1000, 64, 0.7),
        Case::new(256, 3000, 16, 0.7),
    ];
    #[cfg(feature = "cuda")]
    if backend == Backend::Cuda {
        // Memory full of ones, freed back to the stream's pool: a workspace allocated next
        // likely gets it, so counters it forgot to zero would show.
        let cuda = backends.cuda().unwrap();
        drop(cuda.upload(&vec![u32::MAX; 1 << 22]).unwrap());
    }
    let mut workspaces = Workspaces::default();
    // The formats take turns on the one workspace.
    for (case, format) in cases.into_iter().zip(FORMATS.into_iter().cycle()) {
        let case = Case { format, ..case };
        let seed = common::seed();
        let w = tilefuse::spmm::weight::<f16>(&case, seed).unwrap();
        let mut rng = Rng::new(seed);
        let x: Vec<f16> = (0..case.n * case.k)
            .map(|_| f16::from_f64(rng.uniform(-1.0, 1.0)))
            .collect();
        let y = if case.out_f32 {
            workspaces.spmm(backends, backend, format, &w, &x, f32::NAN)
        } else {
            workspaces.spmm(backends, backend, format, &w, &x, f16::NAN)
        };
        let expected = reference(&w, &x).unwrap();
        let comparison = tilefuse::harness::compare(&y, &expected, case.tolerance());
        assert!(
            comparison.passed(),
            "{case} after the calls before it on one workspace (seed {seed}): {comparison}"
        );
    }
}

/// A workspace reserved for each of a weight's token counts (as before capturing a CUDA graph)
/// allocates nothing more when those calls run, and is large enough for each of them.
fn a_reserved_workspace_does_not_grow(backends: &Backends, backend: Backend) {
    let seed = common::seed();
    let case = Case::new(256, 3000, 64, 0.8);
    let w = tilefuse::spmm::weight::<f16>(&case, seed).unwrap();
    let token_counts = [1, 9, 16, 40, 64];
    for format in FORMATS {
        let mut workspaces = Workspaces::default();
        for n in token_counts {
            workspaces.reserve(backends, backend, format, &w, n);
        }
        let reserved = workspaces.bytes();
        assert!(
            reserved > 0,
            "{format:?}: split-K at k = 3000 needs a workspace"
        );
        for n in token_counts {
            let x = vec![f16::ONE; n * case.k];
            let y = workspaces.spmm(backends, backend, format, &w, &x, f16::NAN);
            let expected = reference(&w, &x).unwrap();
            let comparison = tilefuse::harness::compare(&y, &expected, case.tolerance());
            assert!(
                comparison.passed(),
                "{case}, {format:?}, n = {n} (seed {seed}): {comparison}"
            );
            assert_eq!(
                workspaces.bytes(),
                reserved,
                "{format:?}: n = {n} grew the workspace"
            );
        }
    }
}

/// The same call twice gives bitwise the same y (docs/design.md: deterministic), with split-K on
/// a GPU (k = 3000: 47 k tiles), f32 output (no rounding to hide a difference).
fn results_are_bitwise_repeatable(backends: &Backends, backend: Backend) {
    let seed = common::seed();
    let case = Case {
        out_f32: true,
        ..Case::new(256, 3000, 16, 0.5)
    };
    let w = tilefuse::spmm::weight::<f16>(&case, seed).unwrap();
    let x = Rng::new(seed).fill(case.n * case.k, -1.0, 1.0, f16::from_f64);
    let mut workspaces = Workspaces::default();
    for format in FORMATS {
        let mut run = || -> Vec<u64> {
            let y = workspaces.spmm(backends, backend, format, &w, &x, f32::NAN);
            y.into_iter().map(f64::to_bits).collect()
        };
        let first = run();
        for again in 1..4 {
            assert!(
                run() == first,
                "{case}, {format:?} (seed {seed}): call {again} differs from call 0"
            );
        }
    }
}

/// One spmm workspace per backend.
#[derive(Default)]
struct Workspaces {
    #[cfg(feature = "cuda")]
    cuda: tilefuse::spmm::cuda::SpmmWorkspace,
    #[cfg(feature = "wgpu")]
    wgpu: tilefuse::spmm::wgpu::SpmmWorkspace,
}

impl Workspaces {
    /// Reserves `backend`'s workspace for `w` and `n` tokens.
    fn reserve(
        &mut self,
        backends: &Backends,
        backend: Backend,
        format: SparseFormat,
        w: &TiledCsl<f16>,
        n: usize,
    ) {
        let bitmap = Bitmap::from_tiled_csl(w).unwrap();
        match (backend, format) {
            #[cfg(feature = "cuda")]
            (Backend::Cuda, SparseFormat::TiledCsl) => {
                let cuda = backends.cuda().unwrap();
                let w = tilefuse::spmm::cuda::DeviceTiledCsl::upload(cuda, w).unwrap();
                self.cuda.reserve(cuda, &w, n).unwrap();
            }
            #[cfg(feature = "cuda")]
            (Backend::Cuda, SparseFormat::Bitmap) => {
                let cuda = backends.cuda().unwrap();
                let w = tilefuse::spmm::cuda::DeviceBitmap::upload(cuda, &bitmap).unwrap();
                self.cuda.reserve(cuda, &w, n).unwrap();
            }
            #[cfg(feature = "wgpu")]
            (Backend::Wgpu, SparseFormat::TiledCsl) => {
                let gpu = backends.wgpu().unwrap();
                let w = tilefuse::spmm::wgpu::GpuTiledCsl::upload(gpu, w).unwrap();
                self.wgpu.reserve(gpu, &w, n).unwrap();
            }
            #[cfg(feature = "wgpu")]
            (Backend::Wgpu, SparseFormat::Bitmap) => {
                let gpu = backends.wgpu().unwrap();
                let w = tilefuse::spmm::wgpu::GpuBitmap::upload(gpu, &bitmap).unwrap();
                self.wgpu.reserve(gpu, &w, n).unwrap();
            }
            _ => unreachable!("{backend} has no such test"),
        }
    }

    /// Device bytes held by the workspaces.
    fn bytes(&self) -> usize {
        [
            #[cfg(feature = "cuda")]
            self.cuda.bytes(),
            #[cfg(feature = "wgpu")]
            self.wgpu.bytes(),
        ]
        .iter()
        .sum()
    }

    /// `y = x · wᵀ` on `backend` with its workspace, `y` filled with `poison` first.
    fn spmm<O: DeviceOutput<f16>>(
        &mut self,
        backends: &Backends,
        backend: Backend,
        format: SparseFormat,
        w: &TiledCsl<f16>,
        x: &[f16],
        poison: O,
    ) -> Vec<f64> {
        let y_len = x.len() / w.k() * w.m();
        let bitmap = Bitmap::from_tiled_csl(w).unwrap();
        let y: Vec<O> = match backend {
            #[cfg(feature = "cuda")]
            Backend::Cuda => {
                use tilefuse::spmm::cuda::{DeviceBitmap, DeviceTiledCsl, spmm_with_workspace};
                let cuda = backends.cuda().unwrap();
                let (x, mut y) = (
                    cuda.upload(x).unwrap(),
                    cuda.upload(&vec![poison; y_len]).unwrap(),
                );
                let workspace = &mut self.cuda;
                match format {
                    SparseFormat::TiledCsl => {
                        let w = DeviceTiledCsl::upload(cuda, w).unwrap();
                        spmm_with_workspace(cuda, &w, &x, &mut y, workspace).unwrap();
                    }
                    SparseFormat::Bitmap => {
                        let w = DeviceBitmap::upload(cuda, &bitmap).unwrap();
                        spmm_with_workspace(cuda, &w, &x, &mut y, workspace).unwrap();
                    }
                }
                cuda.download(&y).unwrap()
            }
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => {
                use tilefuse::spmm::wgpu::{GpuBitmap, GpuTiledCsl, spmm_with_workspace};
                let gpu = backends.wgpu().unwrap();
                let (x, mut y) = (
                    gpu.upload(x).unwrap(),
                    gpu.upload(&vec![poison; y_len]).unwrap(),
                );
                let workspace = &mut self.wgpu;
                match format {
                    SparseFormat::TiledCsl => {
                        let w = GpuTiledCsl::upload(gpu, w).unwrap();
                        spmm_with_workspace(gpu, &w, &x, &mut y, workspace).unwrap();
                    }
                    SparseFormat::Bitmap => {
                        let w = GpuBitmap::upload(gpu, &bitmap).unwrap();
                        spmm_with_workspace(gpu, &w, &x, &mut y, workspace).unwrap();
                    }
                }
                gpu.download(&y).unwrap()
            }
            _ => unreachable!("{backend} has no such test"),
        };
        y.into_iter().map(OutputElement::to_f64).collect()
    }
}

fn every_registered_case_passes(backends: &Backends, backend: Backend) {
    common::assert_registered_cases("spmm", backends, backend);
}

fn rejects_wrong_lengths(backends: &Backends, backend: Backend) {
    let w = TiledCsl::encode(&[f16::ONE; 6], 2, 3).unwrap();
    let (x_bad, x_good, y_bad) = (vec![f16::ONE; 7], vec![f16::ONE; 6], vec![f16::ZERO; 3]);
    let (first, second) = match backend {
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            use tilefuse::spmm::cuda::{DeviceTiledCsl, spmm};
            let cuda = backends.cuda().unwrap();
            let w = DeviceTiledCsl::upload(cuda, &w).unwrap();
            let (x_bad, x_good) = (cuda.upload(&x_bad).unwrap(), cuda.upload(&x_good).unwrap());
            let mut y = cuda.upload(&y_bad).unwrap();
            (
                spmm(cuda, &w, &x_bad, &mut y).unwrap_err(),
                spmm(cuda, &w, &x_good, &mut y).unwrap_err(),
            )
        }
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            use tilefuse::spmm::wgpu::{GpuTiledCsl, spmm};
            let gpu = backends.wgpu().unwrap();
            let w = GpuTiledCsl::upload(gpu, &w).unwrap();
            let (x_bad, x_good) = (gpu.upload(&x_bad).unwrap(), gpu.upload(&x_good).unwrap());
            let mut y = gpu.upload(&y_bad).unwrap();
            (
                spmm(gpu, &w, &x_bad, &mut y).unwrap_err(),
                spmm(gpu, &w, &x_good, &mut y).unwrap_err(),
            )
        }
        _ => unreachable!("{backend} has no such test"),
    };
    assert!(
        matches!(first, Error::InvalidArgument { what: "x", .. }),
        "{first}"
    );
    assert!(
        matches!(
            second,
            Error::Length {
                what: "y",
                expected: 4,
                got: 3
            }
        ),
        "{second}"
    );
}

#[test]
fn encode_decode_round_trip_is_exact() {
    let seed = common::seed();
    for (m, k, sparsity) in [(300, 520, 0.8), (128, 64, 0.0), (1, 1, 1.0), (257, 65, 0.5)] {
        let dense = common::random_sparse(m, k, sparsity, seed);
        let w = TiledCsl::encode(&dense, m, k).unwrap();
        assert_eq!(w.decode(), dense, "seed {seed}, m={m} k={k}");
        let nonzeros = dense.iter().filter(|v| v.to_f32() != 0.0).count();
        assert_eq!(w.stats().nnz, nonzeros);
        let back =
            TiledCsl::<f16>::from_parts(m, k, w.tile_offsets().to_vec(), w.entries().to_vec())
                .unwrap();
        assert_eq!(back, w);
    }
    let bf = [1.5, 0.0, -2.0, 3.0].map(bf16::from_f32);
    assert_eq!(TiledCsl::encode(&bf, 2, 2).unwrap().decode(), bf);
}

#[test]
fn stats_count_bytes_and_the_densest_tile() {
    let (m, k) = (256, 128);
    let mut dense = vec![f16::ZERO; m * k];
    for row in 0..TILE_M {
        for col in TILE_K..2 * TILE_K {
            dense[(TILE_M + row) * k + col] = f16::ONE; // tile (1, 1) fully dense
        }
    }
    dense[0] = f16::ONE;
    let stats = TiledCsl::encode(&dense, m, k).unwrap().stats();
    assert_eq!(stats.nnz, TILE_M * TILE_K + 1);
    assert_eq!(stats.densest_tile, (3, TILE_M * TILE_K));
    assert_eq!(stats.bytes, 4 * (TILE_M * TILE_K + 4) + 4 * 5);
    assert!((stats.sparsity - (1.0 - (TILE_M * TILE_K + 1) as f64 / (m * k) as f64)).abs() < 1e-12);
}

#[test]
fn safetensors_round_trip_and_checks_metadata() {
    let dense = common::random_sparse(200, 300, 0.7, common::seed());
    let w = TiledCsl::encode(&dense, 200, 300).unwrap();
    let path =
        std::env::temp_dir().join(format!("tilefuse-spmm-{}.safetensors", std::process::id()));
    w.save(&path).unwrap();
    assert_eq!(TiledCsl::<f16>::load(&path).unwrap(), w);
    let wrong_type = TiledCsl::<bf16>::load(&path).unwrap_err();
    assert!(
        wrong_type.to_string().contains("dtype = bf16"),
        "{wrong_type}"
    );
    std::fs::remove_file(&path).unwrap();
    assert!(TiledCsl::<f16>::from_safetensors(b"not a file").is_err());
}

#[test]
fn pruning_hits_the_target_exactly() {
    let dense = common::random_sparse(64, 100, 0.0, common::seed());
    let per_row = prune(&dense, 64, 100, 0.8, Pruning::PerRow).unwrap();
    for row in per_row.chunks(100) {
        assert_eq!(row.iter().filter(|v| v.to_f32() == 0.0).count(), 80);
    }
    let global = prune(&dense, 64, 100, 0.75, Pruning::Global).unwrap();
    assert_eq!(global.iter().filter(|v| v.to_f32() == 0.0).count(), 4800);
    // What survives is never smaller than what was pruned.
    let kept = global
        .iter()
        .filter(|v| v.to_f32() != 0.0)
        .map(|v| v.to_f32().abs())
        .fold(f32::MAX, f32::min);
    let pruned = dense
        .iter()
        .zip(&global)
        .filter(|(_, g)| g.to_f32() == 0.0)
        .map(|(d, _)| d.to_f32().abs());
    assert!(pruned.fold(0.0, f32::max) <= kept);
    assert!(matches!(
        prune(&dense, 64, 100, 1.5, Pruning::Global),
        Err(Error::InvalidArgument {
            what: "sparsity",
            ..
        })
    ));
}

#[test]
fn reference_matches_a_dense_product() {
    let w = TiledCsl::encode(&[1.0, 0.0, 2.0, 0.0, -1.0, 0.5].map(f16::from_f32), 2, 3).unwrap();
    let x = [1.0, 2.0, 3.0, -1.0, 0.0, 2.0].map(f16::from_f32);
    assert_eq!(reference(&w, &x).unwrap(), vec![7.0, -0.5, 3.0, 1.0]);
}

/// One corruption of valid parts that must be rejected.
#[derive(Debug, Clone)]
enum Corruption {
    FirstOffset(u32),
    EndOffset,
    DropEntry,
    RepeatedPlace(usize),
    PlaceOutsideTile(usize),
    RowOutsideMatrix(usize),
    ColumnOutsideMatrix(usize),
    DecreasingOffsets(usize),
    TooManyRepeats,
}

/// The place of (row, col) in a tile (format.rs): chunk c of a row holds the columns of chunk
/// c ^ (row % 8).
fn place_of(row: usize, col: usize) -> u32 {
    (row * TILE_K + ((col / 8) ^ (row % 8)) * 8 + col % 8) as u32
}

/// The (row, col) in its tile of an entry's place.
fn row_col_of(entry: u32) -> (usize, usize) {
    let place = (entry >> 16) as usize;
    let (row, swizzled) = (place / TILE_K, place % TILE_K);
    (row, ((swizzled / 8) ^ (row % 8)) * 8 + swizzled % 8)
}

/// The tile that entry `i` belongs to.
fn tile_of(offsets: &[u32], i: usize) -> usize {
    offsets.partition_point(|&o| 4 * o as usize <= i) - 1
}

fn corrupt(
    corruption: &Corruption,
    (m, k): (usize, usize),
    offsets: &mut [u32],
    entries: &mut Vec<u32>,
) -> bool {
    let distinct = |i: usize, e: &[u32]| i + 1 < e.len() && e[i] >> 16 != e[i + 1] >> 16;
    match *corruption {
        Corruption::FirstOffset(v) => offsets[0] = v.max(1),
        Corruption::EndOffset => *offsets.last_mut().unwrap() += 1,
        Corruption::DropEntry if !entries.is_empty() => {
            entries.pop();
        }
        Corruption::RepeatedPlace(i) if !entries.is_empty() => {
            let i = i % entries.len();
            // Two neighbours with distinct places in one tile.
            let tile_end = |i: usize| {
                offsets
                    .iter()
                    .map(|&o| 4 * o as usize)
                    .find(|&o| o > i)
                    .unwrap_or(entries.len())
            };
            if !distinct(i, entries) || i + 1 >= tile_end(i) {
                return false;
            }
            // The second writes another value to the first's place.
            entries[i + 1] = (entries[i] & 0xffff_0000) | ((entries[i] & 0xffff) ^ 1);
        }
        Corruption::PlaceOutsideTile(i) if !entries.is_empty() => {
            let i = i % entries.len();
            entries[i] |= 0xffff << 16;
        }
        Corruption::RowOutsideMatrix(i) if !entries.is_empty() && !m.is_multiple_of(TILE_M) => {
            // Only entries of the last tile row can point past m.
            let tiles_in_last_row =
                offsets.len() - 1 - (m / TILE_M) * ((offsets.len() - 1) / m.div_ceil(TILE_M));
            let first = 4 * offsets[offsets.len() - 1 - tiles_in_last_row] as usize;
            if first >= entries.len() {
                return false;
            }
            let i = first + i % (entries.len() - first);
            let row = (m % TILE_M) as u32; // the first row past the matrix
            entries[i] = (entries[i] & 0xffff) | (row * TILE_K as u32) << 16;
        }
        Corruption::ColumnOutsideMatrix(i) if !entries.is_empty() && !k.is_multiple_of(TILE_K) => {
            // Only entries of the last tile column can point past k.
            let tiles_k = k.div_ceil(TILE_K);
            let last_column: Vec<usize> = (0..entries.len())
                .filter(|&e| tile_of(offsets, e) % tiles_k == tiles_k - 1)
                .collect();
            if last_column.is_empty() {
                return false;
            }
            let i = last_column[i % last_column.len()];
            // Its row, the first column past the matrix.
            let (row, _) = row_col_of(entries[i]);
            entries[i] = (entries[i] & 0xffff) | place_of(row, k % TILE_K) << 16;
        }
        Corruption::DecreasingOffsets(i) if offsets.len() > 2 => {
            // Offset i + 1 (an inner one) above the next, where that is still in range.
            let i = 1 + i % (offsets.len() - 2);
            let end = *offsets.last().unwrap();
            if offsets[i + 1] >= end {
                return false;
            }
            offsets[i] = offsets[i + 1] + 1;
        }
        Corruption::TooManyRepeats if entries.len() >= 4 => {
            // Four more copies of the last tile's last entry (in a tile that has entries, or
            // the copies would be that tile's one entry and its padding).
            let tiles = offsets.len() - 1;
            if offsets[tiles] == offsets[tiles - 1] {
                return false;
            }
            let last = *entries.last().unwrap();
            entries.extend([last; 4]);
            *offsets.last_mut().unwrap() += 1;
        }
        _ => return false,
    }
    true
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        (1u32..100).prop_map(Corruption::FirstOffset),
        Just(Corruption::EndOffset),
        Just(Corruption::DropEntry),
        any::<usize>().prop_map(Corruption::RepeatedPlace),
        any::<usize>().prop_map(Corruption::PlaceOutsideTile),
        any::<usize>().prop_map(Corruption::RowOutsideMatrix),
        any::<usize>().prop_map(Corruption::ColumnOutsideMatrix),
        any::<usize>().prop_map(Corruption::DecreasingOffsets),
        Just(Corruption::TooManyRepeats),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn corrupted_parts_are_errors(
        m in 1usize..300, k in 1usize..200, sparsity in 0.0f64..1.0, seed in any::<u64>(),
        corruption in corruption(),
    ) {
        let w = TiledCsl::encode(&common::random_sparse(m, k, sparsity, seed), m, k).unwrap();
        let (mut offsets, mut entries) = (w.tile_offsets().to_vec(), w.entries().to_vec());
        prop_assume!(corrupt(&corruption, (m, k), &mut offsets, &mut entries));
        prop_assert!(TiledCsl::<f16>::from_parts(m, k, offsets, entries).is_err());
    }

    #[test]
    fn arbitrary_parts_never_panic(
        m in 0usize..300, k in 0usize..300,
        offsets in proptest::collection::vec(any::<u32>(), 0..12),
        entries in proptest::collection::vec(any::<u32>(), 0..64),
    ) {
        let _ = TiledCsl::<bf16>::from_parts(m, k, offsets, entries);
    }

    /// Parts with well-formed offsets and random entries reach the per-tile checks: whatever
    /// they accept has every entry inside the matrix, where decode puts its value.
    #[test]
    fn random_tiles_are_checked_entry_by_entry((m, k, offsets, entries) in random_tiles()) {
        let Ok(w) = TiledCsl::<f16>::from_parts(m, k, offsets.clone(), entries.clone()) else {
            return Ok(());
        };
        let dense = w.decode();
        let tiles_k = k.div_ceil(TILE_K);
        for (i, &entry) in entries.iter().enumerate() {
            let tile = tile_of(&offsets, i);
            let (row, col) = row_col_of(entry);
            let (row, col) = (tile / tiles_k * TILE_M + row, tile % tiles_k * TILE_K + col);
            prop_assert!(row < m && col < k, "entry {} at ({}, {})", i, row, col);
            prop_assert_eq!(dense[row * k + col].to_bits(), entry as u16);
        }
    }
}

/// (m, k, offsets, entries): offsets from 0, non-decreasing, ending at the entries' vectors
/// (0 to 3 per tile); entries with random values, places mostly inside their tile (now and
/// then anywhere below 128 · 64), and now and then a repeat of the entry before.
fn random_tiles() -> impl Strategy<Value = (usize, usize, Vec<u32>, Vec<u32>)> {
    (1usize..300, 1usize..300).prop_flat_map(|(m, k)| {
        let tiles = m.div_ceil(TILE_M) * k.div_ceil(TILE_K);
        proptest::collection::vec(0u32..4, tiles).prop_flat_map(move |vectors| {
            let offsets: Vec<u32> = std::iter::once(0)
                .chain(vectors.iter().scan(0, |end, &v| {
                    *end += v;
                    Some(*end)
                }))
                .collect();
            let count = 4 * *offsets.last().unwrap() as usize;
            // (value, row, column, place anywhere, repeat)
            let draw = (any::<u16>(), any::<u32>(), any::<u32>(), 0u8..16, 0u8..32);
            proptest::collection::vec(draw, count).prop_map(move |drawn| {
                let tiles_k = k.div_ceil(TILE_K);
                let mut entries: Vec<u32> = Vec::with_capacity(drawn.len());
                for (i, (value, r, c, anywhere, repeat)) in drawn.into_iter().enumerate() {
                    let tile = tile_of(&offsets, i);
                    let rows = TILE_M.min(m - tile / tiles_k * TILE_M) as u32;
                    let cols = TILE_K.min(k - tile % tiles_k * TILE_K) as u32;
                    let place = if anywhere == 0 {
                        r % (TILE_M * TILE_K) as u32
                    } else {
                        place_of((r % rows) as usize, (c % cols) as usize)
                    };
                    let entry = u32::from(value) | place << 16;
                    let previous = entries.last().copied();
                    entries.push(previous.filter(|_| repeat == 0).unwrap_or(entry));
                }
                (m, k, offsets.clone(), entries)
            })
        })
    })
}

/// A tile of more vectors than 128 · 64 entries fill is refused by its count, before its
/// entries are read.
#[test]
fn a_tile_of_too_many_vectors_is_an_error() {
    let vectors = (TILE_M * TILE_K / 4 + 1) as u32;
    let entries: Vec<u32> = (0..4 * vectors)
        .map(|i| (i % 8192) << 16 | 0x3c00)
        .collect();
    let error = TiledCsl::<f16>::from_parts(128, 64, vec![0, vectors], entries).unwrap_err();
    assert!(
        error.to_string().contains("at most 2048 vectors per tile"),
        "{error}"
    );
}

proptest! {
    /// Any sizes, lengths and sparsities: encode, prune and the reference return an error
    /// unless the lengths fit the sizes (and the sparsity is a fraction), and never panic.
    #[test]
    fn sizes_and_lengths_take_any_values(
        (m, k) in (common::any_size(), common::any_size()),
        len in 0usize..1200,
        x_len in common::any_size(),
        sparsity in prop_oneof![0.0f64..=1.0, any::<f64>()],
        per_row in any::<bool>(),
    ) {
        let dense = vec![f16::ONE; len];
        let fits = m > 0 && k > 0 && m.checked_mul(k) == Some(len);
        prop_assert_eq!(TiledCsl::encode(&dense, m, k).is_ok(), fits);
        let scope = if per_row { Pruning::PerRow } else { Pruning::Global };
        let pruned = prune(&dense, m, k, sparsity, scope);
        prop_assert_eq!(pruned.is_ok(), fits && (0.0..=1.0).contains(&sparsity));
        if fits {
            let w = TiledCsl::encode(&dense, m, k).unwrap();
            let x = vec![f16::ONE; x_len.min(4096)];
            let tokens = x.len() / k;
            prop_assert_eq!(reference(&w, &x).is_ok(), tokens > 0 && tokens * k == x.len());
        }
    }
}

/// On a device whose storage bindings hold 64 KiB, w's entries, x, the split sums and y span
/// several windows and spmm still matches the reference: k = 520 takes three splits (sums of
/// 230 KB, x of 67 KB), k = 256 one, whose f32 sums are y itself (77 KB).
#[cfg(feature = "wgpu")]
#[test]
fn tensors_past_one_binding_run_in_windows() {
    let Some(backends) = common::capped_wgpu() else {
        return;
    };
    assert!(64 * 520 * 2 > common::CAPPED_BINDING as usize);
    assert!(64 * 300 * 4 > common::CAPPED_BINDING as usize);
    for k in [520, 256] {
        for out_f32 in [true, false] {
            let case = Case {
                out_f32,
                ..Case::new(300, k, 64, 0.8)
            };
            assert_case(backends, Backend::Wgpu, case);
        }
    }
}
