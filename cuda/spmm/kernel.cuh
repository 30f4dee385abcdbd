// The spmm kernel template (see the comment below), shared by cuda/spmm.cu, whose kernels
// ship, and cuda/spmm_probe.cu, the benchmark-only probes.
#pragma once

// Load-as-Sparse, Compute-as-Dense SpMM (Flash-LLM): y[n, m] = x[n, k] · w[m, k]ᵀ with w in
// Tiled-CSL (src/spmm/format.rs). A block owns 128 rows of w (one tile row) and N tokens, and
// walks its k tiles with one barrier per tile:
//   - cp.async brings each tile's packed entries and the matching x tile into a ring of
//     TF_SPMM_STAGES stages (sized by the densest tile, as far as shared memory allows),
//     TF_SPMM_STAGES - 2 tiles ahead of the scatter (a variant holds a tile's first entries
//     in registers instead, one tile ahead);
//   - in the step of tile t, the block scatters tile t + 1 into one of two zeroed, swizzled
//     dense tiles while each warp runs ldmatrix + mma.sync.m16n8k16 (f32 accumulators) on its
//     part of tile t in the other, then zeroes that part again (only that warp reads it). A
//     warp's part is 16 columns of all 128 rows for N <= 16, 32 columns of 64 rows for
//     N = 32, and all 64 columns of 32 rows for N = 64, times the x of its columns: with
//     fewer tokens, x is read fewer times per block; the column groups' sums are added at the
//     end.
// Split-K: block z takes a range of k tiles; the last block of each output tile to finish
// adds the f32 partials of all splits in split order, so results are deterministic.
#include "abi.h"
#include "common/mma.cuh"
#include "common/types.cuh"
#include "spmm/common.cuh"

#include <cstdint>

namespace {

using spmm_common::kRowBytes;
using spmm_common::kTileK;
using spmm_common::kTileM;
using spmm_common::swizzled;
constexpr int kThreads = TF_SPMM_WARPS * 32;
constexpr int kStages = TF_SPMM_STAGES;
constexpr int kTileBytes = kTileM * kRowBytes;
static_assert(kStages >= 3, "the scatter runs one tile ahead of the mma, loads one more");
// Entries in registers (the variant that loads them as Flash-LLM does): 128-bit loads of the
// first kHeldVectors vectors of a tile, kHeld per thread, issued one tile ahead of their
// scatter; the rest of a denser tile goes through the stages.
constexpr uint32_t kHeldVectors = TF_SPMM_HELD_VECTORS;
constexpr int kHeld = kHeldVectors / kThreads;
static_assert(kHeld * kThreads == kHeldVectors, "each thread holds as many vectors");

// How the warps split a tile: into kColumnGroups groups of columns times TF_SPMM_WARPS /
// kColumnGroups groups of rows, one part per warp (warp w: row group w / kColumnGroups,
// column group w % kColumnGroups). Fewer tokens, more column groups: each warp reads x only
// for its columns, and its accumulators (at most 64 floats) still fit.
template <int N>
constexpr int kColumnGroups = N <= 16 ? 4 : N <= 32 ? 2 : 1;
template <int N>
constexpr int kPartRows = kTileM * kColumnGroups<N> / TF_SPMM_WARPS;
template <int N>
constexpr int kPartSteps = kTileK / 16 / kColumnGroups<N>;  // 16-wide k steps of a part
template <int N>
constexpr int kMTiles = kPartRows<N> / 16;
template <int N>
using Accumulators = float[kMTiles<N>][N / 8][4];
static_assert(kColumnGroups<8> * kPartSteps<8> * 16 == kTileK, "column groups of whole k steps");

// The first row of warp `warp`'s part, and its column group.
template <int N>
__device__ __forceinline__ uint32_t part_row0(uint32_t warp) {
    if constexpr (kColumnGroups<N> == TF_SPMM_WARPS) return 0;
    else return warp / kColumnGroups<N> * kPartRows<N>;
}
template <int N>
__device__ __forceinline__ uint32_t part_group(uint32_t warp) {
    if constexpr (kColumnGroups<N> == TF_SPMM_WARPS) return warp;
    else return warp % kColumnGroups<N>;
}

using tf::BF16;
using tf::F16;

// The dynamic shared memory (abi.h gives the layout's size).
template <int N>
struct Shared {
    uint8_t *dense;      // 2 x [kTileM][kTileK] 16-bit values, swizzled
    uint8_t *x;          // kStages x [N][kTileK], swizzled
    uint8_t *sparse;     // kStages x stage_vectors x 16 bytes
    uint32_t *offsets;   // the block's k_count + 1 tile offsets (in vectors)
    uint32_t stage_vectors;

    __device__ Shared(uint8_t *base, uint32_t stage_vectors) : stage_vectors(stage_vectors) {
        dense = base;
        x = dense + 2 * kTileBytes;
        sparse = x + kStages * N * kRowBytes;
        offsets = reinterpret_cast<uint32_t *>(sparse + size_t(kStages) * stage_vectors * 16);
    }
    __device__ uint8_t *dense_tile(uint32_t t) const { return dense + (t % 2) * kTileBytes; }
    __device__ uint8_t *x_stage(uint32_t t) const { return x + (t % kStages) * N * kRowBytes; }
    __device__ uint8_t *sparse_stage(uint32_t t) const {
        return sparse + size_t(t % kStages) * stage_vectors * 16;
    }
    __device__ uint32_t vectors(uint32_t t) const { return offsets[t + 1] - offsets[t]; }
};

// Starts the copies of the block's k tile `t` (column tile `tile_k`) into stage t % kStages:
// its packed entries from vector `First` on (the ones before are held in registers) and the
// matching x tile.
template <int N, uint32_t First>
__device__ __forceinline__ void load_tile(const TfSpmmParams &p, const Shared<N> &sm, uint32_t t,
                                          uint32_t tile_k, uint32_t n0) {
    const uint32_t tid = threadIdx.x;
    const uint4 *entries = reinterpret_cast<const uint4 *>(p.entries) + sm.offsets[t];
    const uint32_t count = min(sm.vectors(t) - min(sm.vectors(t), First), sm.stage_vectors);
    const uint32_t sparse = tf::smem_addr(sm.sparse_stage(t));
    for (uint32_t v = tid; v < count; v += kThreads)
        tf::cp_async_16(sparse + v * 16, entries + v + First, true);

    spmm_common::load_x_tile<N>(p.x, p.n, p.k, sm.x_stage(t), tile_k, n0, tid, kThreads);
}

// Vectors a thread loads from a stage before it writes them into the dense tile: at 80%
// sparsity a tile has about 3.3 per thread. The variants with entries in registers use a stage
// only for tiles denser than kHeldVectors, and have no registers to spare.
template <uint32_t First>
constexpr int kScatterBatch = First > 0 ? 1 : 4;

// The entry vectors of a tile that one thread holds in registers (vectors tid + i kThreads).
using Held = uint4[kHeld];

// (By value: through a reference into shared memory, each of e's words would be read after the
// previous word's store, since the compiler cannot tell that they never overlap.)
__device__ __forceinline__ void place(uint16_t *dense, uint4 e) {
    dense[e.x >> 16] = uint16_t(e.x);
    dense[e.y >> 16] = uint16_t(e.y);
    dense[e.z >> 16] = uint16_t(e.z);
    dense[e.w >> 16] = uint16_t(e.w);
}

// Loads the thread's vectors of the block's k tile `t` among its first kHeldVectors.
template <int N>
__device__ __forceinline__ void load_held(const TfSpmmParams &p, const Shared<N> &sm, uint32_t t,
                                          Held &held) {
    const uint4 *entries = reinterpret_cast<const uint4 *>(p.entries) + sm.offsets[t];
    const uint32_t count = sm.vectors(t);
#pragma unroll
    for (int i = 0; i < kHeld; ++i) {
        const uint32_t v = threadIdx.x + i * kThreads;
        if (v < count) held[i] = __ldcs(entries + v);
    }
}

// Writes the entries of the block's k tile `t` into dense tile t % 2, which holds zeros: the
// ones before vector `First` from `held`, the next ones from the tile's stage, and the rest of
// a tile denser than a stage holds from global memory. A tile's padding repeats an entry
// inside its own vector, so no two threads write one place.
template <int N, uint32_t First>
__device__ __forceinline__ void scatter(const TfSpmmParams &p, const Shared<N> &sm, uint32_t t,
                                        const Held &held) {
    uint16_t *dense = reinterpret_cast<uint16_t *>(sm.dense_tile(t));
    const uint32_t count = sm.vectors(t);
    if constexpr (First > 0) {
        static_assert(First == kHeldVectors, "the registers hold the first vectors");
#pragma unroll
        for (int i = 0; i < kHeld; ++i)
            if (threadIdx.x + i * kThreads < count) place(dense, held[i]);
    }
    // Two loops rather than a choice per vector: the second runs only where shared memory is
    // too small for the densest tile. In the first, a batch's loads all go out before its first
    // store: the compiler keeps a shared-memory load after every earlier shared-memory store, so
    // a vector at a time would wait out one load's latency per vector.
    const uint32_t rest = count - min(count, First);
    const uint32_t in_stage = min(rest, sm.stage_vectors);
    const uint4 *staged = reinterpret_cast<const uint4 *>(sm.sparse_stage(t));
    for (uint32_t v = threadIdx.x; v < in_stage; v += kScatterBatch<First> * kThreads) {
        uint4 batch[kScatterBatch<First>];
#pragma unroll
        for (int i = 0; i < kScatterBatch<First>; ++i)
            if (v + i * kThreads < in_stage) batch[i] = staged[v + i * kThreads];
#pragma unroll
        for (int i = 0; i < kScatterBatch<First>; ++i)
            if (v + i * kThreads < in_stage) place(dense, batch[i]);
    }
    const uint4 *entries = reinterpret_cast<const uint4 *>(p.entries) + sm.offsets[t];
    // (Past First only inside the loop, where the tile has that many vectors.)
    for (uint32_t v = in_stage + threadIdx.x; v < rest; v += kThreads)
        place(dense, (entries + First)[v]);
}

// acc += the warp's part of dense tile t · x tile t.
template <class In, int N>
__device__ __forceinline__ void multiply(const Shared<N> &sm, uint32_t t, Accumulators<N> &acc) {
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const uint32_t row0 = part_row0<N>(warp);
    const uint32_t dense_base = tf::smem_addr(sm.dense_tile(t));
    const uint32_t x_base = tf::smem_addr(sm.x_stage(t));
#pragma unroll
    for (uint32_t step = 0; step < kPartSteps<N>; ++step) {
        const uint32_t kk = part_group<N>(warp) * kPartSteps<N> + step;  // columns 16 kk ..
        uint32_t b[N / 8][2];
#pragma unroll
        for (int j = 0; j < N / 8; ++j)
            tf::ldmatrix_x2(b[j], x_base + swizzled(j * 8 + lane % 8, kk * 2 + (lane / 8) % 2));
#pragma unroll
        for (int i = 0; i < kMTiles<N>; ++i) {
            uint32_t a[4];
            tf::ldmatrix_x4(a, dense_base + swizzled(row0 + i * 16 + lane % 16, kk * 2 + lane / 16));
#pragma unroll
            for (int j = 0; j < N / 8; ++j) In::mma(acc[i][j], a, b[j]);
        }
    }
}

// Zeroes the warp's part of dense tile t (after its own ldmatrix reads of it).
template <int N>
__device__ __forceinline__ void clear_part(const Shared<N> &sm, uint32_t t) {
    __syncwarp();
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    uint8_t *tile = sm.dense_tile(t);
    const uint32_t row0 = part_row0<N>(warp);
    if constexpr (kColumnGroups<N> > 1) {
        // The part's `chunks` 16-byte chunks of each row; each 8 lanes (one 128-byte
        // wavefront) take one chunk of 8 consecutive rows, which the swizzle puts in 8
        // different banks. A store covers 32 / chunks rows, a multiple of 8, which the swizzle
        // treats alike: one address, plus j times those rows.
        constexpr uint32_t chunks = 8 / kColumnGroups<N>, store_rows = 32 / chunks;
        const uint32_t row = row0 + lane / (8 * chunks) * 8 + lane % 8;
        const uint32_t chunk = part_group<N>(warp) * chunks + lane / 8 % chunks;
        uint8_t *first = tile + swizzled(row, chunk);
#pragma unroll
        for (uint32_t j = 0; j < kPartRows<N> / store_rows; ++j)
            *reinterpret_cast<uint4 *>(first + j * store_rows * kRowBytes) = make_uint4(0, 0, 0, 0);
    } else {
        // Whole rows: each 8 lanes write one row's 128 contiguous bytes.
        uint4 *rows = reinterpret_cast<uint4 *>(tile + row0 * kRowBytes);
#pragma unroll
        for (uint32_t i = lane; i < kPartRows<N> * kRowBytes / 16; i += 32) rows[i] = make_uint4(0, 0, 0, 0);
    }
}

// Calls result(row, token, value) once for each of the block's kTileM x N results (row and
// token counted within the block). With several column groups, their sums are first added in
// group order through the dense tiles' shared memory, so every thread must call this.
template <int N, class Result>
__device__ __forceinline__ void for_each_result(const Shared<N> &sm, const Accumulators<N> &acc,
                                                Result result) {
    const uint32_t tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const uint32_t row0 = part_row0<N>(warp);
    // The fragment layout of mma.m16n8k16's accumulators.
    auto row_of = [&](int i, int e) { return row0 + i * 16 + lane / 4 + (e / 2) * 8; };
    auto token_of = [&](int j, int e) { return j * 8 + (lane % 4) * 2 + e % 2; };
    if constexpr (kColumnGroups<N> > 1) {
        constexpr int groups = kColumnGroups<N>;
        static_assert(groups * N * kTileM * 4 <= 2 * kTileBytes, "the sums fit the dense tiles");
        float *sums = reinterpret_cast<float *>(sm.dense);  // [group][N][kTileM]
        const uint32_t group = part_group<N>(warp);
        __syncthreads();  // every warp is done with the dense tiles
#pragma unroll
        for (int i = 0; i < kMTiles<N>; ++i)
#pragma unroll
            for (int j = 0; j < N / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    sums[(group * N + token_of(j, e)) * kTileM + row_of(i, e)] = acc[i][j][e];
        __syncthreads();
        for (uint32_t i = tid; i < kTileM * N; i += kThreads) {
            const uint32_t row = i % kTileM, token = i / kTileM;
            float sum = 0.0f;
#pragma unroll
            for (int g = 0; g < groups; ++g) sum += sums[(g * N + token) * kTileM + row];
            result(row, token, sum);
        }
    } else {
#pragma unroll
        for (int i = 0; i < kMTiles<N>; ++i)
#pragma unroll
            for (int j = 0; j < N / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) result(row_of(i, e), token_of(j, e), acc[i][j][e]);
    }
}

// The parts of a tile's work. The kernels do them all; the probes, which benchmarks time to
// see where a tile's time goes, leave some out (their y is zero: no multiply, no sums).
enum Parts : int { kLoads = 0, kScatter = 1, kClear = 2, kMultiply = 4, kAll = 7 };

// Where a tile's entries go on their way to the scatter: all through the stages, or the first
// kHeldVectors through registers.
enum Entries : int { kStaged = 0, kInRegisters = 1 };

template <class In, int N, bool OutF32, int Work = kAll, Entries Via = kStaged>
__device__ __forceinline__ void spmm(const TfSpmmParams &p) {
    constexpr uint32_t kFirstStaged = Via == kInRegisters ? kHeldVectors : 0;
    const Shared<N> sm(tf::dynamic_shared(), p.stage_vectors);
    const uint32_t tid = threadIdx.x;
    const uint32_t tile_m = blockIdx.x, n0 = blockIdx.y * N, split = blockIdx.z;
    const uint32_t tiles_k = (p.k + kTileK - 1) / kTileK;
    const uint32_t k_begin = split * p.tiles_per_split;
    const uint32_t k_count = min(p.tiles_per_split, tiles_k - k_begin);
    const uint32_t first_tile = tile_m * tiles_k + k_begin;

    // The block's tile offsets, read once.
    const uint32_t *offsets = reinterpret_cast<const uint32_t *>(p.tile_offsets) + first_tile;
    for (uint32_t i = tid; i <= k_count; i += kThreads) sm.offsets[i] = offsets[i];
    __syncthreads();

    Held held = {};
    if constexpr (Via == kInRegisters) {
        if (k_count > 0) load_held<N>(p, sm, 0, held);
    }
    for (uint32_t t = 0; t < kStages - 1; ++t) {
        if (t < k_count) load_tile<N, kFirstStaged>(p, sm, t, k_begin + t, n0);
        tf::cp_async_commit();
    }
    // Both dense tiles zeroed while the first tiles are on their way.
    uint4 *dense16 = reinterpret_cast<uint4 *>(sm.dense);
    for (uint32_t i = tid; i < 2 * kTileBytes / 16; i += kThreads) dense16[i] = make_uint4(0, 0, 0, 0);
    tf::cp_async_wait<kStages - 2>();  // tile 0
    __syncthreads();
    if constexpr ((Work & kScatter) != 0) {
        if (k_count > 0) scatter<N, kFirstStaged>(p, sm, 0, held);
    }
    if constexpr (Via == kInRegisters) {
        if (k_count > 1) load_held<N>(p, sm, 1, held);
    }

    Accumulators<N> acc = {};
    for (uint32_t t = 0; t < k_count; ++t) {
        // Committed: tiles 0 .. t + kStages - 2. Tile t + 1 must have landed.
        tf::cp_async_wait<kStages - 3>();
        // Tile t + 1's entries and every thread's scatter of tile t are visible, and every warp
        // is done with tile t - 1: its stage and dense tile may be reused.
        __syncthreads();
        const uint32_t ahead = t + kStages - 1;
        if (ahead < k_count) load_tile<N, kFirstStaged>(p, sm, ahead, k_begin + ahead, n0);
        tf::cp_async_commit();
        if constexpr ((Work & kScatter) != 0) {
            if (t + 1 < k_count) scatter<N, kFirstStaged>(p, sm, t + 1, held);
        }
        if constexpr (Via == kInRegisters) {
            if (t + 2 < k_count) load_held<N>(p, sm, t + 2, held);
        }
        if constexpr ((Work & kMultiply) != 0) multiply<In, N>(sm, t, acc);
        if constexpr ((Work & kClear) != 0) clear_part<N>(sm, t);
    }
    tf::cp_async_wait<0>();

    // Whether this block is split-K's last is kept in dynamic shared memory (a static
    // __shared__ variable would count against the opt-in limit that the plan may fill): in
    // the first of the tile offsets, which nothing reads after the loop.
    spmm_common::write_results<In, N, OutF32>(p, sm.offsets, [&](auto result) {
        for_each_result<N>(sm, acc, result);
    });
}

}  // namespace
