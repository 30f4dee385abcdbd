// The 16-bit element types the kernels are instantiated for: the mma.sync that takes them and
// the conversions from f32 (one value, or a pair packed into one 32-bit register) and back.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "mma.cuh"

namespace tf {

struct F16 {
    using T = __half;
    static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4],
                                               const uint32_t (&b)[2]) {
        mma_m16n8k16_f16_f32(d, a, b);
    }
    static __device__ __forceinline__ T from_float(float v) { return __float2half_rn(v); }
    static __device__ __forceinline__ float to_float(uint16_t bits) {
        return __half2float(__ushort_as_half(bits));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
};

struct BF16 {
    using T = __nv_bfloat16;
    static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4],
                                               const uint32_t (&b)[2]) {
        mma_m16n8k16_bf16_f32(d, a, b);
    }
    static __device__ __forceinline__ T from_float(float v) { return __float2bfloat16_rn(v); }
    static __device__ __forceinline__ float to_float(uint16_t bits) {
        return __uint_as_float(uint32_t(bits) << 16);
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
};

}  // namespace tf
