// What both spmm kernels (cuda/spmm/kernel.cuh: Tiled-CSL, cuda/spmm/bitmap.cuh: bitmap) do
// alike: bring an x tile into shared memory, and write a block's results to y, directly or
// through split-K's partials.
#pragma once

#include "abi.h"
#include "common/mma.cuh"
#include "common/types.cuh"

#include <cstdint>
#include <type_traits>

namespace spmm_common {

constexpr int kTileM = TF_SPMM_TILE_M;
constexpr int kTileK = TF_SPMM_TILE_K;
constexpr int kRowBytes = kTileK * 2;  // one 64-value row of a tile, 8 chunks of 16 bytes

// Byte offset of chunk `chunk` of row `row` in a swizzled [rows][kTileK] tile.
__device__ __forceinline__ uint32_t swizzled(uint32_t row, uint32_t chunk) {
    return tf::swizzled<kTileK>(row, chunk);
}

// Thread `first` of `stride` threads starts its copies of x [n0 .., tile_k * kTileK ..] into
// the swizzled [N][kTileK] tile at `x_tile`: 16-byte cp.async copies where x's rows are
// 16-byte aligned (zero-filled past n and k), plain loads and stores elsewhere.
template <int N>
__device__ __forceinline__ void load_x_tile(uint64_t x_address, uint32_t n, uint32_t k,
                                            uint8_t *x_tile, uint32_t tile_k, uint32_t n0,
                                            uint32_t first, uint32_t stride) {
    const uint16_t *x = reinterpret_cast<const uint16_t *>(x_address);
    const bool vectors = k % 8 == 0 && x_address % 16 == 0;
    for (uint32_t c = first; c < N * 8; c += stride) {
        const uint32_t row = c / 8, chunk = c % 8;
        const uint32_t token = n0 + row, col = tile_k * kTileK + chunk * 8;
        uint8_t *dst = x_tile + swizzled(row, chunk);
        if (vectors) {
            const bool valid = token < n && col < k;
            tf::cp_async_16(tf::smem_addr(dst), valid ? x + size_t(token) * k + col : x, valid);
        } else {
            alignas(16) uint16_t values[8];
#pragma unroll
            for (int i = 0; i < 8; ++i)
                values[i] = (token < n && col + i < k) ? x[size_t(token) * k + col + i] : 0;
            *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(values);
        }
    }
}

// The last split-K block of an output tile: calls result(token, row, sum) for each of the
// tile's results inside y, with sum the f32 partials of all splits added in split order. Thread
// tid < kTileM adds row tid of the tile, kSumBatch tokens at a time: their loads of one split
// all go out together (a result at a time would wait out an L2 round trip per split and
// result).
constexpr int kSumBatch = 8;
template <int N, class Params, class Result>
__device__ __forceinline__ void add_partials(const Params &p, const float *partials,
                                             uint32_t tokens_padded, Result result) {
    constexpr int batch = N < kSumBatch ? N : kSumBatch;
    const uint32_t row = blockIdx.x * kTileM + threadIdx.x, n0 = blockIdx.y * N;
    if (threadIdx.x >= kTileM || row >= p.m) return;
#pragma unroll 1
    for (uint32_t first = n0; first < n0 + N; first += batch) {
        float sums[batch] = {};
#pragma unroll 1
        for (uint32_t z = 0; z < p.splits; ++z) {
            const float *split = partials + size_t(z) * tokens_padded * p.m;
#pragma unroll
            for (int j = 0; j < batch; ++j)
                if (first + j < p.n) sums[j] += __ldcg(&split[size_t(first + j) * p.m + row]);
        }
#pragma unroll
        for (int j = 0; j < batch; ++j)
            if (first + j < p.n) result(first + j, row, sums[j]);
    }
}

// Writes the block's results (block x: kTileM rows from x * kTileM, block y: N tokens from
// y * N, block z: split z) to y. for_each_result(f) calls f(row, token, value) for each
// result the calling thread holds (row and token within the block); every thread of the
// block calls this, since split-K synchronises them. With splits > 1 each block publishes its
// f32 partials, and the last of an output tile to finish adds them all in split order (so
// the result does not depend on which one that is) and leaves the tile's counter at zero.
// `last` is a word of shared memory that nothing else uses by then.
template <class In, int N, bool OutF32, class Params, class ForEachResult>
__device__ __forceinline__ void write_results(const Params &p, uint32_t *last,
                                              ForEachResult for_each_result) {
    using Out = typename std::conditional<OutF32, float, typename In::T>::type;
    Out *y = reinterpret_cast<Out *>(p.y);
    auto store = [&](uint32_t token, uint32_t row, float value) {
        if constexpr (OutF32) {
            y[size_t(token) * p.m + row] = value;
        } else {
            y[size_t(token) * p.m + row] = In::from_float(value);
        }
    };
    const uint32_t tile_m = blockIdx.x, n0 = blockIdx.y * N, split = blockIdx.z;
    const uint32_t row0 = tile_m * kTileM;
    if (p.splits == 1) {
        for_each_result([&](uint32_t row, uint32_t token, float value) {
            if (row0 + row < p.m && n0 + token < p.n) store(n0 + token, row0 + row, value);
        });
        return;
    }
    const uint32_t tokens_padded = gridDim.y * N;
    float *partials = reinterpret_cast<float *>(p.workspace);
    uint32_t *counters = reinterpret_cast<uint32_t *>(p.counters);
    for_each_result([&](uint32_t row, uint32_t token, float value) {
        if (row0 + row < p.m) partials[(size_t(split) * tokens_padded + n0 + token) * p.m + row0 + row] = value;
    });
    __threadfence();
    __syncthreads();
    uint32_t *counter = counters + tile_m * gridDim.y + blockIdx.y;
    if (threadIdx.x == 0) *last = atomicAdd(counter, 1u) == p.splits - 1;
    __syncthreads();
    if (!*last) return;
    if (threadIdx.x == 0) *counter = 0;  // ready for the next launch on the same workspace
    __threadfence();
    add_partials<N>(p, partials, tokens_padded, store);
}

}  // namespace spmm_common
