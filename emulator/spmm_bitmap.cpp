// The bitmap spmm kernels (cuda/spmm_bitmap.cu) compiled for the CPU emulator, which fill
// their stages with bulk copies as on sm_90, and the same kernels with the cp.async fill that
// sm_80-89 compile (tilefuse_spmm_bitmap_async_...), for the tests.
#include "spmm_bitmap.cu"

#define TF_SPMM_BITMAP_ASYNC(in, n, out, In, OutF32)                                               \
    extern "C" void tilefuse_spmm_bitmap_async_##in##_n##n##_##out(const TfSpmmBitmapParams p) { \
        spmm_bitmap::spmm<tf::In, n, OutF32, false>(p);                                            \
    }
#define TF_SPMM_BITMAP_ASYNC_ALL(n)                  \
    TF_SPMM_BITMAP_ASYNC(f16, n, same, F16, false)   \
    TF_SPMM_BITMAP_ASYNC(f16, n, f32, F16, true)     \
    TF_SPMM_BITMAP_ASYNC(bf16, n, same, BF16, false) \
    TF_SPMM_BITMAP_ASYNC(bf16, n, f32, BF16, true)

TF_SPMM_BITMAP_ASYNC_ALL(8)
TF_SPMM_BITMAP_ASYNC_ALL(16)
TF_SPMM_BITMAP_ASYNC_ALL(32)
TF_SPMM_BITMAP_ASYNC_ALL(64)

TF_EMULATOR_ENTRY(spmm_bitmap, TfSpmmBitmapParams)
