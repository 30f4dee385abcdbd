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
#include "scan/common.cuh"

#include <cstdint>

namespace {

using namespace scan_common;

template <class F, class S, bool VaryingA, bool WriteStates>
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
    const void *u_ptr = reinterpret_cast<const void *>(p.u);
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
        u[i] = in ? load<F, S>(u_ptr, at) : F::zero();
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

    Workspace<F> ws(p.workspace, p.capacity);
    const uint32_t first_record = row_index * p.chunks;

    if (warp == 0) {
        Map<F> chunk_map = Map<F>::identity();
#pragma unroll
        for (uint32_t w = 0; w < TF_SCAN_WARPS; ++w) chunk_map = chunk_map.then(warp_maps[w][lane]);
        const auto h0 = [&] {
            return p.h0 != 0 && active
                       ? load<F>(reinterpret_cast<const float *>(p.h0), size_t(batch) * p.channels + channel)
                       : F::zero();
        };
        const Chained<F> chained =
            chain(ws, first_record, chunk, chunk_map, h0, WriteStates || !chunk_map.reset, lane);
        const T carry = chained.carry, end = chained.end;
        chunk_in[lane] = carry;
        chunk_out[lane] = end;
        if (chunk + 1 == p.chunks && active && p.h_last != 0)
            store<F>(reinterpret_cast<float *>(p.h_last), size_t(batch) * p.channels + channel,
                     end);
    }
    if (!WriteStates) return;
    __syncthreads();

    // This warp's carry-in, then every state of its steps.
    T h = chunk_in[lane];
    for (uint32_t w = 0; w < warp; ++w) h = warp_maps[w][lane].apply(h);
    void *h_ptr = reinterpret_cast<void *>(p.h);
    const uint32_t chunk_last = min(p.time - chunk * TF_SCAN_CHUNK, uint32_t(TF_SCAN_CHUNK)) - 1;
#pragma unroll
    for (uint32_t i = 0; i < TF_SCAN_STEPS; ++i) {
        h = ((resets >> i) & 1u) ? u[i] : F::mul_add(a[VaryingA ? i : 0], h, u[i]);
        // The chunk's last state is the published one, so h_last and the look-back agree
        // with h bit for bit.
        const T out = (warp * TF_SCAN_STEPS + i == chunk_last) ? chunk_out[lane] : h;
        if (active && i < steps) store_streaming<F, S>(h_ptr, row + size_t(t0 + i) * p.stride_time, out);
    }
}

}  // namespace

#define TF_SCAN_KERNEL(name, F, S, varying, write)                                              \
    extern "C" __global__ void __launch_bounds__(TF_SCAN_WARPS * 32)                           \
        name(const __grid_constant__ TfScanParams p) {                                        \
        scan_chunk<F, S, varying, write>(p);                                                   \
    }

// Every (element, storage) pair, time-invariant and time-varying, every state or the last.
#define TF_SCAN_KERNELS(element, F, storage, S)                                                 \
    TF_SCAN_KERNEL(tilefuse_scan_##element##_##storage##_const_states, F, S, false, true)       \
    TF_SCAN_KERNEL(tilefuse_scan_##element##_##storage##_const_final, F, S, false, false)      \
    TF_SCAN_KERNEL(tilefuse_scan_##element##_##storage##_varying_states, F, S, true, true)     \
    TF_SCAN_KERNEL(tilefuse_scan_##element##_##storage##_varying_final, F, S, true, false)

TF_SCAN_KERNELS(f32, Real, f32, StoreF32)
TF_SCAN_KERNELS(f32, Real, f16, StoreF16)
TF_SCAN_KERNELS(f32, Real, bf16, StoreBF16)
TF_SCAN_KERNELS(c64, Complex, f32, StoreF32)
TF_SCAN_KERNELS(c64, Complex, f16, StoreF16)
TF_SCAN_KERNELS(c64, Complex, bf16, StoreBF16)
