//! tilefuse's ops as operations on [candle](https://docs.rs/candle-core) tensors, forward and
//! backward, and a sparse linear layer (feature `candle`; `candle-cuda` adds candle's CUDA
//! device).
//!
//! | item | what | backward |
//! |---|---|---|
//! | [`SparseLinear`] | `y = x · wᵀ + bias` with a pruned, compressed weight | no (inference) |
//! | [`block_sparse_attention`] | `softmax(q·kᵀ·scale + mask)·v` in candle's `[b, l, h, d]` layout | q, k, v |
//! | [`scan`] | `h[t] = reset[t] ? u[t] : a·h[t−1] + u[t]` | a, u, h0 |
//!
//! On candle's CPU device the ops run on the CPU (the sparse layer with a multithreaded f32
//! kernel, [`spmm::cpu`](crate::spmm::cpu); attention and the scan with the f64 reference
//! and its backward, rounded to the tensors' type). On a CUDA device (feature `candle-cuda`)
//! they run tilefuse's kernels on the device's own stream, after candle's work and before the
//! next, without synchronising, on candle's buffers without copies (except where a layout
//! needs one, as each function says). Errors are [`candle_core::Error`]s that carry
//! tilefuse's message whole ([`Error`](crate::Error) converts into one).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use tilefuse::attention::{BlockMask, MaskShape};
//! use tilefuse::candle::{Prune, SparseLinear, block_sparse_attention, scan};
//!
//! # fn main() -> candle_core::Result<()> {
//! let device = Device::Cpu;
//! // A 64 -> 32 layer keeping a fifth of its weights.
//! let weight = Tensor::randn(0f32, 1.0, (32, 64), &device)?;
//! let layer = SparseLinear::from_weight(&weight, None, Prune::per_row(0.8))?;
//! let y = layer.forward(&Tensor::randn(0f32, 1.0, (2, 5, 64), &device)?)?;
//! assert_eq!(y.dims(), [2, 5, 32]);
//!
//! // Causal attention over [b, l, h, d].
//! let q = Tensor::randn(0f32, 1.0, (1, 100, 2, 64), &device)?;
//! let mask = BlockMask::causal(MaskShape::new(100, 100))?;
//! let o = block_sparse_attention(&q, &q, &q, &mask, 0.125)?;
//! assert_eq!(o.dims(), [1, 100, 2, 64]);
//!
//! // A real scan over [b, t, p] with a reset at t = 2.
//! let a = Tensor::new(&[0.5f32], &device)?;
//! let u = Tensor::ones((1, 4, 1), DType::F32, &device)?;
//! let reset = Tensor::new(&[[0u8, 0, 1, 0]], &device)?;
//! let h = scan(&a, &u, &reset, None)?;
//! assert_eq!(h.flatten_all()?.to_vec1::<f32>()?, [1.0, 1.5, 1.0, 1.5]);
//! # Ok(())
//! # }
//! ```

mod attention;
mod linear;
mod scan;

pub use attention::{block_sparse_attention, block_sparse_attention_with_lse};
pub use linear::{Prune, SparseLinear};
pub use scan::scan;

use candle_core::{CpuStorage, Layout, Tensor, WithDType};

impl From<crate::Error> for candle_core::Error {
    /// Wraps the error; its message is tilefuse's, unchanged.
    fn from(error: crate::Error) -> Self {
        candle_core::Error::wrap(error)
    }
}

/// The elements of a contiguous tensor's CPU storage, or the error saying what came instead.
fn cpu_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg("tilefuse: expected a contiguous tensor"))?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// `t` itself when contiguous from an element that is a multiple of 8 (16 bytes and more:
/// what the kernels' vector loads need), else a contiguous copy.
fn aligned_contiguous(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.is_contiguous() && t.layout().start_offset().is_multiple_of(8) {
        Ok(t.clone())
    } else {
        t.force_contiguous()
    }
}

/// The values of a tensor (any device, any layout) as a host vector of `T`.
fn host_vec<T: WithDType>(tensor: &Tensor) -> candle_core::Result<Vec<T>> {
    tensor.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()
}

#[cfg(feature = "candle-cuda")]
mod cuda {
    //! The tilefuse CUDA handle on a candle device's stream.

    use std::sync::{Mutex, PoisonError};

    use candle_core::CudaDevice;
    use candle_core::{CudaStorage, Layout};
    use cudarc::driver::{CudaSlice, CudaView, DeviceRepr};

    use crate::backend::cuda::Cuda;

    /// The handle that enqueues on `device`'s stream. Handles are kept (one per candle device)
    /// so that the kernels a context loaded stay loaded between calls.
    pub(super) fn handle(device: &CudaDevice) -> candle_core::Result<Cuda> {
        static HANDLES: Mutex<Vec<(candle_core::cuda_backend::DeviceId, Cuda)>> =
            Mutex::new(Vec::new());
        let mut handles = HANDLES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, cuda)) = handles.iter().find(|(id, _)| *id == device.id()) {
            return Ok(cuda.clone());
        }
        let cuda = Cuda::from_stream(device.cuda_stream())?;
        handles.push((device.id(), cuda.clone()));
        Ok(cuda)
    }

    /// The elements `start..start + len` of a tensor's CUDA storage.
    pub(super) fn view<'a, T: candle_core::cuda_backend::CudaDType + DeviceRepr>(
        storage: &'a CudaStorage,
        layout: &Layout,
        len: usize,
    ) -> candle_core::Result<CudaView<'a, T>> {
        let slice: &CudaSlice<T> = storage.as_cuda_slice::<T>()?;
        let start = layout.start_offset();
        slice.try_slice(start..start + len).ok_or_else(|| {
            candle_core::Error::msg(format!(
                "tilefuse: elements {start}..{} past the storage's {}",
                start + len,
                slice.len()
            ))
        })
    }
}
