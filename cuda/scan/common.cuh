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

// The next chunk to work on, in the order chunks are handed out (the header's ticket
// counter): a chunk's look-back waits only on chunks handed out before it, to blocks that are
// running, whatever order the hardware starts blocks in. Called by one thread of the block.
__device__ __forceinline__ uint32_t take_ticket(uint32_t *header) { return atomicAdd(&header[2], 1u); }

// Called once per block, by one thread, when the block has taken its last ticket and is done
// with the flags: the last block of the launch keeps the launch's tag in the header, so the
// next launch's flags carry the next one, and leaves the counters zero for it.
__device__ __forceinline__ void count_block_done(uint32_t *header, uint32_t tag) {
    __threadfence();
    if (atomicAdd(&header[1], 1u) == gridDim.x - 1) {
        __threadfence();  // every block's last ticket is taken before the counters are reset
        header[1] = 0;
        header[2] = 0;
        header[0] = tag;
        __threadfence();
    }
}

// Where one thread (lane = channel, warp = TF_SCAN_STEPS consecutive steps) works on the chunk
// of a ticket: tickets are chunk-major (chunk order, then batch row, then group of channels),
// so the blocks at work together cover many rows and a chunk's predecessor in its row was
// handed out `rows` tickets earlier. `Reversed` (the backward) takes time chunks from the
// last: chunk order k is time chunk chunks - 1 - k.
struct Place {
    uint32_t order;      // the chunk's place in its row's look-back
    uint32_t chunk;      // its time chunk
    uint32_t row_index;  // batch * groups + group
    uint32_t batch;
    uint32_t channel;
    bool active;     // channel < channels
    uint32_t t0;     // the thread's first step
    uint32_t steps;  // its steps inside the sequence (0 past the end)
    size_t row;      // element index of (batch, t = 0, channel)
};

template <bool Reversed, class P>
__device__ __forceinline__ Place place_of(const P &p, uint32_t ticket, uint32_t warp, uint32_t lane) {
    Place pl;
    const uint32_t rows = p.batch * p.groups;
    pl.order = ticket / rows;
    pl.chunk = Reversed ? p.chunks - 1 - pl.order : pl.order;
    pl.row_index = ticket % rows;
    pl.batch = pl.row_index / p.groups;
    pl.channel = (pl.row_index % p.groups) * TF_SCAN_LANES + lane;
    pl.active = pl.channel < p.channels;
    pl.t0 = pl.chunk * TF_SCAN_CHUNK + warp * TF_SCAN_STEPS;
    pl.steps = pl.t0 >= p.time ? 0 : min(uint32_t(TF_SCAN_STEPS), p.time - pl.t0);
    pl.row = size_t(pl.batch) * p.stride_batch + pl.channel;
    return pl;
}

// Hands out the block's tickets: thread 0 takes each, and every thread reads it (once) after
// the next __syncthreads. Takes alternate between two shared slots, so that a take cannot
// overwrite the ticket that slower threads have yet to read since the last barrier.
struct Tickets {
    uint32_t *slots;  // two, shared
    uint32_t *header;
    uint32_t round = 0;  // this thread's reads so far

    __device__ __forceinline__ void take() const {
        if (threadIdx.x == 0) slots[round % 2] = take_ticket(header);
    }
    __device__ __forceinline__ uint32_t taken() { return slots[round++ % 2]; }
};

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

// A load of data the kernel reads once: ld.global.cs, evicted first.
template <class F, class S>
__device__ __forceinline__ typename F::T load_streaming(const void *base, size_t element) {
    return S::widen(__ldcs(static_cast<const Stored<F, S> *>(base) + element));
}

// A store of data the kernel writes once: st.global.cs, evicted first.
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

// Warp 0's part of chunk `chunk` (records from first_record) in the launch tagged `launch`
// (launch_tag): publishes what later chunks can use, finds the carry-in, publishes the end
// state. Chunk 0's carry-in is `first()`; a later chunk's is the end of the nearest earlier
// chunk whose end is known without its past (a published end state or a chunk with a reset),
// then the maps of the chunks in between, oldest first. Without `look_back` (a chunk with a reset whose carry-in nobody needs) the
// carry-in is left at zero.
template <class F, class First>
__device__ __forceinline__ Chained<F> chain(const Workspace<F> &ws, uint32_t launch,
                                            uint32_t first_record, uint32_t chunk,
                                            const Map<F> &chunk_map, First first, bool look_back,
                                            uint32_t lane) {
    using T = typename F::T;
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
    return {carry, end};
}

}  // namespace scan_common
