//! # tilefuse
//!
//! GPU kernels for sparse and state-space models, each with three implementations that
//! compute the same function:
//!
//! | op | what |
//! |---|---|
//! | `spmm` | unstructured-sparse weight x dense activations (Flash-LLM's Load-as-Sparse, Compute-as-Dense) |
//! | `attention` | block-sparse attention forward with FlexAttention-style block masks |
//! | `scan` | parallel diagonal linear recurrence with hidden-state resets (S4/S5) |
//!
//! - **CUDA** ([`backend::cuda`], feature `cuda`): Tensor-Core kernels compiled by `build.rs`
//!   with nvcc and embedded as fatbins; loaded through cudarc's driver API, so programs need
//!   only the NVIDIA driver at run time. Ops take cudarc buffers and enqueue on a stream the
//!   caller may supply ([`Cuda::from_stream`](backend::cuda::Cuda::from_stream)).
//! - **WGSL** ([`backend::wgpu`], feature `wgpu`): the same functions on any Vulkan, Metal
//!   or DX12 adapter, including Mesa's lavapipe on a CPU.
//! - **CPU reference**: plain f64 loops, the executable specification every path is tested
//!   against ([`harness`]).
//!
//! The ops: [`spmm`], [`scan`] and [`attention`] (its CUDA kernel awaits its first GPU run);
//! [`smoke`] is the plumbing test that proves each backend end to end. With the `candle`
//! feature, `tilefuse::candle` wraps them as candle operations.
//!
//! ## Errors
//!
//! Every entry point validates shapes, lengths, devices and limits before launching, and
//! returns an [`Error`] naming the argument, what was expected and what came. No input reachable
//! from safe code panics, reads or writes out of bounds, or hangs.
//!
//! ## Feature flags
//!
//! - `cuda` (default): the CUDA backend (cudarc). Without nvcc at build time the crate still
//!   builds; [`Cuda::new`](backend::cuda::Cuda::new) then says why it is unavailable.
//! - `wgpu` (default): the WGSL backend (wgpu 30).
//! - `cli` (default): the `tilefuse` command-line tool; libraries depending on tilefuse
//!   usually turn it off.
//! - `probes`: benchmark-only spmm probe kernels, in a fatbin of their own that no op loads.
//! - `candle`: `tilefuse::candle`, the ops as operations on candle tensors (forward and
//!   backward) and a sparse linear layer, on candle's CPU device; `candle-cuda` adds candle's
//!   CUDA device (candle builds its own kernels with nvcc).
#![warn(missing_docs)]
// docs.rs (`--cfg docsrs`, nightly): feature-gated items say which feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without a GPU backend, the backend arguments of the harness and the ops' device paths
// (written once for every backend) have nothing to do.
#![cfg_attr(
    not(any(feature = "cuda", feature = "wgpu")),
    allow(unused_variables, unused_imports, dead_code)
)]
// The guides link to both backends' items; with one of them left out, those links name
// nothing and render as plain text.
#![cfg_attr(
    not(all(feature = "cuda", feature = "wgpu")),
    allow(rustdoc::broken_intra_doc_links)
)]

pub mod attention;
pub mod backend;
#[cfg(feature = "candle")]
#[cfg_attr(docsrs, doc(cfg(feature = "candle")))]
pub mod candle;
pub mod element;
mod error;
pub mod harness;
pub mod scan;
pub mod smoke;
pub mod spmm;

pub use error::{Error, Result};
