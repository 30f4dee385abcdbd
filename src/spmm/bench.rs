//! spmm's benchmark cases for `tilefuse bench` and `benches/spmm.rs`: Flash-LLM's shapes at
//! every token count and sparsity, in both formats, the CUDA variants and probes beside the
//! kernel, and cuBLAS on the same dense product.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use half::f16;

use super::SparseFormat;
use super::bitmap::Bitmap;
use super::check::OnDevice;
use super::format::{TILE_K, TILE_M, TiledCsl, spread_over_banks};
use crate::error::Result;
#[cfg(feature = "cuda")]
use crate::harness::device::Device;
use crate::harness::device::on_device;
use crate::harness::{Backend, Backends, BenchCase, Rng, Runner};

/// The benchmark weights (m, k), tokens and sparsities (Flash-LLM's shapes; docs/design.md).
pub(crate) const BENCH_SHAPES: [(usize, usize); 4] =
    [(8192, 8192), (28672, 8192), (8192, 28672), (36864, 9216)];
/// Tokens per benchmark case.
pub(crate) const BENCH_TOKENS: [usize; 4] = [8, 16, 32, 64];
/// Sparsities per benchmark case.
pub(crate) const BENCH_SPARSITIES: [f64; 5] = [0.3, 0.5, 0.7, 0.8, 0.9];
/// Weight copies rotate until they total this many bytes, far above any L2.
const L2_DEFEAT_BYTES: usize = 256 << 20;

pub(super) fn bench_cases() -> Vec<BenchCase> {
    let mut cases = Vec::new();
    for (m, k) in BENCH_SHAPES {
        for n in BENCH_TOKENS {
            for sparsity in BENCH_SPARSITIES {
                let name = format!("m={m} k={k} n={n} s={}%", (sparsity * 100.0).round());
                // The expected compressed size (the weights are made when a case runs).
                let tiles = m.div_ceil(TILE_M) * k.div_ceil(TILE_K);
                let weight_bytes = 4.0 * (1.0 - sparsity) * (m * k) as f64 + 4.0 * tiles as f64;
                let bytes = weight_bytes as u64 + (2 * (n * k + n * m)) as u64;
                let flops = (2 * m * n * k) as u64;
                let case = |spread: bool, calls: Calls| {
                    BenchCase::new(
                        "spmm",
                        name.clone(),
                        bytes,
                        flops,
                        move |backends, backend| {
                            let w = bench_weight(m, k, sparsity, spread);
                            prepare(backends, backend, Weight::TiledCsl(w), n, calls)
                        },
                    )
                };
                cases.push(case(true, Calls::ReuseWorkspace));
                // The same weight as a bitmap: 2 bytes a nonzero, a bit an element.
                let bitmap_bytes = 2.0 * (1.0 - sparsity) * (m * k) as f64 + (m * k / 8) as f64;
                let bytes = bitmap_bytes as u64 + (2 * (n * k + n * m)) as u64;
                let bitmap = |calls: Calls| {
                    BenchCase::new(
                        "spmm",
                        name.clone(),
                        bytes,
                        flops,
                        move |backends, backend| {
                            let w = bench_bitmap(m, k, sparsity);
                            prepare(backends, backend, Weight::Bitmap(w), n, calls)
                        },
                    )
                };
                cases.push(bitmap(Calls::ReuseWorkspace).by(BITMAP));
                // The CUDA kernel's variants in every case: which should become the kernel,
                // token count by token count.
                #[cfg(feature = "cuda")]
                for variant in super::cuda::Variant::ALL
                    .into_iter()
                    .filter(|v| !v.is_probe())
                {
                    cases.push(case(true, Calls::Variant(variant)).by(variant.label()));
                }
                if n == 16 && sparsity == 0.8 {
                    // The target cases again with each tile's entries in increasing places,
                    // as Flash-LLM stores them: what the bank-spread order gains.
                    cases
                        .push(case(false, Calls::ReuseWorkspace).by("tilefuse, increasing places"));
                    // And through `spmm`, which allocates split-K's memory at every call.
                    cases.push(case(true, Calls::NewWorkspace).by("tilefuse, workspace per call"));
                    // And, in the smallest and the largest shape, the CUDA kernel's probes
                    // (where this build has them: the `probes` feature).
                    #[cfg(feature = "cuda")]
                    for probe in super::cuda::Variant::ALL
                        .into_iter()
                        .filter(|v| v.is_probe())
                    {
                        let built = crate::backend::kernels::module("spmm_probe").is_some();
                        if built && [(8192, 8192), (36864, 9216)].contains(&(m, k)) {
                            cases.push(case(true, Calls::Variant(probe)).by(probe.label()));
                        }
                    }
                    #[cfg(feature = "cuda")]
                    for probe in super::cuda::BitmapProbe::ALL {
                        let built = crate::backend::kernels::module("spmm_bitmap_probe").is_some();
                        if built && [(8192, 8192), (36864, 9216)].contains(&(m, k)) {
                            cases.push(bitmap(Calls::BitmapProbe(probe)).by(probe.label()));
                        }
                    }
                }
            }
            #[cfg(all(feature = "cuda", feature = "cli"))]
            for sparsity in BENCH_SPARSITIES {
                // The same dense product through cuBLAS, under every sparsity's name, so
                // that the summary compares each sparse case with it.
                let name = format!("m={m} k={k} n={n} s={}%", (sparsity * 100.0).round());
                let bytes = (2 * (m * k + n * k + n * m)) as u64;
                cases.push(
                    BenchCase::new(
                        "spmm",
                        name,
                        bytes,
                        (2 * m * n * k) as u64,
                        move |backends, backend| {
                            super::cublas::prepare(backends, backend, m, k, n, L2_DEFEAT_BYTES)
                        },
                    )
                    .by("cublas"),
                );
            }
        }
    }
    cases
}

/// The benchmark's name for the bitmap kernel's rows.
const BITMAP: &str = "tilefuse bitmap";

/// [`bench_weight`] as a bitmap, made once per process.
fn bench_bitmap(m: usize, k: usize, sparsity: f64) -> Arc<Bitmap<f16>> {
    type Cache = Mutex<HashMap<(usize, usize, u64), Arc<Bitmap<f16>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let w = bench_weight(m, k, sparsity, true);
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    cache
        .entry((m, k, sparsity.to_bits()))
        .or_insert_with(|| Arc::new(Bitmap::from_tiled_csl(&w).expect("bench shapes are valid")))
        .clone()
}

/// A uniform-random bench weight (values in [-1, 1]), made once per process and straight
/// into Tiled-CSL: the largest is 36864 x 9216. `spread`: each tile's entries in the order
/// [`TiledCsl::encode`] gives them, else in increasing places.
fn bench_weight(m: usize, k: usize, sparsity: f64, spread: bool) -> Arc<TiledCsl<f16>> {
    type Cache = Mutex<HashMap<(usize, usize, u64, bool), Arc<TiledCsl<f16>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    cache
        .entry((m, k, sparsity.to_bits(), spread))
        .or_insert_with(|| {
            Arc::new(uniform_weight(m, k, sparsity, 1, spread).expect("bench shapes are valid"))
        })
        .clone()
}

fn uniform_weight(
    m: usize,
    k: usize,
    sparsity: f64,
    seed: u64,
    spread: bool,
) -> Result<TiledCsl<f16>> {
    let mut rng = Rng::new(seed);
    let keep = ((1.0 - sparsity) * u64::MAX as f64) as u64;
    let (tiles_m, tiles_k) = (m.div_ceil(TILE_M), k.div_ceil(TILE_K));
    let mut offsets = vec![0u32];
    let mut entries = Vec::with_capacity(((1.0 - sparsity) * (m * k) as f64 * 1.01) as usize + 64);
    for tile_m in 0..tiles_m {
        for tile_k in 0..tiles_k {
            let mut tile = Vec::new();
            for row in 0..TILE_M.min(m - tile_m * TILE_M) {
                // Places in row order: chunk c of the row holds columns of chunk c ^ (row % 8).
                for chunk in 0..TILE_K / 8 {
                    let col0 = (chunk ^ (row % 8)) * 8;
                    for i in 0..8 {
                        if tile_k * TILE_K + col0 + i < k && rng.next_u64() < keep {
                            let value = f16::from_f64(rng.uniform(-1.0, 1.0)).to_bits();
                            let place = (row * TILE_K + chunk * 8 + i) as u32;
                            tile.push(u32::from(value) | place << 16);
                        }
                    }
                }
            }
            if spread {
                tile = spread_over_banks(tile);
            }
            while !tile.len().is_multiple_of(4) {
                tile.push(*tile.last().expect("a tile with entries"));
            }
            entries.extend(tile);
            offsets.push((entries.len() / 4) as u32);
        }
    }
    TiledCsl::from_parts(m, k, offsets, entries)
}

/// How a bench runner calls spmm.
#[derive(Clone, Copy, PartialEq)]
enum Calls {
    /// `spmm_with_workspace`, with one workspace for every call.
    ReuseWorkspace,
    /// `spmm`, which makes a workspace at every call.
    NewWorkspace,
    /// A CUDA probe or variant kernel where `spmm_with_workspace` runs its kernel (no other
    /// backend has them).
    #[cfg(feature = "cuda")]
    Variant(super::cuda::Variant),
    /// A CUDA probe of the bitmap kernel in its place.
    #[cfg(feature = "cuda")]
    BitmapProbe(super::cuda::BitmapProbe),
}

/// A bench weight in one of the formats.
enum Weight {
    TiledCsl(Arc<TiledCsl<f16>>),
    Bitmap(Arc<Bitmap<f16>>),
}

impl Weight {
    fn format(&self) -> SparseFormat {
        match self {
            Weight::TiledCsl(_) => SparseFormat::TiledCsl,
            Weight::Bitmap(_) => SparseFormat::Bitmap,
        }
    }

    /// `[m, k]` and the bytes of one copy.
    fn size(&self) -> (usize, usize, usize) {
        match self {
            Weight::TiledCsl(w) => (w.m(), w.k(), w.stats().bytes),
            Weight::Bitmap(w) => (w.m(), w.k(), w.stats().bytes),
        }
    }
}

fn prepare(
    backends: &Backends,
    backend: Backend,
    w: Weight,
    n: usize,
    calls: Calls,
) -> Result<Option<Runner<'_>>> {
    #[cfg(feature = "cuda")]
    if matches!(calls, Calls::Variant(_) | Calls::BitmapProbe(_)) {
        return match backend {
            Backend::Cuda => variant_runner(backends.cuda()?, &w, n, calls).map(Some),
            _ => Ok(None),
        };
    }
    on_device!(backends, backend, |device| runner(device, &w, n, calls))
}

/// Weight copies (enough to defeat the L2 cache) in one format on a device.
enum Copies<D: OnDevice> {
    TiledCsl(Vec<D::TiledCsl<f16>>),
    Bitmap(Vec<D::Bitmap<f16>>),
}

impl<D: OnDevice> Copies<D> {
    fn len(&self) -> usize {
        match self {
            Copies::TiledCsl(copies) => copies.len(),
            Copies::Bitmap(copies) => copies.len(),
        }
    }
}

/// Weight copies, x and y of a case on a device.
struct Operands<D: OnDevice> {
    weights: Copies<D>,
    x: D::Buffer<f16>,
    y: D::Buffer<f16>,
}

impl<D: OnDevice> Operands<D> {
    fn upload(device: &D, w: &Weight, n: usize) -> Result<Self> {
        let (m, k, bytes) = w.size();
        let copies = L2_DEFEAT_BYTES.div_ceil(bytes).max(1);
        let weights = match w {
            Weight::TiledCsl(w) => Copies::TiledCsl(
                (0..copies)
                    .map(|_| device.upload_tiled_csl(w))
                    .collect::<Result<_>>()?,
            ),
            Weight::Bitmap(w) => Copies::Bitmap(
                (0..copies)
                    .map(|_| device.upload_bitmap(w))
                    .collect::<Result<_>>()?,
            ),
        };
        let x = device.upload(&vec![f16::from_f32(0.5); n * k])?;
        let y = device.zeros::<f16>(n * m)?;
        Ok(Operands { weights, x, y })
    }
}

/// A runner of the op's own calls on `device`, each with the next weight copy.
fn runner<'a, D: OnDevice>(
    device: &'a D,
    w: &Weight,
    n: usize,
    calls: Calls,
) -> Result<Runner<'a>> {
    debug_assert!(calls != Calls::NewWorkspace || w.format() == SparseFormat::TiledCsl);
    let Operands { weights, x, mut y } = Operands::upload(device, w, n)?;
    let mut workspace = D::Workspace::default();
    let mut turn = 0;
    Ok(Runner::new(device.clock(), move || {
        turn = (turn + 1) % weights.len();
        if calls == Calls::NewWorkspace {
            workspace = D::Workspace::default();
        }
        match &weights {
            Copies::TiledCsl(w) => device.spmm_tiled_csl(&w[turn], &x, &mut y, &mut workspace),
            Copies::Bitmap(w) => device.spmm_bitmap(&w[turn], &x, &mut y, &mut workspace),
        }
    }))
}

/// A runner of a CUDA probe or variant kernel (`calls`) in place of its format's kernel.
#[cfg(feature = "cuda")]
fn variant_runner<'a>(
    cuda: &'a crate::backend::cuda::Cuda,
    w: &Weight,
    n: usize,
    calls: Calls,
) -> Result<Runner<'a>> {
    let Operands { weights, x, mut y } = Operands::upload(cuda, w, n)?;
    let mut workspace = super::cuda::SpmmWorkspace::new();
    let mut turn = 0;
    Ok(Runner::new(cuda.clock(), move || {
        turn = (turn + 1) % weights.len();
        let workspace = &mut workspace;
        match (&weights, calls) {
            (Copies::TiledCsl(w), Calls::Variant(variant)) => {
                super::cuda::spmm_variant(cuda, &w[turn], &x, &mut y, workspace, variant)
            }
            (Copies::Bitmap(w), Calls::BitmapProbe(probe)) => {
                super::cuda::spmm_bitmap_probe(cuda, &w[turn], &x, &mut y, workspace, probe)
            }
            _ => unreachable!("bench_cases pairs each variant with its format"),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case is timed by both formats' kernels and the CUDA variants (and cuBLAS); each
    /// target case (n = 16, 80%) also in increasing places and with a workspace per call, and
    /// in two shapes by both kernels' probes where this build has them (the `probes` feature).
    #[test]
    fn every_case_carries_its_comparisons() {
        let cases = bench_cases();
        for (m, k) in BENCH_SHAPES {
            for n in BENCH_TOKENS {
                for sparsity in BENCH_SPARSITIES {
                    let name = format!("m={m} k={k} n={n} s={}%", (sparsity * 100.0).round());
                    let mut by: Vec<&str> = cases
                        .iter()
                        .filter(|c| c.name == name)
                        .map(|c| c.implementation)
                        .collect();
                    by.sort_unstable();
                    let target = n == 16 && sparsity == 0.8;
                    let mut expected = vec!["tilefuse", BITMAP];
                    if target {
                        expected.extend([
                            "tilefuse, increasing places",
                            "tilefuse, workspace per call",
                        ]);
                    }
                    #[cfg(feature = "cuda")]
                    for variant in crate::spmm::cuda::Variant::ALL {
                        let probe_shape = [(8192, 8192), (36864, 9216)].contains(&(m, k));
                        let probes = crate::backend::kernels::module("spmm_probe").is_some();
                        if !variant.is_probe() || (target && probe_shape && probes) {
                            expected.push(variant.label());
                        }
                    }
                    #[cfg(feature = "cuda")]
                    for probe in crate::spmm::cuda::BitmapProbe::ALL {
                        let probe_shape = [(8192, 8192), (36864, 9216)].contains(&(m, k));
                        let probes = crate::backend::kernels::module("spmm_bitmap_probe").is_some();
                        if target && probe_shape && probes {
                            expected.push(probe.label());
                        }
                    }
                    #[cfg(all(feature = "cuda", feature = "cli"))]
                    expected.push("cublas");
                    expected.sort_unstable();
                    assert_eq!(by, expected, "{name}");
                }
            }
        }
    }

    #[test]
    fn bench_weights_in_either_order_hold_the_same_matrix() {
        let spread = uniform_weight(300, 520, 0.8, 3, true).unwrap();
        let increasing = uniform_weight(300, 520, 0.8, 3, false).unwrap();
        assert_eq!(spread.decode(), increasing.decode());
        assert_ne!(spread.entries(), increasing.entries());
        let density = spread.stats().nnz as f64 / (300.0 * 520.0);
        assert!((density - 0.2).abs() < 0.01, "density {density}");
    }
}
