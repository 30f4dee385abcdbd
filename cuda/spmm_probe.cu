// Benchmark-only probes of spmm's target configuration (f16, 16 tokens), built into their
// own fatbin with the `probes` feature, so that no user loads them: the kernel of
// cuda/spmm/kernel.cuh with parts of its work left out. They are launched exactly as
// tilefuse_spmm_tiledcsl_f16_n16_same and write y = 0.
#include "spmm/kernel.cuh"

// Probes of the benchmark's target configuration (f16, 16 tokens): the loads, waits and
// barriers alone; with the scatter; with the scatter and the zeroing (all but the mma).
#define TF_SPMM_PROBE(name, parts)                                                          \
    extern "C" __global__ void __launch_bounds__(kThreads)                                 \
        tilefuse_spmm_probe_##name##_f16_n16(const __grid_constant__ TfSpmmParams p) {       \
        spmm<F16, 16, false, parts>(p);                                                    \
    }
TF_SPMM_PROBE(loads, kLoads)
TF_SPMM_PROBE(scatter, kScatter)
TF_SPMM_PROBE(no_mma, kScatter | kClear)
