// The diagonal linear recurrence with resets (S4/S5 scans in RL), in one pass over memory:
// u is read once and h written once.
//
// A block owns one chunk of TF_SCAN_CHUNK time steps for TF_SCAN_LANES channels of one batch
// row: lane = channel (coalesced over p), warp = TF_SCAN_STEPS consecutive steps held in
// registers. Each step is the affine map h -> r ? u : a·h + u; a chunk composes its steps into
// one map (A, B, r) (thread-sequential, then across warps through shared memory), publishes
// it, and finds its carry-in by decoupled look-back over the chunks before it. Look-back
// applies the published maps one at a time, oldest first, starting at the nearest published
// end state (or h0), which is exactly how each of those end states was computed: the result
// does not depend on which predecessors had finished, so runs are bitwise deterministic.
#include "abi.h"
#include "common/sync.cuh"

#include <cstdint>

namespace {

constexpr uint32_t kFlagAggregate = 1;  // the chunk's map (A, B) is published
constexpr uint32_t kFlagState = 2;      // the chunk's end state is published

// Real or complex arithmetic with explicit roundings, so that every path that must agree
// bit for bit compiles to the same operations.
struct Real {
    using T = float;
    static __device__ __forceinline__ T zero() { return 0.0f; }
    static __device__ __forceinline__ T one() { return 1.0f; }
    static __device__ __forceinline__ T mul(T a, T b) { return __fmul_rn(a, b); }
    static __device__ __forceinline__ T mul_add(T a, T x, T b) { return __fmaf_rn(a, x, b); }
};

struct Complex {
    using T = float2;
    static __device__ __forceinline__ T zero() { return make_float2(0.0f, 0.0f); }
    static __device__ __forceinline__ T one() { return make_float2(1.0f, 0.0f); }
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

// The look-back records of one launch (layout in abi.h).
template <class F>
struct Workspace {
    uint32_t *flags;
    typename F::T *map_a, *map_b, *state;

    __device__ Workspace(const TfScanParams &p, uint32_t records) {
        flags = reinterpret_cast<uint32_t *>(p.workspace);
        const uint32_t flag_words = (records + 3) / 4 * 4;
        map_a = reinterpret_cast<typename F::T *>(flags + flag_words);
        map_b = map_a + size_t(records) * TF_SCAN_LANES;
        state = map_b + size_t(records) * TF_SCAN_LANES;
    }
};

template <class F>
__device__ __forceinline__ typename F::T load(const float *base, size_t element) {
    return reinterpret_cast<const typename F::T *>(base)[element];
}

template <class F>
__device__ __forceinline__ void store(float *base, size_t element, typename F::T value) {
    reinterpret_cast<typename F::T *>(base)[element] = value;
}

// The latest chunk before `chunk` whose end state is published, waiting until every chunk in
// between has published at least its map. Lane i polls chunk (top - 1 - i), so one round trip
// covers 32 predecessors. Chunk 0 always publishes its state, so this ends.
__device__ __forceinline__ uint32_t nearest_known_chunk(const uint32_t *flags, uint32_t chunk,
                                                        uint32_t lane) {
    for (uint32_t top = chunk;; top -= 32) {
        const bool exists = top > lane;
        uint32_t flag = 0;
        if (exists) {
            while ((flag = tf::load_acquire(&flags[top - 1 - lane])) == 0) {
            }
        }
        const uint32_t known = __ballot_sync(0xffffffffu, exists && (flag & kFlagState));
        // Orders the lanes' acquires before every lane's reads of the published records.
        __syncwarp();
        if (known != 0) return top - uint32_t(__ffs(known));
    }
}

template <class F, bool VaryingA, bool WriteStates>
__device__ __forceinline__ void scan_chunk(const TfScanParams &p) {
    using T = typename F::T;
    __shared__ Map<F> warp_maps[TF_SCAN_WARPS][TF_SCAN_LANES];
    __shared__ T chunk_in[TF_SCAN_LANES];
    __shared__ T chunk_out[TF_SCAN_LANES];

    const uint32_t lane = threadIdx.x % 32;
    const uint32_t warp = threadIdx.x / 32;
    // Block order is chunk-major, so the blocks resident together work on many rows and
    // a chunk's predecessor in its row usually finished long ago; look-back waits only on
    // lower block indices, which the hardware starts first.
    const uint32_t rows = p.batch * p.groups;
    const uint32_t chunk = blockIdx.x / rows;
    const uint32_t row_index = blockIdx.x % rows;
    const uint32_t group = row_index % p.groups;
    const uint32_t batch = row_index / p.groups;
    const uint32_t channel = group * TF_SCAN_LANES + lane;
    const bool active = channel < p.channels;
    const uint32_t t0 = chunk * TF_SCAN_CHUNK + warp * TF_SCAN_STEPS;
    // Steps of this warp inside the sequence (0 for a warp past the end).
    const uint32_t steps = t0 >= p.time ? 0 : min(uint32_t(TF_SCAN_STEPS), p.time - t0);

    const float *a_ptr = reinterpret_cast<const float *>(p.a);
    const float *u_ptr = reinterpret_cast<const float *>(p.u);
    const uint8_t *reset_ptr = reinterpret_cast<const uint8_t *>(p.reset);
    const size_t row = size_t(batch) * p.stride_batch + channel;

    // Lane i reads the reset flag of step i; the warp shares them as one mask.
    bool my_reset = false;
    if (lane < steps)
        my_reset = reset_ptr[size_t(batch) * p.reset_stride_batch +
                             size_t(t0 + lane) * p.reset_stride_time] != 0;
    const uint32_t resets = __ballot_sync(0xffffffffu, my_reset);

    // Issue every load of the warp's steps before using any of them.
    T u[TF_SCAN_STEPS];
    T a[VaryingA ? TF_SCAN_STEPS : 1];
    if (!VaryingA) a[0] = active ? load<F>(a_ptr, channel) : F::zero();
#pragma unroll
    for (uint32_t i = 0; i < TF_SCAN_STEPS; ++i) {
        const bool in = active && i < steps;
        const size_t at = row + size_t(t0 + i) * p.stride_time;
        u[i] = in ? load<F>(u_ptr, at) : F::zero();
        if (VaryingA) a[VaryingA ? i : 0] = in ? load<F>(a_ptr, at) : F::zero();
    }

    // This warp's steps as one map.
    Map<F> mine = Map<F>::identity();
#pragma unroll
    for (uint32_t i = 0; i < TF_SCAN_STEPS; ++i) {
        if (i < steps) mine = mine.then({a[VaryingA ? i : 0], u[i], ((resets >> i) & 1u) != 0});
    }
    warp_maps[warp][lane] = mine;
    __syncthreads();

    Workspace<F> ws(p, rows * p.chunks);
    const uint32_t first_record = row_index * p.chunks;

    if (warp == 0) {
        Map<F> chunk_map = Map<F>::identity();
#pragma unroll
        for (uint32_t w = 0; w < TF_SCAN_WARPS; ++w) chunk_map = chunk_map.then(warp_maps[w][lane]);
        uint32_t *flag = &ws.flags[first_record + chunk];
        const size_t me = size_t(first_record + chunk) * TF_SCAN_LANES + lane;
        // Publish what later chunks can use before looking back: a chunk with a reset knows
        // its end state already; any other chunk but the first publishes its map.
        if (chunk_map.reset) {
            ws.state[me] = chunk_map.b;  // == chunk_map.apply(anything)
            __syncwarp();
            if (lane == 0) tf::store_release(flag, kFlagState);
        } else if (chunk > 0) {
            ws.map_a[me] = chunk_map.a;
            ws.map_b[me] = chunk_map.b;
            __syncwarp();
            if (lane == 0) tf::store_release(flag, kFlagAggregate);
        }
        // The carry-in: the end of the nearest earlier chunk whose end is known without its
        // past (a published end state or a chunk with a reset), or h0, and then the maps of
        // the chunks in between, oldest first.
        T carry = F::zero();
        if (chunk == 0) {
            if (p.h0 != 0 && active)
                carry = load<F>(reinterpret_cast<const float *>(p.h0),
                                size_t(batch) * p.channels + channel);
        } else if (WriteStates || !chunk_map.reset) {
            const uint32_t known = nearest_known_chunk(ws.flags + first_record, chunk, lane);
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
            if (lane == 0) tf::store_release(flag, kFlagState);
        }
        chunk_in[lane] = carry;
        chunk_out[lane] = end;
        if (chunk + 1 == p.chunks && active)
            store<F>(reinterpret_cast<float *>(p.h_last), size_t(batch) * p.channels + channel,
                     end);
    }
    if (!WriteStates) return;
    __syncthreads();

    // This warp's carry-in, then every state of its steps.
    T h = chunk_in[lane];
    for (uint32_t w = 0; w < warp; ++w) h = warp_maps[w][lane].apply(h);
    float *h_ptr = reinterpret_cast<float *>(p.h);
    const uint32_t chunk_last = min(p.time - chunk * TF_SCAN_CHUNK, uint32_t(TF_SCAN_CHUNK)) - 1;
#pragma unroll
    for (uint32_t i = 0; i < TF_SCAN_STEPS; ++i) {
        h = ((resets >> i) & 1u) ? u[i] : F::mul_add(a[VaryingA ? i : 0], h, u[i]);
        // The chunk's last state is the published one, so h_last and the look-back agree
        // with h bit for bit.
        const T out = (warp * TF_SCAN_STEPS + i == chunk_last) ? chunk_out[lane] : h;
        if (active && i < steps) store<F>(h_ptr, row + size_t(t0 + i) * p.stride_time, out);
    }
}

}  // namespace

#define TF_SCAN_KERNEL(name, F, varying, write)                                                 \
    extern "C" __global__ void __launch_bounds__(TF_SCAN_WARPS * 32)                           \
        name(const __grid_constant__ TfScanParams p) {                                        \
        scan_chunk<F, varying, write>(p);                                                      \
    }

TF_SCAN_KERNEL(tilefuse_scan_f32_const_states, Real, false, true)
TF_SCAN_KERNEL(tilefuse_scan_f32_const_final, Real, false, false)
TF_SCAN_KERNEL(tilefuse_scan_f32_varying_states, Real, true, true)
TF_SCAN_KERNEL(tilefuse_scan_f32_varying_final, Real, true, false)
TF_SCAN_KERNEL(tilefuse_scan_c64_const_states, Complex, false, true)
TF_SCAN_KERNEL(tilefuse_scan_c64_const_final, Complex, false, false)
TF_SCAN_KERNEL(tilefuse_scan_c64_varying_states, Complex, true, true)
TF_SCAN_KERNEL(tilefuse_scan_c64_varying_final, Complex, true, false)
