// Block-sparse attention forward for Hopper (sm_90a): the portable kernel's semantics
// (cuda/attention.cu) on wgmma and TMA, with warp specialization.
//
// The grid is persistent: a block takes work items (a query block of BM = 64 * Consumers rows
// of one head and batch row) in a fixed order, longest first where the mask makes later query
// blocks longer (causal, windows). It has Consumers + 1 warpgroups. Warpgroup 0 is the
// producer: it gives up registers (setmaxnreg) and one thread walks each item's key tiles (the
// mask's partial blocks first, then full, 64 keys a tile), issuing TMA loads of the item's Q
// once the consumers are done with the last item's, and of each tile's K and V into a ring of
// `stages` stages, each completing its own mbarrier, a stage reloaded once released. Each
// consumer warpgroup (64 rows; more registers) runs S = Q·Kᵀ as wgmma from shared memory (Q
// and K K-major, 128-byte swizzle, as TMA leaves them), masks and applies the online softmax
// in registers, then O += P·V with P from registers (S's accumulators are P's A fragments)
// and V N-major, and releases the stage. Two consumer warpgroups take turns issuing their
// GEMMs (named barriers), so that one's softmax runs while the other's GEMMs do. Q, K and V
// are read through tensor maps of [b, l, h, d] tensors with any strides the portable kernel
// takes (multiples of 8 elements), in boxes of 64 rows by 64 columns (128 bytes: the
// swizzle's span; d = 128 takes two); rows past lq or lk load as zeros. The element mask is
// decided per warp and tile as in the portable kernel. Within a warpgroup, a tile's S is
// issued with the last tile's P·V, and its softmax runs while that P·V does.
#include "abi.h"
#include "attention/common.cuh"
#include "common/hopper.cuh"
#include "common/mma.cuh"
#include "common/pipeline.cuh"
#include "common/types.cuh"

#include <cstdint>

namespace {

using namespace attention_common;

constexpr uint32_t kKv = TF_ATTENTION_KV_TILE;  // keys per tile
constexpr uint32_t kBox = 64 * 64 * 2;          // one TMA box: 64 rows of 64 values, swizzled
constexpr uint32_t kBarriers = 1024;            // the mbarriers' share of shared memory

// The wgmma shapes of one element type: S (64 x 64, K-major operands from shared memory) and
// O += P·V (64 x D, P from registers, V N-major).
template <class In>
struct Gemms;
template <>
struct Gemms<tf::F16> {
    static __device__ __forceinline__ void s(float (&d)[32], uint64_t a, uint64_t b, bool accumulate) {
        tf::wgmma_m64n64k16_f16_ss<0>(d, a, b, accumulate);
    }
    static __device__ __forceinline__ void pv(float (&o)[32], const uint32_t (&p)[4], uint64_t v) {
        tf::wgmma_m64n64k16_f16_rs<1>(o, p, v, true);
    }
    static __device__ __forceinline__ void pv(float (&o)[64], const uint32_t (&p)[4], uint64_t v) {
        tf::wgmma_m64n128k16_f16_rs<1>(o, p, v, true);
    }
};
template <>
struct Gemms<tf::BF16> {
    static __device__ __forceinline__ void s(float (&d)[32], uint64_t a, uint64_t b, bool accumulate) {
        tf::wgmma_m64n64k16_bf16_ss<0>(d, a, b, accumulate);
    }
    static __device__ __forceinline__ void pv(float (&o)[32], const uint32_t (&p)[4], uint64_t v) {
        tf::wgmma_m64n64k16_bf16_rs<1>(o, p, v, true);
    }
    static __device__ __forceinline__ void pv(float (&o)[64], const uint32_t (&p)[4], uint64_t v) {
        tf::wgmma_m64n128k16_bf16_rs<1>(o, p, v, true);
    }
};

// The descriptor of k step `step` (16 columns) of a K-major tile of 64 rows x D stored as
// D / 64 boxes of [64 rows][64 columns].
__device__ __forceinline__ uint64_t k_major(uint32_t tile, uint32_t step) {
    return tf::matrix_descriptor(tile + (step / 4) * kBox + (step % 4) * 32, 16, 1024, tf::Swizzle::B128);
}

// The descriptor of k step `step` (16 keys) of V's tile, N-major: rows are keys, each box holds
// 64 of d's columns; the next box is the next 64 columns.
__device__ __forceinline__ uint64_t n_major(uint32_t tile, uint32_t step) {
    return tf::matrix_descriptor(tile + step * 16 * 128, kBox, 1024, tf::Swizzle::B128);
}

// The block's share of shared memory and its barriers: mbarriers in the first 1 KiB (Q full and
// empty; K full, V full and empty per stage), then Consumers Q tiles, then per stage a K and a V tile,
// every tile 1024-byte aligned.
template <int D, int Consumers>
struct Layout {
    static constexpr uint32_t kTile = (D / 64) * kBox;  // 64 rows x D
    uint32_t base, stages;

    __device__ uint32_t q_full() const { return base; }
    __device__ uint32_t q_empty() const { return base + 8; }
    __device__ uint32_t k_full(uint32_t s) const { return base + 8 * (2 + s); }
    __device__ uint32_t v_full(uint32_t s) const { return base + 8 * (2 + stages + s); }
    __device__ uint32_t empty(uint32_t s) const { return base + 8 * (2 + 2 * stages + s); }
    __device__ uint32_t q_tile(uint32_t consumer) const { return base + kBarriers + consumer * kTile; }
    __device__ uint32_t k_tile(uint32_t s) const { return q_tile(Consumers) + 2 * s * kTile; }
    __device__ uint32_t v_tile(uint32_t s) const { return k_tile(s) + kTile; }
};

// Where tile t of the block's list lies: its first key, and whether its block is partial.
struct Tile {
    uint32_t key0;
    bool partial;
};

// An item's key tiles: those of its listed key blocks, partial first, but the tiles of the
// last key block that lie wholly past lk (block_n = 128, lk % 128 in 1 .. 64): a TMA box wholly
// outside the tensor is left unissued, and such a tile adds nothing. Tile i is the listed
// tiles' i, or i + skipped from skip_at on.
struct TileList {
    const uint32_t *partial, *full;
    uint32_t n_partial, tiles_per_block, block_n;
    uint32_t skip_at = 0xffffffffu, skipped = 0;

    __device__ Tile at(uint32_t i) const {
        const uint32_t t = i < skip_at ? i : i + skipped;
        const uint32_t n = t / tiles_per_block;
        const bool is_partial = n < n_partial;
        const uint32_t block = is_partial ? partial[n] : full[n - n_partial];
        return {block * block_n + (t % tiles_per_block) * kKv, is_partial};
    }
};

// One work item: a query block (BM rows) of one head of one batch row, its key tiles and where
// they start in the block's count of tiles (stages and phases run on across items).
struct Item {
    uint32_t row_block, head, batch, kv_head;
    TileList list;
    uint32_t tiles;
};

// Work item `w` of the persistent grid, longest first where the mask makes later query
// blocks longer (causal, windows): query blocks from the last, each for every head and batch
// row.
__device__ __forceinline__ Item item_at(const TfAttentionParams &p, uint32_t w) {
    const uint32_t per_block = p.heads_q * p.batch;
    Item it;
    it.row_block = p.q_blocks - 1 - w / per_block;
    it.head = w % per_block % p.heads_q;
    it.batch = w % per_block / p.heads_q;
    it.kv_head = it.head / (p.heads_q / p.heads_kv);
    const uint32_t *partial_offsets = reinterpret_cast<const uint32_t *>(p.partial_offsets);
    const uint32_t *full_offsets = reinterpret_cast<const uint32_t *>(p.full_offsets);
    const uint32_t mask_row = ((p.mask_batch == 1 ? 0 : it.batch) * p.mask_heads +
                               (p.mask_heads == 1 ? 0 : it.head)) * p.q_blocks + it.row_block;
    it.list = {reinterpret_cast<const uint32_t *>(p.partial) + partial_offsets[mask_row],
               reinterpret_cast<const uint32_t *>(p.full) + full_offsets[mask_row],
               partial_offsets[mask_row + 1] - partial_offsets[mask_row], p.block_n / kKv, p.block_n};
    const uint32_t n_full = full_offsets[mask_row + 1] - full_offsets[mask_row];
    const uint32_t tiles_per_block = it.list.tiles_per_block;
    it.tiles = (it.list.n_partial + n_full) * tiles_per_block;
    // The last key block, if listed, ends its sorted list.
    const uint32_t last = (p.lk - 1) / p.block_n, kept = ((p.lk - 1) % p.block_n) / kKv + 1;
    const bool in_partial = it.list.n_partial > 0 && it.list.partial[it.list.n_partial - 1] == last;
    const bool in_full = n_full > 0 && it.list.full[n_full - 1] == last;
    if (kept < tiles_per_block && (in_partial || in_full)) {
        const uint32_t position = in_partial ? it.list.n_partial - 1 : it.list.n_partial + n_full - 1;
        it.list.skip_at = position * tiles_per_block + kept;
        it.list.skipped = tiles_per_block - kept;
        it.tiles -= it.list.skipped;
    }
    return it;
}

// The launch's work items (block x takes items x, x + gridDim.x, ...).
__device__ __forceinline__ uint32_t item_count(const TfAttentionParams &p) {
    return p.q_blocks * p.heads_q * p.batch;
}

// Tile `i` of item `it`, the block's tile `t`: its K and V into stage t % stages once the
// consumers released that stage's last use.
template <int D, int Consumers>
__device__ __forceinline__ void produce_tile(const TfAttentionSm90aParams &params, const Layout<D, Consumers> &l,
                                             const Item &it, uint32_t i, uint32_t t) {
    constexpr uint32_t kTile = Layout<D, Consumers>::kTile;
    const uint32_t s = t % l.stages, use = t / l.stages;
    if (use > 0) tf::mbarrier_wait(l.empty(s), (use - 1) & 1);
    const uint32_t key0 = it.list.at(i).key0;
    tf::mbarrier_expect_tx(l.k_full(s), kTile);
    for (uint32_t box = 0; box < D / 64; ++box)
        tf::tma_load_4d(l.k_tile(s) + box * kBox, &params.k_map, box * 64, key0, it.kv_head, it.batch, l.k_full(s));
    tf::mbarrier_arrive(l.k_full(s));
    tf::mbarrier_expect_tx(l.v_full(s), kTile);
    for (uint32_t box = 0; box < D / 64; ++box)
        tf::tma_load_4d(l.v_tile(s) + box * kBox, &params.v_map, box * 64, key0, it.kv_head, it.batch, l.v_full(s));
    tf::mbarrier_arrive(l.v_full(s));
}

// The producer: each item's Q once the consumers are done with the last one's, then each
// tile's K and V into the ring, a stage reused once the consumers have released it.
template <int D, int Consumers>
__device__ __forceinline__ void produce(const TfAttentionSm90aParams &params, const Layout<D, Consumers> &l) {
    constexpr uint32_t kTile = Layout<D, Consumers>::kTile;
    const TfAttentionParams &p = params.base;
    uint32_t t = 0;  // the block's tiles so far
    for (uint32_t w = blockIdx.x, round = 0; w < item_count(p); w += gridDim.x, ++round) {
        const Item it = item_at(p, w);
        const uint32_t first_row = it.row_block * 64 * Consumers;
        if (round > 0) tf::mbarrier_wait(l.q_empty(), (round - 1) & 1);
        // A consumer whose rows all lie past lq gets no Q (a box wholly outside the tensor is
        // never issued); its results are never stored.
        const uint32_t with_rows = min(uint32_t(Consumers), (p.lq - first_row + 63) / 64);
        tf::mbarrier_expect_tx(l.q_full(), with_rows * kTile);
        for (uint32_t c = 0; c < with_rows; ++c)
            for (uint32_t box = 0; box < D / 64; ++box)
                tf::tma_load_4d(l.q_tile(c) + box * kBox, &params.q_map, box * 64, first_row + 64 * c, it.head,
                                it.batch, l.q_full());
        tf::mbarrier_arrive(l.q_full());
        for (uint32_t i = 0; i < it.tiles; ++i, ++t)
            produce_tile<D, Consumers>(params, l, it, i, t);
    }
}

// Ping-pong between two consumer warpgroups: each issues its GEMMs in its turn (named barrier
// 1 + its index, 256 threads: its own 128 waiting and the other's 128 arriving) and hands the
// turn over once they are issued, so that one's softmax runs while the other's GEMMs do. The
// second warpgroup gives the first its first turn.
template <int Consumers>
struct Turns {
    uint32_t consumer;
    __device__ void start() const {
        if (Consumers == 2 && consumer == 1) tf::named_barrier_arrive(1, 256);
    }
    __device__ void take() const {
        if (Consumers == 2) tf::named_barrier_sync(1 + consumer, 256);
    }
    __device__ void hand_over() const {
        if (Consumers == 2) tf::named_barrier_arrive(2 - consumer, 256);
    }
};

// A consumer thread's rows (two of its warp's 16) and their online softmax state.
struct Rows {
    uint32_t query[2];
    uint32_t warp_row0, last_query;
    bool has_rows;
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.0f, 0.0f};  // this thread's share; the 4 lanes of a row add up at the end

    // Masks S's 64 x 64 accumulators of `tile` (key group j = e / 4, C element e % 4), scales
    // them to base 2 and turns them into P for the running max; returns each row's factor for
    // O (the old max's weight under the new one), which the caller applies once O is its own.
    __device__ void softmax(const TfAttentionParams &p, const Allowed &allowed, const Tile &tile, uint32_t lane,
                            float (&sc)[32], float (&correction)[2]) {
        correction[0] = correction[1] = 1.0f;
        if (!has_rows) return;
        const int64_t shift = int64_t(p.lk) - p.lq;
        const int64_t nearest = int64_t(warp_row0) + shift - (tile.key0 + kKv - 1);
        const int64_t farthest = int64_t(last_query) + shift - tile.key0;
        const Coverage covered = coverage_of(allowed, tile.partial, nearest, farthest, tile.key0 + kKv > p.lk);
#pragma unroll
        for (uint32_t e = 0; e < 32; ++e) {
            bool ok = covered == Coverage::kAll;
            if (covered == Coverage::kSome) {
                const uint32_t key = tile.key0 + (e / 4) * 8 + (lane % 4) * 2 + e % 2;
                ok = key < p.lk && (!tile.partial || allowed.contains(int64_t(query[(e / 2) % 2]) + shift - key));
            }
            sc[e] = ok ? nan_unless_finite(sc[e]) * p.scale_log2 : -INFINITY;
        }
#pragma unroll
        for (uint32_t r = 0; r < 2; ++r) {
            float tile_max = -INFINITY;
#pragma unroll
            for (uint32_t j = 0; j < kKv / 8; ++j) tile_max = fmaxf(tile_max, fmaxf(sc[4 * j + 2 * r], sc[4 * j + 2 * r + 1]));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
            const float new_max = fmaxf(row_max[r], tile_max);
            const float base = new_max == -INFINITY ? 0.0f : new_max;  // a row with no key yet
            correction[r] = tf::exp2_approx(row_max[r] - base);
            row_max[r] = new_max;
            row_sum[r] *= correction[r];
#pragma unroll
            for (uint32_t j = 0; j < kKv / 8; ++j) {
                sc[4 * j + 2 * r] = tf::exp2_approx(sc[4 * j + 2 * r] - base);
                sc[4 * j + 2 * r + 1] = tf::exp2_approx(sc[4 * j + 2 * r + 1] - base);
                row_sum[r] += sc[4 * j + 2 * r] + sc[4 * j + 2 * r + 1];
            }
        }
    }
};

// P (S's accumulators after the softmax) as the A fragments of P·V's four k steps.
template <class In>
__device__ __forceinline__ void pack_p(const float (&sc)[32], uint32_t (&p)[kKv / 16][4]) {
#pragma unroll
    for (uint32_t step = 0; step < kKv / 16; ++step)
#pragma unroll
        for (uint32_t r = 0; r < 4; ++r) p[step][r] = In::pack(sc[8 * step + 2 * r], sc[8 * step + 2 * r + 1]);
}

// One consumer warpgroup's part of item `it` (its 64 rows; warp w 16 of them), the block's
// tiles counted on from `t`. Tile i's S = Q·Kᵀ is issued together with tile i − 1's O += P·V,
// and its softmax runs while that P·V does; O is rescaled once the P·V is done.
template <class In, int D, int Consumers>
__device__ __forceinline__ void consume_item(const TfAttentionParams &p, const Layout<D, Consumers> &l,
                                             const Item &it, uint32_t round, uint32_t &t,
                                             const Turns<Consumers> &turns) {
    const uint32_t consumer = turns.consumer;
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x % 128 / 32;
    Rows rows;
    rows.warp_row0 = it.row_block * 64 * Consumers + 64 * consumer + 16 * warp;
    rows.query[0] = rows.warp_row0 + lane / 4;
    rows.query[1] = rows.query[0] + 8;
    rows.has_rows = rows.warp_row0 < p.lq;
    rows.last_query = min(rows.warp_row0 + 15, p.lq - 1);
    const Allowed allowed = allowed_distances(p.element, p.window);
    const auto stage = [&](uint32_t i) { return (t + i) % l.stages; };
    const auto parity = [&](uint32_t i) { return ((t + i) / l.stages) & 1; };
    // Every consumer warp's arrival lets the producer load the next item's Q.
    const auto release_q = [&] {
        __syncwarp();
        if (lane == 0) tf::mbarrier_arrive(l.q_empty());
    };
    const auto release_stage = [&](uint32_t i) {
        __syncwarp();
        if (lane == 0) tf::mbarrier_arrive(l.empty(stage(i)));
    };
    const auto issue_s = [&](uint32_t i, float (&sc)[32]) {
#pragma unroll
        for (uint32_t step = 0; step < D / 16; ++step)
            Gemms<In>::s(sc, k_major(l.q_tile(consumer), step), k_major(l.k_tile(stage(i)), step), step > 0);
        tf::wgmma_commit();
    };
    float o[D / 2];
#pragma unroll
    for (float &v : o) v = 0.0f;
    const auto issue_pv = [&](uint32_t i, const uint32_t (&pa)[kKv / 16][4]) {
#pragma unroll
        for (uint32_t step = 0; step < kKv / 16; ++step) Gemms<In>::pv(o, pa[step], n_major(l.v_tile(stage(i)), step));
        tf::wgmma_commit();
    };
    const auto rescale = [&](const float (&correction)[2]) {
#pragma unroll
        for (uint32_t n = 0; n < D / 8; ++n)
#pragma unroll
            for (uint32_t e = 0; e < 4; ++e) o[4 * n + e] *= correction[e / 2];
    };

    tf::mbarrier_wait(l.q_full(), round & 1);
    float sc[32];
    uint32_t pa[kKv / 16][4];
    float correction[2];
    if (it.tiles > 0) {
        tf::mbarrier_wait(l.k_full(stage(0)), parity(0));
        turns.take();
        tf::fence_operands(sc);
        tf::wgmma_fence();
        issue_s(0, sc);
        turns.hand_over();
        tf::wgmma_wait<0>();
        tf::fence_operands(sc);
        rows.softmax(p, allowed, it.list.at(0), lane, sc, correction);
        pack_p<In>(sc, pa);
    }
    for (uint32_t i = 1; i < it.tiles; ++i) {
        tf::mbarrier_wait(l.k_full(stage(i)), parity(i));
        tf::mbarrier_wait(l.v_full(stage(i - 1)), parity(i - 1));
        turns.take();
        tf::fence_operands(sc);
        tf::fence_operands(o);
        tf::fence_operands(pa);
        tf::wgmma_fence();
        issue_s(i, sc);
        issue_pv(i - 1, pa);
        turns.hand_over();
        tf::wgmma_wait<1>();  // S of tile i; tile i − 1's P·V may still run
        tf::fence_operands(sc);
        if (i + 1 == it.tiles) release_q();
        rows.softmax(p, allowed, it.list.at(i), lane, sc, correction);
        tf::wgmma_wait<0>();
        tf::fence_operands(o);
        release_stage(i - 1);
        rescale(correction);
        pack_p<In>(sc, pa);
    }
    if (it.tiles > 0) {
        tf::mbarrier_wait(l.v_full(stage(it.tiles - 1)), parity(it.tiles - 1));
        turns.take();
        tf::fence_operands(o);
        tf::fence_operands(pa);
        tf::wgmma_fence();
        issue_pv(it.tiles - 1, pa);
        turns.hand_over();
        tf::wgmma_wait<0>();
        tf::fence_operands(o);
        release_stage(it.tiles - 1);
    }
    if (it.tiles <= 1) release_q();  // with more tiles, Q went once the last S was done
    t += it.tiles;

    uint16_t *out = reinterpret_cast<uint16_t *>(p.o) + it.batch * p.o_stride_b + it.head * p.o_stride_h;
    float *lse = reinterpret_cast<float *>(p.lse);
#pragma unroll
    for (uint32_t r = 0; r < 2; ++r) {
        float sum = rows.row_sum[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (rows.query[r] >= p.lq) continue;
        // As the portable kernel: a row without keys gets o = 0 and lse = −inf; a non-finite
        // score makes the row's o and lse NaN.
        const bool seen = sum != 0.0f;
        const float inverse = 1.0f / sum;
        uint16_t *o_row = out + rows.query[r] * p.o_stride_l;
#pragma unroll
        for (uint32_t n = 0; n < D / 8; ++n) {
            const uint32_t col = n * 8 + (lane % 4) * 2;
            *reinterpret_cast<uint32_t *>(o_row + col) =
                seen ? In::pack(nan_unless_finite(o[4 * n + 2 * r] * inverse),
                                nan_unless_finite(o[4 * n + 2 * r + 1] * inverse))
                     : 0u;
        }
        if (lse != nullptr && lane % 4 == 0)
            lse[(size_t(it.batch) * p.heads_q + it.head) * p.lq + rows.query[r]] =
                seen ? (rows.row_max[r] + log2f(sum)) * 0.69314718055994531f : -INFINITY;
    }
}

// One consumer warpgroup: the block's items in turn.
template <class In, int D, int Consumers>
__device__ __forceinline__ void consume(const TfAttentionParams &p, const Layout<D, Consumers> &l, uint32_t consumer) {
    const Turns<Consumers> turns{consumer};
    turns.start();
    uint32_t t = 0;  // the block's tiles so far
    for (uint32_t w = blockIdx.x, round = 0; w < item_count(p); w += gridDim.x, ++round)
        consume_item<In, D, Consumers>(p, l, item_at(p, w), round, t, turns);
}

template <class In, int D, int Consumers>
__device__ __forceinline__ void attention_sm90a(const TfAttentionSm90aParams &params) {
    const TfAttentionParams &p = params.base;
    const uint32_t raw = tf::smem_addr(tf::dynamic_shared());
    const Layout<D, Consumers> l{(raw + 1023) & ~1023u, p.stages};
    const uint32_t warpgroup = threadIdx.x / 128;
    if (threadIdx.x == 0) {
        tf::mbarrier_init(l.q_full(), 1);
        tf::mbarrier_init(l.q_empty(), 4 * Consumers);
        for (uint32_t s = 0; s < p.stages; ++s) {
            tf::mbarrier_init(l.k_full(s), 1);
            tf::mbarrier_init(l.v_full(s), 1);
            tf::mbarrier_init(l.empty(s), 4 * Consumers);
        }
        tf::mbarrier_init_fence();
    }
    __syncthreads();
    if (warpgroup == 0) {
        tf::setmaxnreg_dec<Consumers == 2 ? 24 : 56>();
        if (threadIdx.x == 0) produce<D, Consumers>(params, l);
        return;
    }
    tf::setmaxnreg_inc<Consumers == 2 ? 240 : 256>();
    consume<In, D, Consumers>(p, l, warpgroup - 1);
}

}  // namespace

#define TF_ATTENTION_SM90A_KERNEL(in, In, d, bm)                                                   \
    extern "C" __global__ void __launch_bounds__((bm / 64 + 1) * 128, 1)                           \
        tilefuse_attention_sm90a_##in##_d##d##_bm##bm(const __grid_constant__ TfAttentionSm90aParams p) { \
        attention_sm90a<In, d, bm / 64>(p);                                                        \
    }

TF_ATTENTION_SM90A_KERNEL(f16, tf::F16, 64, 64)
TF_ATTENTION_SM90A_KERNEL(f16, tf::F16, 64, 128)
TF_ATTENTION_SM90A_KERNEL(f16, tf::F16, 128, 64)
TF_ATTENTION_SM90A_KERNEL(f16, tf::F16, 128, 128)
TF_ATTENTION_SM90A_KERNEL(bf16, tf::BF16, 64, 64)
TF_ATTENTION_SM90A_KERNEL(bf16, tf::BF16, 64, 128)
TF_ATTENTION_SM90A_KERNEL(bf16, tf::BF16, 128, 64)
TF_ATTENTION_SM90A_KERNEL(bf16, tf::BF16, 128, 128)
