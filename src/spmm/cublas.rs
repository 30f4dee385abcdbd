//! The dense baseline of the SpMM benchmarks: cuBLAS fp16 GEMM on the same shapes, with the
//! weight rotated through enough copies to defeat the L2 cache.

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use half::f16;

use crate::error::{Error, Result};
use crate::harness::{Backend, Backends, Clock, Runner};

/// A runner of `y [n, m] = x [n, k] · wᵀ` through cuBLAS (`Ok(None)` off CUDA).
pub(crate) fn prepare(
    backends: &Backends,
    backend: Backend,
    m: usize,
    k: usize,
    n: usize,
    l2_defeat_bytes: usize,
) -> Result<Option<Runner<'_>>> {
    if backend != Backend::Cuda {
        return Ok(None);
    }
    let cuda = backends.cuda()?;
    // cudarc panics on use when libcublas cannot be loaded.
    if !crate::backend::cuda::CudaLibrary::Blas.present() {
        return Err(Error::CudaUnavailable {
            reason: "libcublas could not be loaded".into(),
        });
    }
    let blas = CudaBlas::new(cuda.stream().clone()).map_err(|e| Error::CudaUnavailable {
        reason: format!("cuBLAS: {e}"),
    })?;
    let copies = l2_defeat_bytes.div_ceil(2 * m * k).max(1);
    let weight = vec![f16::from_f32(0.01); m * k];
    let weights = (0..copies)
        .map(|_| cuda.upload(&weight))
        .collect::<Result<Vec<_>>>()?;
    let x = cuda.upload(&vec![f16::from_f32(0.5); n * k])?;
    let mut y = cuda.upload(&vec![f16::ZERO; n * m])?;
    let as_int =
        |v: usize| i32::try_from(v).map_err(|_| Error::invalid("gemm size", "below 2^31", v));
    // Column-major view: y is [m, n] with ld m, w is [k, m] (ld k) used transposed, x [k, n].
    let config = GemmConfig {
        transa: CUBLAS_OP_T,
        transb: CUBLAS_OP_N,
        m: as_int(m)?,
        n: as_int(n)?,
        k: as_int(k)?,
        alpha: f16::ONE,
        lda: as_int(k)?,
        ldb: as_int(k)?,
        beta: f16::ZERO,
        ldc: as_int(m)?,
    };
    let mut turn = 0;
    Ok(Some(Runner::new(Clock::Cuda(cuda), move || {
        turn = (turn + 1) % weights.len();
        // SAFETY: the weight copies hold m·k values, x n·k and y n·m, exactly what this
        // configuration reads and writes (lda = ldb = k, ldc = m); all live on this stream.
        unsafe { blas.gemm(config, &weights[turn], &x, &mut y) }
            .map_err(|e| Error::invalid("cuBLAS gemm", "success", e))
    })))
}
