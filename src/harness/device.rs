//! One trait over the GPU handles, so that each op's checks and benchmarks write their device
//! path once: buffers, upload, download, zeros and the clock that times them. Each op adds
//! its own calls in a trait of its own over this one, implemented for [`Cuda`] and [`Wgpu`]
//! by forwarding to the op's `cuda` and `wgpu` modules.

#[cfg(feature = "cuda")]
use crate::backend::cuda::Cuda;
#[cfg(feature = "wgpu")]
use crate::backend::wgpu::{GpuBuffer, Wgpu};
use crate::error::Result;
use crate::harness::Clock;

/// An element type that every GPU backend of this build stores.
#[cfg(feature = "cuda")]
pub(crate) trait Value: bytemuck::Pod + cudarc::driver::DeviceRepr {}
#[cfg(feature = "cuda")]
impl<T: bytemuck::Pod + cudarc::driver::DeviceRepr> Value for T {}
/// An element type that every GPU backend of this build stores.
#[cfg(not(feature = "cuda"))]
pub(crate) trait Value: bytemuck::Pod {}
#[cfg(not(feature = "cuda"))]
impl<T: bytemuck::Pod> Value for T {}

/// A GPU backend's handle, as the checks and benchmarks use it.
pub(crate) trait Device {
    /// A buffer of `T` on the device.
    type Buffer<T: Value>;
    /// A buffer holding `data`.
    fn upload<T: Value>(&self, data: &[T]) -> Result<Self::Buffer<T>>;
    /// `buffer`'s contents, once the work before it is done.
    fn download<T: Value>(&self, buffer: &Self::Buffer<T>) -> Result<Vec<T>>;
    /// A buffer of `len` zeros.
    fn zeros<T: Value>(&self, len: usize) -> Result<Self::Buffer<T>> {
        self.upload(&vec![T::zeroed(); len])
    }
    /// What times work submitted through this handle.
    fn clock(&self) -> Clock<'_>;
}

#[cfg(feature = "cuda")]
impl Device for Cuda {
    type Buffer<T: Value> = cudarc::driver::CudaSlice<T>;
    fn upload<T: Value>(&self, data: &[T]) -> Result<Self::Buffer<T>> {
        Cuda::upload(self, data)
    }
    fn download<T: Value>(&self, buffer: &Self::Buffer<T>) -> Result<Vec<T>> {
        Cuda::download(self, buffer)
    }
    fn clock(&self) -> Clock<'_> {
        Clock::Cuda(self)
    }
}

#[cfg(feature = "wgpu")]
impl Device for Wgpu {
    type Buffer<T: Value> = GpuBuffer<T>;
    fn upload<T: Value>(&self, data: &[T]) -> Result<Self::Buffer<T>> {
        Wgpu::upload(self, data)
    }
    fn download<T: Value>(&self, buffer: &Self::Buffer<T>) -> Result<Vec<T>> {
        Wgpu::download(self, buffer)
    }
    fn zeros<T: Value>(&self, len: usize) -> Result<Self::Buffer<T>> {
        Wgpu::zeros(self, len)
    }
    fn clock(&self) -> Clock<'_> {
        Clock::Wgpu(self)
    }
}

/// Evaluates `$body`, a `Result`, with `$device` bound to `$backend`'s handle in `$backends`
/// (`&Cuda` or `&Wgpu`): one generic body, compiled for each backend of this build. Gives
/// `Ok(Some(..))`, `Ok(None)` on the CPU (ops have no device path there), or why the backend
/// is missing.
macro_rules! on_device {
    ($backends:expr, $backend:expr, |$device:ident| $body:expr) => {
        match $backend {
            $crate::harness::Backend::Cpu => Ok(None),
            #[cfg(feature = "cuda")]
            $crate::harness::Backend::Cuda => {
                let $device = $backends.cuda()?;
                $body.map(Some)
            }
            #[cfg(feature = "wgpu")]
            $crate::harness::Backend::Wgpu => {
                let $device = $backends.wgpu()?;
                $body.map(Some)
            }
            #[allow(unreachable_patterns)]
            other => Err(other.not_compiled()),
        }
    };
}
pub(crate) use on_device;
