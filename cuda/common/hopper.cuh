// Hopper's (sm_90a) asynchronous instructions, for the kernels in cuda/*_sm90a.cu: wgmma
// (warpgroup matrix multiply-accumulate with operands in shared memory, described by matrix
// descriptors), its fences and groups, TMA tensor copies (cp.async.bulk.tensor, described by a
// tensor map the host encodes), named barriers and setmaxnreg. The CPU emulator
// (emulator/hopper.h) defines the same functions and decodes the same descriptors.
#pragma once

#include <cstdint>

namespace tf {

// How a wgmma operand is laid out in shared memory (PTX ISA, "Matrix Descriptor Format"): the
// swizzle mode of descriptor bits 62-63.
enum class Swizzle : uint32_t { None = 0, B128 = 1, B64 = 2, B32 = 3 };

// A wgmma matrix descriptor: the shared-memory start address, the leading- and
// stride-dimension byte offsets (each 16-byte aligned, stored in 16-byte units) and the
// swizzle mode; the base offset is 0 (swizzled tiles start on their pattern's 1024, 512 or
// 256-byte boundary).
__host__ __device__ __forceinline__ uint64_t matrix_descriptor(uint32_t start, uint32_t leading,
                                                               uint32_t stride, Swizzle swizzle) {
    const auto encode = [](uint32_t bytes) { return uint64_t((bytes & 0x3FFFF) >> 4); };
    return encode(start) | encode(leading) << 16 | encode(stride) << 32 | uint64_t(swizzle) << 62;
}

#ifndef TF_EMULATE  // the CPU emulator (emulator/hopper.h) defines what follows for tests

// Orders the thread's earlier accesses to accumulator and A registers before the wgmmas that
// follow (needed before the first wgmma and after the registers were touched).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

// Makes the wgmmas issued since the last commit one group.
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

// Waits until at most `Pending` groups are in flight; before that, their accumulators and A
// registers must not be read or written.
template <int Pending>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}

// Orders the thread's generic-proxy writes to shared memory before async-proxy reads of it
// (wgmma operands, TMA stores).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Keeps the compiler from moving accesses to `regs` across a wgmma's asynchronous region:
// after a wgmma.wait_group, each register gets a new definition that later reads depend on
// (a wait has no register operands, so without this a read could be scheduled before it).
// Before a wgmma.fence, the same for the registers the wgmmas will read.
template <int N>
__device__ __forceinline__ void fence_operands(float (&regs)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(regs[i])::"memory");
}
template <int N, int M>
__device__ __forceinline__ void fence_operands(uint32_t (&regs)[N][M]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int j = 0; j < M; ++j) asm volatile("" : "+r"(regs[i][j])::"memory");
}

// bar.sync / bar.arrive on named barrier `id` (1 to 15) for a round of `threads` threads.
__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(uint32_t id, uint32_t threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// The warpgroup's register budget per thread (24 to 256, a multiple of 8), raised or lowered.
template <uint32_t Registers>
__device__ __forceinline__ void setmaxnreg_inc() {
    static_assert(Registers >= 24 && Registers <= 256 && Registers % 8 == 0, "setmaxnreg: 24 to 256, by 8");
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Registers));
}
template <uint32_t Registers>
__device__ __forceinline__ void setmaxnreg_dec() {
    static_assert(Registers >= 24 && Registers <= 256 && Registers % 8 == 0, "setmaxnreg: 24 to 256, by 8");
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Registers));
}

// A TMA load of the box at `coords` (innermost first) of the tensor `map` describes into
// shared memory at `dst`, completing its bytes on the mbarrier at `bar`. `map` is a kernel
// parameter (a __grid_constant__ TfTensorMap).
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void *map, int32_t c0, int32_t c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const void *map, int32_t c0, int32_t c1, int32_t c2,
                                            uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
        : "memory");
}
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const void *map, int32_t c0, int32_t c1, int32_t c2,
                                            int32_t c3, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
        : "memory");
}

// wgmma.mma_async m64nNk16 with f32 accumulators d (N/2 registers a thread, the layout of
// mma.sync's C tiles: warp w of the warpgroup holds rows 16w .. 16w + 15), B from shared memory
// (K-major, or N-major with TransB = 1) and A from shared memory (_ss; K-major, or M-major
// with TransA = 1) or registers (_rs: mma.sync's A fragment of the warp's 16 rows). With
// scale_d false, d = A·B; else d += A·B.
// The 32 accumulator registers of a wgmma of N = 64: operands %0 .. %31.
#define TF_WGMMA_D32_OPERANDS \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15," \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define TF_WGMMA_D32_OUTPUTS(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
// The 64 accumulator registers of a wgmma of N = 128: operands %0 .. %63.
#define TF_WGMMA_D64_OPERANDS \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15," \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31," \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47," \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define TF_WGMMA_D64_OUTPUTS(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// A from shared memory: after d, the operands a_desc, b_desc, scale-d, TransB, TransA (their
// numbers A .. TA).
#define TF_WGMMA_SS(n, type, regs, A, B, SCALE, TB, TA)                                             \
    template <uint32_t TransB, uint32_t TransA = 0>                                                 \
    __device__ __forceinline__ void wgmma_m64n##n##k16_##type##_ss(float(&d)[n / 2], uint64_t a_desc, \
                                                                    uint64_t b_desc, bool scale_d) { \
        asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, " SCALE ", 0;\n"                             \
                     " wgmma.mma_async.sync.aligned.m64n" #n "k16.f32." #type "." #type " "             \
                     TF_WGMMA_D##regs##_OPERANDS ", " A ", " B ", p, 1, 1, " TA ", " TB ";\n}\n"        \
                     : TF_WGMMA_D##regs##_OUTPUTS(d)                                                   \
                     : "l"(a_desc), "l"(b_desc), "r"(uint32_t(scale_d)), "n"(TransB), "n"(TransA)      \
                     : "memory");                                                                     \
    }

// A from registers: after d, the operands a[0..3], b_desc, scale-d, TransB.
#define TF_WGMMA_RS(n, type, regs, A, B, SCALE, TB)                                                  \
    template <uint32_t TransB>                                                                       \
    __device__ __forceinline__ void wgmma_m64n##n##k16_##type##_rs(float(&d)[n / 2], const uint32_t(&a)[4], \
                                                                    uint64_t b_desc, bool scale_d) {  \
        asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, " SCALE ", 0;\n"                              \
                     " wgmma.mma_async.sync.aligned.m64n" #n "k16.f32." #type "." #type " "              \
                     TF_WGMMA_D##regs##_OPERANDS ", " A ", " B ", p, 1, 1, " TB ";\n}\n"                 \
                     : TF_WGMMA_D##regs##_OUTPUTS(d)                                                    \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(uint32_t(scale_d)), \
                       "n"(TransB)                                                                     \
                     : "memory");                                                                      \
    }

TF_WGMMA_SS(64, f16, 32, "%32", "%33", "%34", "%35", "%36")
TF_WGMMA_SS(128, f16, 64, "%64", "%65", "%66", "%67", "%68")
TF_WGMMA_SS(64, bf16, 32, "%32", "%33", "%34", "%35", "%36")
TF_WGMMA_SS(128, bf16, 64, "%64", "%65", "%66", "%67", "%68")
TF_WGMMA_RS(64, f16, 32, "{%32, %33, %34, %35}", "%36", "%37", "%38")
TF_WGMMA_RS(128, f16, 64, "{%64, %65, %66, %67}", "%68", "%69", "%70")
TF_WGMMA_RS(64, bf16, 32, "{%32, %33, %34, %35}", "%36", "%37", "%38")
TF_WGMMA_RS(128, bf16, 64, "{%64, %65, %66, %67}", "%68", "%69", "%70")
#undef TF_WGMMA_SS
#undef TF_WGMMA_RS

#endif  // TF_EMULATE

}  // namespace tf
