// Block-sparse attention forward in the FlashAttention-2 design. A block owns BM query rows
// (one mask query block) of one head and batch row; each warp owns 16 or 32 rows, whose Q
// fragments it holds in registers. The block walks the mask's listed key blocks (partial first, then
// full) in tiles of 64 keys: K and V tiles arrive by cp.async in a ring of 2 or 3 stages
// (p.stages), K's and V's waited for apart (V lands while S is computed), each tile's place
// in the lists read when its copy starts; S = Q·Kᵀ and O += P·V run on mma.sync.m16n8k16
// with f32 accumulators (P is reused from S's registers), each k step's K or V fragments
// loaded four matrices at a time before its mmas; the softmax is online, in base 2 (ex2.approx),
// with a running max and sum per row. The element mask is decided per warp and tile (all of
// its 16 x 64 scores allowed, none, or some) and tested per element only where the tile
// crosses its edge or lk.
#include "abi.h"
#include "common/mma.cuh"
#include "common/types.cuh"

#include <cstdint>

namespace {

constexpr int kKv = TF_ATTENTION_KV_TILE;  // keys per tile

using tf::BF16;
using tf::F16;

using tf::swizzled;

// Starts copying rows [first, first + Rows) of one (batch, head) slice into a swizzled tile;
// rows at or past `limit` are zero-filled.
template <int D, int Rows, int Threads>
__device__ __forceinline__ void load_rows(uint32_t tile, const uint16_t *slice, uint64_t stride_l,
                                          uint32_t first, uint32_t limit) {
    for (uint32_t c = threadIdx.x; c < Rows * (D / 8); c += Threads) {
        const uint32_t row = c / (D / 8), chunk = c % (D / 8);
        const bool valid = first + row < limit;
        const uint16_t *src = valid ? slice + (first + row) * stride_l + chunk * 8 : slice;
        tf::cp_async_16(tile + swizzled<D>(row, chunk), src, valid);
    }
}

// x, or NaN for ±inf (and NaN): x·0 is NaN exactly when x is not finite. One FFMA; IEEE
// arithmetic (no fast math) keeps it from being folded away.
__device__ __forceinline__ float nan_unless_finite(float x) { return fmaf(x, 0.0f, x); }

// The distances i' - j (i' = i + lk - lq: rows aligned bottom-right) that the element mask
// allows, an interval: causal i' >= j, sliding window |i' - j| < window, both, or all.
struct Allowed {
    int64_t lo, hi;
    __device__ bool contains(int64_t distance) const { return lo <= distance && distance <= hi; }
};
__device__ __forceinline__ Allowed allowed_distances(const TfAttentionParams &p) {
    constexpr int64_t kAll = int64_t(1) << 40;  // past any distance of 32-bit rows and keys
    const int64_t window = p.window;
    switch (p.element) {
        case 1: return {0, kAll};
        case 2: return {1 - window, window - 1};
        case 3: return {0, window - 1};
        default: return {-kAll, kAll};
    }
}

// Which of a warp's 16 x kKv scores of a tile the mask allows.
enum class Coverage { kAll, kNone, kSome };

// The coverage of the tile from key `key0` for the 16 rows from `row0`: a full block's tiles
// allow all their keys, a partial block's as the element mask says; keys past lk never.
__device__ __forceinline__ Coverage coverage(const TfAttentionParams &p, const Allowed &allowed,
                                             bool partial, uint32_t row0, uint32_t key0) {
    const int64_t shift = int64_t(p.lk) - p.lq;
    const int64_t nearest = int64_t(row0) + shift - (key0 + kKv - 1);  // the least i' - j
    const int64_t farthest = int64_t(row0) + 15 + shift - key0;        // the most
    const bool past_lk = key0 + kKv > p.lk;
    if (partial && (farthest < allowed.lo || nearest > allowed.hi)) return Coverage::kNone;
    const bool inside = !partial || (allowed.contains(nearest) && allowed.contains(farthest));
    return inside && !past_lk ? Coverage::kAll : Coverage::kSome;
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
    const uint32_t q_block = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
    const uint32_t kv_head = head / (p.heads_q / p.heads_kv);
    const uint16_t *q = reinterpret_cast<const uint16_t *>(p.q) + batch * p.q_stride_b + head * p.q_stride_h;
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
    const uint32_t tiles_per_block = p.block_n / kKv;
    const uint32_t tiles = (n_partial + n_full) * tiles_per_block;
    // Where tile t lies: its first key, and whether its block is partial.
    struct Tile {
        uint32_t key0;
        bool partial;
    };
    const auto tile_at = [&](uint32_t t) {
        const uint32_t n = t / tiles_per_block;
        const bool is_partial = n < n_partial;
        const uint32_t block = is_partial ? partial[partial_offsets[mask_row] + n]
                                          : full[full_offsets[mask_row] + n - n_partial];
        return Tile{block * p.block_n + (t % tiles_per_block) * kKv, is_partial};
    };
    // Commits two copy groups, K's and V's (empty past the last tile), so that every thread
    // has the same groups in flight: Q, then K and V of each tile.
    const auto load_kv = [&](uint32_t t, const Tile &tile, int stage) {
        if (t < tiles) load_rows<D, kKv, kThreads>(k_tile(stage), k, p.k_stride_l, tile.key0, p.lk);
        tf::cp_async_commit();
        if (t < tiles) load_rows<D, kKv, kThreads>(v_tile(stage), v, p.v_stride_l, tile.key0, p.lk);
        tf::cp_async_commit();
    };

    const auto tile_or_none = [&](uint32_t t) { return t < tiles ? tile_at(t) : Tile{0, false}; };

    load_rows<D, BM, kThreads>(q_tile, q, p.q_stride_l, q_block * BM, p.lq);
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
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) row_max[mt][0] = row_max[mt][1] = -INFINITY;
    const uint32_t warp_row0 = q_block * BM + warp * MT * 16;
    // The thread's rows: row0 + 16 mt and row0 + 16 mt + 8 of each m tile mt.
    const uint32_t row0 = warp_row0 + lane / 4;
    const Allowed allowed = allowed_distances(p);

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
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int j = 0; j < kKv / 8; ++j) In::mma(s[mt][j], q_frag[mt][kk], b[j]);
        }

        // Mask, scale to base 2, and the online softmax of each of the thread's rows.
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const Coverage covered = coverage(p, allowed, tile.partial, warp_row0 + 16 * mt, tile.key0);
#pragma unroll
            for (int j = 0; j < kKv / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    bool ok = covered == Coverage::kAll;
                    if (covered == Coverage::kSome) {
                        const uint32_t key = tile.key0 + j * 8 + (lane % 4) * 2 + e % 2;
                        const int64_t row = row0 + 16 * mt + (e / 2) * 8;
                        ok = key < p.lk &&
                             (!tile.partial || allowed.contains(row + int64_t(p.lk) - p.lq - key));
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

        // O += P · V, with P taken from S's registers as A fragments.
        if (stages == 3) {
            tf::cp_async_wait<4>();  // V of tile t
        } else {
            tf::cp_async_wait<2>();
        }
        __syncthreads();
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
                const uint32_t a[4] = {In::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]),
                                       In::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]),
                                       In::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]),
                                       In::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3])};
#pragma unroll
                for (int n = 0; n < D / 8; ++n) In::mma(out[mt][n], a, b[n]);
            }
        }
        __syncthreads();  // this stage is read; the next iteration's copy may overwrite it
    }
    tf::cp_async_wait<0>();

    uint16_t *o = reinterpret_cast<uint16_t *>(p.o) + batch * p.o_stride_b + head * p.o_stride_h;
    float *lse = reinterpret_cast<float *>(p.lse);
#pragma unroll
    for (int i = 0; i < 2 * MT; ++i) {
        const int mt = i / 2, r = i % 2;
        float sum = row_sum[mt][r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const uint32_t row = row0 + 16 * mt + r * 8;
        if (row >= p.lq) continue;
        // sum is 0 only for a row without keys (the largest score adds 1), NaN for a row that a
        // non-finite score reached: that row's o and lse come out NaN. A non-finite value of v
        // reaches every row of the tile (0 · NaN is NaN), except a row without keys: o = 0.
        const bool seen = sum != 0.0f;
        const float inverse = 1.0f / sum;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const uint32_t col = n * 8 + (lane % 4) * 2;
            *reinterpret_cast<uint32_t *>(o + row * p.o_stride_l + col) =
                seen ? In::pack(nan_unless_finite(out[mt][n][2 * r] * inverse),
                                nan_unless_finite(out[mt][n][2 * r + 1] * inverse))
                     : 0u;
        }
        if (lse != nullptr && lane % 4 == 0)
            lse[(size_t(batch) * p.heads_q + head) * p.lq + row] =
                seen ? (row_max[mt][r] + log2f(sum)) * 0.69314718055994531f : -INFINITY;
    }
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
