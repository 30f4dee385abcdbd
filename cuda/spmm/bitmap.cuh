// The bitmap spmm kernel (src/spmm/bitmap.rs has the format): y [n, m] = x [n, k] · w [m, k]ᵀ
// with w as 16 x 64 units of sixteen 8 x 8 blocks, each a 64-bit mask and its nonzero values.
//
// A block owns a tile row of w (kTileM rows: kUnits unit rows) and N tokens, and walks its k
// tiles (one unit column each) through a ring of p.stages stages in shared memory:
//   - the producer warp fills a stage with the tile's masks and values (one bulk copy of each
//     per unit on sm_90, 16-byte cp.async copies before) and the x tile (cp.async), and
//     arrives on the stage's `full` mbarrier, once the consumers have released the stage
//     through its `empty` one;
//   - consumer warp w takes unit row w: each lane turns its two bits of each block's mask into
//     an A-fragment register (a popcount finds the value, a clear bit gives zero), with no
//     dense tile, no zero-fill and no scatter, and issues mma.sync.m16n8k16 with x as B.
// Split-K as in the Tiled-CSL kernel (cuda/spmm/common.cuh): block z takes a range of k tiles.
#pragma once

#include "abi.h"
#include "common/mma.cuh"
#include "common/pipeline.cuh"
#include "common/types.cuh"
#include "spmm/common.cuh"

#include <cstdint>

namespace spmm_bitmap {

using spmm_common::kRowBytes;
using spmm_common::kTileK;
using spmm_common::kTileM;
using spmm_common::swizzled;

constexpr int kUnitM = 16;
constexpr int kUnits = kTileM / kUnitM;  // unit rows of a tile, one consumer warp each
constexpr int kBlocks = 16;              // 8 x 8 blocks of a unit
constexpr uint32_t kUnitMaskBytes = kBlocks * 8;
constexpr uint32_t kMaskBytes = kUnits * kUnitMaskBytes;
constexpr int kThreads = (kUnits + 1) * 32;  // a consumer warp per unit row, and the producer
static_assert(kThreads == TF_SPMM_BITMAP_WARPS * 32, "abi.h's warps: a consumer per unit row and the producer");
static_assert(kTileK == 64, "a unit column is one k tile");

template <int N>
using Accumulators = float[N / 8][4];

// The parts of a tile's work. The kernels do them all; the probes, which benchmarks time to
// see where a tile's time goes, leave some out (their y is zero: no multiply).
enum Parts : int { kLoads = 0, kDecode = 1, kAll = 3 };

// The dynamic shared memory (abi.h gives the layout): the stages' mbarriers, the stages, the
// unit offsets of the block's units, and a word for split-K.
template <int N>
struct Shared {
    uint64_t *full;   // [stages]: the producer's copies into a stage have landed
    uint64_t *empty;  // [stages]: every consumer warp is done with a stage
    uint8_t *stages;
    uint32_t *offsets;  // [kUnits][stride]: unit_offsets of unit row i, k tiles k_begin ..
    uint32_t *last;
    uint32_t count, stage_bytes, stride;

    __device__ Shared(uint8_t *base, const TfSpmmBitmapParams &p)
        : count(p.stages),
          stage_bytes(kMaskBytes + N * kRowBytes + p.stage_values * 2),
          stride(p.tiles_per_split + 1) {
        full = reinterpret_cast<uint64_t *>(base);
        empty = full + count;
        stages = reinterpret_cast<uint8_t *>(empty + count);
        offsets = reinterpret_cast<uint32_t *>(stages + size_t(count) * stage_bytes);
        last = offsets + kUnits * stride;
    }
    __device__ uint8_t *masks(uint32_t s) const { return stages + size_t(s) * stage_bytes; }
    __device__ uint8_t *x(uint32_t s) const { return masks(s) + kMaskBytes; }
    __device__ uint16_t *values(uint32_t s) const {
        return reinterpret_cast<uint16_t *>(x(s) + N * kRowBytes);
    }
    // Offset (in values) of unit row i's values of the block's k tile t, and how many.
    __device__ uint32_t first_value(uint32_t i, uint32_t t) const { return offsets[i * stride + t]; }
    __device__ uint32_t unit_values(uint32_t i, uint32_t t) const {
        return offsets[i * stride + t + 1] - offsets[i * stride + t];
    }
    // Where unit row i's values of tile t start in its stage: after those of the rows above.
    __device__ uint32_t values_before(uint32_t i, uint32_t t) const {
        uint32_t sum = 0;
        for (uint32_t j = 0; j < i; ++j) sum += unit_values(j, t);
        return sum;
    }
};

// A ring position: the stage, and the parity of its current round.
struct Ring {
    uint32_t stage = 0, phase = 0;
    __device__ void advance(uint32_t count) {
        if (++stage == count) {
            stage = 0;
            phase ^= 1;
        }
    }
};

// The producer lane `lane` starts the copies of the block's k tile t (unit column tile_k)
// into stage s: each present unit row's masks and values, and the x tile.
template <int N, bool Bulk>
__device__ __forceinline__ void fill_stage(const TfSpmmBitmapParams &p, const Shared<N> &sm,
                                           uint32_t s, uint32_t t, uint32_t tile_k, uint32_t um0,
                                           uint32_t rows, uint32_t n0, uint32_t lane) {
    const uint32_t units_k = (p.k + kTileK - 1) / kTileK;
    const uint8_t *masks = reinterpret_cast<const uint8_t *>(p.masks);
    const uint16_t *values = reinterpret_cast<const uint16_t *>(p.values);
    const uint32_t full = tf::smem_addr(&sm.full[s]);
    if constexpr (Bulk) {
        if (lane < rows) {
            const size_t unit = size_t(um0 + lane) * units_k + tile_k;
            const uint32_t count = sm.unit_values(lane, t);
            tf::mbarrier_expect_tx(full, kUnitMaskBytes + count * 2);
            tf::bulk_copy(tf::smem_addr(sm.masks(s) + lane * kUnitMaskBytes),
                          masks + unit * kUnitMaskBytes, kUnitMaskBytes, full);
            if (count > 0)
                tf::bulk_copy(tf::smem_addr(sm.values(s) + sm.values_before(lane, t)),
                              values + sm.first_value(lane, t), count * 2, full);
        }
    } else {
        // The units' 16-byte chunks (masks, then values) numbered on from unit to unit, lane l
        // copying those numbered l mod 32, so that no lane idles at the end of each unit.
        uint32_t before = 0, numbered = 0;
        for (uint32_t i = 0; i < rows; ++i) {
            const size_t unit = size_t(um0 + i) * units_k + tile_k;
            const uint32_t count = sm.unit_values(i, t);
            const uint32_t mask_chunks = kUnitMaskBytes / 16;
            const uint32_t first = (lane + 32 - numbered % 32) % 32;
            numbered += mask_chunks + count / 8;
            for (uint32_t c = first; c < mask_chunks + count / 8; c += 32) {
                if (c < mask_chunks) {
                    tf::cp_async_16(tf::smem_addr(sm.masks(s) + i * kUnitMaskBytes + c * 16),
                                    masks + unit * kUnitMaskBytes + c * 16, true);
                } else {
                    const uint32_t v = (c - mask_chunks) * 8;
                    tf::cp_async_16(tf::smem_addr(sm.values(s) + before + v),
                                    values + sm.first_value(i, t) + v, true);
                }
            }
            before += count;
        }
    }
    spmm_common::load_x_tile<N>(p.x, p.n, p.k, sm.x(s), tile_k, n0, lane, 32);
    tf::cp_async_mbarrier_arrive(full);
    tf::mbarrier_arrive(full);
}

// The producer warp: fills the stages tile after tile, each once its consumers released it.
template <int N, bool Bulk>
__device__ __forceinline__ void produce(const TfSpmmBitmapParams &p, const Shared<N> &sm,
                                        uint32_t k_begin, uint32_t k_count, uint32_t um0,
                                        uint32_t rows, uint32_t n0) {
    const uint32_t lane = threadIdx.x % 32;
    Ring ring;
    for (uint32_t t = 0; t < k_count; ++t) {
        // The round before this one's consumers (t / count - 1) released the stage.
        if (t >= sm.count) tf::mbarrier_wait(tf::smem_addr(&sm.empty[ring.stage]), ring.phase ^ 1);
        fill_stage<N, Bulk>(p, sm, ring.stage, t, k_begin + t, um0, rows, n0, lane);
        ring.advance(sm.count);
    }
}

// Lane `lane`'s A-fragment register of one 8 x 8 block: its elements (lane / 4, 2 (lane % 4))
// and the next, bits 2 lane and 2 lane + 1 of `mask`, found among the block's `values` by the
// popcount of the bits below (`below`: those bits set), zero where a bit is clear.
__device__ __forceinline__ uint32_t fragment_pair(uint64_t mask, uint64_t below, uint32_t lane,
                                                  const uint16_t *values) {
    const uint32_t first = __popcll(mask & below);
    const uint32_t bits = uint32_t(mask >> (2 * lane)) & 3;
    const uint32_t lo = (bits & 1) ? values[first] : 0;
    const uint32_t hi = (bits & 2) ? values[first + (bits & 1)] : 0;
    return lo | hi << 16;
}

// acc += unit row `warp` of stage s (the block's k tile t) · its x tile (with Work = kDecode,
// the fragments are made and not multiplied).
template <class In, int N, int Work>
__device__ __forceinline__ void multiply(const Shared<N> &sm, uint32_t s, uint32_t t,
                                         uint32_t warp, Accumulators<N> &acc) {
    const uint32_t lane = threadIdx.x % 32;
    const uint64_t below = (uint64_t(1) << (2 * lane)) - 1;
    const uint64_t *masks = reinterpret_cast<const uint64_t *>(sm.masks(s) + warp * kUnitMaskBytes);
    const uint16_t *values = sm.values(s) + sm.values_before(warp, t);
    const uint32_t x_base = tf::smem_addr(sm.x(s));
    uint32_t next = 0;  // the unit's values before the block
#pragma unroll
    for (uint32_t step = 0; step < kTileK / 16; ++step) {
        uint32_t b[N / 8][2];
#pragma unroll
        for (int j = 0; j < N / 8; ++j)
            tf::ldmatrix_x2(b[j], x_base + swizzled(j * 8 + lane % 8, step * 2 + (lane / 8) % 2));
        // The step's blocks in the order of the A fragment's register pairs.
        uint32_t a[4];
#pragma unroll
        for (int pair = 0; pair < 4; ++pair) {
            const uint64_t mask = masks[step * 4 + pair];
            a[pair] = fragment_pair(mask, below, lane, values + next);
            next += __popcll(mask);
        }
        if constexpr (Work == kAll) {
#pragma unroll
            for (int j = 0; j < N / 8; ++j) In::mma(acc[j], a, b[j]);
        } else {
            // A volatile store into the split-K word (set only after the loop) keeps the
            // fragments made.
            *reinterpret_cast<volatile uint32_t *>(sm.last) = a[0] ^ a[1] ^ a[2] ^ a[3] ^ b[0][0] ^ b[N / 8 - 1][1];
        }
    }
}

// A consumer warp: waits for each stage, multiplies its unit row (if the tile has it), and
// releases the stage.
template <class In, int N, int Work>
__device__ __forceinline__ void consume(const Shared<N> &sm, uint32_t k_count, uint32_t warp,
                                        uint32_t rows, Accumulators<N> &acc) {
    Ring ring;
    for (uint32_t t = 0; t < k_count; ++t) {
        tf::mbarrier_wait(tf::smem_addr(&sm.full[ring.stage]), ring.phase);
        if (Work != kLoads && warp < rows) multiply<In, N, Work>(sm, ring.stage, t, warp, acc);
        // One arrival a warp, once all its lanes are done with the stage.
        __syncwarp();
        if (threadIdx.x % 32 == 0) tf::mbarrier_arrive(tf::smem_addr(&sm.empty[ring.stage]));
        ring.advance(sm.count);
    }
}

template <class In, int N, bool OutF32, bool Bulk, int Work = kAll>
__device__ __forceinline__ void spmm(const TfSpmmBitmapParams &p) {
    const Shared<N> sm(tf::dynamic_shared(), p);
    const uint32_t tid = threadIdx.x, warp = tid / 32;
    const uint32_t n0 = blockIdx.y * N, split = blockIdx.z;
    const uint32_t units_m = (p.m + kUnitM - 1) / kUnitM, units_k = (p.k + kTileK - 1) / kTileK;
    const uint32_t um0 = blockIdx.x * kUnits;
    const uint32_t rows = min(uint32_t(kUnits), units_m - um0);
    const uint32_t k_begin = split * p.tiles_per_split;
    const uint32_t k_count = min(p.tiles_per_split, units_k - k_begin);

    // The offsets of the block's units, read once: row i's k tiles k_begin .. k_begin + k_count
    // and the end of the last (the next unit's start).
    const uint32_t *unit_offsets = reinterpret_cast<const uint32_t *>(p.unit_offsets);
    for (uint32_t i = tid; i < rows * (k_count + 1); i += kThreads) {
        const uint32_t row = i / (k_count + 1), t = i % (k_count + 1);
        sm.offsets[row * sm.stride + t] = unit_offsets[size_t(um0 + row) * units_k + k_begin + t];
    }
    if (tid < sm.count) {
        tf::mbarrier_init(tf::smem_addr(&sm.full[tid]), 32);
        tf::mbarrier_init(tf::smem_addr(&sm.empty[tid]), kUnits);
    }
    tf::mbarrier_init_fence();
    __syncthreads();

    Accumulators<N> acc = {};
    if (warp == kUnits) {
        produce<N, Bulk>(p, sm, k_begin, k_count, um0, rows, n0);
    } else {
        consume<In, N, Work>(sm, k_count, warp, rows, acc);
    }

    const uint32_t lane = tid % 32;
    spmm_common::write_results<In, N, OutF32>(p, sm.last, [&](auto result) {
        if (warp >= rows) return;  // the producer, and the warps of rows past m
        // The fragment layout of mma.m16n8k16's accumulators.
#pragma unroll
        for (int j = 0; j < N / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                result(warp * kUnitM + lane / 4 + (e / 2) * 8, j * 8 + (lane % 4) * 2 + e % 2, acc[j][e]);
    });
}

}  // namespace spmm_bitmap
