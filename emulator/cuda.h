// The CUDA built-ins and PTX wrappers the kernels use, for compiling a kernel source
// (cuda/*.cu) unchanged as C++ and running it on the CPU: each CUDA thread is a fiber, a block's
// fibers run between synchronisation points in an order the test chooses, shared memory is one
// buffer per block, and cp.async copies land at the latest moment the program allows, with the
// destination poisoned until then. Force-included (g++ -include) ahead of the kernel source;
// mbarriers complete their phases as the PTX rules say, and the copies they track (bulk
// copies, cp.async copies that arrive on them) land only when the phase completes: a wait on
// the wrong phase reads poison, and a phase that never completes is reported as a hang.
// runtime.cpp holds the scheduler. This is for tests of the kernels' logic (indexing, fragment
// maps, pipeline waits, barriers, split-K); it says nothing about speed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#define TF_EMULATE 1

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)
// Function-scope __shared__ variables are one per block: a launch runs its blocks one at a
// time, on the calling thread.
#define __shared__ static thread_local

namespace tf_emu {

struct Dim3 {
    uint32_t x, y, z;
};

const Dim3 &thread_idx();
const Dim3 &block_idx();
const Dim3 &block_dim();
const Dim3 &grid_dim();

// The current block's dynamic shared memory, and its size in bytes.
uint8_t *shared_base();
uint32_t shared_size();
// A shared-memory address (as __cvta_generic_to_shared gives it) of `ptr`: the offset into
// the dynamic buffer, or for a __shared__ variable (a thread_local of the emulated program)
// kStaticShared plus its distance from an anchor among those variables; and back, checking
// that `bytes` from there stay inside the dynamic buffer when they are in it.
constexpr uint32_t kStaticShared = 0x80000000u;
uint32_t shared_address(const void *ptr);
uint8_t *shared_pointer(uint32_t address, uint32_t bytes, const char *op);

// Stops the launch with `message` (the fiber never resumes).
[[noreturn]] void fail(const char *message);

void sync_threads();
// Every lane of the calling warp that has not exited exchanges `bytes` at `mine`; afterwards
// `lane(l)` is lane l's contribution (all 32 lanes must take part for the collective ops).
struct WarpExchange {
    const void *slots[32];
    uint32_t active;  // bit mask of the lanes that took part
};
WarpExchange warp_exchange(const void *mine, const char *op);
void warp_done(const char *op);  // every lane has read what it needs from the exchange
uint32_t lane_id();

// Flags between blocks. Blocks run one after another, so a flag that reads 0 stays 0: a
// thread that polls it many times waits on a later block, which would hang a GPU that cannot
// hold both blocks at once, and fails. A flag written more than once reads as the newest
// value in thread order and as the oldest non-zero one in the other orders (a reader may
// see an older value on a GPU), so that both the slow and the fast path of a look-back run.
uint32_t acquire(const uint32_t *flag);
void release(uint32_t *flag, uint32_t value);

// bar.sync (wait) or bar.arrive with barrier `id` (1 to 15) and a round of `count` threads (a
// multiple of 32): a round completes when `count` threads have arrived; bar.sync waits for it.
void named_barrier(uint32_t id, uint32_t count, bool wait);

// wgmma's asynchrony, per thread: mma_issue records a result that lands in `dst` (its
// registers hold NaN until then) when mma_wait covers its group; mma_current gives the newest
// pending result for `dst` (a chain of wgmmas on one accumulator reads it); mma_fence marks a
// wgmma.fence, which a wgmma needs since the thread's last wait (mma_check_fenced).
void mma_fence();
bool mma_check_fenced();
void mma_issue(float *dst, const float *values, uint32_t count);
bool mma_current(const float *dst, float *out, uint32_t count);
void mma_commit();
void mma_wait(int pending);

// cp.async: a copy of `bytes` (4, 8 or 16) of the calling thread, landing when a wait covers
// its group; `valid` false zero-fills the destination instead.
void async_copy(uint32_t shared_offset, const void *src, bool valid, uint32_t bytes = 16);
void async_commit();
void async_wait(int pending);

// mbarriers at shared addresses. A phase completes when its arrivals are all in and its
// transaction count (bytes announced by expect_tx, less bytes of bulk copies issued) is
// zero; then the copies it tracks land (their destinations hold poison until then) and the
// threads waiting for it resume. An arrival may yield to the other warps (runtime.cpp says
// when, by the launch's order), so that a thread that keeps reading a stage it released sees
// the producer's next copy poison it, and a producer that does not wait for a stage's release
// runs ahead into it.
void mbarrier_init(uint32_t bar, uint32_t count);
void mbarrier_arrive(uint32_t bar);
void mbarrier_expect_tx(uint32_t bar, uint32_t bytes);
// Blocks the calling thread until the phase of parity `parity` has completed.
void mbarrier_wait(uint32_t bar, uint32_t parity);
// Hands the calling thread's cp.async copies issued so far to the mbarrier: they land when its
// current phase completes.
void async_copies_to_mbarrier(uint32_t bar);
void bulk_copy(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar);

}  // namespace tf_emu

#define threadIdx (::tf_emu::thread_idx())
#define blockIdx (::tf_emu::block_idx())
#define blockDim (::tf_emu::block_dim())
#define gridDim (::tf_emu::grid_dim())

inline void __syncthreads() { tf_emu::sync_threads(); }
inline void __syncwarp(uint32_t = 0xffffffffu) {
    int none = 0;
    tf_emu::warp_exchange(&none, "__syncwarp");
    tf_emu::warp_done("__syncwarp");
}
inline void __threadfence() {}

// Fibers run one at a time, so plain read-modify-writes are atomic.
template <class T>
inline T atomicAdd(T *address, T value) {
    const T old = *address;
    *address = old + value;
    return old;
}
template <class T>
inline T __ldcg(const T *address) {
    return *address;
}
template <class T>
inline T __ldcs(const T *address) {
    return *address;
}
template <class T>
inline void __stcs(T *address, T value) {
    *address = value;
}
template <class T>
inline T min(T a, T b) {
    return std::min(a, b);
}
template <class T>
inline T max(T a, T b) {
    return std::max(a, b);
}

template <class T>
inline T __shfl_xor_sync(uint32_t, T value, int lane_mask) {
    const auto ex = tf_emu::warp_exchange(&value, "__shfl_xor_sync");
    const uint32_t src = (tf_emu::lane_id() ^ uint32_t(lane_mask)) % 32;
    T result = value;
    if (ex.active >> src & 1) std::memcpy(&result, ex.slots[src], sizeof(T));
    tf_emu::warp_done("__shfl_xor_sync");
    return result;
}

inline uint32_t __ballot_sync(uint32_t, bool predicate) {
    const auto ex = tf_emu::warp_exchange(&predicate, "__ballot_sync");
    uint32_t bits = 0;
    for (uint32_t l = 0; l < 32; ++l)
        if ((ex.active >> l & 1) && *static_cast<const bool *>(ex.slots[l])) bits |= 1u << l;
    tf_emu::warp_done("__ballot_sync");
    return bits;
}
inline int __ffs(uint32_t x) { return __builtin_ffs(int(x)); }
inline int __popc(uint32_t x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
[[noreturn]] inline void __trap() { tf_emu::fail("__trap"); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }

inline uint32_t __cvta_generic_to_shared(const void *ptr) { return tf_emu::shared_address(ptr); }

struct alignas(16) uint4 {
    uint32_t x, y, z, w;
};
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
struct alignas(8) float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

// 16-bit floats as their bits; conversions round to nearest even, as the __*_rn intrinsics.
struct __half {
    uint16_t bits;
};
struct __nv_bfloat16 {
    uint16_t bits;
};
struct __half2 {
    __half lo, hi;
};
struct __nv_bfloat162 {
    __nv_bfloat16 lo, hi;
};

inline __half __float2half_rn(float v) {
    const _Float16 h = static_cast<_Float16>(v);
    __half r;
    std::memcpy(&r.bits, &h, 2);
    return r;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    if (std::isnan(v)) return {uint16_t((bits >> 16) | 0x40)};
    bits += 0x7fff + ((bits >> 16) & 1);
    return {uint16_t(bits >> 16)};
}
inline __half __float2half(float v) { return __float2half_rn(v); }
inline __half __ushort_as_half(unsigned short bits) { return {bits}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
inline float __uint_as_float(uint32_t bits) {
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
}
inline float __half2float(__half h) {
    _Float16 v;
    std::memcpy(&v, &h.bits, 2);
    return float(v);
}
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo), __float2half_rn(hi)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

namespace tf_emu {

inline float f16_bits_to_float(uint16_t bits) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return float(h);
}
inline float bf16_bits_to_float(uint16_t bits) {
    const uint32_t wide = uint32_t(bits) << 16;
    float v;
    std::memcpy(&v, &wide, 4);
    return v;
}

// The 16-bit value `index` (0 = low half) of register `reg`.
inline uint16_t half_of(uint32_t reg, int index) { return uint16_t(reg >> (16 * index)); }

// ldmatrix .x{Count}[.trans]: lane l gives the row address of matrix l / 8 (lanes below
// 8 * Count); each lane receives, per matrix, the two values of row l / 4 at columns
// 2 (l % 4) and 2 (l % 4) + 1 (transposed: column l / 4 at rows 2 (l % 4) and 2 (l % 4) + 1).
template <int Count, bool Trans>
inline void ldmatrix(uint32_t *r, uint32_t addr, const char *op) {
    const auto ex = warp_exchange(&addr, op);
    if (ex.active != 0xffffffffu) fail("ldmatrix with inactive lanes");
    const uint32_t lane = lane_id();
    for (int i = 0; i < Count; ++i) {
        uint16_t v[2];
        for (int j = 0; j < 2; ++j) {
            const uint32_t row = Trans ? (lane % 4) * 2 + j : lane / 4;
            const uint32_t col = Trans ? lane / 4 : (lane % 4) * 2 + j;
            uint32_t row_addr;
            std::memcpy(&row_addr, ex.slots[i * 8 + row], 4);
            if (row_addr % 16 != 0) fail("ldmatrix row address not 16-byte aligned");
            std::memcpy(&v[j], shared_pointer(row_addr, 16, "ldmatrix") + 2 * col, 2);
        }
        r[i] = uint32_t(v[0]) | uint32_t(v[1]) << 16;
    }
    warp_done(op);
}

// mma.m16n8k16.row.col with f32 accumulation; `to_float` decodes a 16-bit operand. Products
// are summed in f64 and rounded once (the hardware's order and rounding differ within the
// bounds of the tests).
template <class ToFloat>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], ToFloat to_float) {
    struct Operands {
        uint32_t a[4], b[2];
    } mine;
    std::memcpy(mine.a, a, sizeof mine.a);
    std::memcpy(mine.b, b, sizeof mine.b);
    const auto ex = warp_exchange(&mine, "mma.sync");
    if (ex.active != 0xffffffffu) fail("mma.sync with inactive lanes");
    auto lane_ops = [&](uint32_t l) { return static_cast<const Operands *>(ex.slots[l]); };
    // A (16 x 16): lane l holds rows l/4 and l/4 + 8, columns 2(l%4) + {0,1} and + 8.
    auto a_at = [&](uint32_t row, uint32_t col) {
        const uint32_t lane = (row % 8) * 4 + (col % 8) / 2;
        const uint32_t reg = (row / 8) + 2 * (col / 8);
        return to_float(half_of(lane_ops(lane)->a[reg], col % 2));
    };
    // B (16 x 8, column-major): lane l holds column l/4, rows 2(l%4) + {0,1} and + 8.
    auto b_at = [&](uint32_t row, uint32_t col) {
        const uint32_t lane = col * 4 + (row % 8) / 2;
        return to_float(half_of(lane_ops(lane)->b[row / 8], row % 2));
    };
    const uint32_t lane = lane_id();
    for (int e = 0; e < 4; ++e) {
        const uint32_t row = lane / 4 + 8 * (e / 2), col = (lane % 4) * 2 + e % 2;
        double sum = d[e];
        for (uint32_t kk = 0; kk < 16; ++kk) sum += double(a_at(row, kk)) * double(b_at(kk, col));
        d[e] = float(sum);
    }
    warp_done("mma.sync");
}

}  // namespace tf_emu

namespace tf {

inline uint8_t *dynamic_shared() { return tf_emu::shared_base(); }

inline uint32_t load_acquire(const uint32_t *flag) { return tf_emu::acquire(flag); }
// The emulator's loads see the same values relaxed or not; the fence orders nothing more.
inline uint32_t load_relaxed(const uint32_t *flag) { return tf_emu::acquire(flag); }
inline void fence_acquire() {}
inline void store_release(uint32_t *flag, uint32_t value) { tf_emu::release(flag, value); }
inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) { tf_emu::ldmatrix<4, false>(r, addr, "ldmatrix.x4"); }
inline void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr) { tf_emu::ldmatrix<2, false>(r, addr, "ldmatrix.x2"); }
inline void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) {
    tf_emu::ldmatrix<2, true>(r, addr, "ldmatrix.x2.trans");
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    tf_emu::ldmatrix<4, true>(r, addr, "ldmatrix.x4.trans");
}
// ex2.approx.ftz: 2^x off by up to 2 ulp (PTX ISA: max relative error about 2^-22), here
// by an amount that depends on x's bits, so that a test bound that only exact exp2 meets
// fails; subnormal inputs count as 0 and subnormal results are flushed to +0.
inline float exp2_approx(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.0f;
    const float exact = std::exp2(x);
    if (!std::isfinite(exact) || exact == 0.0f) return exact;
    if (std::fpclassify(exact) == FP_SUBNORMAL) return 0.0f;
    const int ulps = int((bits * 2654435761u) >> 30) - 2 + ((bits >> 7) & 1);  // -2 .. 2
    float y = exact;
    for (int i = 0; i < (ulps < 0 ? -ulps : ulps); ++i)
        y = std::nextafter(y, ulps < 0 ? 0.0f : INFINITY);
    return std::fpclassify(y) == FP_SUBNORMAL ? 0.0f : y;
}
inline void mma_m16n8k16_f16_f32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    tf_emu::mma_m16n8k16(d, a, b, tf_emu::f16_bits_to_float);
}
inline void mma_m16n8k16_bf16_f32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    tf_emu::mma_m16n8k16(d, a, b, tf_emu::bf16_bits_to_float);
}
inline void cp_async_16(uint32_t dst, const void *src, bool valid) { tf_emu::async_copy(dst, src, valid); }
template <uint32_t Bytes>
inline void cp_async_small(uint32_t dst, const void *src, bool valid, uint64_t) {
    static_assert(Bytes == 4 || Bytes == 8, "cp.async.ca copies 4 or 8 bytes here");
    tf_emu::async_copy(dst, src, valid, Bytes);
}
// The emulator has no L2 cache; the policy is a placeholder.
inline uint64_t l2_evict_first_policy() { return 0; }
inline void cp_async_commit() { tf_emu::async_commit(); }
template <int Pending>
inline void cp_async_wait() {
    tf_emu::async_wait(Pending);
}

// The emulator models sm_90's bulk copies (its spmm_bitmap.cpp also builds the cp.async path).
constexpr bool kBulkCopies = true;
inline void mbarrier_init(uint32_t bar, uint32_t count) { tf_emu::mbarrier_init(bar, count); }
inline void mbarrier_init_fence() {}
inline void mbarrier_arrive(uint32_t bar) { tf_emu::mbarrier_arrive(bar); }
inline void mbarrier_wait(uint32_t bar, uint32_t parity) { tf_emu::mbarrier_wait(bar, parity); }
inline void cp_async_mbarrier_arrive(uint32_t bar) { tf_emu::async_copies_to_mbarrier(bar); }
inline void mbarrier_expect_tx(uint32_t bar, uint32_t bytes) { tf_emu::mbarrier_expect_tx(bar, bytes); }
inline void bulk_copy(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar) {
    tf_emu::bulk_copy(dst, src, bytes, bar);
}

}  // namespace tf

namespace tf_emu {

// One launch: grid and block shape, dynamic shared memory, the order in which a block's
// fibers run between synchronisation points (0: thread order, 1: reverse, 2: shuffled by seed)
// and whether blocks run from the last to the first (else in index order, x fastest).
struct Launch {
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t shared_bytes;
    uint32_t order;
    uint64_t seed;
    uint32_t blocks_reversed;
    uint32_t reserved;
};

// Runs `thread` once per thread of the grid; returns an empty string or what went wrong.
const char *run(const Launch &launch, const std::function<void()> &thread);

}  // namespace tf_emu

// The C entry point of one kernel-parameter type, for the test harness: launches `kernel`
// (looked up by its extern "C" name) with `*params`. Returns null or an error message that
// stays valid until the next launch.
#define TF_EMULATOR_ENTRY(name, Params)                                                         \
    extern "C" const char *tf_emulate_##name(void (*kernel)(Params), const Params *params,      \
                                             const tf_emu::Launch *launch) {                   \
        const Params copy = *params;                                                            \
        const char *error = tf_emu::run(*launch, [&] { kernel(copy); });                        \
        return *error ? error : nullptr;                                                        \
    }

#include "hopper.h"  // emulator/hopper.h: the sm_90a instructions
