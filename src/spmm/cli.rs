//! spmm's case files (`tilefuse run spmm`, `tilefuse check --input`): a dense float16 `w
//! [m, k]` (its zeros are the sparsity, encoded to Tiled-CSL or the bitmap format) and
//! `x [n, k]`; out `y [n, m]`.

use half::{bf16, f16};

use super::TiledCsl;
use super::check::{Encoded, run_encoded};
use super::format::check_dims;
#[cfg(feature = "cuda")]
use crate::backend::cuda::Cuda;
use crate::element::{DeviceFloat16, DeviceOutput, Dtype16, Float16};
use crate::harness::file::{
    CaseFile, Dtype, FileEntry, FileOptions, SparseFormat, float16, float16_entry, mismatch,
};
use crate::harness::npz::{Array, Data, Npz};
#[cfg(feature = "cuda")]
use crate::harness::profile::{ParamKind, Prepared, ProfileEntry, ProfileParam, ProfileValues};
use crate::harness::{Backend, Backends, Tolerance};

/// spmm's case files.
pub(crate) const FILE: FileEntry = FileEntry {
    marks: &["w", "x"],
    needs: SPMM_NEEDS,
    load,
};

const SPMM_NEEDS: &str = "spmm needs w [m, k] and x [n, k], float16";

fn load(arrays: &Npz, options: FileOptions) -> Result<Box<dyn CaseFile>, String> {
    let format = options.format;
    match options.dtype.unwrap_or(Dtype::F16) {
        Dtype::F16 => Ok(Box::new(SpmmFile::<f16>::load(arrays, format)?)),
        Dtype::Bf16 => Ok(Box::new(SpmmFile::<bf16>::load(arrays, format)?)),
        Dtype::F32 => Err("--dtype f32: spmm computes in f16 or bf16 (f32 accumulation)".into()),
    }
}

/// A case: the dense weight, encoded when it runs in the format asked for or the one the
/// backend runs faster.
struct SpmmFile<T: Float16> {
    w: Vec<T>,
    m: usize,
    k: usize,
    x: Vec<T>,
    n: usize,
    format: Option<SparseFormat>,
}

impl<T: Float16> SpmmFile<T> {
    fn load(arrays: &Npz, format: Option<SparseFormat>) -> Result<Self, String> {
        let w_array = float16_entry(arrays, "w", &["m", "k"], SPMM_NEEDS)?;
        let x_array = float16_entry(arrays, "x", &["n", "k"], SPMM_NEEDS)?;
        let (m, k) = (w_array.shape[0], w_array.shape[1]);
        if x_array.shape[1] != k {
            return Err(mismatch("x", format!("(n, {k}) (k from w)"), x_array));
        }
        let n = x_array.shape[0];
        if m == 0 || k == 0 || n == 0 {
            return Err(format!(
                "`w`, `x`: every size must be at least 1, got w {} and x {}",
                w_array.shape_text(),
                x_array.shape_text()
            ));
        }
        check_dims(m, k).map_err(|e| format!("`w`: {e}"))?;
        Ok(SpmmFile {
            w: float16::<T>(w_array, "w")?,
            m,
            k,
            x: float16(x_array, "x")?,
            n,
            format,
        })
    }

    /// The format asked for, else the faster kernel of `backend`: CUDA has Tiled-CSL's, and
    /// WGSL's bitmap kernel takes time by the nonzeros where its Tiled-CSL one takes it by m·k·n.
    fn format(&self, backend: Backend) -> SparseFormat {
        match (self.format, backend) {
            (Some(format), _) => format,
            (None, Backend::Cuda) => SparseFormat::TiledCsl,
            (None, _) => SparseFormat::Bitmap,
        }
    }

    fn tiled_csl(&self) -> Result<TiledCsl<T>, String> {
        TiledCsl::encode(&self.w, self.m, self.k).map_err(|e| format!("`w`: {e}"))
    }

    fn y(&self, values: Vec<f32>) -> Vec<(String, Array)> {
        vec![(
            "y".into(),
            Array {
                shape: vec![self.n, self.m],
                data: Data::F32(values),
            },
        )]
    }
}

impl<T: DeviceFloat16> SpmmFile<T>
where
    f32: DeviceOutput<T>,
{
    /// `y` on a GPU backend, in f32.
    fn on_device(&self, backends: &Backends, backend: Backend) -> crate::Result<Option<Vec<f32>>> {
        // Encoded straight to the format that runs (a bitmap is not made through Tiled-CSL).
        let (m, k) = (self.m, self.k);
        match self.format(backend) {
            SparseFormat::TiledCsl => {
                let w = TiledCsl::encode(&self.w, m, k)?;
                run_encoded::<T, f32>(backends, backend, Encoded::TiledCsl(&w), &self.x)
            }
            SparseFormat::Bitmap => {
                let w = super::Bitmap::encode(&self.w, m, k)?;
                run_encoded::<T, f32>(backends, backend, Encoded::Bitmap(&w), &self.x)
            }
        }
    }
}

impl<T: DeviceFloat16> CaseFile for SpmmFile<T>
where
    f32: DeviceOutput<T>,
{
    fn run(&self, backends: &Backends, backend: Backend) -> Result<Vec<(String, Array)>, String> {
        if backend == Backend::Cpu {
            let y = super::reference(&self.tiled_csl()?, &self.x).map_err(|e| e.to_string())?;
            return Ok(self.y(y.into_iter().map(|v| v as f32).collect()));
        }
        match self
            .on_device(backends, backend)
            .map_err(|e| e.to_string())?
        {
            Some(y) => Ok(self.y(y)),
            None => Err(format!(
                "spmm has no {backend} kernel for the {} format",
                self.format(backend).name()
            )),
        }
    }

    fn reference(&self) -> Result<Vec<(String, Vec<f64>)>, String> {
        let y = super::reference(&self.tiled_csl()?, &self.x).map_err(|e| e.to_string())?;
        Ok(vec![("y".into(), y)])
    }

    /// The operands' 16-bit bound: a file's data may be of one sign, where f32 accumulation's
    /// roundings add up (spmm::tolerance holds random-sign test data to f32's).
    fn tolerance(&self) -> Tolerance {
        super::tolerance(T::DTYPE == Dtype16::Bf16, false, self.k)
    }

    fn variant(&self, backend: Backend) -> Option<&'static str> {
        (backend != Backend::Cpu).then(|| self.format(backend).name())
    }
}

/// `tilefuse profile spmm`: f16, a uniformly sparse weight in both formats, one workspace for
/// every launch: each iteration runs the Tiled-CSL kernel, then the bitmap kernel.
#[cfg(feature = "cuda")]
pub(crate) const PROFILE: ProfileEntry = ProfileEntry {
    params: &[
        ProfileParam {
            name: "m",
            help: "spmm: rows of w",
            kind: ParamKind::Count(8192),
        },
        ProfileParam {
            name: "k",
            help: "spmm: columns of w",
            kind: ParamKind::Count(8192),
        },
        ProfileParam {
            name: "n",
            help: "spmm: tokens",
            kind: ParamKind::Count(16),
        },
        ProfileParam {
            name: "sparsity",
            help: "spmm: fraction of zero weights (uniform)",
            kind: ParamKind::Number(0.8),
        },
    ],
    prepare: prepare_profile,
};

#[cfg(feature = "cuda")]
fn prepare_profile<'a>(cuda: &'a Cuda, values: &ProfileValues) -> crate::Result<Prepared<'a>> {
    let (m, k, n) = (values.count("m")?, values.count("k")?, values.count("n")?);
    let case = super::Case {
        pattern: super::Pattern::Uniform,
        ..super::Case::new(m, k, n, values.number("sparsity")?)
    };
    let w = super::weight::<f16>(&case, 1)?;
    let bitmap = super::cuda::DeviceBitmap::upload(cuda, &super::Bitmap::from_tiled_csl(&w)?)?;
    let w = super::cuda::DeviceTiledCsl::upload(cuda, &w)?;
    let x = cuda.upload(&vec![f16::from_f32(0.5); n * k])?;
    let mut y = cuda.upload(&vec![f16::ZERO; n * m])?;
    let mut workspace = super::cuda::SpmmWorkspace::new();
    Ok(Prepared {
        label: format!(
            "spmm m={m} k={k} n={n} s={}%, Tiled-CSL then bitmap",
            (case.sparsity * 100.0).round()
        ),
        launch: Box::new(move || {
            super::cuda::spmm_with_workspace(cuda, &w, &x, &mut y, &mut workspace)?;
            super::cuda::spmm_with_workspace(cuda, &bitmap, &x, &mut y, &mut workspace)
        }),
    })
}
