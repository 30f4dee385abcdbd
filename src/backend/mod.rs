//! Backend plumbing shared by every op: the CUDA and wgpu handles, the embedded kernels and
//! the kernel ABI.
//!
//! Ops never talk to cudarc or wgpu directly for setup: they take a [`cuda::Cuda`] or
//! [`wgpu::Wgpu`] handle, validate their arguments, and go through one launch (CUDA) or
//! dispatch (wgpu) helper.

#[allow(missing_docs, non_camel_case_types, dead_code)]
pub(crate) mod abi;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(all(test, feature = "cuda"))]
pub(crate) mod emulator;
pub mod kernels;
#[cfg(feature = "wgpu")]
pub mod wgpu;
