// mbarrier-guarded copies into shared memory: the barriers (sm_80+), cp.async copies that
// arrive on one when they land (sm_80+), and bulk copies (cp.async.bulk, the TMA's 1-D form)
// that complete its transaction count (sm_90+).
//
// An mbarrier counts the arrivals of its current phase; the phase completes when all the
// arrivals it was initialised for have come and every byte announced by expect_tx has landed,
// and the next phase begins. A thread waits for the phase of a given parity to complete.
#pragma once

#include <cstdint>

namespace tf {

#ifndef TF_EMULATE  // the CPU emulator (emulator/cuda.h) defines what follows for tests

// Initialises the mbarrier at shared address `bar` for `count` arrivals a phase.
__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// Makes initialised mbarriers visible to the other threads' and the copy engine's operations
// on them (after mbarrier_init, before the barrier that publishes them).
__device__ __forceinline__ void mbarrier_init_fence() {
#if __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// One arrival of the calling thread (release: its earlier writes are seen by whoever waits
// for the phase).
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
    asm volatile("{\n .reg .b64 state;\n mbarrier.arrive.shared.b64 state, [%0];\n}\n" ::"r"(bar)
                 : "memory");
}

// Whether the phase of parity `parity` of the mbarrier at `bar` has completed (acquire).
__device__ __forceinline__ bool mbarrier_test_parity(uint32_t bar, uint32_t parity) {
    uint32_t done;
#if __CUDA_ARCH__ >= 900
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
#else
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.test_wait.parity.shared.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
#endif
    return done != 0;
}

// Waits until the phase of parity `parity` of the mbarrier at `bar` has completed.
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, uint32_t parity) {
    while (!mbarrier_test_parity(bar, parity)) {
    }
}

// The calling thread's cp.async copies issued so far arrive on the mbarrier at `bar` when they
// have all landed (this adds a pending arrival that their landing removes, so the thread
// still arrives itself).
__device__ __forceinline__ void cp_async_mbarrier_arrive(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.shared.b64 [%0];\n" ::"r"(bar) : "memory");
}

// Whether this compilation targets an architecture with bulk copies (the two functions below
// trap on others; kernels call them only where this is true).
#if __CUDA_ARCH__ >= 900
constexpr bool kBulkCopies = true;
#else
constexpr bool kBulkCopies = false;
#endif

// Announces `bytes` that bulk copies will land in the current phase of the mbarrier at `bar`.
__device__ __forceinline__ void mbarrier_expect_tx(uint32_t bar, uint32_t bytes) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
#else
    __trap();
#endif
}

// Copies `bytes` (a multiple of 16, both addresses 16-byte aligned) from global `src` to
// shared `dst`, completing that many bytes of the mbarrier at `bar`'s transaction count.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void *src, uint32_t bytes,
                                          uint32_t bar) {
#if __CUDA_ARCH__ >= 900
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
            "r"(dst),
        "l"(src), "r"(bytes), "r"(bar)
        : "memory");
#else
    __trap();
#endif
}

#endif  // TF_EMULATE

}  // namespace tf
