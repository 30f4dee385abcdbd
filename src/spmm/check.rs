//! SpMM cases for `tilefuse check`, `tilefuse bench` and the integration tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use half::{bf16, f16};

use super::format::{Pruning, TILE_K, TILE_M, TiledCsl, prune, spread_over_banks};
use super::reference;
use crate::element::{DeviceFloat16, DeviceOutput, Float16, OutputElement};
use crate::error::Result;
use crate::harness::{
    Backend, Backends, BenchCase, CheckCase, Comparison, OpEntry, Rng, Runner, Tolerance, compare,
};

/// The registry entry.
pub const ENTRY: OpEntry = OpEntry {
    name: "spmm",
    about: "sparse weight x dense activations, Tiled-CSL (CUDA: Flash-LLM's LSCD on mma.sync)",
    kernel_modules: &["spmm"],
    check_cases,
    bench_cases,
};

/// How the zeros of a test weight are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Each weight is zero independently with the case's sparsity.
    Uniform,
    /// The smallest magnitudes of the whole matrix are zeroed ([`Pruning::Global`]).
    MagnitudeGlobal,
    /// The smallest magnitudes of each row are zeroed ([`Pruning::PerRow`]).
    MagnitudePerRow,
    /// Uniform, except that the first tile is fully dense and the second (if any) empty.
    DenseAndEmptyTiles,
}

/// One check configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Case {
    /// Rows of w (outputs).
    pub m: usize,
    /// Columns of w (inputs).
    pub k: usize,
    /// Tokens.
    pub n: usize,
    /// Fraction of zero weights.
    pub sparsity: f64,
    /// Where the zeros are.
    pub pattern: Pattern,
    /// bf16 operands (else f16).
    pub bf16: bool,
    /// f32 output (else the operand type).
    pub out_f32: bool,
}

impl Case {
    /// f16 in and out, magnitude-pruned per row.
    pub fn new(m: usize, k: usize, n: usize, sparsity: f64) -> Case {
        Case {
            m,
            k,
            n,
            sparsity,
            pattern: Pattern::MagnitudePerRow,
            bf16: false,
            out_f32: false,
        }
    }

    /// The bound against the f64 reference: see [`tolerance`].
    pub fn tolerance(&self) -> Tolerance {
        tolerance(self.bf16, self.out_f32, self.k)
    }
}

/// The bound of an spmm output against the f64 reference, for bf16 (else f16) operands, f32
/// (else 16-bit) outputs and rows of `k`, on inputs of random signs (the test cases'). The
/// operands' values are exact and so are their products in f32, so the error is f32
/// accumulation plus the output's rounding: a 16-bit output's precision, or f32's bound up to
/// 1024 terms, growing like k beyond. Random signs keep the roundings' sum near √k ulps (well
/// inside, even where tensor cores truncate); data of one sign may reach k ulps, so arbitrary
/// data (`tilefuse check --input`) keeps the operands' 16-bit bound. An f32 output that
/// passed through 16 bits on its way fails this bound wherever k is below about 10 000.
pub fn tolerance(bf16: bool, out_f32: bool, k: usize) -> Tolerance {
    match (out_f32, bf16) {
        (true, _) => {
            let growth = (k as f64 / 1024.0).max(1.0);
            Tolerance {
                rel_l2: Tolerance::F32.rel_l2 * growth,
                element: Tolerance::F32.element * growth,
            }
        }
        (false, true) => Tolerance::BF16,
        (false, false) => Tolerance::F16,
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let element = if self.bf16 { "bf16" } else { "f16" };
        let out = if self.out_f32 { "f32" } else { element };
        write!(
            f,
            "{element}->{out} m={} k={} n={} s={}% {:?}",
            self.m,
            self.k,
            self.n,
            (self.sparsity * 100.0).round(),
            self.pattern
        )
    }
}

/// A random weight for `case` (values uniform in [-1, 1]) and its encoding.
pub fn weight<T: Float16>(case: &Case, seed: u64) -> Result<TiledCsl<T>> {
    let (m, k) = (case.m, case.k);
    let mut rng = Rng::new(seed);
    let mut dense: Vec<T> = (0..m * k)
        .map(|_| T::from_f64(rng.uniform(-1.0, 1.0)))
        .collect();
    let keep_uniform = |rng: &mut Rng| rng.unit() >= case.sparsity;
    match case.pattern {
        Pattern::Uniform | Pattern::DenseAndEmptyTiles => {
            for value in &mut dense {
                if !keep_uniform(&mut rng) {
                    *value = T::default();
                }
            }
        }
        Pattern::MagnitudeGlobal => dense = prune(&dense, m, k, case.sparsity, Pruning::Global)?,
        Pattern::MagnitudePerRow => dense = prune(&dense, m, k, case.sparsity, Pruning::PerRow)?,
    }
    if case.pattern == Pattern::DenseAndEmptyTiles {
        for row in 0..TILE_M.min(m) {
            for col in 0..TILE_K.min(k) {
                let value = T::from_f64(0.25 + rng.unit() / 2.0); // never zero
                dense[row * k + col] = value;
            }
            for col in TILE_K.min(k)..(2 * TILE_K).min(k) {
                dense[row * k + col] = T::default();
            }
        }
    }
    TiledCsl::encode(&dense, m, k)
}

/// Runs `case` on `backend` with inputs from `seed` (the output poisoned with NaN first) and
/// compares with the f64 reference. `Ok(None)` on the CPU (the reference is the CPU path).
pub fn check(
    backends: &Backends,
    backend: Backend,
    case: &Case,
    seed: u64,
) -> Result<Option<Comparison>> {
    match (case.bf16, case.out_f32) {
        (false, false) => check_typed::<f16, f16>(backends, backend, case, seed),
        (false, true) => check_typed::<f16, f32>(backends, backend, case, seed),
        (true, false) => check_typed::<bf16, bf16>(backends, backend, case, seed),
        (true, true) => check_typed::<bf16, f32>(backends, backend, case, seed),
    }
}

fn check_typed<T, O>(
    backends: &Backends,
    backend: Backend,
    case: &Case,
    seed: u64,
) -> Result<Option<Comparison>>
where
    T: DeviceFloat16,
    O: DeviceOutput<T>,
{
    if backend == Backend::Cpu {
        return Ok(None);
    }
    check_with::<T, O>(case, seed, |w, x| run::<T, O>(backends, backend, w, x))
}

/// [`check`] with the device run done by `runner`, which takes the weight and x and returns
/// y (`None` where there is no such path).
pub(crate) fn check_with<T: Float16, O: OutputElement<T>>(
    case: &Case,
    seed: u64,
    runner: impl FnOnce(&TiledCsl<T>, &[T]) -> Result<Option<Vec<O>>>,
) -> Result<Option<Comparison>> {
    let (w, x) = inputs::<T>(case, seed)?;
    let Some(y) = runner(&w, &x)? else {
        return Ok(None);
    };
    let y: Vec<f64> = y.into_iter().map(OutputElement::to_f64).collect();
    Ok(Some(compare(&y, &reference(&w, &x)?, case.tolerance())))
}

/// The weight and x (values uniform in [-1, 1]) of `case` from `seed`.
pub(crate) fn inputs<T: Float16>(case: &Case, seed: u64) -> Result<(TiledCsl<T>, Vec<T>)> {
    let w = weight::<T>(case, seed)?;
    let x = Rng::new(seed ^ 0x9e37_79b9).fill(case.n * case.k, -1.0, 1.0, T::from_f64);
    Ok((w, x))
}

/// Runs `y = x · wᵀ` once on a GPU backend (`Ok(None)` on the CPU), with `y` poisoned with
/// NaN first, and reads `y` back.
pub fn run<T: DeviceFloat16, O: DeviceOutput<T>>(
    backends: &Backends,
    backend: Backend,
    w: &TiledCsl<T>,
    x: &[T],
) -> Result<Option<Vec<O>>> {
    let n = super::reference::tokens(x.len(), w.k())?;
    let poison: Vec<O> = vec![bytemuck::cast(nan_bits::<O>()); n * w.m()];
    match backend {
        Backend::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let cuda = backends.cuda()?;
            let device_w = super::cuda::DeviceTiledCsl::upload(cuda, w)?;
            let (x, mut y) = (cuda.upload(x)?, cuda.upload(&poison)?);
            super::cuda::spmm(cuda, &device_w, &x, &mut y)?;
            cuda.download(&y).map(Some)
        }
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            let gpu = backends.wgpu()?;
            let device_w = super::wgpu::GpuTiledCsl::upload(gpu, w)?;
            let (x, mut y) = (gpu.upload(x)?, gpu.upload(&poison)?);
            super::wgpu::spmm(gpu, &device_w, &x, &mut y)?;
            gpu.download(&y).map(Some)
        }
        #[allow(unreachable_patterns)]
        other => Err(other.not_compiled()),
    }
}

/// NaN in `O`'s representation, as the bytes of one `O`.
pub(crate) fn nan_bits<O: bytemuck::Pod>() -> O {
    match size_of::<O>() {
        4 => bytemuck::cast_slice::<f32, O>(&[f32::NAN])[0],
        _ => bytemuck::cast_slice::<u16, O>(&[0x7e00, 0])[0], // f16 NaN; a bf16 NaN too
    }
}

fn check_cases() -> Vec<CheckCase> {
    let cases = [
        Case::new(300, 520, 16, 0.8),
        Case {
            pattern: Pattern::DenseAndEmptyTiles,
            out_f32: true,
            ..Case::new(200, 200, 7, 0.5)
        },
        Case {
            bf16: true,
            pattern: Pattern::Uniform,
            ..Case::new(257, 130, 65, 0.9)
        },
        Case {
            bf16: true,
            out_f32: true,
            ..Case::new(1, 1, 1, 0.0)
        },
        Case {
            pattern: Pattern::MagnitudeGlobal,
            ..Case::new(512, 1024, 64, 0.7)
        },
    ];
    cases
        .into_iter()
        .map(|case| {
            CheckCase::new("spmm", case.to_string(), move |backends, backend| {
                check(backends, backend, &case, 0x5eed)
            })
        })
        .collect()
}

/// The benchmark weights (m, k), tokens and sparsities (issue 3; Flash-LLM's shapes).
pub const BENCH_SHAPES: [(usize, usize); 4] =
    [(8192, 8192), (28672, 8192), (8192, 28672), (36864, 9216)];
/// Tokens per benchmark case.
pub const BENCH_TOKENS: [usize; 4] = [8, 16, 32, 64];
/// Sparsities per benchmark case.
pub const BENCH_SPARSITIES: [f64; 4] = [0.5, 0.7, 0.8, 0.9];
/// Weight copies rotate until they total this many bytes, far above any L2.
const L2_DEFEAT_BYTES: usize = 256 << 20;

fn bench_cases() -> Vec<BenchCase> {
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
                            prepare(backends, backend, w, n, calls)
                        },
                    )
                };
                cases.push(case(true, Calls::ReuseWorkspace));
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
}

fn prepare(
    backends: &Backends,
    backend: Backend,
    w: Arc<TiledCsl<f16>>,
    n: usize,
    calls: Calls,
) -> Result<Option<Runner<'_>>> {
    #[cfg(feature = "cuda")]
    if matches!(calls, Calls::Variant(_)) && backend != Backend::Cuda {
        return Ok(None);
    }
    let reuse = calls != Calls::NewWorkspace;
    let copies = L2_DEFEAT_BYTES.div_ceil(w.stats().bytes).max(1);
    let x: Vec<f16> = vec![f16::from_f32(0.5); n * w.k()];
    match backend {
        Backend::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let cuda = backends.cuda()?;
            let weights = (0..copies)
                .map(|_| super::cuda::DeviceTiledCsl::upload(cuda, &w))
                .collect::<Result<Vec<_>>>()?;
            let x = cuda.upload(&x)?;
            let mut y = cuda.upload(&vec![f16::ZERO; n * w.m()])?;
            let mut workspace = super::cuda::SpmmWorkspace::new();
            let mut turn = 0;
            Ok(Some(Runner::new(
                crate::harness::Clock::Cuda(cuda),
                move || {
                    turn = (turn + 1) % weights.len();
                    if !reuse {
                        workspace = super::cuda::SpmmWorkspace::new();
                    }
                    let w = &weights[turn];
                    match calls {
                        Calls::Variant(variant) => {
                            super::cuda::spmm_variant(cuda, w, &x, &mut y, &mut workspace, variant)
                        }
                        _ => super::cuda::spmm_with_workspace(cuda, w, &x, &mut y, &mut workspace),
                    }
                },
            )))
        }
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            let gpu = backends.wgpu()?;
            let weights = (0..copies)
                .map(|_| super::wgpu::GpuTiledCsl::upload(gpu, &w))
                .collect::<Result<Vec<_>>>()?;
            let x = gpu.upload(&x)?;
            let mut y = gpu.zeros::<f16>(n * w.m())?;
            let mut workspace = super::wgpu::SpmmWorkspace::new();
            let mut turn = 0;
            Ok(Some(Runner::new(
                crate::harness::Clock::Wgpu(gpu),
                move || {
                    turn = (turn + 1) % weights.len();
                    if !reuse {
                        workspace = super::wgpu::SpmmWorkspace::new();
                    }
                    let w = &weights[turn];
                    super::wgpu::spmm_with_workspace(gpu, w, &x, &mut y, &mut workspace)
                },
            )))
        }
        #[allow(unreachable_patterns)]
        other => Err(other.not_compiled()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case is timed by the kernel and its CUDA variants (and cuBLAS); each target case
    /// (n = 16, 80%) also in increasing places and with a workspace per call, and in two
    /// shapes by the three probes where this build has them (the `probes` feature).
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
                    let mut expected = vec!["tilefuse"];
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
