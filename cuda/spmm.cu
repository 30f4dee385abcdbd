// The spmm kernels that ship: every input type, token count and output type, and the variant
// with a tile's first entries in registers. The kernel itself is cuda/spmm/kernel.cuh.
#include "spmm/kernel.cuh"

#define TF_SPMM_KERNEL(in, n, out, In, OutF32)                                             \
    extern "C" __global__ void __launch_bounds__(kThreads)                                 \
        tilefuse_spmm_tiledcsl_##in##_n##n##_##out(const __grid_constant__ TfSpmmParams p) { \
        spmm<In, n, OutF32>(p);                                                            \
    }
#define TF_SPMM_KERNELS(n)                           \
    TF_SPMM_KERNEL(f16, n, same, F16, false)         \
    TF_SPMM_KERNEL(f16, n, f32, F16, true)           \
    TF_SPMM_KERNEL(bf16, n, same, BF16, false)       \
    TF_SPMM_KERNEL(bf16, n, f32, BF16, true)

TF_SPMM_KERNELS(8)
TF_SPMM_KERNELS(16)
TF_SPMM_KERNELS(32)
TF_SPMM_KERNELS(64)

// The f16 kernels with a tile's first entries in registers (the benchmark times them beside
// the kernels above; BENCH.md). Without entry stages a block needs less shared memory, so an
// SM holds more blocks, as long as the registers allow as many (tilefuse info --ptxas).
#define TF_SPMM_REGISTERS(n)                                                                \
    extern "C" __global__ void __launch_bounds__(kThreads)                                 \
        tilefuse_spmm_registers_f16_n##n##_same(const __grid_constant__ TfSpmmParams p) {   \
        spmm<F16, n, false, kAll, kInRegisters>(p);                                        \
    }
TF_SPMM_REGISTERS(8)
TF_SPMM_REGISTERS(16)
TF_SPMM_REGISTERS(32)
TF_SPMM_REGISTERS(64)
