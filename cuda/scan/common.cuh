// What the scan's forward (cuda/scan.cu) and backward (cuda/scan_backward.cu) kernels share:
// real and complex arithmetic with explicit roundings, the affine maps a chunk composes, the
// look-back records and the poll that finds a chunk's nearest known predecessor.
#pragma once

#include "abi.h"
#include "common/sync.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace scan_common {

// A chunk's flag: what it has published (below) in its low two bits, above them the tag of
// the launch that published it, so a workspace kept from launch to launch needs no clearing.
constexpr uint32_t kFlagAggregate = 1;  // the chunk's map (A, B) is published
constexpr uint32_t kFlagState = 2;      // the chunk's end state is published
constexpr uint32_t kTags = (1u << 30) - 1;  // tags 1 .. kTags; a zeroed flag has tag 0

// Real or complex arithmetic with explicit roundings, so that every path that must agree
// bit for bit compiles to the same operations.
struct Real {
    using T = float;
    static __device__ __forceinline__ T zero() { return 0.0f; }
    static __device__ __forceinline__ T one() { return 1.0f; }
    static __device__ __forceinline__ T add(T a, T b) { return __fadd_rn(a, b); }
    static __device__ __forceinline__ T mul(T a, T b) { return __fmul_rn(a, b); }
    static __device__ __forceinline__ T mul_add(T a, T x, T b) { return __fmaf_rn(a, x, b); }
};

struct Complex {
    using T = float2;
    static __device__ __forceinline__ T zero() { return make_float2(0.0f, 0.0f); }
    static __device__ __forceinline__ T one() { return make_float2(1.0f, 0.0f); }
    static __device__ __forceinline__ T add(T a, T b) {
        return make_float2(__fadd_rn(a.x, b.x), __fadd_rn(a.y, b.y));
    }
    static __device__ __forceinline__ T mul(T a, T b) {
        return make_float2(__fmaf_rn(a.x, b.x, -__fmul_rn(a.y, b.y)),
                           __fmaf_rn(a.x, b.y, __fmul_rn(a.y, b.x)));
    }
    static __device__ __forceinline__ T mul_add(T a, T x, T b) {
        return make_float2(__fmaf_rn(a.x, x.x, __fmaf_rn(-a.y, x.y, b.x)),
                           __fmaf_rn(a.x, x.y, __fmaf_rn(a.y, x.x, b.y)));
    }
};

// The affine map h -> reset ? b : a·h + b.
template <class F>
struct Map {
    typename F::T a, b;
    bool reset;

    static __device__ __forceinline__ Map identity() { return {F::one(), F::zero(), false}; }

    // This map followed by `next`.
    __device__ __forceinline__ Map then(const Map &next) const {
        if (next.reset) return next;
        return {F::mul(next.a, a), F::mul_add(next.a, b, next.b), reset};
    }

    __device__ __forceinline__ typename F::T apply(typename F::T h) const {
        return reset ? b : F::mul_add(a, h, b);
    }
};

// A look-back region laid out for `capacity` records (abi.h): a header (the last launch's tag,
// and the blocks of this launch that are done with the flags), the flags, the record arrays
// (chunk products, chunk offsets, end states, and after them the backward's partials).
template <class F>
struct Workspace {
    uint32_t *header, *flags;
    typename F::T *map_a, *map_b, *state, *partials;

    __device__ Workspace(tf_dptr workspace, uint32_t capacity) {
        header = reinterpret_cast<uint32_t *>(workspace);
        flags = header + TF_SCAN_HEADER_WORDS;
        const uint32_t flag_words = (capacity + 3) / 4 * 4;
        map_a = reinterpret_cast<typename F::T *>(flags + flag_words);
        map_b = map_a + size_t(capacity) * TF_SCAN_LANES;
        state = map_b + size_t(capacity) * TF_SCAN_LANES;
        partials = state + size_t(capacity) * TF_SCAN_LANES;
    }
};

// This launch's tag: the one after the last launch's, which the header keeps (0 before the
// first). Every block reads it before it counts itself done, which every block does before
// the last one stores it.
__device__ __forceinline__ uint32_t launch_tag(const uint32_t *header) { return __ldcg(header) % kTags + 1; }

// Called once per block, by one thread, when the block is done with the flags: the last block
// of the launch keeps the launch's tag in the header, so the next launch's flags carry the
// next one.
__device__ __forceinline__ void count_block_done(uint32_t *header, uint32_t tag) {
    __threadfence();
    if (atomicAdd(&header[1], 1u) == gridDim.x - 1) {
        header[1] = 0;
        header[0] = tag;
        __threadfence();
    }
}

// How u and h (the backward's dh, du and h) are stored: f32, or 16 bits with the arithmetic
// and the carry in f32. A value is widened when loaded and rounded to nearest even when
// stored; a complex value is an interleaved (re, im) pair, loaded and stored as one word.
struct StoreF32 {
    using Word = float;   // one real value
    using Pair = float2;  // one complex value
    static __device__ __forceinline__ float widen(float v) { return v; }
    static __device__ __forceinline__ float narrow(float v) { return v; }
    static __device__ __forceinline__ float2 widen(float2 v) { return v; }
    static __device__ __forceinline__ float2 narrow(float2 v) { return v; }
};

struct StoreF16 {
    using Word = unsigned short;
    using Pair = unsigned int;  // re in the low half
    static __device__ __forceinline__ float widen(unsigned short bits) {
        return __half2float(__ushort_as_half(bits));
    }
    static __device__ __forceinline__ unsigned short narrow(float v) {
        return __half_as_ushort(__float2half_rn(v));
    }
    static __device__ __forceinline__ float2 widen(unsigned int bits) {
        return make_float2(widen((unsigned short)(bits & 0xffffu)), widen((unsigned short)(bits >> 16)));
    }
    static __device__ __forceinline__ unsigned int narrow(float2 v) {
        return (unsigned int)(narrow(v.x)) | (unsigned int)(narrow(v.y)) << 16;
    }
};

struct StoreBF16 {
    using Word = unsigned short;
    using Pair = unsigned int;  // re in the low half
    static __device__ __forceinline__ float widen(unsigned short bits) {
        return __uint_as_float((unsigned int)(bits) << 16);
    }
    static __device__ __forceinline__ unsigned short narrow(float v) {
        return __bfloat16_as_ushort(__float2bfloat16_rn(v));
    }
    static __device__ __forceinline__ float2 widen(unsigned int bits) {
        return make_float2(__uint_as_float(bits << 16), __uint_as_float(bits & 0xffff0000u));
    }
    static __device__ __forceinline__ unsigned int narrow(float2 v) {
        return (unsigned int)(narrow(v.x)) | (unsigned int)(narrow(v.y)) << 16;
    }
};

// The word type of one element of F stored as S.
template <class F, class S>
using Stored = typename std::conditional<sizeof(typename F::T) == 4, typename S::Word, typename S::Pair>::type;

template <class F, class S = StoreF32>
__device__ __forceinline__ typename F::T load(const void *base, size_t element) {
    return S::widen(static_cast<const Stored<F, S> *>(base)[element]);
}

template <class F, class S = StoreF32>
__device__ __forceinline__ void store(void *base, size_t element, typename F::T value) {
    static_cast<Stored<F, S> *>(base)[element] = S::narrow(value);
}

// A store of data the kernel writes once: st.global.cs, evicted first. (Loads stay plain:
// ld.global.cs on u made ptxas spill the complex time-varying kernel for sm_80.)
template <class F, class S>
__device__ __forceinline__ void store_streaming(void *base, size_t element, typename F::T value) {
    __stcs(static_cast<Stored<F, S> *>(base) + element, S::narrow(value));
}

// The latest chunk before `chunk` whose end state is published, waiting until every chunk in
// between has published at least its map (flags of this launch's tag). Lane i polls chunk
// (top - 1 - i), so one round trip covers 32 predecessors. Chunk 0 always publishes its
// state, so this ends.
__device__ __forceinline__ uint32_t nearest_known_chunk(const uint32_t *flags, uint32_t chunk,
                                                        uint32_t lane, uint32_t tag) {
    for (uint32_t top = chunk;; top -= 32) {
        const bool exists = top > lane;
        uint32_t flag = 0;
        if (exists) {
            while (((flag = tf::load_relaxed(&flags[top - 1 - lane])) >> 2) != tag) {
            }
            tf::fence_acquire();  // what the flag's writer published is seen from here on
        }
        const uint32_t known = __ballot_sync(0xffffffffu, exists && (flag & kFlagState));
        // Orders the lanes' fences before every lane's reads of the published records.
        __syncwarp();
        if (known != 0) return top - uint32_t(__ffs(known));
    }
}

// A chunk's carry-in and end state.
template <class F>
struct Chained {
    typename F::T carry, end;
};

// Warp 0's part of chunk `chunk` (records from first_record): publishes what later chunks can
// use, finds the carry-in, publishes the end state. Chunk 0's carry-in is `first()`; a later
// chunk's is the end of the nearest earlier chunk whose end is known without its past (a
// published end state or a chunk with a reset), then the maps of the chunks in between,
// oldest first. Without `look_back` (a chunk with a reset whose carry-in nobody needs) the
// carry-in is left at zero.
template <class F, class First>
__device__ __forceinline__ Chained<F> chain(const Workspace<F> &ws, uint32_t first_record,
                                            uint32_t chunk, const Map<F> &chunk_map, First first,
                                            bool look_back, uint32_t lane) {
    using T = typename F::T;
    const uint32_t launch = launch_tag(ws.header);
    const uint32_t tag = launch << 2;
    uint32_t *flag = &ws.flags[first_record + chunk];
    const size_t me = size_t(first_record + chunk) * TF_SCAN_LANES + lane;
    // Publish what later chunks can use before looking back: a chunk with a reset knows its
    // end state already; any other chunk but the first publishes its map.
    if (chunk_map.reset) {
        ws.state[me] = chunk_map.b;  // == chunk_map.apply(anything)
        __syncwarp();
        if (lane == 0) tf::store_release(flag, tag | kFlagState);
    } else if (chunk > 0) {
        ws.map_a[me] = chunk_map.a;
        ws.map_b[me] = chunk_map.b;
        __syncwarp();
        if (lane == 0) tf::store_release(flag, tag | kFlagAggregate);
    }
    T carry = F::zero();
    if (chunk == 0) {
        carry = first();
    } else if (look_back) {
        const uint32_t known = nearest_known_chunk(ws.flags + first_record, chunk, lane, tag >> 2);
        carry = ws.state[size_t(first_record + known) * TF_SCAN_LANES + lane];
#pragma unroll 8
        for (uint32_t c = known + 1; c < chunk; ++c) {
            const size_t record = size_t(first_record + c) * TF_SCAN_LANES + lane;
            carry = F::mul_add(ws.map_a[record], carry, ws.map_b[record]);
        }
    }
    const T end = chunk_map.apply(carry);
    if (!chunk_map.reset) {
        ws.state[me] = end;
        __syncwarp();
        if (lane == 0) tf::store_release(flag, tag | kFlagState);
    }
    if (lane == 0) count_block_done(ws.header, launch);
    return {carry, end};
}

}  // namespace scan_common
