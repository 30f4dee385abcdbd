//! Unstructured-sparse weight x dense activations, Load-as-Sparse / Compute-as-Dense
//! (Flash-LLM, VLDB 2024): `y [n, m] = x [n, k] · wᵀ` with a sparse weight `w [m, k]` (the
//! nn.Linear layout) and skinny activations `x` (n tokens of a decode batch).
//!
//! The weight is encoded once into [`TiledCsl`] or [`Bitmap`] (8 x 8 masks in the `mma.sync`
//! fragment order), from dense after [`prune`] if wanted, uploaded once
//! ([`cuda::DeviceTiledCsl`], [`cuda::DeviceBitmap`], [`wgpu::GpuTiledCsl`],
//! [`wgpu::GpuBitmap`]) or compressed for the CPU ([`cpu::CpuWeight`]), and multiplied by new
//! activations at every step, with split-K's scratch memory kept from step to step in a
//! workspace ([`cuda::SpmmWorkspace`], [`wgpu::SpmmWorkspace`]). f16 or bf16 operands, f32
//! accumulation, output in the weight's type or f32 ([`OutputElement`](crate::element::OutputElement)).
//!
//! ```
//! use half::f16;
//! use tilefuse::spmm::{TiledCsl, reference};
//!
//! // w = [[1, 0, 2], [0, 0, 3]], x = [[1, 1, 1]]: y = [[3, 3]].
//! let w = [1.0, 0.0, 2.0, 0.0, 0.0, 3.0].map(f16::from_f32);
//! let w = TiledCsl::encode(&w, 2, 3)?;
//! assert_eq!(w.stats().nnz, 3);
//! assert_eq!(reference(&w, &[f16::ONE; 3])?, vec![3.0, 3.0]);
//! # Ok::<(), tilefuse::Error>(())
//! ```

mod bench;
mod bitmap;
pub(crate) mod check;
#[cfg(feature = "cli")]
mod cli;
pub mod cpu;
#[cfg(all(feature = "cuda", feature = "cli"))]
mod cublas;
#[cfg(feature = "cuda")]
pub mod cuda;
mod format;
mod reference;
mod saved;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use bitmap::{Bitmap, BitmapStats, UNIT_K, UNIT_M};
pub use check::{Case, ENTRY, Pattern, check, run, tolerance, weight};
pub use format::{Pruning, TILE_K, TILE_M, TiledCsl, TiledCslStats, prune};
pub use reference::{SparseWeight, reference};
#[cfg(feature = "candle")]
pub(crate) use saved::{format_and_dtype, read as read_saved};

/// The sparse formats a weight goes to a device in (the CLI's `--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum SparseFormat {
    /// Flash-LLM's Tiled-CSL ([`TiledCsl`]).
    #[cfg_attr(feature = "cli", value(name = "tiled-csl", alias = "tiledcsl"))]
    TiledCsl,
    /// 8 x 8 bitmaps in `mma.sync` fragment order ([`Bitmap`]).
    Bitmap,
}

impl SparseFormat {
    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            SparseFormat::TiledCsl => "tiled-csl",
            SparseFormat::Bitmap => "bitmap",
        }
    }
}
