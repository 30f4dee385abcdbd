//! The smoke op on CUDA.

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};
use half::f16;

use super::MatmulShape;
use crate::backend::abi::{TF_SMOKE_WARPS, TfSmokeMmaParams};
use crate::backend::cuda::{Cuda, Kernel};
use crate::error::{Error, Result};

const KERNEL: Kernel = Kernel {
    module: "smoke",
    name: "tilefuse_smoke_mma_f16_f32",
};

/// Enqueues `c = a · bᵀ` on `cuda`'s stream (one warp per 16x8 tile, Tensor Cores).
pub fn matmul(
    cuda: &Cuda,
    a: &impl DevicePtr<f16>,
    b: &impl DevicePtr<f16>,
    c: &mut impl DevicePtrMut<f32>,
    shape: MatmulShape,
) -> Result<()> {
    shape.check_lengths(a.len(), b.len(), c.len())?;
    cuda.check_device("a", a)?;
    cuda.check_device("b", b)?;
    cuda.check_device("c", c)?;
    let tiles = shape.m().div_ceil(16) * shape.n().div_ceil(8);
    let blocks = tiles.div_ceil(TF_SMOKE_WARPS as usize);
    if blocks > i32::MAX as usize {
        return Err(Error::DeviceLimit {
            what: "smoke matmul grid",
            limit_name: "max grid x",
            needed: blocks as u64,
            limit: i32::MAX as u64,
        });
    }
    let config = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (TF_SMOKE_WARPS * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (m, n, k) = shape.as_u32();
    let mut args = cuda.args();
    let params = TfSmokeMmaParams {
        a: args.read(a),
        b: args.read(b),
        c: args.write(c),
        m,
        n,
        k,
        reserved: 0,
    };
    // SAFETY: TfSmokeMmaParams is the kernel's parameter struct; the addresses come from
    // `args`, all three buffers are on this context (checked above), and their lengths equal
    // m*k, n*k and m*n (checked above), which is exactly what the kernel indexes (it guards
    // every access with row < m, col < n, k-index < k). MatmulShape keeps each product under
    // 2^32, so the kernel's 32-bit tile arithmetic does not overflow.
    unsafe { cuda.launch(KERNEL, config, &params, args) }
}
