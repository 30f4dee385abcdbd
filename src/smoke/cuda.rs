//! The smoke op on CUDA.

use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::f16;

use super::MatmulShape;
use crate::backend::abi::{TF_SMOKE_WARPS, TfSmokeMmaParams};
use crate::backend::cuda::{Cuda, Kernel, LaunchShape, ids};
use crate::error::{Error, Result};

const KERNEL: Kernel = ids::smoke::MMA;

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
    let launch = MatmulLaunch::new(shape)?;
    let mut args = cuda.args();
    let params = launch.params(args.read(a), args.read(b), args.write(c));
    // SAFETY: TfSmokeMmaParams is the kernel's parameter struct; the addresses come from
    // `args`, all three buffers are on this context (checked above), and their lengths equal
    // m*k, n*k and m*n (checked above), which is exactly what the kernel indexes (it guards
    // every access with row < m, col < n, k-index < k). MatmulShape keeps each product under
    // 2^32, so the kernel's 32-bit tile arithmetic does not overflow.
    unsafe { cuda.launch(KERNEL, launch.shape, &params, args) }
}

/// One launch of the smoke kernel, described once for [`matmul`] and the emulator's test.
struct MatmulLaunch {
    matmul: MatmulShape,
    /// One warp per 16 x 8 tile of c.
    shape: LaunchShape,
}

impl MatmulLaunch {
    fn new(matmul: MatmulShape) -> Result<Self> {
        let tiles = matmul.m().div_ceil(16) * matmul.n().div_ceil(8);
        let blocks = tiles.div_ceil(TF_SMOKE_WARPS as usize);
        if blocks > i32::MAX as usize {
            return Err(Error::DeviceLimit {
                what: "smoke matmul grid",
                limit_name: "max grid x",
                needed: blocks as u64,
                limit: i32::MAX as u64,
            });
        }
        Ok(MatmulLaunch {
            matmul,
            shape: LaunchShape::linear(blocks as u32, TF_SMOKE_WARPS * 32),
        })
    }

    /// The kernel's parameters for buffers a, b and c.
    fn params(&self, a: u64, b: u64, c: u64) -> TfSmokeMmaParams {
        let (m, n, k) = self.matmul.as_u32();
        TfSmokeMmaParams {
            a,
            b,
            c,
            m,
            n,
            k,
            reserved: 0,
        }
    }
}

#[cfg(test)]
mod emulated {
    //! cuda/smoke.cu run by the CPU emulator ([`crate::backend::emulator`]).

    use super::*;
    use crate::backend::emulator::{Emulator, Guarded, Launch, Order};
    use crate::harness::{Tolerance, compare};
    use crate::smoke::check::inputs;
    use crate::smoke::reference::reference;

    #[test]
    fn ragged_shapes_in_every_order() {
        let Some(emulator) = Emulator::get() else {
            return;
        };
        let shapes = [(1, 1, 1), (16, 8, 16), (37, 21, 100), (70, 9, 33)];
        for ((m, n, k), order) in shapes.into_iter().zip([
            Order::Threads,
            Order::Reverse,
            Order::Shuffled(5),
            Order::Threads,
        ]) {
            let shape = MatmulShape::new(m, n, k).unwrap();
            let (a, b) = inputs(shape, 9);
            let (mut ga, mut gb) = (Guarded::new(&a), Guarded::new(&b));
            let mut c = Guarded::new(&vec![f32::NAN; m * n]);
            let launch = MatmulLaunch::new(shape).unwrap();
            let params = launch.params(ga.address(), gb.address(), c.address());
            let launch = Launch::new(launch.shape, order);
            // SAFETY: as in `matmul`: a, b and c hold m·k, n·k and m·n values and live until
            // the launch returns.
            unsafe { emulator.launch(KERNEL, &params, &launch) }.unwrap();
            let c = c.read("c").unwrap();
            let comparison = compare(&c, &reference(&a, &b, shape).unwrap(), Tolerance::F32);
            assert!(comparison.passed(), "{shape:?} {order:?}: {comparison}");
        }
    }
}
