// The diagonal linear recurrence with resets (S4/S5 scans in RL), in one pass over memory:
// u is read once and h written once.
//
// A block owns one chunk of TF_SCAN_CHUNK time steps for TF_SCAN_LANES channels of one batch
// row at a time: lane = channel (coalesced over p), warp = TF_SCAN_STEPS consecutive steps
// held in registers. Each step is the affine map h -> r ? u : a·h + u; a chunk composes its
// steps into one map (A, B, r) (thread-sequential, then across warps through shared memory),
// publishes it, and finds its carry-in by decoupled look-back over the chunks before it.
// Look-back applies the published maps one at a time, oldest first, starting at the nearest
// published end state (or h0), which is exactly how each of those end states was computed: the
// result does not depend on which predecessors had finished, so runs are bitwise
// deterministic.
//
// The grid is persistent (as many blocks as the GPU holds at once): a block takes chunks from
// a ticket counter in the workspace's header, so a look-back waits only on chunks that running
// blocks hold. It takes its next chunk before looking back on the current one and copies that
// chunk's u (and a time-varying a) into shared memory with cp.async, so those loads are in
// flight during the look-back and the writes of the states. (16-bit real u, two bytes an
// element, is below cp.async's four: those kernels load it from global memory directly.) u
// is read and h written with the L2's evict-first policy: each is touched once.
#include "abi.h"
#include "common/mma.cuh"
#include "scan/common.cuh"

#include <cstdint>

namespace {

using namespace scan_common;

// The staging area in dynamic shared memory: u as stored, then a time-varying a, each
// [TF_SCAN_CHUNK][TF_SCAN_LANES] (abi.h gives its size); thread (warp, lane) copies and reads
// only its own steps' slots, so its cp.async wait is all the synchronisation they need.
template <class F, class S, bool VaryingA>
struct Staging {
    using T = typename F::T;
    using Word = Stored<F, S>;
    static constexpr bool kStaged = sizeof(Word) >= 4;

    Word *u;
    T *a;

    __device__ __forceinline__ Staging() {
        u = reinterpret_cast<Word *>(tf::dynamic_shared());
        a = reinterpret_cast<T *>(u + TF_SCAN_CHUNK * TF_SCAN_LANES);
    }

    static __device__ __forceinline__ uint32_t slot(uint32_t warp, uint32_t i, uint32_t lane) {
        return (warp * TF_SCAN_STEPS + i) * TF_SCAN_LANES + lane;
    }

    // Issues the copies of this thread's steps at `pl` (zeros outside the sequence).
    __device__ __forceinline__ void issue(const TfScanParams &p, const Place &pl, uint32_t warp,
                                          uint32_t lane, uint64_t policy) const {
        if constexpr (kStaged) {
        const Word *u_ptr = reinterpret_cast<const Word *>(p.u);
        const T *a_ptr = reinterpret_cast<const T *>(p.a);
#pragma unroll
        for (uint32_t i = 0; i < TF_SCAN_STEPS; ++i) {
            const bool in = pl.active && i < pl.steps;
            const size_t at = in ? pl.row + size_t(pl.t0 + i) * p.stride_time : 0;
            tf::cp_async_small<sizeof(Word)>(tf::smem_addr(&u[slot(warp, i, lane)]), u_ptr + at, in, policy);
            if (VaryingA)
                tf::cp_async_small<sizeof(T)>(tf::smem_addr(&a[slot(warp, i, lane)]), a_ptr + at, in, policy);
        }
        tf::cp_async_commit();
        }
    }
};

// One chunk's inputs for one thread: its steps' u and a, and the warp's reset flags.
template <class F, bool VaryingA>
struct StepInputs {
    typename F::T u[TF_SCAN_STEPS];
    typename F::T a[VaryingA ? TF_SCAN_STEPS : 1];
    uint32_t resets;  // bit i: a reset at step t0 + i
};

// This lane's reset flag of the warp's steps at `pl` (lane i: step i).
__device__ __forceinline__ bool lane_reset(const TfScanParams &p, const Place &pl, uint32_t lane) {
    return lane < pl.steps && reinterpret_cast<const uint8_t *>(p.reset)[size_t(pl.batch) * p.reset_stride_batch +
                                                                        size_t(pl.t0 + lane) * p.reset_stride_time] != 0;
}

// The inputs of this thread's steps at `pl`: from the staging area once its copies have
// landed, else (16-bit real u) from global memory.
template <class F, class S, bool VaryingA>
__device__ __forceinline__ StepInputs<F, VaryingA> read_inputs(const TfScanParams &p, const Place &pl,
                                                               const Staging<F, S, VaryingA> &staged,
                                                               uint32_t warp, uint32_t lane,
                                                               bool my_reset) {
    using Staged = Staging<F, S, VaryingA>;
    StepInputs<F, VaryingA> in;
    in.resets = __ballot_sync(0xffffffffu, my_reset);
    const float *a_ptr = reinterpret_cast<const float *>(p.a);
    if (!VaryingA) in.a[0] = pl.active ? load<F>(a_ptr, pl.channel) : F::zero();
    if constexpr (Staged::kStaged) {
        tf::cp_async_wait<0>();
#pragma unroll
        for (uint32_t i = 0; i < TF_SCAN_STEPS; ++i) {
            in.u[i] = S::widen(staged.u[Staged::slot(warp, i, lane)]);
            if (VaryingA) in.a[VaryingA ? i : 0] = staged.a[Staged::slot(warp, i, lane)];
        }
    } else {
#pragma unroll
        for (uint32_t i = 0; i < TF_SCAN_STEPS; ++i) {
            const bool inside = pl.active && i < pl.steps;
            const size_t at = pl.row + size_t(pl.t0 + i) * p.stride_time;
            in.u[i] = inside ? load_streaming<F, S>(reinterpret_cast<const void *>(p.u), at) : F::zero();
            if (VaryingA) in.a[VaryingA ? i : 0] = inside ? load<F>(a_ptr, at) : F::zero();
        }
    }
    return in;
}

template <class F, class S, bool VaryingA, bool WriteStates>
__device__ __forceinline__ void scan_chunks(const TfScanParams &p) {
    using T = typename F::T;
    __shared__ Map<F> warp_maps[TF_SCAN_WARPS][TF_SCAN_LANES];
    __shared__ T chunk_in[TF_SCAN_LANES];
    __shared__ T chunk_out[TF_SCAN_LANES];
    __shared__ uint32_t ticket_slots[2];

    const uint32_t lane = threadIdx.x % 32;
    const uint32_t warp = threadIdx.x / 32;
    const uint32_t total = p.batch * p.groups * p.chunks;
    const Workspace<F> ws(p.workspace, p.capacity);
    Tickets tickets{ticket_slots, ws.header};
    const Staging<F, S, VaryingA> staged;
    const uint64_t policy = tf::l2_evict_first_policy();
    const uint32_t launch = launch_tag(ws.header);

    tickets.take();
    __syncthreads();
    uint32_t ticket = tickets.taken();
    Place pl = place_of<false>(p, ticket, warp, lane);
    bool my_reset = false;
    if (ticket < total) {
        staged.issue(p, pl, warp, lane, policy);
        my_reset = lane_reset(p, pl, lane);
    }
    while (ticket < total) {
        const StepInputs<F, VaryingA> in = read_inputs<F, S, VaryingA>(p, pl, staged, warp, lane, my_reset);
        const auto a_of = [&](uint32_t i) { return in.a[VaryingA ? i : 0]; };

        // This warp's steps as one map.
        Map<F> mine = Map<F>::identity();
#pragma unroll
        for (uint32_t i = 0; i < TF_SCAN_STEPS; ++i) {
            if (i < pl.steps) mine = mine.then({a_of(i), in.u[i], ((in.resets >> i) & 1u) != 0});
        }
        warp_maps[warp][lane] = mine;
        tickets.take();
        __syncthreads();

        // The next chunk's loads, in flight from here on.
        const uint32_t next = tickets.taken();
        const Place next_pl = place_of<false>(p, next, warp, lane);
        if (next < total) {
            staged.issue(p, next_pl, warp, lane, policy);
            my_reset = lane_reset(p, next_pl, lane);
        }

        if (warp == 0) {
            const uint32_t first_record = pl.row_index * p.chunks;
            Map<F> chunk_map = Map<F>::identity();
#pragma unroll
            for (uint32_t w = 0; w < TF_SCAN_WARPS; ++w) chunk_map = chunk_map.then(warp_maps[w][lane]);
            const size_t final_at = size_t(pl.batch) * p.channels + pl.channel;  // in [b, p] arrays
            const auto h0 = [&] {
                return p.h0 != 0 && pl.active ? load<F>(reinterpret_cast<const float *>(p.h0), final_at)
                                              : F::zero();
            };
            const Chained<F> chained = chain(ws, launch, first_record, pl.chunk, chunk_map, h0,
                                             WriteStates || !chunk_map.reset, lane);
            chunk_in[lane] = chained.carry;
            chunk_out[lane] = chained.end;
            if (pl.chunk + 1 == p.chunks && pl.active && p.h_last != 0)
                store<F>(reinterpret_cast<float *>(p.h_last), final_at, chained.end);
        }
        if (WriteStates) {
            __syncthreads();
            // This warp's carry-in, then every state of its steps.
            T h = chunk_in[lane];
            for (uint32_t w = 0; w < warp; ++w) h = warp_maps[w][lane].apply(h);
            void *h_ptr = reinterpret_cast<void *>(p.h);
            const uint32_t chunk_last = min(p.time - pl.chunk * TF_SCAN_CHUNK, uint32_t(TF_SCAN_CHUNK)) - 1;
#pragma unroll
            for (uint32_t i = 0; i < TF_SCAN_STEPS; ++i) {
                h = ((in.resets >> i) & 1u) ? in.u[i] : F::mul_add(a_of(i), h, in.u[i]);
                // The chunk's last state is the published one, so h_last and the look-back
                // agree with h bit for bit.
                const T out = (warp * TF_SCAN_STEPS + i == chunk_last) ? chunk_out[lane] : h;
                if (pl.active && i < pl.steps)
                    store_streaming<F, S>(h_ptr, pl.row + size_t(pl.t0 + i) * p.stride_time, out);
            }
        }
        // warp_maps, chunk_in, chunk_out and the ticket slot are rewritten in the next round.
        __syncthreads();
        ticket = next;
        pl = next_pl;
    }
    if (threadIdx.x == 0) count_block_done(ws.header, launch);
}

}  // namespace

#define TF_SCAN_KERNEL(name, F, S, varying, write)                                              \
    extern "C" __global__ void __launch_bounds__(TF_SCAN_WARPS * 32)                           \
        name(const __grid_constant__ TfScanParams p) {                                        \
        scan_chunks<F, S, varying, write>(p);                                                   \
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
