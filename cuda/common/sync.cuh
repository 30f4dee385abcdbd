// Flags between blocks: a release store, and an acquire load or a relaxed one and a fence, at
// GPU scope (sm_70+).
#pragma once

#include <cstdint>

namespace tf {

#ifndef TF_EMULATE  // the CPU emulator (emulator/cuda.h) defines these for tests

__device__ __forceinline__ uint32_t load_acquire(const uint32_t *flag) {
    uint32_t value;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(value) : "l"(flag) : "memory");
    return value;
}

// A relaxed load at GPU scope, for spinning on a flag: the poll then orders what it reads
// after the flag with one fence_acquire, not an acquire per iteration.
__device__ __forceinline__ uint32_t load_relaxed(const uint32_t *flag) {
    uint32_t value;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(value) : "l"(flag) : "memory");
    return value;
}

__device__ __forceinline__ void fence_acquire() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

__device__ __forceinline__ void store_release(uint32_t *flag, uint32_t value) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(flag), "r"(value) : "memory");
}

#endif  // TF_EMULATE

}  // namespace tf
