// The scan's backward pass, in one pass over time in reverse (abi.h states what it computes).
//
// The cotangent g of the states follows the same kind of affine recurrence as h, run from the
// last step to the first: g[t] = r' ? dh[t] : a'·g[t+1] + dh[t] with a' = a[t+1] and r' =
// reset[t+1] (a' = 1, r' = 0 at the last step, whose g[t+1] is dh_last). So a block is the
// forward's block with time reversed: it owns one time chunk (warp w its steps t0 + i, held in
// registers), composes the chunk's backward maps from its latest step to its earliest,
// publishes them, and finds the g entering the chunk by the forward's decoupled look-back over
// the chunks after it (latest first), bitwise deterministic as the forward is. Then each step's
// du = g, and da = g·h[t−1], with h[t−1] read from the forward's states or recomputed inside
// the chunk from the forward's chunk end states. A time-invariant da is summed per channel in
// a fixed order: over a block's steps here, over chunks and batch rows by the da kernel.
#include "abi.h"
#include "scan/common.cuh"

#include <cstdint>

namespace {

using namespace scan_common;

// One chunk (the ticket's) of the backward pass; takes the block's next ticket on the way and
// returns it (the block's threads have all read it before they return).
template <class F, class S, bool VaryingA, bool Recompute>
__device__ __forceinline__ uint32_t backward_chunk(const TfScanBackwardParams &p, const Place &pl,
                                                   const Workspace<F> &ws, uint32_t launch,
                                                   Tickets &tickets) {
    using T = typename F::T;
    constexpr uint32_t kSteps = TF_SCAN_STEPS;
    __shared__ Map<F> warp_maps[TF_SCAN_WARPS][TF_SCAN_LANES];
    __shared__ Map<F> forward_maps[Recompute ? TF_SCAN_WARPS : 1][TF_SCAN_LANES];
    __shared__ T chunk_in[TF_SCAN_LANES];   // g after the chunk's last step
    __shared__ T chunk_out[TF_SCAN_LANES];  // g at its first step
    __shared__ T warp_sums[VaryingA ? 1 : TF_SCAN_WARPS][TF_SCAN_LANES];
    __shared__ T last_states[Recompute ? TF_SCAN_WARPS : 1][TF_SCAN_LANES];

    const uint32_t lane = threadIdx.x % 32;
    const uint32_t warp = threadIdx.x / 32;
    const uint32_t order = pl.order;  // look-back order: 0 is the last time chunk
    const uint32_t chunk = pl.chunk;
    const uint32_t row_index = pl.row_index;
    const uint32_t batch = pl.batch;
    const uint32_t channel = pl.channel;
    const bool active = pl.active;
    const uint32_t t0 = pl.t0;
    const uint32_t steps = pl.steps;
    const size_t row = pl.row;
    const auto at = [&](uint32_t t) { return row + size_t(t) * p.stride_time; };
    const size_t final_at = size_t(batch) * p.channels + channel;  // in [b, p] arrays

    // Bit i: a reset at step t0 + i (resets) and at t0 + i + 1 (next_resets, none past the end).
    const uint8_t *reset_ptr = reinterpret_cast<const uint8_t *>(p.reset);
    const auto reset_at = [&](uint32_t t) {
        return reset_ptr[size_t(batch) * p.reset_stride_batch + size_t(t) * p.reset_stride_time] != 0;
    };
    const uint32_t resets = __ballot_sync(0xffffffffu, lane < steps && reset_at(t0 + lane));
    const uint32_t next_resets =
        __ballot_sync(0xffffffffu, lane < steps && t0 + lane + 1 < p.time && reset_at(t0 + lane + 1));

    // Every load of the warp's steps before any use: dh, a at t0 .. t0 + kSteps (time-varying;
    // a[t] for the forward, a[t+1] for the backward), and h[t−1] (the forward's states) or u.
    const float *a_ptr = reinterpret_cast<const float *>(p.a);
    T dh[kSteps];
    T a[VaryingA ? kSteps + 1 : 1];
    T before[kSteps];  // h[t−1]; u[t] until recomputed
    if (!VaryingA) a[0] = active ? load<F>(a_ptr, channel) : F::zero();
    if (VaryingA) {
#pragma unroll
        for (uint32_t i = 0; i <= kSteps; ++i)
            a[VaryingA ? i : 0] = active && i <= steps && t0 + i < p.time ? load<F>(a_ptr, at(t0 + i)) : F::zero();
    }
#pragma unroll
    for (uint32_t i = 0; i < kSteps; ++i) {
        const bool in = active && i < steps;
        dh[i] = in ? load_streaming<F, S>(reinterpret_cast<const void *>(p.dh), at(t0 + i)) : F::zero();
        if (Recompute) {
            before[i] = in ? load_streaming<F, S>(reinterpret_cast<const void *>(p.u), at(t0 + i)) : F::zero();
        } else if (in && t0 + i > 0) {
            before[i] = load_streaming<F, S>(reinterpret_cast<const void *>(p.h), at(t0 + i - 1));
        } else {
            before[i] = in && p.h0 != 0 ? load<F>(reinterpret_cast<const float *>(p.h0), final_at) : F::zero();
        }
    }
    // The decay of step i's forward map, and the a' of its backward map.
    const auto a_of = [&](uint32_t i) { return a[VaryingA ? i : 0]; };
    const uint32_t last_step = t0 + steps == p.time ? steps - 1 : kSteps;  // the sequence's, if here
    const auto a_after = [&](uint32_t i) { return i == last_step ? F::one() : a[VaryingA ? i + 1 : 0]; };

    // This warp's backward maps, latest step first; with Recompute, its forward map too.
    Map<F> mine = Map<F>::identity();
#pragma unroll
    for (int i = kSteps - 1; i >= 0; --i) {
        if (i < int(steps)) mine = mine.then({a_after(i), dh[i], ((next_resets >> i) & 1u) != 0});
    }
    warp_maps[warp][lane] = mine;
    if (Recompute) {
        Map<F> forward = Map<F>::identity();
#pragma unroll
        for (uint32_t i = 0; i < kSteps; ++i) {
            if (i < steps) forward = forward.then({a_of(i), before[i], ((resets >> i) & 1u) != 0});
        }
        forward_maps[Recompute ? warp : 0][lane] = forward;
    }
    tickets.take();
    __syncthreads();
    const uint32_t next = tickets.taken();

    const uint32_t first_record = row_index * p.chunks;
    if (warp == 0) {
        Map<F> chunk_map = Map<F>::identity();
#pragma unroll
        for (int w = TF_SCAN_WARPS - 1; w >= 0; --w) chunk_map = chunk_map.then(warp_maps[w][lane]);
        const auto dh_last = [&] {
            return p.dh_last != 0 && active ? load<F>(reinterpret_cast<const float *>(p.dh_last), final_at)
                                            : F::zero();
        };
        const Chained<F> chained = chain(ws, launch, first_record, order, chunk_map, dh_last, true, lane);
        chunk_in[lane] = chained.carry;
        chunk_out[lane] = chained.end;
    }
    if (Recompute) {
        // The states as the forward wrote them: from the carry-in of this warp's steps (the
        // end state of the chunk before, or h0, then the maps of the warps before this one),
        // step by step; the state before the warp's first step is the last one the warp
        // before wrote (or the chunk before's end state).
        T h = F::zero();
        if (chunk > 0) {
            h = reinterpret_cast<const T *>(p.checkpoints)[size_t(first_record + chunk - 1) * TF_SCAN_LANES + lane];
        } else if (p.h0 != 0 && active) {
            h = load<F>(reinterpret_cast<const float *>(p.h0), final_at);
        }
        for (uint32_t w = 0; w < warp; ++w) h = forward_maps[w][lane].apply(h);
#pragma unroll
        for (uint32_t i = 0; i < kSteps; ++i) {
            const T u = before[i];
            before[i] = h;
            h = ((resets >> i) & 1u) ? u : F::mul_add(a_of(i), h, u);
        }
        last_states[Recompute ? warp : 0][lane] = h;
    }
    __syncthreads();
    if (Recompute && warp > 0) before[0] = last_states[Recompute ? warp - 1 : 0][lane];

    // g entering this warp's last step, then every step's g, latest first. The chunk's first
    // step takes the published g, so du, da and the chunk before agree bit for bit.
    T g = chunk_in[lane];
    for (uint32_t w = TF_SCAN_WARPS - 1; w > warp; --w) g = warp_maps[w][lane].apply(g);
    T sum = F::zero();
    void *du = reinterpret_cast<void *>(p.du);
    float *da = reinterpret_cast<float *>(p.da);
#pragma unroll
    for (int i = kSteps - 1; i >= 0; --i) {
        if (i >= int(steps)) continue;
        g = ((next_resets >> i) & 1u) ? dh[i] : F::mul_add(a_after(i), g, dh[i]);
        if (warp == 0 && i == 0) g = chunk_out[lane];
        const bool reset = ((resets >> i) & 1u) != 0;
        const T product = reset ? F::zero() : F::mul(g, before[i]);
        if (VaryingA) {
            if (active) store<F>(da, at(t0 + i), product);
        } else {
            sum = F::add(sum, product);
        }
        if (active) store_streaming<F, S>(du, at(t0 + i), g);
        if (t0 + i == 0 && p.dh0 != 0 && active)
            store<F>(reinterpret_cast<float *>(p.dh0), final_at, reset ? F::zero() : F::mul(a_of(0), g));
    }
    if (VaryingA) return next;
    warp_sums[VaryingA ? 0 : warp][lane] = sum;
    __syncthreads();
    if (warp == 0) {
        T block_sum = F::zero();
#pragma unroll
        for (uint32_t w = 0; w < TF_SCAN_WARPS; ++w) block_sum = F::add(block_sum, warp_sums[w][lane]);
        ws.partials[size_t(first_record + order) * TF_SCAN_LANES + lane] = block_sum;
    }
    return next;
}

// The block's chunks, one ticket after another (see cuda/scan.cu: a persistent grid).
template <class F, class S, bool VaryingA, bool Recompute>
__device__ __forceinline__ void backward_chunks(const TfScanBackwardParams &p) {
    __shared__ uint32_t ticket_slots[2];
    const uint32_t total = p.batch * p.groups * p.chunks;
    const Workspace<F> ws(p.workspace, p.capacity);
    Tickets tickets{ticket_slots, ws.header};
    const uint32_t launch = launch_tag(ws.header);
    tickets.take();
    __syncthreads();
    for (uint32_t ticket = tickets.taken(); ticket < total;) {
        const Place pl = place_of<true>(p, ticket, threadIdx.x / 32, threadIdx.x % 32);
        ticket = backward_chunk<F, S, VaryingA, Recompute>(p, pl, ws, launch, tickets);
        // The chunk's shared arrays and the ticket slot are rewritten in the next round.
        __syncthreads();
    }
    if (threadIdx.x == 0) count_block_done(ws.header, launch);
}

// abi.h's tilefuse_scan_backward_da_*: the partials of a time-invariant da, added up.
template <class F>
__device__ __forceinline__ void da_sum(const TfScanBackwardParams &p) {
    using T = typename F::T;
    __shared__ T warp_sums[TF_SCAN_WARPS][TF_SCAN_LANES];
    __shared__ uint32_t last;
    const uint32_t lane = threadIdx.x % 32;
    const uint32_t warp = threadIdx.x / 32;
    const uint32_t group = blockIdx.x / p.batch;
    const uint32_t batch = blockIdx.x % p.batch;
    Workspace<F> ws(p.workspace, p.capacity);
    const T *partials = ws.partials;
    uint32_t *counter = reinterpret_cast<uint32_t *>(p.counters) + group;
    T *row_sums = ws.map_a;  // the look-back's maps are no longer needed: [batch, group][lane]

    const uint32_t first_record = (batch * p.groups + group) * p.chunks;
    T sum = F::zero();
    for (uint32_t c = warp; c < p.chunks; c += TF_SCAN_WARPS)
        sum = F::add(sum, partials[size_t(first_record + c) * TF_SCAN_LANES + lane]);
    warp_sums[warp][lane] = sum;
    __syncthreads();
    if (warp == 0) {
        T row_sum = F::zero();
#pragma unroll
        for (uint32_t w = 0; w < TF_SCAN_WARPS; ++w) row_sum = F::add(row_sum, warp_sums[w][lane]);
        row_sums[size_t(batch * p.groups + group) * TF_SCAN_LANES + lane] = row_sum;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == p.batch - 1;
    __syncthreads();
    if (!last) return;
    if (threadIdx.x == 0) *counter = 0;  // ready for the next launch on the same workspace
    __threadfence();
    if (warp != 0) return;
    T total = F::zero();
    for (uint32_t b = 0; b < p.batch; ++b)
        total = F::add(total, __ldcg(&row_sums[size_t(b * p.groups + group) * TF_SCAN_LANES + lane]));
    const uint32_t channel = group * TF_SCAN_LANES + lane;
    if (channel < p.channels) store<F>(reinterpret_cast<float *>(p.da), channel, total);
}

}  // namespace

// One block an SM at least: without it ptxas spills the f32 recompute kernel at 80 registers.
#define TF_SCAN_BACKWARD_KERNEL(name, F, S, varying, recompute)                                 \
    extern "C" __global__ void __launch_bounds__(TF_SCAN_WARPS * 32, 1)                        \
        name(const __grid_constant__ TfScanBackwardParams p) {                                \
        backward_chunks<F, S, varying, recompute>(p);                                           \
    }

// Every (element, storage) pair, time-invariant and time-varying, from states or recomputing.
#define TF_SCAN_BACKWARD_KERNELS(element, F, storage, S)                                         \
    TF_SCAN_BACKWARD_KERNEL(tilefuse_scan_backward_##element##_##storage##_const_states, F, S, false, false)     \
    TF_SCAN_BACKWARD_KERNEL(tilefuse_scan_backward_##element##_##storage##_const_recompute, F, S, false, true)   \
    TF_SCAN_BACKWARD_KERNEL(tilefuse_scan_backward_##element##_##storage##_varying_states, F, S, true, false)    \
    TF_SCAN_BACKWARD_KERNEL(tilefuse_scan_backward_##element##_##storage##_varying_recompute, F, S, true, true)

TF_SCAN_BACKWARD_KERNELS(f32, Real, f32, StoreF32)
TF_SCAN_BACKWARD_KERNELS(f32, Real, f16, StoreF16)
TF_SCAN_BACKWARD_KERNELS(f32, Real, bf16, StoreBF16)
TF_SCAN_BACKWARD_KERNELS(c64, Complex, f32, StoreF32)
TF_SCAN_BACKWARD_KERNELS(c64, Complex, f16, StoreF16)
TF_SCAN_BACKWARD_KERNELS(c64, Complex, bf16, StoreBF16)

extern "C" __global__ void __launch_bounds__(TF_SCAN_WARPS * 32)
    tilefuse_scan_backward_da_f32(const __grid_constant__ TfScanBackwardParams p) {
    da_sum<Real>(p);
}
extern "C" __global__ void __launch_bounds__(TF_SCAN_WARPS * 32)
    tilefuse_scan_backward_da_c64(const __grid_constant__ TfScanBackwardParams p) {
    da_sum<Complex>(p);
}
