// Warp-level Tensor Core helpers shared by every kernel: shared-memory addresses, ldmatrix and
// mma.sync.m16n8k16 with f32 accumulation (sm_80+).
#pragma once

#include <cuda_fp16.h>
#include <cstdint>

namespace tf {

__device__ __forceinline__ uint32_t smem_addr(const void *ptr) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows][Values] 16-bit shared-memory
// tile whose chunks are XOR-swizzled by row % 8, so that ldmatrix reads of 8 rows hit 8
// different bank groups.
template <int Values>
__device__ __forceinline__ uint32_t swizzled(uint32_t row, uint32_t chunk) {
    return row * (Values * 2) + ((chunk ^ (row % 8)) * 16);
}

#ifndef TF_EMULATE  // the CPU emulator (emulator/cuda.h) defines what follows for tests

// The block's dynamic shared memory (the launch's shared_mem_bytes).
__device__ __forceinline__ uint8_t *dynamic_shared() {
    extern __shared__ __align__(16) uint8_t tf_dynamic_shared[];
    return tf_dynamic_shared;
}

// Four 8x8 b16 matrices; lane l gives the row address of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

// Two 8x8 b16 matrices; lanes 0-15 give the row addresses.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr)
                 : "memory");
}

// Two 8x8 b16 matrices, transposed on the way (a B operand stored row-major [k][n] in shared
// memory, like V in attention); lanes 0-15 give the row addresses.
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr)
                 : "memory");
}

// Four 8x8 b16 matrices, transposed on the way; lane l gives the row address of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

// 2^x by the special function unit: about 2 ulp, subnormal inputs and results flushed to 0
// (ex2.approx.ftz, what FlashAttention uses), 2^-inf = +0.
__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// d = a (16x16, row) · b (16x8, col) + d, f16 operands, f32 accumulators.
__device__ __forceinline__ void mma_m16n8k16_f16_f32(float (&d)[4], const uint32_t (&a)[4],
                                                     const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The same with bf16 operands.
__device__ __forceinline__ void mma_m16n8k16_bf16_f32(float (&d)[4], const uint32_t (&a)[4],
                                                      const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// 16 bytes from global to shared memory without passing through registers; with valid ==
// false nothing is read and the destination is zero-filled.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}

// An L2 cache policy for data read once: its lines are the first evicted.
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
    uint64_t policy;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
    return policy;
}

// `Bytes` (4 or 8) from global to shared memory without passing through registers, with the
// L2 policy `policy` (l2_evict_first_policy); with valid == false nothing is read and the
// destination is zero-filled.
template <uint32_t Bytes>
__device__ __forceinline__ void cp_async_small(uint32_t dst, const void *src, bool valid,
                                               uint64_t policy) {
    static_assert(Bytes == 4 || Bytes == 8, "cp.async.ca copies 4 or 8 bytes here");
    asm volatile("cp.async.ca.shared.global.L2::cache_hint [%0], [%1], %2, %3, %4;\n" ::"r"(dst),
                 "l"(src), "n"(Bytes), "r"(valid ? Bytes : 0u), "l"(policy)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most `Pending` committed groups are still in flight.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

#endif  // TF_EMULATE

}  // namespace tf
