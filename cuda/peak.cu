// The Tensor-Core rate of mma.sync: independent chains of m16n8k16 on register operands, no
// memory traffic but one store per thread at the end. Operands come from the parameters so
// that nothing folds at compile time.
#include "abi.h"
#include "common/mma.cuh"

extern "C" __global__ void __launch_bounds__(TF_PEAK_THREADS)
    tilefuse_peak_mma_f16(const __grid_constant__ TfPeakMmaParams p) {
    const uint32_t a2 = uint32_t(p.a_value) * 0x10001u;  // two f16 copies per register
    const uint32_t b2 = uint32_t(p.b_value) * 0x10001u;
    const uint32_t a[4] = {a2, a2, a2, a2};
    const uint32_t b[2] = {b2, b2};
    float acc[TF_PEAK_CHAINS][4] = {};
    for (uint32_t i = 0; i < p.iterations; ++i) {
#pragma unroll
        for (int c = 0; c < TF_PEAK_CHAINS; ++c) tf::mma_m16n8k16_f16_f32(acc[c], a, b);
    }
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < TF_PEAK_CHAINS; ++c) sum += acc[c][0] + acc[c][1] + acc[c][2] + acc[c][3];
    reinterpret_cast<float *>(p.out)[size_t(blockIdx.x) * blockDim.x + threadIdx.x] = sum;
}
