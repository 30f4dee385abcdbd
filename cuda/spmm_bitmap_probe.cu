// Benchmark-only probes of the bitmap spmm kernel's target configuration (f16, 16 tokens),
// built into their own fatbin with the `probes` feature, so that no user loads them: the
// kernel of cuda/spmm/bitmap.cuh with parts of its work left out. They are launched exactly
// as tilefuse_spmm_bitmap_f16_n16_same and write y = 0.
#include "spmm/bitmap.cuh"

#define TF_SPMM_BITMAP_PROBE(name, parts)                                                           \
    extern "C" __global__ void __launch_bounds__(spmm_bitmap::kThreads, 2)                         \
        tilefuse_spmm_bitmap_probe_##name##_f16_n16(const __grid_constant__ TfSpmmBitmapParams p) { \
        spmm_bitmap::spmm<tf::F16, 16, false, tf::kBulkCopies, spmm_bitmap::parts>(p);            \
    }
TF_SPMM_BITMAP_PROBE(loads, kLoads)
TF_SPMM_BITMAP_PROBE(no_mma, kDecode)
