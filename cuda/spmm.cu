// Load-as-Sparse, Compute-as-Dense SpMM (Flash-LLM): y[n, m] = x[n, k] · w[m, k]ᵀ with w in
// Tiled-CSL (src/spmm/format.rs). A block owns 128 rows of w (one tile row) and N tokens; for
// each 128x64 weight tile it
//   1. has the tile's packed entries and the x tile copied to shared memory by cp.async,
//      TF_SPMM_STAGES tiles ahead (a ring of stages sized by the densest tile),
//   2. scatters the entries into a zeroed, swizzled dense tile in shared memory,
//   3. runs ldmatrix + mma.sync.m16n8k16 (f32 accumulators) on the dense tile and x tile.
// Split-K: block z takes a range of k tiles; the last block of each output tile to finish
// adds the f32 partials of all splits in split order, so results are deterministic.
#include "abi.h"
#include "common/mma.cuh"
#include "common/types.cuh"

#include <cstdint>

namespace {

constexpr int kTileM = TF_SPMM_TILE_M;
constexpr int kTileK = TF_SPMM_TILE_K;
constexpr int kThreads = TF_SPMM_WARPS * 32;
constexpr int kStages = TF_SPMM_STAGES;
constexpr int kRowBytes = kTileK * 2;  // one 64-value row of a tile, 8 chunks of 16 bytes

using tf::BF16;
using tf::F16;

// Byte offset of chunk `chunk` of row `row` in a swizzled [rows][kTileK] tile.
__device__ __forceinline__ uint32_t swizzled(uint32_t row, uint32_t chunk) {
    return tf::swizzled<kTileK>(row, chunk);
}

template <int N>
struct Shared {
    uint8_t *dense;   // [kTileM][kTileK] 16-bit values, swizzled
    uint8_t *x;       // kStages x [N][kTileK], swizzled
    uint8_t *sparse;  // kStages x stage_vectors x 16 bytes

    __device__ Shared(uint8_t *base, uint32_t stage_vectors) {
        dense = base;
        x = dense + kTileM * kRowBytes;
        sparse = x + kStages * N * kRowBytes;
        (void)stage_vectors;
    }
    __device__ uint8_t *x_stage(int s) const { return x + s * N * kRowBytes; }
    __device__ uint8_t *sparse_stage(int s, uint32_t stage_vectors) const {
        return sparse + size_t(s) * stage_vectors * 16;
    }
};

// Starts the copies of weight tile `tile_k` (of this block's tile row) and the matching x tile
// into stage `s`.
template <class In, int N>
__device__ __forceinline__ void load_stage(const TfSpmmParams &p, const Shared<N> &sm, int s,
                                           uint32_t tile, uint32_t tile_k, uint32_t n0) {
    const uint32_t tid = threadIdx.x;
    const uint4 *entries = reinterpret_cast<const uint4 *>(p.entries);
    const uint32_t *offsets = reinterpret_cast<const uint32_t *>(p.tile_offsets);
    const uint32_t first = offsets[tile], count = offsets[tile + 1] - first;
    const uint32_t sparse = tf::smem_addr(sm.sparse_stage(s, p.stage_vectors));
    for (uint32_t v = tid; v < count; v += kThreads)
        tf::cp_async_16(sparse + v * 16, entries + first + v, true);

    const uint16_t *x = reinterpret_cast<const uint16_t *>(p.x);
    uint8_t *x_tile = sm.x_stage(s);
    const bool vectors = p.k % 8 == 0;  // 16-byte aligned x rows
    for (uint32_t c = tid; c < N * 8; c += kThreads) {
        const uint32_t row = c / 8, chunk = c % 8;
        const uint32_t token = n0 + row, col = tile_k * kTileK + chunk * 8;
        uint8_t *dst = x_tile + swizzled(row, chunk);
        if (vectors) {
            const bool valid = token < p.n && col < p.k;
            tf::cp_async_16(tf::smem_addr(dst), valid ? x + size_t(token) * p.k + col : x, valid);
        } else {
            uint16_t values[8];
#pragma unroll
            for (int i = 0; i < 8; ++i)
                values[i] = (token < p.n && col + i < p.k) ? x[size_t(token) * p.k + col + i] : 0;
            *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(values);
        }
    }
}

template <class In, int N, bool OutF32>
__device__ __forceinline__ void spmm(const TfSpmmParams &p) {
    const Shared<N> sm(tf::dynamic_shared(), p.stage_vectors);
    const uint32_t tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const uint32_t tile_m = blockIdx.x, n0 = blockIdx.y * N, split = blockIdx.z;
    const uint32_t tiles_k = (p.k + kTileK - 1) / kTileK;
    const uint32_t k_begin = split * p.tiles_per_split;
    const uint32_t k_count = min(p.tiles_per_split, tiles_k - k_begin);
    const uint32_t first_tile = tile_m * tiles_k + k_begin;

    for (int s = 0; s < kStages - 1; ++s) {
        if (s < k_count) load_stage<In, N>(p, sm, s, first_tile + s, k_begin + s, n0);
        tf::cp_async_commit();
    }
    uint4 *dense16 = reinterpret_cast<uint4 *>(sm.dense);
    for (uint32_t i = tid; i < kTileM * kRowBytes / 16; i += kThreads) dense16[i] = make_uint4(0, 0, 0, 0);

    float acc[2][N / 8][4] = {};
    const uint32_t *offsets = reinterpret_cast<const uint32_t *>(p.tile_offsets);
    for (uint32_t it = 0; it < k_count; ++it) {
        tf::cp_async_wait<kStages - 2>();
        __syncthreads();  // stage `it` and the zeroed dense tile are visible to every thread
        const uint32_t ahead = it + kStages - 1;
        if (ahead < k_count)
            load_stage<In, N>(p, sm, ahead % kStages, first_tile + ahead, k_begin + ahead, n0);
        tf::cp_async_commit();

        // Scatter. A tile's padding repeats its last entry inside the same vector, so no two
        // threads write one place.
        const int s = it % kStages;
        const uint4 *staged = reinterpret_cast<const uint4 *>(sm.sparse_stage(s, p.stage_vectors));
        const uint32_t count = offsets[first_tile + it + 1] - offsets[first_tile + it];
        uint16_t *dense = reinterpret_cast<uint16_t *>(sm.dense);
        for (uint32_t v = tid; v < count; v += kThreads) {
            const uint4 e = staged[v];
            dense[e.x >> 16] = uint16_t(e.x);
            dense[e.y >> 16] = uint16_t(e.y);
            dense[e.z >> 16] = uint16_t(e.z);
            dense[e.w >> 16] = uint16_t(e.w);
        }
        __syncthreads();

        const uint32_t dense_base = tf::smem_addr(sm.dense);
        const uint32_t x_base = tf::smem_addr(sm.x_stage(s));
#pragma unroll
        for (uint32_t kk = 0; kk < kTileK / 16; ++kk) {
            uint32_t a[2][4];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const uint32_t row = warp * 32 + i * 16 + lane % 16;
                tf::ldmatrix_x4(a[i], dense_base + swizzled(row, kk * 2 + lane / 16));
            }
#pragma unroll
            for (int j = 0; j < N / 8; ++j) {
                uint32_t b[2];
                const uint32_t row = j * 8 + lane % 8;
                tf::ldmatrix_x2(b, x_base + swizzled(row, kk * 2 + (lane / 8) % 2));
                In::mma(acc[0][j], a[0], b);
                In::mma(acc[1][j], a[1], b);
            }
        }
        __syncthreads();  // every read of the dense tile is done
        for (uint32_t i = tid; i < kTileM * kRowBytes / 16; i += kThreads) dense16[i] = make_uint4(0, 0, 0, 0);
    }
    tf::cp_async_wait<0>();

    using Out = typename std::conditional<OutF32, float, typename In::T>::type;
    Out *y = reinterpret_cast<Out *>(p.y);
    auto store = [&](uint32_t token, uint32_t row, float value) {
        if (OutF32) {
            reinterpret_cast<float *>(y)[size_t(token) * p.m + row] = value;
        } else {
            reinterpret_cast<typename In::T *>(y)[size_t(token) * p.m + row] = In::from_float(value);
        }
    };
    const uint32_t row0 = tile_m * kTileM + warp * 32 + lane / 4;
    const uint32_t col0 = n0 + (lane % 4) * 2;
    if (p.splits == 1) {
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < N / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const uint32_t row = row0 + i * 16 + (e / 2) * 8, token = col0 + j * 8 + e % 2;
                    if (row < p.m && token < p.n) store(token, row, acc[i][j][e]);
                }
        return;
    }

    // Split-K: publish this split's partials, and let the last block of the tile add them.
    const uint32_t tokens_padded = gridDim.y * N;
    float *partials = reinterpret_cast<float *>(p.workspace);
    uint32_t *counters = reinterpret_cast<uint32_t *>(partials + size_t(p.splits) * tokens_padded * p.m);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < N / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const uint32_t row = row0 + i * 16 + (e / 2) * 8, token = col0 + j * 8 + e % 2;
                if (row < p.m)
                    partials[(size_t(split) * tokens_padded + token) * p.m + row] = acc[i][j][e];
            }
    __threadfence();
    __syncthreads();
    __shared__ bool last;
    uint32_t *counter = counters + tile_m * gridDim.y + blockIdx.y;
    if (tid == 0) last = atomicAdd(counter, 1u) == p.splits - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (uint32_t i = tid; i < kTileM * N; i += kThreads) {
        const uint32_t row = tile_m * kTileM + i % kTileM, token = n0 + i / kTileM;
        if (row >= p.m || token >= p.n) continue;
        float sum = 0.0f;
        for (uint32_t z = 0; z < p.splits; ++z)
            sum += __ldcg(&partials[(size_t(z) * tokens_padded + token) * p.m + row]);
        store(token, row, sum);
    }
    if (tid == 0) *counter = 0;  // ready for the next launch on the same workspace
}

}  // namespace

#define TF_SPMM_KERNEL(in, n, out, In, OutF32)                                             \
    extern "C" __global__ void __launch_bounds__(kThreads)                                 \
        tilefuse_spmm_tiledcsl_##in##_n##n##_##out(const __grid_constant__ TfSpmmParams p) { \
        spmm<In, n, OutF32>(p);                                                            \
    }
#define TF_SPMM_KERNELS(n)                           \
    TF_SPMM_KERNEL(f16, n, same, F16, false)         \
    TF_SPMM_KERNEL(f16, n, f32, F16, true)           \
    TF_SPMM_KERNEL(bf16, n, same, BF16, false)       \
    TF_SPMM_KERNEL(bf16, n, f32, BF16, true)

TF_SPMM_KERNELS(8)
TF_SPMM_KERNELS(16)
TF_SPMM_KERNELS(32)
TF_SPMM_KERNELS(64)
