// Block-sparse attention backward in the FlashAttention-2 design, deterministic (no atomics):
// the dq kernel walks, for 64 query rows, the key blocks their q block lists (the forward's
// lists) and accumulates dq; the dk/dv kernel walks, for 64 keys, the q blocks that list their
// kv block (the transposed lists), head after head of the GQA group, and accumulates dk and
// dv. Each recomputes P = exp2(S·scale·log2(e) − lse·log2(e)) from the forward's lse; the dq
// kernel also computes D = rowsum(do ∘ o) of its rows, which the dk/dv kernel, launched after
// it, reads. Warps own 16 rows (dq) or 16 keys (dk/dv); every product is mma.sync.m16n8k16
// with f32 accumulators, its A operand either a 16-row slice of a shared-memory tile or P /
// dS from registers, rounded to the input type as FlashAttention rounds them. Tiles arrive by
// cp.async, two in flight.
#include "abi.h"
#include "attention/common.cuh"
#include "common/mma.cuh"
#include "common/types.cuh"

#include <cstdint>

namespace {

constexpr int kTile = TF_ATTENTION_KV_TILE;  // rows of every tile: query rows, or keys
constexpr int kThreads = TF_ATTENTION_BACKWARD_THREADS;
static_assert(kThreads == kTile / 16 * 32, "a warp per 16 rows of a tile");
constexpr float kLog2e = 1.4426950408889634f;

using tf::BF16;
using tf::F16;
using tf::swizzled;
using namespace attention_common;

using Params = TfAttentionBackwardParams;

// Gradient stores: two adjacent values of a packed gradient, in f32 or in the input type.
struct StoreF32 {
    static __device__ __forceinline__ void pair(void *base, size_t at, float lo, float hi) {
        *reinterpret_cast<float2 *>(reinterpret_cast<float *>(base) + at) = make_float2(lo, hi);
    }
};
template <class In>
struct StoreSame {
    static __device__ __forceinline__ void pair(void *base, size_t at, float lo, float hi) {
        *reinterpret_cast<uint32_t *>(reinterpret_cast<uint16_t *>(base) + at) = In::pack(lo, hi);
    }
};

// acc (16 x Rows) += A · Bᵀ, A the 16 rows from `a_row` of tile `a`, B the Rows rows from
// `b_row` of tile `b` (both [64][D] swizzled): S = Q·Kᵀ, dP = dO·Vᵀ and their transposes.
template <class In, int D, int Rows = kTile>
__device__ __forceinline__ void product_nt(float (&acc)[Rows / 8][4], uint32_t a, uint32_t a_row,
                                           uint32_t b, uint32_t b_row = 0) {
    const uint32_t lane = threadIdx.x % 32;
    // Two k steps at a time: unrolled further, ptxas holds every step's addresses and the
    // d = 128 dk/dv kernel spills.
#pragma unroll 2
    for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t frag[4];
        tf::ldmatrix_x4(frag, a + swizzled<D>(a_row + lane % 16, kk * 2 + lane / 16));
        uint32_t bf[Rows / 8][2];
#pragma unroll
        for (int jj = 0; jj < Rows / 16; ++jj) {
            uint32_t r[4];  // rows 16 jj .. + 7 and 16 jj + 8 .. + 15 of b's
            tf::ldmatrix_x4(r, b + swizzled<D>(b_row + (2 * jj + lane / 16) * 8 + lane % 8,
                                               kk * 2 + (lane / 8) % 2));
            bf[2 * jj][0] = r[0];
            bf[2 * jj][1] = r[1];
            bf[2 * jj + 1][0] = r[2];
            bf[2 * jj + 1][1] = r[3];
        }
#pragma unroll
        for (int j = 0; j < Rows / 8; ++j) In::mma(acc[j], frag, bf[j]);
    }
}

// acc (16 x D) += A · B, A (16 x 64) in registers as A fragments (one per 16 columns), B the
// tile `b` ([64][D] swizzled): dQ += dS·K, dV += Pᵀ·dO, dK += dSᵀ·Q.
template <class In, int D>
__device__ __forceinline__ void product_nn(float (&acc)[D / 8][4], const uint32_t (&a)[kTile / 16][4],
                                           uint32_t b) {
    const uint32_t lane = threadIdx.x % 32;
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk)
#pragma unroll
        for (int nn = 0; nn < D / 16; ++nn) {
            uint32_t r[4];  // columns 16 nn .. + 7 and 16 nn + 8 .. + 15 of b
            tf::ldmatrix_x4_trans(r, b + swizzled<D>(kk * 16 + lane % 16, 2 * nn + lane / 16));
            const uint32_t lo[2] = {r[0], r[1]}, hi[2] = {r[2], r[3]};
            In::mma(acc[2 * nn], a[kk], lo);
            In::mma(acc[2 * nn + 1], a[kk], hi);
        }
}

// A 16 x 64 accumulator as A fragments of the next product, rounded to the input type.
template <class In>
__device__ __forceinline__ void to_fragments(uint32_t (&a)[kTile / 16][4], const float (&c)[kTile / 8][4]) {
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
        a[kk][0] = In::pack(c[2 * kk][0], c[2 * kk][1]);
        a[kk][1] = In::pack(c[2 * kk][2], c[2 * kk][3]);
        a[kk][2] = In::pack(c[2 * kk + 1][0], c[2 * kk + 1][1]);
        a[kk][3] = In::pack(c[2 * kk + 1][2], c[2 * kk + 1][3]);
    }
}

// Element e of column block j of the 16 x 64 accumulator that `to_fragments` packed into a.
template <class In>
__device__ __forceinline__ float element(const uint32_t (&a)[kTile / 16][4], int j, int e) {
    return In::to_float(uint16_t(a[j / 2][(j % 2) * 2 + e / 2] >> (16 * (e % 2))));
}

// A row's lse in base 2 for P = exp2(s − lse2): +inf for a row past lq or without keys
// (lse = −inf), whose P is then 0.
__device__ __forceinline__ float lse_log2(const Params &p, uint32_t batch, uint32_t head, uint32_t query) {
    if (query >= p.lq) return INFINITY;
    const float lse = reinterpret_cast<const float *>(p.lse)[(size_t(batch) * p.heads_q + head) * p.lq + query];
    return lse == -INFINITY ? INFINITY : lse * kLog2e;
}

// ---- dq -------------------------------------------------------------------------------------

// D = rowsum(do ∘ o) of the block's 64 rows into `delta_tile` (shared) and p.delta: two lanes
// per row, do from its shared tile, o from global memory.
template <class In, int D>
__device__ __forceinline__ void row_deltas(const Params &p, uint32_t do_tile, float *delta_tile,
                                           uint32_t batch, uint32_t head, uint32_t first_query) {
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const uint32_t row = warp * 16 + lane / 2, half = lane % 2, query = first_query + row;
    const uint16_t *o = reinterpret_cast<const uint16_t *>(p.o) + batch * p.o_stride_b +
                        head * p.o_stride_h + size_t(query) * p.o_stride_l;
    const uint8_t *shared = tf::dynamic_shared();
    const uint32_t shared_base = tf::smem_addr(shared);
    float sum = 0.0f;
    if (query < p.lq) {
#pragma unroll
        for (int c = 0; c < D / 16; ++c) {
            const uint32_t chunk = half * (D / 16) + c;
            const uint4 dov = *reinterpret_cast<const uint4 *>(shared + (do_tile - shared_base) + swizzled<D>(row, chunk));
            const uint4 ov = *reinterpret_cast<const uint4 *>(o + chunk * 8);
            const uint32_t dw[4] = {dov.x, dov.y, dov.z, dov.w}, ow[4] = {ov.x, ov.y, ov.z, ov.w};
#pragma unroll
            for (int e = 0; e < 8; ++e)
                sum += In::to_float(uint16_t(dw[e / 2] >> (16 * (e % 2)))) *
                       In::to_float(uint16_t(ow[e / 2] >> (16 * (e % 2))));
        }
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if (half == 0) {
        delta_tile[row] = sum;
        if (query < p.lq)
            reinterpret_cast<float *>(p.delta)[(size_t(batch) * p.heads_q + head) * p.lq + query] = sum;
    }
}

template <class In, class Out, int D>
__device__ __forceinline__ void backward_dq(const Params &p) {
    constexpr uint32_t kTileBytes = kTile * D * 2;
    uint8_t *shared = tf::dynamic_shared();
    const uint32_t q_tile = tf::smem_addr(shared), do_tile = q_tile + kTileBytes;
    const auto k_tile = [&](uint32_t s) { return q_tile + (2 + 2 * s) * kTileBytes; };
    const auto v_tile = [&](uint32_t s) { return k_tile(s) + kTileBytes; };
    float *delta_tile = reinterpret_cast<float *>(shared + 6 * kTileBytes);

    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const uint32_t head = blockIdx.y, batch = blockIdx.z;
    const uint32_t first_query = blockIdx.x * kTile;
    const uint32_t q_block = first_query / p.block_m;
    const uint32_t kv_head = head / (p.heads_q / p.heads_kv);
    const uint16_t *q = reinterpret_cast<const uint16_t *>(p.q) + batch * p.q_stride_b + head * p.q_stride_h;
    const uint16_t *d_o = reinterpret_cast<const uint16_t *>(p.d_o) + batch * p.o_stride_b + head * p.o_stride_h;
    const uint16_t *k = reinterpret_cast<const uint16_t *>(p.k) + batch * p.k_stride_b + kv_head * p.k_stride_h;
    const uint16_t *v = reinterpret_cast<const uint16_t *>(p.v) + batch * p.v_stride_b + kv_head * p.v_stride_h;

    const uint32_t *partial_offsets = reinterpret_cast<const uint32_t *>(p.partial_offsets);
    const uint32_t *full_offsets = reinterpret_cast<const uint32_t *>(p.full_offsets);
    const uint32_t *partial = reinterpret_cast<const uint32_t *>(p.partial);
    const uint32_t *full = reinterpret_cast<const uint32_t *>(p.full);
    const uint32_t mask_row = ((p.mask_batch == 1 ? 0 : batch) * p.mask_heads +
                               (p.mask_heads == 1 ? 0 : head)) * p.q_blocks + q_block;
    const uint32_t n_partial = partial_offsets[mask_row + 1] - partial_offsets[mask_row];
    const uint32_t n_full = full_offsets[mask_row + 1] - full_offsets[mask_row];
    const uint32_t tiles_per_block = p.block_n / kTile;
    const uint32_t tiles = (n_partial + n_full) * tiles_per_block;
    struct Tile {
        uint32_t key0;
        bool partial;
    };
    const auto tile_at = [&](uint32_t t) {
        const uint32_t n = t / tiles_per_block;
        const bool is_partial = n < n_partial;
        const uint32_t block = is_partial ? partial[partial_offsets[mask_row] + n]
                                          : full[full_offsets[mask_row] + n - n_partial];
        return Tile{block * p.block_n + (t % tiles_per_block) * kTile, is_partial};
    };
    // Two copy groups per tile, K's and V's (empty past the last tile).
    const auto load_kv = [&](uint32_t t, int stage) {
        Tile tile = t < tiles ? tile_at(t) : Tile{0, false};
        const auto keys = [&](const uint16_t *slice, uint64_t stride) {
            return [slice, stride, key0 = tile.key0, lk = p.lk](uint32_t row) {
                const uint32_t key = key0 + row;
                return key < lk ? slice + key * stride : nullptr;
            };
        };
        if (t < tiles) load_rows<D, kTile, kThreads>(k_tile(stage), k, keys(k, p.k_stride_l));
        tf::cp_async_commit();
        if (t < tiles) load_rows<D, kTile, kThreads>(v_tile(stage), v, keys(v, p.v_stride_l));
        tf::cp_async_commit();
    };
    const auto query_rows = [&](const uint16_t *tensor, uint64_t stride) {
        return [=](uint32_t row) -> const uint16_t * {
            const uint32_t query = first_query + row;
            return query < p.lq ? tensor + query * stride : nullptr;
        };
    };
    load_rows<D, kTile, kThreads>(q_tile, q, query_rows(q, p.q_stride_l));
    load_rows<D, kTile, kThreads>(do_tile, d_o, query_rows(d_o, p.o_stride_l));
    tf::cp_async_commit();
    load_kv(0, 0);
    tf::cp_async_wait<2>();  // q and do
    __syncthreads();
    row_deltas<In, D>(p, do_tile, delta_tile, batch, head, first_query);
    __syncthreads();

    // The thread's rows: row0 and row0 + 8 of its warp's 16.
    const uint32_t row0 = warp * 16 + lane / 4;
    float lse2[2], delta[2];
    uint32_t query[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        query[r] = first_query + row0 + 8 * r;
        lse2[r] = lse_log2(p, batch, head, query[r]);
        delta[r] = delta_tile[row0 + 8 * r];
    }
    const Allowed allowed = allowed_distances(p.element, p.window);
    const int64_t shift = int64_t(p.lk) - p.lq;
    const uint32_t warp_query = first_query + warp * 16;

    float dq[D / 8][4] = {};
    for (uint32_t t = 0, stage = 0; t < tiles; ++t, stage ^= 1) {
        const Tile tile = tile_at(t);
        load_kv(t + 1, stage ^ 1);
        tf::cp_async_wait<3>();  // K of tile t
        __syncthreads();

        float s[kTile / 8][4] = {};
        product_nt<In, D>(s, q_tile, warp * 16, k_tile(stage));
        const Coverage covered =
            coverage_of(allowed, tile.partial, int64_t(warp_query) + shift - (tile.key0 + kTile - 1),
                        int64_t(warp_query + 15) + shift - tile.key0, tile.key0 + kTile > p.lk);
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                bool ok = covered == Coverage::kAll;
                if (covered == Coverage::kSome) {
                    const uint32_t key = tile.key0 + j * 8 + (lane % 4) * 2 + e % 2;
                    ok = key < p.lk &&
                         (!tile.partial || allowed.contains(int64_t(query[e / 2]) + shift - key));
                }
                s[j][e] = ok ? tf::exp2_approx(fmaf(s[j][e], p.scale_log2, -lse2[e / 2])) : 0.0f;
            }

        tf::cp_async_wait<2>();  // V of tile t
        __syncthreads();
        float dp[kTile / 8][4] = {};
        product_nt<In, D>(dp, do_tile, warp * 16, v_tile(stage));
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) dp[j][e] = s[j][e] * (dp[j][e] - delta[e / 2]);
        uint32_t ds[kTile / 16][4];
        to_fragments<In>(ds, dp);
        product_nn<In, D>(dq, ds, k_tile(stage));
        __syncthreads();  // this stage is read; the next iteration's copy may overwrite it
    }
    tf::cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (query[r] >= p.lq) continue;
        const size_t row = (size_t(batch) * p.lq + query[r]) * p.heads_q + head;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            Out::pair(reinterpret_cast<void *>(p.dq), row * D + n * 8 + (lane % 4) * 2,
                      dq[n][2 * r] * p.scale, dq[n][2 * r + 1] * p.scale);
    }
}

// ---- dk, dv ---------------------------------------------------------------------------------

// The q tiles of a kv block, in the order the dk/dv kernel takes them: the query heads of the
// kv head's group in order, for each the q blocks of its transposed lists (partial first),
// each in tiles of 64 query rows (those from lq on left out).
struct QTile {
    uint32_t head, query0;
    bool partial, valid;
};
struct QTileWalk {
    const Params &p;
    uint32_t batch, kv_block, head, last_head;  // head: the query head walked now
    uint32_t item = 0, sub = 0, n_partial = 0, n_full = 0, partial_at = 0, full_at = 0;

    __device__ void start_head() {
        const uint32_t *partial_offsets = reinterpret_cast<const uint32_t *>(p.t_partial_offsets);
        const uint32_t *full_offsets = reinterpret_cast<const uint32_t *>(p.t_full_offsets);
        const uint32_t column = ((p.mask_batch == 1 ? 0 : batch) * p.mask_heads +
                                 (p.mask_heads == 1 ? 0 : head)) * p.kv_blocks + kv_block;
        partial_at = partial_offsets[column];
        full_at = full_offsets[column];
        n_partial = partial_offsets[column + 1] - partial_at;
        n_full = full_offsets[column + 1] - full_at;
        item = sub = 0;
    }

    __device__ QTile next() {
        const uint32_t tiles_per_block = p.block_m / kTile;
        for (;;) {
            if (item == n_partial + n_full) {
                if (head == last_head) return QTile{0, 0, false, false};
                ++head;
                start_head();
                continue;
            }
            const bool is_partial = item < n_partial;
            const uint32_t block = is_partial
                                       ? reinterpret_cast<const uint32_t *>(p.t_partial)[partial_at + item]
                                       : reinterpret_cast<const uint32_t *>(p.t_full)[full_at + item - n_partial];
            const uint32_t query0 = block * p.block_m + sub * kTile;
            if (++sub == tiles_per_block || query0 >= p.lq) {
                sub = 0;
                ++item;
            }
            if (query0 < p.lq) return QTile{head, query0, is_partial, true};
        }
    }
};

template <class In, class Out, int D>
__device__ __forceinline__ void backward_dkdv(const Params &p) {
    constexpr uint32_t kTileBytes = kTile * D * 2;
    uint8_t *shared = tf::dynamic_shared();
    const uint32_t k_tile = tf::smem_addr(shared), v_tile = k_tile + kTileBytes;
    const auto q_tile = [&](uint32_t s) { return k_tile + (2 + 2 * s) * kTileBytes; };
    const auto do_tile = [&](uint32_t s) { return q_tile(s) + kTileBytes; };
    // Per stage: the tile's rows' lse in base 2, then their D.
    float *row_values = reinterpret_cast<float *>(shared + 6 * kTileBytes);
    const auto lse_tile = [&](uint32_t s) { return row_values + s * 2 * kTile; };
    const auto delta_tile = [&](uint32_t s) { return lse_tile(s) + kTile; };

    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const uint32_t kv_head = blockIdx.y, batch = blockIdx.z;
    const uint32_t first_key = blockIdx.x * kTile;
    const uint32_t group = p.heads_q / p.heads_kv;
    const uint16_t *k = reinterpret_cast<const uint16_t *>(p.k) + batch * p.k_stride_b + kv_head * p.k_stride_h;
    const uint16_t *v = reinterpret_cast<const uint16_t *>(p.v) + batch * p.v_stride_b + kv_head * p.v_stride_h;
    const uint16_t *q = reinterpret_cast<const uint16_t *>(p.q) + batch * p.q_stride_b;
    const uint16_t *d_o = reinterpret_cast<const uint16_t *>(p.d_o) + batch * p.o_stride_b;

    const auto key_rows = [&](const uint16_t *tensor, uint64_t stride) {
        return [=](uint32_t row) -> const uint16_t * {
            const uint32_t key = first_key + row;
            return key < p.lk ? tensor + key * stride : nullptr;
        };
    };
    load_rows<D, kTile, kThreads>(k_tile, k, key_rows(k, p.k_stride_l));
    load_rows<D, kTile, kThreads>(v_tile, v, key_rows(v, p.v_stride_l));
    tf::cp_async_commit();

    // Two copy groups per q tile, q's and do's (empty past the last); the rows' lse and D by
    // plain loads, kept in registers until the tile's stage is free.
    const auto load_q = [&](const QTile &tile, uint32_t stage) {
        const auto query_rows = [&](const uint16_t *tensor, uint64_t stride_l, uint64_t stride_h) {
            return [=](uint32_t row) -> const uint16_t * {
                const uint32_t query = tile.query0 + row;
                return query < p.lq ? tensor + tile.head * stride_h + query * stride_l : nullptr;
            };
        };
        if (tile.valid) load_rows<D, kTile, kThreads>(q_tile(stage), q, query_rows(q, p.q_stride_l, p.q_stride_h));
        tf::cp_async_commit();
        if (tile.valid) load_rows<D, kTile, kThreads>(do_tile(stage), d_o, query_rows(d_o, p.o_stride_l, p.o_stride_h));
        tf::cp_async_commit();
    };
    // Thread i < 64 holds row i's lse2, thread 64 + i row i's D (0 past lq).
    const auto row_value = [&](const QTile &tile) {
        const uint32_t row = threadIdx.x % kTile, query = tile.query0 + row;
        if (!tile.valid) return 0.0f;
        if (threadIdx.x < kTile) return lse_log2(p, batch, tile.head, query);
        if (query >= p.lq) return 0.0f;
        return reinterpret_cast<const float *>(p.delta)[(size_t(batch) * p.heads_q + tile.head) * p.lq + query];
    };
    const auto store_row_value = [&](float value, uint32_t stage) { row_values[stage * 2 * kTile + threadIdx.x] = value; };

    QTileWalk walk{p, batch, first_key / p.block_n, kv_head * group, kv_head * group + group - 1};
    walk.start_head();
    QTile current = walk.next();
    load_q(current, 0);
    store_row_value(row_value(current), 0);

    const Allowed allowed = allowed_distances(p.element, p.window);
    const int64_t shift = int64_t(p.lk) - p.lq;
    const uint32_t key_row0 = warp * 16 + lane / 4;  // the thread's keys: key_row0 and + 8
    const uint32_t warp_key = first_key + warp * 16;

    float dk[D / 8][4] = {}, dv[D / 8][4] = {};
    for (uint32_t stage = 0; current.valid; stage ^= 1) {
        const QTile ahead = walk.next();
        load_q(ahead, stage ^ 1);
        const float ahead_value = row_value(ahead);
        tf::cp_async_wait<3>();  // k and v, and q of this tile
        __syncthreads();

        // Sᵀ = K·Qᵀ for the warp's 16 keys and the tile's 64 queries, then Pᵀ.
        float s[kTile / 8][4] = {};
        product_nt<In, D>(s, k_tile, warp * 16, q_tile(stage));
        const Coverage covered =
            coverage_of(allowed, current.partial, int64_t(current.query0) + shift - (warp_key + 15),
                        int64_t(current.query0 + kTile - 1) + shift - warp_key, false);
        const float *lse = lse_tile(stage);
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const uint32_t column = j * 8 + (lane % 4) * 2 + e % 2;
                bool ok = covered == Coverage::kAll;
                if (covered == Coverage::kSome) {
                    const uint32_t key = first_key + key_row0 + 8 * (e / 2);
                    ok = !current.partial ||
                         allowed.contains(int64_t(current.query0 + column) + shift - key);
                }
                s[j][e] = ok ? tf::exp2_approx(fmaf(s[j][e], p.scale_log2, -lse[column])) : 0.0f;
            }
        uint32_t p_frag[kTile / 16][4];
        to_fragments<In>(p_frag, s);

        tf::cp_async_wait<2>();  // do of this tile
        __syncthreads();
        product_nn<In, D>(dv, p_frag, do_tile(stage));
        // dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ − D), 32 queries at a time, with Pᵀ as rounded for
        // dV: S's registers are free for dPᵀ's.
        const float *delta = delta_tile(stage);
        uint32_t ds[kTile / 16][4];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float dp[kTile / 16][4] = {};
            product_nt<In, D, kTile / 2>(dp, v_tile, warp * 16, do_tile(stage), half * kTile / 2);
#pragma unroll
            for (int i = 0; i < kTile / 16; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int j = half * kTile / 16 + i;
                    dp[i][e] = element<In>(p_frag, j, e) * (dp[i][e] - delta[j * 8 + (lane % 4) * 2 + e % 2]);
                }
#pragma unroll
            for (int kk = 0; kk < kTile / 32; ++kk) {
                ds[half * 2 + kk][0] = In::pack(dp[2 * kk][0], dp[2 * kk][1]);
                ds[half * 2 + kk][1] = In::pack(dp[2 * kk][2], dp[2 * kk][3]);
                ds[half * 2 + kk][2] = In::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
                ds[half * 2 + kk][3] = In::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
            }
        }
        product_nn<In, D>(dk, ds, q_tile(stage));

        store_row_value(ahead_value, stage ^ 1);  // that stage's last reader was the last tile
        __syncthreads();  // this stage is read; the next iteration's copy may overwrite it
        current = ahead;
    }
    tf::cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const uint32_t key = first_key + key_row0 + 8 * r;
        if (key >= p.lk) continue;
        const size_t row = (size_t(batch) * p.lk + key) * p.heads_kv + kv_head;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const size_t at = row * D + n * 8 + (lane % 4) * 2;
            Out::pair(reinterpret_cast<void *>(p.dk), at, dk[n][2 * r] * p.scale, dk[n][2 * r + 1] * p.scale);
            Out::pair(reinterpret_cast<void *>(p.dv), at, dv[n][2 * r], dv[n][2 * r + 1]);
        }
    }
}

}  // namespace

#define TF_ATTENTION_BACKWARD_KERNELS(in, In, d)                                                  \
    extern "C" __global__ void __launch_bounds__(kThreads)                                        \
        tilefuse_attention_backward_dq_##in##_d##d##_same(const __grid_constant__ Params p) {      \
        backward_dq<In, StoreSame<In>, d>(p);                                                      \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(kThreads)                                        \
        tilefuse_attention_backward_dq_##in##_d##d##_f32(const __grid_constant__ Params p) {       \
        backward_dq<In, StoreF32, d>(p);                                                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(kThreads)                                        \
        tilefuse_attention_backward_dkdv_##in##_d##d##_same(const __grid_constant__ Params p) {    \
        backward_dkdv<In, StoreSame<In>, d>(p);                                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(kThreads)                                        \
        tilefuse_attention_backward_dkdv_##in##_d##d##_f32(const __grid_constant__ Params p) {     \
        backward_dkdv<In, StoreF32, d>(p);                                                         \
    }

TF_ATTENTION_BACKWARD_KERNELS(f16, F16, 64)
TF_ATTENTION_BACKWARD_KERNELS(f16, F16, 128)
TF_ATTENTION_BACKWARD_KERNELS(bf16, BF16, 64)
TF_ATTENTION_BACKWARD_KERNELS(bf16, BF16, 128)
