/*
 * tilefuse kernel ABI: the parameter struct that each kernel takes by value
 * (`__grid_constant__ const`). Plain C, fixed-width types, no padding holes: this file is the
 * one source of truth, and src/backend/abi.rs is generated from it by scripts/gen-abi.sh.
 */
#ifndef TILEFUSE_ABI_H
#define TILEFUSE_ABI_H

#include <stdint.h>

/* A device address (CUdeviceptr). */
typedef uint64_t tf_dptr;

/*
 * A TMA tensor map (CUtensorMap, 128 bytes) that the host encodes for an sm_90a kernel: on a
 * GPU by cuTensorMapEncodeTiled (opaque), for the CPU emulator as a TfEmulatedTensorMap.
 */
typedef struct __attribute__((aligned(64))) TfTensorMap {
    uint64_t opaque[16];
} TfTensorMap;

/*
 * What the CPU emulator reads from a TfTensorMap: the tensor at `address` of `rank` (1 to 5)
 * dimensions of `dims` elements of `element_bytes` each, dimension 0 innermost and contiguous,
 * dimension i (from 1) `strides[i - 1]` bytes apart; boxes of `box` elements; `swizzle` as
 * CUtensorMapSwizzle (0 none, 1 32B, 2 64B, 3 128B); `magic` TF_EMULATED_TENSOR_MAP_MAGIC.
 */
#define TF_EMULATED_TENSOR_MAP_MAGIC 0x746d61705f656d75ull
typedef struct TfEmulatedTensorMap {
    uint64_t magic;
    uint64_t address;
    uint32_t rank;
    uint32_t element_bytes;
    uint32_t swizzle;
    uint32_t reserved;
    uint64_t dims[5];
    uint64_t strides[4];
    uint32_t box[5];
    uint32_t reserved_tail;
} TfEmulatedTensorMap;

/*
 * tilefuse_smoke_mma_f16_f32: the plumbing test. c = a · bᵀ with
 *   a [m, k] f16 row-major, b [n, k] f16 row-major, c [m, n] f32 row-major;
 * one warp per 16x8 tile of c, ldmatrix + mma.sync.m16n8k16, f32 accumulation.
 * Any m, n, k >= 1; grid.x covers ceil(m/16) * ceil(n/8) tiles, TF_SMOKE_WARPS per block.
 */
#define TF_SMOKE_WARPS 4
typedef struct TfSmokeMmaParams {
    tf_dptr a;
    tf_dptr b;
    tf_dptr c;
    uint32_t m;
    uint32_t n;
    uint32_t k;
    uint32_t reserved;
} TfSmokeMmaParams;

/*
 * tilefuse_peak_mma_f16: the Tensor-Core roof that mma.sync kernels (attention) are drawn
 * against. Each warp runs TF_PEAK_CHAINS independent chains of `iterations`
 * mma.sync.m16n8k16 (f16 in, f32 accumulate) on register operands whose every element is
 * a_value (A) and b_value (B) (f16 bits), then each thread stores the sum of its
 * TF_PEAK_CHAINS * 4 accumulators to out[global thread index]: exactly
 * TF_PEAK_CHAINS * 4 * iterations * 16 * a * b while that is an integer below 2^24.
 * Any grid; TF_PEAK_THREADS threads per block.
 */
#define TF_PEAK_CHAINS 8
#define TF_PEAK_THREADS 256
typedef struct TfPeakMmaParams {
    tf_dptr out;
    uint32_t iterations;
    uint16_t a_value;
    uint16_t b_value;
} TfPeakMmaParams;

/*
 * tilefuse_scan_{f32,c64}_{f32,f16,bf16}_{const,varying}_{states,final}: the diagonal linear
 * recurrence with resets, one pass, decoupled look-back across time chunks.
 *   h[b,t,p] = u[b,t,p]                   if reset[b,t]
 *   h[b,t,p] = a · h[b,t-1,p] + u[b,t,p]  otherwise, h[b,-1,p] = h0[b,p] (0 when h0 == 0)
 * Elements are f32 or interleaved complex (re, im) pairs. u and h are stored as the second
 * name part says (f32, f16 or bf16; read as f32, states rounded to nearest even when
 * written); a, h0, h_last and every carry are f32. a is [p] ("const") or strided
 * like u ("varying"); u and h are addressed b * stride_batch + t * stride_time + p (in
 * elements), reset b * reset_stride_batch + t * reset_stride_time (bytes). h0 and h_last are
 * [b, p]. "_final" kernels do not write h (h == 0).
 * h_last may be 0 (not written).
 * Work: n = chunks * groups * b chunks of TF_SCAN_WARPS * TF_SCAN_STEPS time steps and
 * TF_SCAN_LANES channels, with groups = ceil(p / TF_SCAN_LANES), handed out by tickets in
 * chunk-major order (ticket = (chunk * b + batch) * groups + group). Grid: any number of
 * blocks in x from 1 to n (persistent: each takes tickets until they run out; a block holds
 * tickets only while it runs, so no block waits for another to start), TF_SCAN_WARPS * 32
 * threads; dynamic shared memory (the staging of
 * u and a time-varying a): none when u's elements are 16-bit reals, else TF_SCAN_CHUNK *
 * TF_SCAN_LANES * (bytes of one stored u element + 8 bytes a complex or 4 a real element if
 * "varying"). workspace: a look-back region laid out for `capacity` >= n records: a header of
 * TF_SCAN_HEADER_WORDS u32 (the last launch's tag, 0 before the first; the blocks of this
 * launch done with the flags, 0; the tickets handed out in this launch, 0), round_up(capacity,
 * 4) u32 chunk flags (what a chunk published in the low two bits, the
 * tag of the launch that published it above; zero when first used, else as launches of this
 * region left them), then three arrays of capacity * TF_SCAN_LANES elements (chunk products,
 * chunk offsets, chunk end states) of which the first n * TF_SCAN_LANES are used. A region
 * serves one launch at a time; tags run 1 .. 2^30 - 1 and then again.
 */
#define TF_SCAN_LANES 32
#define TF_SCAN_WARPS 8
#define TF_SCAN_STEPS 16
#define TF_SCAN_CHUNK (TF_SCAN_WARPS * TF_SCAN_STEPS)
#define TF_SCAN_HEADER_WORDS 4
typedef struct TfScanParams {
    tf_dptr a;
    tf_dptr u;
    tf_dptr reset;
    tf_dptr h0;
    tf_dptr h;
    tf_dptr h_last;
    tf_dptr workspace;
    uint64_t stride_batch;
    uint64_t stride_time;
    uint64_t reset_stride_batch;
    uint64_t reset_stride_time;
    uint32_t batch;
    uint32_t time;
    uint32_t channels;
    uint32_t chunks;
    uint32_t groups;
    uint32_t capacity;
} TfScanParams;

/*
 * tilefuse_scan_backward_{f32,c64}_{f32,f16,bf16}_{const,varying}_{states,recompute}: the
 * scan's backward pass (src/scan/mod.rs states it) in one pass over time in reverse, decoupled
 * look-back:
 *   g[t] = dh[t] + (reset[t+1] ? 0 : a[t+1] · g[t+1]),  g[T-1] = dh[T-1] + dh_last
 *   du[t] = g[t],  da[t] = reset[t] ? 0 : g[t] · h[t-1],  dh0 = reset[0] ? 0 : a[0] · g[0]
 * with h[-1] = h0; plain products (no conjugation). dh_last and h0 are [b, p], 0 when absent.
 * "_states" reads h[t-1] from the forward's every state h; "_recompute" recomputes it inside
 * each chunk from u, starting from `checkpoints`: the end states of the forward's chunks, the
 * state array of a "_final" forward launch's workspace on the same grid. dh, du, h, u and a
 * time-varying a and da are addressed like the forward's u, reset likewise; dh, du, h and u are
 * stored as the second name part says (as the forward's u and h), everything else is f32
 * (recomputed states are the forward's f32 carries, before rounding); dh0 [b, p] is
 * written when dh0 != 0. A time-invariant ("const") da is not written here: each block leaves
 * the sum of g[t] · h[t-1] over its steps, per channel, in the workspace's partials.
 * Grid and block as the forward's, no dynamic shared memory, with the chunks in reverse:
 * ticket (k * b + batch) * groups + group covers time chunk chunks - 1 - k. workspace: a region as the forward's for
 * `capacity` records (look-back over k; record (batch * groups + group) * chunks + k), with a
 * fourth array of capacity * TF_SCAN_LANES elements after the three: for "const", the
 * partials [record][lane].
 *
 * tilefuse_scan_backward_da_{f32,c64}: a time-invariant da [p], the sum of a backward launch's
 * partials (same parameters and workspace), in a fixed order: block x = group * b + batch adds
 * the partials of its batch row (warp w takes look-back orders w, w + TF_SCAN_WARPS, ..., then
 * the warps in order) and leaves the row's sum in the region's first record array, and the
 * last block of a group to finish adds the rows in batch order. counters: `groups` u32, zero
 * at launch and left zero. Grid: groups * b blocks; TF_SCAN_WARPS * 32 threads.
 */
typedef struct TfScanBackwardParams {
    tf_dptr a;
    tf_dptr u;
    tf_dptr reset;
    tf_dptr h0;
    tf_dptr h;
    tf_dptr checkpoints;
    tf_dptr dh;
    tf_dptr dh_last;
    tf_dptr du;
    tf_dptr da;
    tf_dptr dh0;
    tf_dptr workspace;
    tf_dptr counters;
    uint64_t stride_batch;
    uint64_t stride_time;
    uint64_t reset_stride_batch;
    uint64_t reset_stride_time;
    uint32_t batch;
    uint32_t time;
    uint32_t channels;
    uint32_t chunks;
    uint32_t groups;
    uint32_t capacity;
} TfScanBackwardParams;

/*
 * tilefuse_spmm_tiledcsl_{f16,bf16}_n{8,16,32,64}_{same,f32}: y = x · wᵀ with
 *   w [m, k] in TiledCsl (tiles of TF_SPMM_TILE_M x TF_SPMM_TILE_K, row-major over tiles;
 *     entries u32 = value bits | location << 16, location = row * 64 + swizzled column;
 *     tile_offsets [tiles + 1] in 16-byte vectors of 4 entries),
 *   x [n, k] row-major, y [n, m] row-major ("same": the input type, "f32": f32).
 * Grid: (ceil(m / TILE_M), ceil(n / N), splits); TF_SPMM_WARPS * 32 threads. Block z sums the
 * k tiles [z * tiles_per_split, ...). With splits > 1, each block writes f32 partials to
 * workspace [splits][ceil(n / N) * N][m], and the last block of each (m tile, n block), found
 * through its u32 counter in counters [ceil(m / TILE_M)][ceil(n / N)] (zero at launch; the
 * kernel leaves them zero, so the same counters serve the next launch), adds them in split
 * order and writes y; with one split, workspace and counters are unused (0). Dynamic shared
 * memory: 2 * 128 * 64 * 2 + TF_SPMM_STAGES * (N * 64 * 2 + stage_vectors * 16)
 * + (tiles_per_split + 1) * 4 bytes, where stage_vectors (at least 1) is how many vectors of
 * a tile go through shared memory; the scatter reads a denser tile's other vectors from
 * global memory.
 * tilefuse_spmm_probe_{loads,scatter,no_mma}_f16_n16: launched as
 * tilefuse_spmm_tiledcsl_f16_n16_same, with parts of the work left out (benchmarks only; they
 * write y = 0).
 * tilefuse_spmm_registers_f16_n{8,16,32,64}_same: as tilefuse_spmm_tiledcsl_f16_nN_same
 * (N = 8, 16, 32, 64), except that the first TF_SPMM_HELD_VECTORS vectors of each tile go
 * through registers, not the stages: a stage holds vectors TF_SPMM_HELD_VECTORS ..
 * TF_SPMM_HELD_VECTORS + stage_vectors - 1.
 */
#define TF_SPMM_TILE_M 128
#define TF_SPMM_TILE_K 64
#define TF_SPMM_WARPS 4
#define TF_SPMM_STAGES 4
#define TF_SPMM_HELD_VECTORS 512
typedef struct TfSpmmParams {
    tf_dptr entries;
    tf_dptr tile_offsets;
    tf_dptr x;
    tf_dptr y;
    tf_dptr workspace;
    tf_dptr counters;
    uint32_t m;
    uint32_t n;
    uint32_t k;
    uint32_t splits;
    uint32_t tiles_per_split;
    uint32_t stage_vectors;
} TfSpmmParams;

/*
 * tilefuse_spmm_bitmap_{f16,bf16}_n{8,16,32,64}_{same,f32}: y = x · wᵀ with w [m, k] in the
 * bitmap format (src/spmm/bitmap.rs): units of 16 rows x 64 columns, row-major over the unit
 * grid (units_k = ceil(k / 64) per unit row); masks [units][16] u64, one per 8 x 8 block;
 * values u16, each unit's padded to a multiple of 8, starting at unit_offsets [units + 1]
 * (in values). x and y as for Tiled-CSL. Grid: (ceil(m / TILE_M), ceil(n / N), splits);
 * TF_SPMM_BITMAP_WARPS * 32 threads (a warp per 16-row unit of a tile, and a producer). Block
 * z takes k tiles (unit columns) [z * tiles_per_split, ...); split-K's workspace and counters
 * as for Tiled-CSL. `stages` (at least 1) stages of shared memory, each holding a tile's masks,
 * its x tile and `stage_values` values (a multiple of 8, at least the values of the tile's
 * units together). Dynamic shared memory: 16 * stages + stages * (TILE_M / 16 * 128
 * + N * 64 * 2 + stage_values * 2) + (TILE_M / 16 * (tiles_per_split + 1) + 4) * 4 bytes.
 * tilefuse_spmm_bitmap_probe_{loads,no_mma}_f16_n16: launched as
 * tilefuse_spmm_bitmap_f16_n16_same, with parts of the work left out (benchmarks only; they
 * write y = 0): the stages' copies, waits and releases alone; and with the decode (all but
 * the mma).
 */
#define TF_SPMM_BITMAP_WARPS 9
typedef struct TfSpmmBitmapParams {
    tf_dptr masks;
    tf_dptr unit_offsets;
    tf_dptr values;
    tf_dptr x;
    tf_dptr y;
    tf_dptr workspace;
    tf_dptr counters;
    uint32_t m;
    uint32_t n;
    uint32_t k;
    uint32_t splits;
    uint32_t tiles_per_split;
    uint32_t stages;
    uint32_t stage_values;
    uint32_t reserved;
} TfSpmmBitmapParams;

/*
 * tilefuse_attention_{f16,bf16}_d{64,128}_bm{64,128}: block-sparse attention forward,
 * FlashAttention-2 style. o = softmax(q·kᵀ·scale + mask)·v, lse = log-sum-exp (natural log).
 *   q [b, lq, hq, d], k, v [b, lk, hkv, d], o like q: element (b, l, h, c) at
 *   b * stride_b + l * stride_l + h * stride_h + c (strides in elements, per tensor);
 *   lse [b, hq, lq] f32 (0: not written).
 * The mask (BlockMask's CSR lists, mask_batch / mask_heads 1 = broadcast) names the key blocks
 * of block_n keys each query block of BM rows visits: partial ones (element mask `element`:
 * 0 none, 1 causal, 2 sliding window, 3 causal + window, with `window`) first, then full.
 * Rows: a block covers BM rows v of one batch row; row v is query v % lq of head
 * y * packed_heads + v / lq (y: the block's grid y). packed_heads is 1, or hq / hkv (the query
 * heads that share a key/value head, whose rows then follow one another) when lq <= BM and the
 * mask is shared by all heads (mask_heads 1).
 * Split-KV: with splits > 1, split s of a block takes tiles [s * tiles_per_split, ..) of its
 * listed key tiles (64 keys each, partial blocks' first). Each split writes its normalised o
 * (f32; for a row it saw no key of, the sum 0 · v: 0, or NaN) to partial_o [splits, b, hq,
 * lq, d] and its base-2 log-sum-exp to partial_lse
 * [splits, b, hq, lq]; the last split of a block to finish (counters [b, grid y, row blocks],
 * zero before a launch and left zero after it) merges them in split order into o and lse.
 * With splits 1 those three are never read (0 allowed).
 * Grid: (row blocks * splits, hq / packed_heads, b), row blocks = ceil(packed_heads * lq /
 * BM), x = split * row blocks + row block; BM / TF_ATTENTION_WARP_ROWS_D<d> warps (one per
 * 32 rows at d = 64, per 16 at d = 128).
 * scale_log2 = scale * log2(e). `stages` (2 or 3) K/V tiles of 64 keys are in flight at once.
 * Dynamic shared memory: (BM + 2 * stages * 64) * d * 2 bytes, at least
 * (BM * (splits + 1) + 1) * 4 with splits > 1 (at most TF_ATTENTION_MAX_SPLITS).
 */
#define TF_ATTENTION_KV_TILE 64
#define TF_ATTENTION_WARP_ROWS_D64 32
#define TF_ATTENTION_WARP_ROWS_D128 16
#define TF_ATTENTION_MAX_SPLITS 64
typedef struct TfAttentionParams {
    tf_dptr q;
    tf_dptr k;
    tf_dptr v;
    tf_dptr o;
    tf_dptr lse;
    tf_dptr partial_offsets;
    tf_dptr partial;
    tf_dptr full_offsets;
    tf_dptr full;
    uint64_t q_stride_b;
    uint64_t q_stride_l;
    uint64_t q_stride_h;
    uint64_t k_stride_b;
    uint64_t k_stride_l;
    uint64_t k_stride_h;
    uint64_t v_stride_b;
    uint64_t v_stride_l;
    uint64_t v_stride_h;
    uint64_t o_stride_b;
    uint64_t o_stride_l;
    uint64_t o_stride_h;
    uint32_t batch;
    uint32_t lq;
    uint32_t lk;
    uint32_t heads_q;
    uint32_t heads_kv;
    uint32_t block_n;
    uint32_t q_blocks;
    uint32_t mask_batch;
    uint32_t mask_heads;
    uint32_t element;
    uint32_t window;
    float scale_log2;
    uint32_t stages;
    uint32_t packed_heads;
    uint32_t splits;
    uint32_t tiles_per_split;
    tf_dptr partial_o;
    tf_dptr partial_lse;
    tf_dptr counters;
} TfAttentionParams;

/*
 * tilefuse_attention_sm90a_{f16,bf16}_d{64,128}_bm{64,128}: the forward above for Hopper
 * (cuda/attention_sm90a.cu, sm_90a only): the same o and lse for `base`'s shapes, mask and
 * strides, with packed_heads 1 and splits 1 (base's q, k, v addresses and the split-KV fields
 * unused). Q, K and V are read through q_map, k_map, v_map: tensor maps of the 4-D tensors
 * (d, l, h, b) (innermost first; dimension sizes d, lq or lk, heads, batch; byte strides of l,
 * h and b), 16-bit elements, boxes of (64, 64, 1, 1), 128-byte swizzle, out-of-bounds elements
 * zero. Work items: (query block, head, batch) for every query block of BM rows (q_blocks of
 * them), head and batch row, taken longest first: item w is query block q_blocks - 1 - w /
 * (hq * b), head w % (hq * b) % hq, batch row w % (hq * b) / hq. Grid: any number of blocks
 * in x up to the items (persistent: block x takes items x, x + grid, ...); (BM / 64 + 1) * 128
 * threads: a producer warpgroup and BM / 64 consumer warpgroups. `stages` (2 or 3) K/V tiles in flight. Dynamic shared memory:
 * 2048 + (BM + 2 * stages * 64) * d * 2 bytes (1 KiB of mbarriers, and up to 1 KiB to align
 * the tiles to 1024 bytes).
 */
typedef struct TfAttentionSm90aParams {
    TfTensorMap q_map;
    TfTensorMap k_map;
    TfTensorMap v_map;
    TfAttentionParams base;
} TfAttentionSm90aParams;

/*
 * The attention backward: dq, dk, dv of tilefuse_attention's o given do (its cotangent), the
 * forward's o and lse, in two launches on one stream, dq's first. With P = exp(scale·q·kᵀ −
 * lse) on the mask's allowed positions (0 elsewhere and for rows with lse = −inf), D =
 * rowsum(do ∘ o), dS = P ∘ (do·vᵀ − D): dq = scale·dS·k, dk = scale·dSᵀ·q, dv = Pᵀ·do, each
 * kv head's dk and dv summed over the query heads of its group in head order (no atomics:
 * every launch gives the same bits).
 *   q, k, v, o as in tilefuse_attention (strides in elements); do laid out as o (o's strides);
 *   lse [b, hq, lq] f32 (natural log); delta [b, hq, lq] f32, D, written by the dq launch and
 *   read by the dk/dv launch; dq [b, lq, hq, d], dk, dv [b, lk, hkv, d], packed ("same": the
 *   input type, "f32": f32).
 * The mask's forward lists (as tilefuse_attention's) and its transposed lists (per (batch,
 * head, kv block) of the mask's own batch and heads: the q blocks that list the kv block,
 * partial and full), both CSR.
 * tilefuse_attention_backward_dq_{f16,bf16}_d{64,128}_{same,f32}: grid (ceil(lq / 64), hq, b),
 * block x taking query rows [64 x, 64 x + 64) of head y, batch z, and the key blocks its q
 * block lists, in tiles of 64 keys; it writes those rows' D to delta.
 * tilefuse_attention_backward_dkdv_{f16,bf16}_d{64,128}_{same,f32}: grid (ceil(lk / 64), hkv,
 * b), block x taking keys [64 x, 64 x + 64) of kv head y, batch z, and for each query head of
 * the group the q blocks that list its kv block, in tiles of 64 query rows.
 * Both: TF_ATTENTION_BACKWARD_THREADS threads; scale_log2 = scale * log2(e). Dynamic shared
 * memory: 6 * 64 * d * 2 + 64 * 4 bytes (dq), 6 * 64 * d * 2 + 4 * 64 * 4 (dk/dv).
 */
#define TF_ATTENTION_BACKWARD_THREADS 128
typedef struct TfAttentionBackwardParams {
    tf_dptr q;
    tf_dptr k;
    tf_dptr v;
    tf_dptr o;
    tf_dptr d_o;
    tf_dptr lse;
    tf_dptr delta;
    tf_dptr dq;
    tf_dptr dk;
    tf_dptr dv;
    tf_dptr partial_offsets;
    tf_dptr partial;
    tf_dptr full_offsets;
    tf_dptr full;
    tf_dptr t_partial_offsets;
    tf_dptr t_partial;
    tf_dptr t_full_offsets;
    tf_dptr t_full;
    uint64_t q_stride_b;
    uint64_t q_stride_l;
    uint64_t q_stride_h;
    uint64_t k_stride_b;
    uint64_t k_stride_l;
    uint64_t k_stride_h;
    uint64_t v_stride_b;
    uint64_t v_stride_l;
    uint64_t v_stride_h;
    uint64_t o_stride_b;
    uint64_t o_stride_l;
    uint64_t o_stride_h;
    uint32_t batch;
    uint32_t lq;
    uint32_t lk;
    uint32_t heads_q;
    uint32_t heads_kv;
    uint32_t block_m;
    uint32_t block_n;
    uint32_t q_blocks;
    uint32_t kv_blocks;
    uint32_t mask_batch;
    uint32_t mask_heads;
    uint32_t element;
    uint32_t window;
    float scale_log2;
    float scale;
    uint32_t reserved;
} TfAttentionBackwardParams;

#endif /* TILEFUSE_ABI_H */
