//! The plumbing test: `c = a · bᵀ` with f16 operands and f32 results, on every backend.
//!
//! It is deliberately small: the CUDA kernel is one warp per 16x8 tile through `ldmatrix` and
//! `mma.sync.m16n8k16`, the WGSL shader a 16x16 tiled matmul in workgroup memory. If a fatbin,
//! the kernel ABI, a launch, a pipeline or a readback is wrong, this op shows it first.
//!
//! Layouts follow the rest of the crate (the nn.Linear convention of [`spmm`](crate)):
//! `a [m, k]`, `b [n, k]` and `c [m, n]`, all row-major.
//!
//! ```
//! use half::f16;
//! use tilefuse::smoke::{MatmulShape, reference};
//!
//! let shape = MatmulShape::new(2, 1, 3)?;
//! let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0].map(f16::from_f32);
//! let b = [1.0, 0.0, -1.0].map(f16::from_f32);
//! assert_eq!(reference(&a, &b, shape)?, vec![-2.0, -2.0]);
//! # Ok::<(), tilefuse::Error>(())
//! ```
//!
//! On CUDA the op enqueues on the handle's stream and returns; reading `c` back waits for it:
//!
//! ```no_run
//! # #[cfg(feature = "cuda")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tilefuse::backend::cuda::Cuda;
//! use tilefuse::smoke::{self, MatmulShape};
//!
//! let cuda = Cuda::new(0)?;
//! let stream = cuda.stream();
//! let shape = MatmulShape::new(64, 16, 256)?;
//! let a = stream.clone_htod(&vec![half::f16::ONE; 64 * 256])?;
//! let b = stream.clone_htod(&vec![half::f16::ONE; 16 * 256])?;
//! let mut c = stream.alloc_zeros::<f32>(64 * 16)?;
//! smoke::cuda::matmul(&cuda, &a, &b, &mut c, shape)?; // enqueued, not waited for
//! assert_eq!(stream.clone_dtoh(&c)?[0], 256.0);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "cuda"))]
//! # fn main() {}
//! ```

mod bench;
mod check;
#[cfg(feature = "cuda")]
pub mod cuda;
mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use check::{ENTRY, check};
pub use reference::reference;

use crate::error::{Error, Result};

/// The sizes of `c [m, n] = a [m, k] · b [n, k]ᵀ`, validated by [`MatmulShape::new`] (the
/// fields are private so that every shape a kernel sees has been checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulShape {
    m: usize,
    n: usize,
    k: usize,
}

impl MatmulShape {
    /// A shape with every size at least 1 and every matrix under 2³¹ elements (the kernels
    /// index with 32-bit integers and step k without overflow).
    pub fn new(m: usize, n: usize, k: usize) -> Result<Self> {
        for (what, size) in [("m", m), ("n", n), ("k", k)] {
            if size == 0 {
                return Err(Error::invalid(what, "a size of at least 1", size));
            }
        }
        for (what, rows, cols) in [("a", m, k), ("b", n, k), ("c", m, n)] {
            if rows
                .checked_mul(cols)
                .is_none_or(|len| len > i32::MAX as usize)
            {
                return Err(Error::invalid(
                    what,
                    "fewer than 2^31 elements",
                    format!("[{rows}, {cols}]"),
                ));
            }
        }
        Ok(MatmulShape { m, n, k })
    }

    /// Rows of `a` and `c`.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Rows of `b`, columns of `c`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Columns of `a` and `b`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// `(m, n, k)` as the kernels take them; [`MatmulShape::new`] keeps each under 2³¹.
    pub(crate) fn as_u32(&self) -> (u32, u32, u32) {
        (self.m as u32, self.n as u32, self.k as u32)
    }

    /// Checks that the three buffers have the lengths this shape needs.
    pub(crate) fn check_lengths(&self, a: usize, b: usize, c: usize) -> Result<()> {
        for (what, expected, got) in [
            ("a", self.m * self.k, a),
            ("b", self.n * self.k, b),
            ("c", self.m * self.n, c),
        ] {
            if expected != got {
                return Err(Error::Length {
                    what,
                    expected,
                    got,
                });
            }
        }
        Ok(())
    }
}
