// Block-sparse attention forward in the FlashAttention-2 design. A block owns BM query rows
// (one mask query block of one head, or with GQA packed the same queries of the heads that
// share a key/value head) of one batch row; each warp owns 16 or 32 rows, whose Q fragments it
// holds in registers. The block walks the mask's listed key blocks (partial first, then full),
// or its split's share of them, in tiles of 64 keys: K and V tiles arrive by cp.async in a ring
// of 2 or 3 stages (p.stages), K's and V's waited for apart (V lands while S is computed), each
// tile's place in the lists read when its copy starts; S = Q·Kᵀ and O += P·V run on
// mma.sync.m16n8k16 with f32 accumulators (P is reused from S's registers), each k step's K or
// V fragments loaded four matrices at a time before its mmas; the softmax is online, in base 2
// (ex2.approx), with a running max and sum per row. The element mask is decided per warp and
// tile (all of its 16 x 64 scores allowed, none, or some) and tested per element only where the
// tile crosses its edge or lk. Split-KV (decode: too few blocks to fill the GPU) merges the
// splits' results in the last split to finish.
#include "abi.h"
#include "attention/common.cuh"
#include "common/mma.cuh"
#include "common/types.cuh"

#include <cstdint>

namespace {

constexpr int kKv = TF_ATTENTION_KV_TILE;  // keys per tile

using tf::BF16;
using tf::F16;

using tf::swizzled;
using namespace attention_common;

// The rows of a block's batch row, numbered v = 0 .. count - 1 (abi.h): row v is query v % lq
// of head first_head + v / lq.
struct Rows {
    uint32_t lq, count, first_head;
    __device__ uint32_t head(uint32_t v) const { return first_head + v / lq; }
    __device__ uint32_t query(uint32_t v) const { return v % lq; }
};

// The queries [first, last] of the 16 rows from v (those past the rows' count aside: their
// results are never stored): one run of queries, or all of them where the rows cross from
// one packed head to the next.
struct Queries {
    uint32_t first, last;
};
__device__ __forceinline__ Queries queries_of(const Rows &rows, uint32_t v) {
    const uint32_t last = v < rows.count ? min(v + 15, rows.count - 1) : v + 15;
    if (v / rows.lq == last / rows.lq) return {rows.query(v), rows.query(last)};
    return {0, rows.lq - 1};
}

// The coverage of the tile from key `key0` for rows of `queries`: a full block's tiles allow
// all their keys, a partial block's as the element mask says; keys past lk never.
__device__ __forceinline__ Coverage coverage(const TfAttentionParams &p, const Allowed &allowed,
                                             bool partial, Queries queries, uint32_t key0) {
    const int64_t shift = int64_t(p.lk) - p.lq;
    const int64_t nearest = int64_t(queries.first) + shift - (key0 + kKv - 1);  // the least i' - j
    const int64_t farthest = int64_t(queries.last) + shift - key0;              // the most
    return coverage_of(allowed, partial, nearest, farthest, key0 + kKv > p.lk);
}

// Where split-KV keeps a split's results for query `query` of (batch, head): its row of
// partial_o (d values), or its partial_lse (d = 1).
__device__ __forceinline__ size_t split_row(const TfAttentionParams &p, uint32_t split,
                                            uint32_t batch, uint32_t head, uint32_t query) {
    return ((size_t(split) * p.batch + batch) * p.heads_q + head) * p.lq + query;
}

// Split-KV's end: once every thread has written its split's rows, the block counts itself
// done; the last of the row block's splits merges their results in split order (so they do
// not depend on which one that is) into o and lse, and leaves the counter at zero. A split's
// weight is 2^(its lse − the largest): 0 for a split that saw no key of the row, NaN for one
// that a non-finite score reached (the row's o and lse are then NaN); a row no split saw
// gives o = 0, lse = −inf. A split whose row saw no key still passes on o's NaN (its o is the
// sum 0 · v), as one block would.
template <class In, int D, int BM, int Threads>
__device__ __forceinline__ void merge_splits(const TfAttentionParams &p, const Rows &rows,
                                             uint32_t first_row, uint32_t counter_index) {
    float *weights = reinterpret_cast<float *>(tf::dynamic_shared());  // [BM][splits + 1]
    uint32_t *last = reinterpret_cast<uint32_t *>(weights + BM * (p.splits + 1));
    uint32_t *counter = reinterpret_cast<uint32_t *>(p.counters) + counter_index;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) *last = atomicAdd(counter, 1u) == p.splits - 1;
    __syncthreads();
    if (!*last) return;
    if (threadIdx.x == 0) *counter = 0;  // ready for the next launch on the same workspace
    __threadfence();

    const float *partial_o = reinterpret_cast<const float *>(p.partial_o);
    const float *partial_lse = reinterpret_cast<const float *>(p.partial_lse);
    const uint32_t batch = blockIdx.z, splits = p.splits;
    const uint32_t count = min(uint32_t(BM), rows.count - first_row);
    for (uint32_t r = threadIdx.x; r < count; r += Threads) {
        const uint32_t head = rows.head(first_row + r), query = rows.query(first_row + r);
        float *w = weights + r * (splits + 1);
        float most = -INFINITY;
        for (uint32_t s = 0; s < splits; ++s) {
            w[s] = __ldcg(&partial_lse[split_row(p, s, batch, head, query)]);
            most = fmaxf(most, w[s]);
        }
        const float base = most == -INFINITY ? 0.0f : most;
        float total = 0.0f;
        for (uint32_t s = 0; s < splits; ++s) {
            w[s] = exp2f(w[s] - base);
            total += w[s];
        }
        w[splits] = total;
        float *lse = reinterpret_cast<float *>(p.lse);
        if (lse != nullptr)
            lse[(size_t(batch) * p.heads_q + head) * p.lq + query] =
                total != 0.0f ? (base + log2f(total)) * 0.69314718055994531f : -INFINITY;
    }
    __syncthreads();
    uint16_t *o = reinterpret_cast<uint16_t *>(p.o) + batch * p.o_stride_b;
    for (uint32_t e = threadIdx.x; e < count * (D / 2); e += Threads) {
        const uint32_t r = e / (D / 2), col = e % (D / 2) * 2;
        const uint32_t head = rows.head(first_row + r), query = rows.query(first_row + r);
        const float *w = weights + r * (splits + 1);
        float lo = 0.0f, hi = 0.0f;
        for (uint32_t s = 0; s < splits; ++s) {
            const float2 part = __ldcg(reinterpret_cast<const float2 *>(
                partial_o + split_row(p, s, batch, head, query) * D + col));
            lo += w[s] * part.x;
            hi += w[s] * part.y;
        }
        const float total = w[splits];
        *reinterpret_cast<uint32_t *>(o + head * p.o_stride_h + query * p.o_stride_l + col) =
            total != 0.0f ? In::pack(nan_unless_finite(lo / total), nan_unless_finite(hi / total))
                          : 0u;
    }
}

// MT: the 16-row m tiles a warp owns (one, or two where registers allow), each K and V
// fragment serving all of them.
template <class In, int D, int BM, int MT>
__device__ __forceinline__ void attention(const TfAttentionParams &p) {
    constexpr int kThreads = BM / (16 * MT) * 32;
    const uint32_t q_tile = tf::smem_addr(tf::dynamic_shared());
    const uint32_t kv_tiles = q_tile + BM * D * 2;  // stage s: K at + s * 2 tiles, V after K
    const uint32_t stages = p.stages;  // 2 or 3
    const auto k_tile = [&](int s) { return kv_tiles + s * 2 * kKv * D * 2; };
    const auto v_tile = [&](int s) { return k_tile(s) + kKv * D * 2; };

    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const uint32_t row_blocks = gridDim.x / p.splits;
    const uint32_t row_block = blockIdx.x % row_blocks, split = blockIdx.x / row_blocks;
    const uint32_t batch = blockIdx.z;
    const Rows rows{p.lq, p.lq * p.packed_heads, blockIdx.y * p.packed_heads};
    const uint32_t first_row = row_block * BM;               // the block's first row
    const uint32_t q_block = rows.query(first_row) / BM;     // its mask query block (0 when packed)
    const uint32_t kv_head = rows.first_head / (p.heads_q / p.heads_kv);
    const uint16_t *q = reinterpret_cast<const uint16_t *>(p.q) + batch * p.q_stride_b;
    const uint16_t *k = reinterpret_cast<const uint16_t *>(p.k) + batch * p.k_stride_b + kv_head * p.k_stride_h;
    const uint16_t *v = reinterpret_cast<const uint16_t *>(p.v) + batch * p.v_stride_b + kv_head * p.v_stride_h;

    const uint32_t *partial_offsets = reinterpret_cast<const uint32_t *>(p.partial_offsets);
    const uint32_t *full_offsets = reinterpret_cast<const uint32_t *>(p.full_offsets);
    const uint32_t *partial = reinterpret_cast<const uint32_t *>(p.partial);
    const uint32_t *full = reinterpret_cast<const uint32_t *>(p.full);
    const uint32_t mask_row = ((p.mask_batch == 1 ? 0 : batch) * p.mask_heads +
                               (p.mask_heads == 1 ? 0 : rows.first_head)) * p.q_blocks + q_block;
    const uint32_t n_partial = partial_offsets[mask_row + 1] - partial_offsets[mask_row];
    const uint32_t n_full = full_offsets[mask_row + 1] - full_offsets[mask_row];
    const uint32_t tiles_per_block = p.block_n / kKv;
    // This split's tiles of the row's list: [first_tile, first_tile + tiles).
    const uint32_t listed = (n_partial + n_full) * tiles_per_block;
    const uint32_t first_tile = min(split * p.tiles_per_split, listed);
    const uint32_t tiles = min(p.tiles_per_split, listed - first_tile);
    // Where tile t of the split lies: its first key, and whether its block is partial.
    struct Tile {
        uint32_t key0;
        bool partial;
    };
    const auto tile_at = [&](uint32_t t) {
        t += first_tile;
        const uint32_t n = t / tiles_per_block;
        const bool is_partial = n < n_partial;
        const uint32_t block = is_partial ? partial[partial_offsets[mask_row] + n]
                                          : full[full_offsets[mask_row] + n - n_partial];
        return Tile{block * p.block_n + (t % tiles_per_block) * kKv, is_partial};
    };
    // Commits two copy groups, K's and V's (empty past the last tile), so that every thread
    // has the same groups in flight: Q, then K and V of each tile.
    const auto load_kv = [&](uint32_t t, const Tile &tile, int stage) {
        const auto keys = [&](const uint16_t *slice, uint64_t stride) {
            return [slice, stride, key0 = tile.key0, lk = p.lk](uint32_t row) {
                const uint32_t key = key0 + row;
                return key < lk ? slice + key * stride : nullptr;
            };
        };
        if (t < tiles) load_rows<D, kKv, kThreads>(k_tile(stage), k, keys(k, p.k_stride_l));
        tf::cp_async_commit();
        if (t < tiles) load_rows<D, kKv, kThreads>(v_tile(stage), v, keys(v, p.v_stride_l));
        tf::cp_async_commit();
    };

    const auto tile_or_none = [&](uint32_t t) { return t < tiles ? tile_at(t) : Tile{0, false}; };

    load_rows<D, BM, kThreads>(q_tile, q, [&](uint32_t row) -> const uint16_t * {
        const uint32_t r = first_row + row;
        if (r >= rows.count) return nullptr;
        return q + rows.head(r) * p.q_stride_h + rows.query(r) * p.q_stride_l;
    });
    tf::cp_async_commit();
    // The tiles in flight: `current` (tile t) and, with three stages, `following` (t + 1).
    Tile current = tile_or_none(0), following = tile_or_none(1);
    load_kv(0, current, 0);
    if (stages == 3) {
        load_kv(1, following, 1);
        tf::cp_async_wait<4>();  // Q
    } else {
        tf::cp_async_wait<2>();  // Q
    }
    __syncthreads();
    // The warp's Q fragments, for every tile.
    uint32_t q_frag[MT][D / 16][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
            tf::ldmatrix_x4(q_frag[mt][kk],
                            q_tile + swizzled<D>((warp * MT + mt) * 16 + lane % 16, kk * 2 + lane / 16));

    float out[MT][D / 8][4] = {};
    float row_max[MT][2];
    float row_sum[MT][2] = {};  // this thread's share; the 4 lanes of a row add up at the end
    // The thread's rows: row0 + 16 mt and row0 + 16 mt + 8 of each m tile mt, and their
    // queries; the queries of each m tile's 16 rows.
    const uint32_t warp_row0 = first_row + warp * MT * 16;
    const uint32_t row0 = warp_row0 + lane / 4;
    uint32_t query[MT][2];
    Queries tile_queries[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        row_max[mt][0] = row_max[mt][1] = -INFINITY;
        query[mt][0] = rows.query(row0 + 16 * mt);
        query[mt][1] = rows.query(row0 + 16 * mt + 8);
        tile_queries[mt] = queries_of(rows, warp_row0 + 16 * mt);
    }
    // A warp without rows (decode: fewer rows than the block) only helps with the copies,
    // and a warp skips the work of an m tile without rows.
    const bool has_rows = warp_row0 < rows.count;
    const auto tile_has_rows = [&](int mt) { return warp_row0 + 16 * mt < rows.count; };
    const Allowed allowed = allowed_distances(p.element, p.window);

    for (uint32_t t = 0, stage = 0; t < tiles; ++t, stage = stage + 1 == stages ? 0 : stage + 1) {
        const Tile tile = current;
        // Tile t + stages - 1 goes to the stage that tile t - 1 used, which every warp is done
        // with (the barrier at the end of the last iteration).
        const Tile ahead = tile_or_none(t + stages - 1);
        load_kv(t + stages - 1, ahead, stage == 0 ? stages - 1 : stage - 1);
        if (stages == 3) {
            current = following;
            following = ahead;
            tf::cp_async_wait<5>();  // K of tile t (its V and the tiles after may be on their way)
        } else {
            current = ahead;
            tf::cp_async_wait<3>();
        }
        __syncthreads();

        // S = Q · Kᵀ for this warp's rows and the tile's 64 keys.
        float s[MT][kKv / 8][4] = {};
        if (has_rows) {
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                uint32_t b[kKv / 8][2];
#pragma unroll
                for (int jj = 0; jj < kKv / 16; ++jj) {
                    uint32_t r[4];  // keys 16 jj .. + 7 and 16 jj + 8 .. + 15
                    tf::ldmatrix_x4(r, k_tile(stage) + swizzled<D>((2 * jj + lane / 16) * 8 + lane % 8,
                                                                   kk * 2 + (lane / 8) % 2));
                    b[2 * jj][0] = r[0];
                    b[2 * jj][1] = r[1];
                    b[2 * jj + 1][0] = r[2];
                    b[2 * jj + 1][1] = r[3];
                }
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    if (!tile_has_rows(mt)) continue;
#pragma unroll
                    for (int j = 0; j < kKv / 8; ++j) In::mma(s[mt][j], q_frag[mt][kk], b[j]);
                }
            }

            // Mask, scale to base 2, and the online softmax of each of the thread's rows.
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                if (!tile_has_rows(mt)) continue;
                const Coverage covered = coverage(p, allowed, tile.partial, tile_queries[mt], tile.key0);
#pragma unroll
                for (int j = 0; j < kKv / 8; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        bool ok = covered == Coverage::kAll;
                        if (covered == Coverage::kSome) {
                            const uint32_t key = tile.key0 + j * 8 + (lane % 4) * 2 + e % 2;
                            ok = key < p.lk &&
                                 (!tile.partial ||
                                  allowed.contains(int64_t(query[mt][e / 2]) + int64_t(p.lk) - p.lq - key));
                        }
                        s[mt][j][e] = ok ? nan_unless_finite(s[mt][j][e]) * p.scale_log2 : -INFINITY;
                    }
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float tile_max = -INFINITY;
#pragma unroll
                    for (int j = 0; j < kKv / 8; ++j)
                        tile_max = fmaxf(tile_max, fmaxf(s[mt][j][2 * r], s[mt][j][2 * r + 1]));
                    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
                    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
                    const float new_max = fmaxf(row_max[mt][r], tile_max);
                    const float base = new_max == -INFINITY ? 0.0f : new_max;  // a row with no key yet
                    const float correction = tf::exp2_approx(row_max[mt][r] - base);
                    row_max[mt][r] = new_max;
                    row_sum[mt][r] *= correction;
#pragma unroll
                    for (int n = 0; n < D / 8; ++n) {
                        out[mt][n][2 * r] *= correction;
                        out[mt][n][2 * r + 1] *= correction;
                    }
#pragma unroll
                    for (int j = 0; j < kKv / 8; ++j) {
                        s[mt][j][2 * r] = tf::exp2_approx(s[mt][j][2 * r] - base);
                        s[mt][j][2 * r + 1] = tf::exp2_approx(s[mt][j][2 * r + 1] - base);
                        row_sum[mt][r] += s[mt][j][2 * r] + s[mt][j][2 * r + 1];
                    }
                }
            }
        }

        // O += P · V, with P taken from S's registers as A fragments.
        if (stages == 3) {
            tf::cp_async_wait<4>();  // V of tile t
        } else {
            tf::cp_async_wait<2>();
        }
        __syncthreads();
        if (has_rows) {
#pragma unroll
            for (int kk = 0; kk < kKv / 16; ++kk) {
                uint32_t b[D / 8][2];
#pragma unroll
                for (int nn = 0; nn < D / 16; ++nn) {
                    uint32_t r[4];  // columns 16 nn .. + 7 and 16 nn + 8 .. + 15 of v
                    tf::ldmatrix_x4_trans(r, v_tile(stage) + swizzled<D>(kk * 16 + lane % 16, 2 * nn + lane / 16));
                    b[2 * nn][0] = r[0];
                    b[2 * nn][1] = r[1];
                    b[2 * nn + 1][0] = r[2];
                    b[2 * nn + 1][1] = r[3];
                }
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    if (!tile_has_rows(mt)) continue;
                    const uint32_t a[4] = {In::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]),
                                           In::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]),
                                           In::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]),
                                           In::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3])};
#pragma unroll
                    for (int n = 0; n < D / 8; ++n) In::mma(out[mt][n], a, b[n]);
                }
            }
        }
        __syncthreads();  // this stage is read; the next iteration's copy may overwrite it
    }
    tf::cp_async_wait<0>();

    uint16_t *o = reinterpret_cast<uint16_t *>(p.o) + batch * p.o_stride_b;
    float *lse = reinterpret_cast<float *>(p.lse);
    float *partial_o = reinterpret_cast<float *>(p.partial_o);
    float *partial_lse = reinterpret_cast<float *>(p.partial_lse);
    const bool split_kv = p.splits > 1;
#pragma unroll
    for (int i = 0; i < 2 * MT; ++i) {
        const int mt = i / 2, r = i % 2;
        float sum = row_sum[mt][r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const uint32_t row = row0 + 16 * mt + r * 8;
        if (row >= rows.count) continue;
        const uint32_t head = rows.head(row);
        // sum is 0 only for a row without keys (the largest score adds 1), NaN for a row that a
        // non-finite score reached: that row's o and lse come out NaN. A non-finite value of v
        // reaches every row of the tile (0 · NaN is NaN), except a row without keys: o = 0.
        const bool seen = sum != 0.0f;
        const float inverse = 1.0f / sum;
        const float lse2 = seen ? row_max[mt][r] + log2f(sum) : -INFINITY;
        if (split_kv) {
            // The split's o: normalised, or where it saw no key the sum 0 · v (0, or NaN).
            const size_t at = split_row(p, split, batch, head, query[mt][r]);
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                const uint32_t col = n * 8 + (lane % 4) * 2;
                const float lo = out[mt][n][2 * r], hi = out[mt][n][2 * r + 1];
                *reinterpret_cast<float2 *>(&partial_o[at * D + col]) =
                    seen ? make_float2(lo * inverse, hi * inverse) : make_float2(lo, hi);
            }
            if (lane % 4 == 0) partial_lse[at] = lse2;
            continue;
        }
        uint16_t *o_row = o + head * p.o_stride_h + query[mt][r] * p.o_stride_l;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const uint32_t col = n * 8 + (lane % 4) * 2;
            *reinterpret_cast<uint32_t *>(o_row + col) =
                seen ? In::pack(nan_unless_finite(out[mt][n][2 * r] * inverse),
                                nan_unless_finite(out[mt][n][2 * r + 1] * inverse))
                     : 0u;
        }
        if (lse != nullptr && lane % 4 == 0)
            lse[(size_t(batch) * p.heads_q + head) * p.lq + query[mt][r]] = lse2 * 0.69314718055994531f;
    }
    if (split_kv)
        merge_splits<In, D, BM, kThreads>(p, rows, first_row,
                                          (batch * gridDim.y + blockIdx.y) * row_blocks + row_block);
}

}  // namespace

// A warp owns abi.h's TF_ATTENTION_WARP_ROWS_D<d> query rows: 32 at d = 64, 16 at d = 128,
// where Q's fragments, S and O fill the registers with 16.
#define TF_ATTENTION_KERNEL(in, In, d, bm)                                                          \
    extern "C" __global__ void __launch_bounds__(bm / TF_ATTENTION_WARP_ROWS_D##d * 32)             \
        tilefuse_attention_##in##_d##d##_bm##bm(const __grid_constant__ TfAttentionParams p) {     \
        attention<In, d, bm, TF_ATTENTION_WARP_ROWS_D##d / 16>(p);                                 \
    }

TF_ATTENTION_KERNEL(f16, F16, 64, 64)
TF_ATTENTION_KERNEL(f16, F16, 64, 128)
TF_ATTENTION_KERNEL(f16, F16, 128, 64)
TF_ATTENTION_KERNEL(f16, F16, 128, 128)
TF_ATTENTION_KERNEL(bf16, BF16, 64, 64)
TF_ATTENTION_KERNEL(bf16, BF16, 64, 128)
TF_ATTENTION_KERNEL(bf16, BF16, 128, 64)
TF_ATTENTION_KERNEL(bf16, BF16, 128, 128)
