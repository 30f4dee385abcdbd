//! SpMM cases for `tilefuse check`, `tilefuse bench` and the integration tests.

use std::fmt;

use half::{bf16, f16};

use super::SparseFormat;
use super::bitmap::Bitmap;
use super::format::{Pruning, TILE_K, TILE_M, TiledCsl, prune};
use super::reference;
use crate::element::{DeviceFloat16, DeviceOutput, Float16, OutputElement};
use crate::error::Result;
use crate::harness::device::{Device, on_device};
use crate::harness::{Backend, Backends, CheckCase, Comparison, OpEntry, Rng, Tolerance, compare};

/// The registry entry.
pub const ENTRY: OpEntry = OpEntry {
    name: "spmm",
    about: "sparse weight x dense activations, Tiled-CSL (CUDA: Flash-LLM's LSCD on mma.sync)",
    kernel_modules: &["spmm"],
    check_cases,
    bench_cases: super::bench::bench_cases,
    #[cfg(feature = "cli")]
    file: Some(&super::cli::FILE),
    #[cfg(all(feature = "cli", feature = "cuda"))]
    profile: Some(&super::cli::PROFILE),
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
    /// The format the weight goes to the device in.
    pub format: SparseFormat,
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
            format: SparseFormat::TiledCsl,
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
            "{element}->{out} m={} k={} n={} s={}% {:?} {}",
            self.m,
            self.k,
            self.n,
            (self.sparsity * 100.0).round(),
            self.pattern,
            self.format.name()
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
    check_with::<T, O>(case, seed, |w, x| {
        run::<T, O>(backends, backend, case.format, w, x)
    })
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

/// Runs `y = x · wᵀ` once on a GPU backend (`Ok(None)` on the CPU) with `w` in `format`,
/// `y` poisoned with NaN first, and reads `y` back.
pub fn run<T: DeviceFloat16, O: DeviceOutput<T>>(
    backends: &Backends,
    backend: Backend,
    format: SparseFormat,
    w: &TiledCsl<T>,
    x: &[T],
) -> Result<Option<Vec<O>>> {
    match format {
        SparseFormat::TiledCsl => run_encoded(backends, backend, Encoded::TiledCsl(w), x),
        SparseFormat::Bitmap => {
            let w = Bitmap::from_tiled_csl(w)?;
            run_encoded(backends, backend, Encoded::Bitmap(&w), x)
        }
    }
}

/// A weight in one of the sparse formats.
#[derive(Clone, Copy)]
pub(crate) enum Encoded<'a, T: Float16> {
    TiledCsl(&'a TiledCsl<T>),
    Bitmap(&'a Bitmap<T>),
}

/// [`run`] with the weight already in the format to run.
pub(crate) fn run_encoded<T: DeviceFloat16, O: DeviceOutput<T>>(
    backends: &Backends,
    backend: Backend,
    w: Encoded<'_, T>,
    x: &[T],
) -> Result<Option<Vec<O>>> {
    let (m, k) = match w {
        Encoded::TiledCsl(w) => (w.m(), w.k()),
        Encoded::Bitmap(w) => (w.m(), w.k()),
    };
    let n = super::reference::tokens(x.len(), k)?;
    let poison: Vec<O> = vec![nan_bits::<O>(); n * m];
    on_device!(backends, backend, |device| {
        let (x, mut y) = (device.upload(x)?, device.upload(&poison)?);
        match w {
            Encoded::TiledCsl(w) => {
                let w = device.upload_tiled_csl(w)?;
                device.spmm_tiled_csl(&w, &x, &mut y, &mut Default::default())?;
            }
            Encoded::Bitmap(w) => {
                let w = device.upload_bitmap(w)?;
                device.spmm_bitmap(&w, &x, &mut y, &mut Default::default())?;
            }
        }
        device.download(&y)
    })
}

/// NaN in `O`'s representation, as the bytes of one `O`.
pub(crate) fn nan_bits<O: bytemuck::Pod>() -> O {
    match size_of::<O>() {
        4 => bytemuck::cast_slice::<f32, O>(&[f32::NAN])[0],
        _ => bytemuck::cast_slice::<u16, O>(&[0x7fc0, 0])[0], // NaN as f16 and as bf16
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
    [SparseFormat::TiledCsl, SparseFormat::Bitmap]
        .into_iter()
        .flat_map(|format| cases.map(|case| Case { format, ..case }))
        .map(|case| {
            CheckCase::new("spmm", case.to_string(), move |backends, backend| {
                check(backends, backend, &case, 0x5eed)
            })
        })
        .collect()
}

/// spmm's calls on each backend.
pub(super) trait OnDevice: Device {
    /// A Tiled-CSL weight in this device's memory.
    type TiledCsl<T: DeviceFloat16>;
    /// A bitmap weight in this device's memory.
    type Bitmap<T: DeviceFloat16>;
    /// Split-K's memory, kept from call to call.
    type Workspace: Default;
    /// Uploads `w`.
    fn upload_tiled_csl<T: DeviceFloat16>(&self, w: &TiledCsl<T>) -> Result<Self::TiledCsl<T>>;
    /// Uploads `w`.
    fn upload_bitmap<T: DeviceFloat16>(&self, w: &Bitmap<T>) -> Result<Self::Bitmap<T>>;
    /// `y = x · wᵀ`, enqueued.
    fn spmm_tiled_csl<T: DeviceFloat16, O: DeviceOutput<T>>(
        &self,
        w: &Self::TiledCsl<T>,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<O>,
        workspace: &mut Self::Workspace,
    ) -> Result<()>;
    /// `y = x · wᵀ`, enqueued.
    fn spmm_bitmap<T: DeviceFloat16, O: DeviceOutput<T>>(
        &self,
        w: &Self::Bitmap<T>,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<O>,
        workspace: &mut Self::Workspace,
    ) -> Result<()>;
}

/// `OnDevice` for a backend's handle: its module's weight types, workspace and
/// `spmm_with_workspace`.
macro_rules! forward_to {
    ($feature:literal, $handle:ty, $module:ident, $tiled_csl:ident, $bitmap:ident) => {
        #[cfg(feature = $feature)]
        impl OnDevice for $handle {
            type TiledCsl<T: DeviceFloat16> = super::$module::$tiled_csl<T>;
            type Bitmap<T: DeviceFloat16> = super::$module::$bitmap<T>;
            type Workspace = super::$module::SpmmWorkspace;
            fn upload_tiled_csl<T: DeviceFloat16>(
                &self,
                w: &TiledCsl<T>,
            ) -> Result<Self::TiledCsl<T>> {
                super::$module::$tiled_csl::upload(self, w)
            }
            fn upload_bitmap<T: DeviceFloat16>(&self, w: &Bitmap<T>) -> Result<Self::Bitmap<T>> {
                super::$module::$bitmap::upload(self, w)
            }
            fn spmm_tiled_csl<T: DeviceFloat16, O: DeviceOutput<T>>(
                &self,
                w: &Self::TiledCsl<T>,
                x: &Self::Buffer<T>,
                y: &mut Self::Buffer<O>,
                workspace: &mut Self::Workspace,
            ) -> Result<()> {
                super::$module::spmm_with_workspace(self, w, x, y, workspace)
            }
            fn spmm_bitmap<T: DeviceFloat16, O: DeviceOutput<T>>(
                &self,
                w: &Self::Bitmap<T>,
                x: &Self::Buffer<T>,
                y: &mut Self::Buffer<O>,
                workspace: &mut Self::Workspace,
            ) -> Result<()> {
                super::$module::spmm_with_workspace(self, w, x, y, workspace)
            }
        }
    };
}
forward_to!(
    "cuda",
    crate::backend::cuda::Cuda,
    cuda,
    DeviceTiledCsl,
    DeviceBitmap
);
forward_to!(
    "wgpu",
    crate::backend::wgpu::Wgpu,
    wgpu,
    GpuTiledCsl,
    GpuBitmap
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The poison that outputs are filled with before a run is NaN in every output type, so
    /// that an element left unwritten never passes.
    #[test]
    fn poison_is_nan_in_every_output_type() {
        assert!(nan_bits::<f16>().is_nan());
        assert!(
            nan_bits::<bf16>().is_nan(),
            "{:#06x}",
            nan_bits::<bf16>().to_bits()
        );
        assert!(nan_bits::<f32>().is_nan());
    }
}
