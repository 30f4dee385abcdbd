//! [`SparseLinear`]: a linear layer whose weight is pruned once and kept compressed.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Shape, Tensor, WithDType};
use half::{bf16, f16};

use super::{aligned_contiguous, cpu_slice, host_vec};
use crate::error::Error;
use crate::spmm::cpu::{CpuElement, CpuWeight};
use crate::spmm::{Bitmap, Pruning, TiledCsl, format_and_dtype, prune, read_saved};

/// How [`SparseLinear::from_weight`] prunes a dense weight: the fraction of its weights set
/// to zero, smallest magnitudes first, and which weights compete ([`Pruning`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prune {
    /// The fraction zeroed, 0 to 1.
    pub sparsity: f64,
    /// Across the whole matrix or within each output row.
    pub scope: Pruning,
}

impl Prune {
    /// Every output row keeps the same count: `sparsity` of each row zeroed.
    pub const fn per_row(sparsity: f64) -> Prune {
        Prune {
            sparsity,
            scope: Pruning::PerRow,
        }
    }

    /// `sparsity` of the whole matrix zeroed: rows end up with different counts.
    pub const fn global(sparsity: f64) -> Prune {
        Prune {
            sparsity,
            scope: Pruning::Global,
        }
    }

    /// Nothing pruned: a weight that is already sparse keeps its own zeros.
    pub const NONE: Prune = Prune::per_row(0.0);
}

/// The compressed weight on the host, in its stored type.
#[derive(Debug, Clone)]
enum HostWeight {
    F16(Bitmap<f16>),
    Bf16(Bitmap<bf16>),
}

impl HostWeight {
    fn dtype(&self) -> DType {
        match self {
            HostWeight::F16(_) => DType::F16,
            HostWeight::Bf16(_) => DType::BF16,
        }
    }

    fn shape(&self) -> [usize; 2] {
        match self {
            HostWeight::F16(w) => [w.m(), w.k()],
            HostWeight::Bf16(w) => [w.m(), w.k()],
        }
    }

    fn nnz(&self) -> usize {
        match self {
            HostWeight::F16(w) => w.stats().nnz,
            HostWeight::Bf16(w) => w.stats().nnz,
        }
    }

    fn dense(&self, device: &Device) -> candle_core::Result<Tensor> {
        let [m, k] = self.shape();
        match self {
            HostWeight::F16(w) => Tensor::from_vec(w.decode(), (m, k), device),
            HostWeight::Bf16(w) => Tensor::from_vec(w.decode(), (m, k), device),
        }
    }

    /// The weight as the device computes with it.
    fn place(&self, device: &Device) -> candle_core::Result<Placed> {
        match device {
            Device::Cpu => Ok(Placed::Cpu(match self {
                HostWeight::F16(w) => CpuWeight::from_sparse(w),
                HostWeight::Bf16(w) => CpuWeight::from_sparse(w),
            })),
            #[cfg(feature = "candle-cuda")]
            Device::Cuda(device) => Ok(Placed::Cuda(Box::new(cuda::CudaWeight::upload(
                self, device,
            )?))),
            other => Err(candle_core::Error::msg(format!(
                "tilefuse SparseLinear: expected a CPU{} device, got {:?}",
                if cfg!(feature = "candle-cuda") {
                    " or CUDA"
                } else {
                    ""
                },
                other.location()
            ))),
        }
    }
}

/// The weight where the layer computes.
enum Placed {
    Cpu(CpuWeight),
    #[cfg(feature = "candle-cuda")]
    Cuda(Box<cuda::CudaWeight>),
}

/// A linear layer `y = x · wᵀ + bias` (candle's `Linear`) with its weight `[m, k]` pruned
/// and compressed once, multiplied by tilefuse's sparse kernels: on the CPU the multithreaded
/// f32-accumulating [`CpuWeight`], on CUDA the bitmap kernel
/// ([`DeviceBitmap`](crate::spmm::cuda::DeviceBitmap)) with its workspace kept in the layer.
/// The weight is stored in f16 or bf16 ([`Bitmap`]); [`save`](Self::save) writes it as
/// safetensors and [`load`](Self::load) reads it back (or a Tiled-CSL file).
///
/// For inference: no gradient flows through it (a backward pass through its output is an
/// error, not a silent zero).
///
/// ```
/// use candle_core::{Device, Module, Tensor};
/// use tilefuse::candle::{Prune, SparseLinear};
///
/// # fn main() -> candle_core::Result<()> {
/// let device = Device::Cpu;
/// let dense = candle_nn::Linear::new(
///     Tensor::randn(0f32, 0.05, (1536, 384), &device)?,
///     Some(Tensor::zeros(1536, candle_core::DType::F32, &device)?),
/// );
/// let sparse = SparseLinear::from_linear(&dense, Prune::per_row(0.8))?;
/// assert_eq!(sparse.nnz(), 1536 * 77); // 20% of each row of 384, rounded
/// let x = Tensor::randn(0f32, 1.0, (4, 384), &device)?;
/// let y = sparse.forward(&x)?; // f32 in, f32 out
/// assert_eq!(y.dims(), [4, 1536]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SparseLinear {
    host: Arc<HostWeight>,
    placed: Arc<Placed>,
    bias: Option<Tensor>,
    device: Device,
}

impl fmt::Debug for SparseLinear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [m, k] = self.host.shape();
        f.debug_struct("SparseLinear")
            .field("m", &m)
            .field("k", &k)
            .field("dtype", &self.host.dtype())
            .field("nnz", &self.host.nnz())
            .field("bias", &self.bias.is_some())
            .field("device", &self.device.location())
            .finish()
    }
}

impl SparseLinear {
    /// Prunes `weight [m, k]` by `prune` and compresses it, on `weight`'s device. An f16 or
    /// bf16 weight keeps its type; any other float weight is stored in f16. `bias`, when
    /// given, is `[m]`.
    pub fn from_weight(
        weight: &Tensor,
        bias: Option<&Tensor>,
        prune: Prune,
    ) -> candle_core::Result<Self> {
        let (m, k) = weight.dims2()?;
        if !weight.dtype().is_float() {
            return Err(Error::invalid(
                "weight",
                "a float tensor",
                format!("{:?}", weight.dtype()),
            )
            .into());
        }
        let host = match weight.dtype() {
            DType::BF16 => HostWeight::Bf16(compress::<bf16>(weight, m, k, prune)?),
            _ => HostWeight::F16(compress::<f16>(weight, m, k, prune)?),
        };
        Self::new(host, bias.cloned(), weight.device())
    }

    /// [`from_weight`](Self::from_weight) with a candle `Linear`'s weight and bias.
    pub fn from_linear(linear: &candle_nn::Linear, prune: Prune) -> candle_core::Result<Self> {
        Self::from_weight(linear.weight(), linear.bias(), prune)
    }

    /// A layer from a weight saved by [`save`](Self::save) ([`Bitmap::save`]) or by
    /// [`TiledCsl::save`], f16 or bf16, on `device`.
    pub fn load(
        path: impl AsRef<Path>,
        bias: Option<&Tensor>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let bytes = read_saved(path.as_ref())?;
        let host = match format_and_dtype(&bytes)? {
            (format, dtype) if format == "bitmap" && dtype == "f16" => {
                HostWeight::F16(Bitmap::from_safetensors(&bytes)?)
            }
            (format, dtype) if format == "bitmap" && dtype == "bf16" => {
                HostWeight::Bf16(Bitmap::from_safetensors(&bytes)?)
            }
            (format, dtype) if format == "tiledcsl" && dtype == "f16" => HostWeight::F16(
                Bitmap::from_tiled_csl(&TiledCsl::from_safetensors(&bytes)?)?,
            ),
            (format, dtype) if format == "tiledcsl" && dtype == "bf16" => HostWeight::Bf16(
                Bitmap::from_tiled_csl(&TiledCsl::from_safetensors(&bytes)?)?,
            ),
            (format, dtype) => {
                return Err(Error::invalid(
                    "safetensors metadata",
                    "format = bitmap or tiledcsl, dtype = f16 or bf16",
                    format!("format = {format}, dtype = {dtype}"),
                )
                .into());
            }
        };
        Self::new(host, bias.cloned(), device)
    }

    /// Writes the compressed weight (not the bias) as a [`Bitmap`] safetensors file.
    pub fn save(&self, path: impl AsRef<Path>) -> candle_core::Result<()> {
        match &*self.host {
            HostWeight::F16(w) => w.save(path)?,
            HostWeight::Bf16(w) => w.save(path)?,
        }
        Ok(())
    }

    fn new(host: HostWeight, bias: Option<Tensor>, device: &Device) -> candle_core::Result<Self> {
        let [m, _] = host.shape();
        if let Some(bias) = &bias
            && bias.dims() != [m]
        {
            return Err(Error::Shape {
                what: "bias",
                expected: format!("[m] = [{m}]"),
                got: format!("{:?}", bias.dims()),
            }
            .into());
        }
        Ok(SparseLinear {
            placed: Arc::new(host.place(device)?),
            host: Arc::new(host),
            bias: bias.map(|b| b.to_device(device)).transpose()?,
            device: device.clone(),
        })
    }

    /// The same layer on another device (the weight compressed once, placed again).
    pub fn to_device(&self, device: &Device) -> candle_core::Result<Self> {
        Self::new((*self.host).clone(), self.bias.clone(), device)
    }

    /// `[m, k]`: outputs, inputs.
    pub fn shape(&self) -> [usize; 2] {
        self.host.shape()
    }

    /// The type the weight is stored in: f16 or bf16.
    pub fn dtype(&self) -> DType {
        self.host.dtype()
    }

    /// Nonzero weights kept.
    pub fn nnz(&self) -> usize {
        self.host.nnz()
    }

    /// The pruned weight as a dense `[m, k]` tensor (in [`dtype`](Self::dtype), on the
    /// layer's device): what the layer multiplies by.
    pub fn dense_weight(&self) -> candle_core::Result<Tensor> {
        self.host.dense(&self.device)
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `y [..., m] = x [..., k] · wᵀ + bias` in `x`'s type. On the CPU, f16, bf16 and f32 `x`
    /// are read as they are (other float types through f32) and products summed in f32; on
    /// CUDA, `x` is converted to the weight's type (the kernels multiply 16-bit operands,
    /// summing in f32) and the result back to `x`'s. A non-contiguous `x` is copied first.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let [m, k] = self.host.shape();
        let dims = x.dims();
        if dims.last() != Some(&k) {
            return Err(Error::Shape {
                what: "x",
                expected: format!("[..., k] with k = {k}"),
                got: format!("{dims:?}"),
            }
            .into());
        }
        if !x.device().same_device(&self.device) {
            return Err(Error::DeviceMismatch {
                what: "x",
                expected: format!("{:?}", self.device.location()),
                got: format!("{:?}", x.device().location()),
            }
            .into());
        }
        if !x.dtype().is_float() {
            return Err(Error::invalid("x", "a float tensor", format!("{:?}", x.dtype())).into());
        }
        let compute = match (&*self.placed, x.dtype()) {
            (Placed::Cpu(_), DType::F16 | DType::BF16 | DType::F32) => x.dtype(),
            (Placed::Cpu(_), _) => DType::F32,
            #[cfg(feature = "candle-cuda")]
            (Placed::Cuda(_), _) => self.host.dtype(),
        };
        let x_in = aligned_contiguous(&x.to_dtype(compute)?)?;
        let op = Multiply {
            placed: self.placed.clone(),
            m,
        };
        let y = x_in
            .apply_op1_arc(Arc::new(Box::new(op)))?
            .to_dtype(x.dtype())?;
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }
}

impl Module for SparseLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        SparseLinear::forward(self, x)
    }
}

/// Pruned and compressed in `T`.
fn compress<T: crate::element::Float16 + WithDType>(
    weight: &Tensor,
    m: usize,
    k: usize,
    rule: Prune,
) -> candle_core::Result<Bitmap<T>> {
    let dense = host_vec::<T>(weight)?;
    let pruned = prune(&dense, m, k, rule.sparsity, rule.scope)?;
    Ok(Bitmap::encode(&pruned, m, k)?)
}

/// The multiply as a candle op on `x [..., k]` (contiguous).
struct Multiply {
    placed: Arc<Placed>,
    m: usize,
}

impl Multiply {
    fn output_shape(&self, x: &Layout) -> Shape {
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("x has a last dimension") = self.m;
        Shape::from(dims)
    }
}

impl CustomOp1 for Multiply {
    fn name(&self) -> &'static str {
        "tilefuse-sparse-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        #[cfg_attr(not(feature = "candle-cuda"), allow(irrefutable_let_patterns))]
        let Placed::Cpu(w) = &*self.placed else {
            candle_core::bail!("tilefuse SparseLinear: x is on the CPU, the layer is not");
        };
        let y = match storage {
            CpuStorage::F16(_) => CpuStorage::F16(multiply_cpu::<f16>(w, storage, layout)?),
            CpuStorage::BF16(_) => CpuStorage::BF16(multiply_cpu::<bf16>(w, storage, layout)?),
            CpuStorage::F32(_) => CpuStorage::F32(multiply_cpu::<f32>(w, storage, layout)?),
            other => candle_core::bail!(
                "tilefuse SparseLinear: x in f16, bf16 or f32, got {:?}",
                other.dtype()
            ),
        };
        Ok((y, self.output_shape(layout)))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let Placed::Cuda(w) = &*self.placed else {
            candle_core::bail!("tilefuse SparseLinear: x is on a CUDA device, the layer is not");
        };
        Ok((w.multiply(storage, layout)?, self.output_shape(layout)))
    }
}

fn multiply_cpu<T: WithDType + CpuElement>(
    w: &CpuWeight,
    storage: &CpuStorage,
    layout: &Layout,
) -> candle_core::Result<Vec<T>> {
    let x = cpu_slice::<T>(storage, layout)?;
    let mut y = vec![T::zero(); x.len() / w.k() * w.m()];
    w.multiply(x, &mut y)?;
    Ok(y)
}

#[cfg(feature = "candle-cuda")]
mod cuda {
    //! The layer on a CUDA device: the bitmap kernel on candle's stream.

    use std::sync::Mutex;

    use candle_core::{CudaDevice, CudaStorage, Layout};
    use half::{bf16, f16};

    use super::HostWeight;
    use crate::backend::cuda::Cuda;
    use crate::element::Float16;
    use crate::spmm::cuda::{DeviceBitmap, SpmmWorkspace, spmm_with_workspace};

    enum Uploaded {
        F16(DeviceBitmap<f16>),
        Bf16(DeviceBitmap<bf16>),
    }

    /// The uploaded weight, the handle on the device's stream and split-K's workspace.
    pub(super) struct CudaWeight {
        cuda: Cuda,
        weight: Uploaded,
        workspace: Mutex<SpmmWorkspace>,
    }

    impl CudaWeight {
        pub fn upload(host: &HostWeight, device: &CudaDevice) -> candle_core::Result<Self> {
            let cuda = super::super::cuda::handle(device)?;
            let weight = match host {
                HostWeight::F16(w) => Uploaded::F16(DeviceBitmap::upload(&cuda, w)?),
                HostWeight::Bf16(w) => Uploaded::Bf16(DeviceBitmap::upload(&cuda, w)?),
            };
            Ok(CudaWeight {
                cuda,
                weight,
                workspace: Mutex::new(SpmmWorkspace::new()),
            })
        }

        /// `y = x · wᵀ` for contiguous `x` in the weight's type, enqueued on the stream.
        pub fn multiply(
            &self,
            x: &CudaStorage,
            layout: &Layout,
        ) -> candle_core::Result<CudaStorage> {
            match &self.weight {
                Uploaded::F16(w) => self.multiply_as::<f16>(w, x, layout),
                Uploaded::Bf16(w) => self.multiply_as::<bf16>(w, x, layout),
            }
        }

        fn multiply_as<T>(
            &self,
            w: &DeviceBitmap<T>,
            x: &CudaStorage,
            layout: &Layout,
        ) -> candle_core::Result<CudaStorage>
        where
            T: Float16
                + cudarc::driver::DeviceRepr
                + candle_core::cuda_backend::CudaDType
                + cudarc::driver::ValidAsZeroBits,
        {
            let len = layout.shape().elem_count();
            let x_view = super::super::cuda::view::<T>(x, layout, len)?;
            let y_len = len / w.k() * w.m();
            let mut y = x.device.alloc_zeros::<T>(y_len)?;
            let mut workspace = self
                .workspace
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            spmm_with_workspace(&self.cuda, w, &x_view, &mut y, &mut workspace)?;
            Ok(CudaStorage::wrap_cuda_slice(y, x.device.clone()))
        }
    }
}
