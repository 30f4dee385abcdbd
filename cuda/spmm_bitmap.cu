// The bitmap spmm kernels: every input type, token count and output type. The kernel itself
// is cuda/spmm/bitmap.cuh; it fills its stages with bulk copies where the architecture has
// them (sm_90) and with cp.async before. Two blocks an SM: the plan sizes shared memory for
// that, and the launch bounds keep the registers within it.
#include "spmm/bitmap.cuh"

#define TF_SPMM_BITMAP_KERNEL(in, n, out, In, OutF32)                                             \
    extern "C" __global__ void __launch_bounds__(spmm_bitmap::kThreads, 2)                       \
        tilefuse_spmm_bitmap_##in##_n##n##_##out(const __grid_constant__ TfSpmmBitmapParams p) { \
        spmm_bitmap::spmm<tf::In, n, OutF32, tf::kBulkCopies>(p);                               \
    }
#define TF_SPMM_BITMAP_KERNELS(n)                          \
    TF_SPMM_BITMAP_KERNEL(f16, n, same, F16, false)         \
    TF_SPMM_BITMAP_KERNEL(f16, n, f32, F16, true)           \
    TF_SPMM_BITMAP_KERNEL(bf16, n, same, BF16, false)       \
    TF_SPMM_BITMAP_KERNEL(bf16, n, f32, BF16, true)

TF_SPMM_BITMAP_KERNELS(8)
TF_SPMM_BITMAP_KERNELS(16)
TF_SPMM_BITMAP_KERNELS(32)
TF_SPMM_BITMAP_KERNELS(64)
