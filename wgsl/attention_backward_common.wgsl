// What the two kernels of the attention backward share (attention_backward_dq.wgsl and
// attention_backward_dkdv.wgsl, each prepended with this file; two shaders, so that each
// gets four bindings per large tensor within lavapipe's 32 storage bindings): block-sparse
// attention backward from the forward's o and lse (docs/design.md, "The backward pass"),
// FlashAttention-2's two passes without atomics, an invocation per row:
// `backward_dq` gives a workgroup one query block (BLOCK_M rows) of one head and batch; each
// invocation computes its row's D = rowsum(do ∘ o) (written to `delta`), walks the key
// blocks the row's q block lists and accumulates dq. `backward_dkdv`, dispatched after it,
// gives a workgroup one key block (BLOCK_N keys) of one key/value head and batch; each
// invocation walks, for each query head of the group in turn, the q blocks that list its key
// block (the transposed lists) and accumulates dk and dv. Keys (or queries, with their lse
// and D) are staged CHUNK at a time in workgroup memory. q, k, v, o and do hold 16-bit
// values (f16, or bf16 when BF16), two per u32, at the strides in params (do at o's); the
// gradients are packed, f32 when G_F32, else 16-bit. As in the forward, every loop over d or
// a chunk has a trip count fixed at pipeline creation, and on llvmpipe (lavapipe), which
// cuts every loop of an invocation short after 65535 iterations in all, the host splits each
// row's (or key's) list over passes that carry the accumulators in `state`.

struct Params {
    batch: u32,
    lq: u32,
    lk: u32,
    heads_q: u32,
    heads_kv: u32,
    d: u32,
    block_m: u32,
    block_n: u32,
    q_blocks: u32,
    kv_blocks: u32,
    mask_batch: u32,
    mask_heads: u32,
    element: u32,      // 0 none, 1 causal, 2 sliding window, 3 causal + window
    window: u32,
    scale: f32,
    // This dispatch visits entries [pass_first, pass_first + pass_count) of each row's list
    // (dk/dv: of the concatenated lists of the group's heads); bit 0 of pass_flags: the
    // first pass (start from zero, else from state), bit 1: the last (write the gradients,
    // else save state).
    pass_first: u32,
    pass_count: u32,
    pass_flags: u32,
    padding0: u32,
    padding1: u32,
    // Element strides (batch, position, head) and start of q, k, v and o (and do).
    strides: array<vec4<u32>, 4>,
}

override BF16: bool = false;
// The gradients are f32 (else the inputs' 16-bit type).
override G_F32: bool = true;
// The head dimension (64 or 128), fixed per pipeline.
override D: u32 = 64u;

const MAX_D4: u32 = 32u;   // vec4s of the largest head dimension
const CHUNK: u32 = 16u;
const THREADS: u32 = 128u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(14) var<storage, read> lse: array<f32>;
// Between passes: dq rows (D values each), or dk then dv rows (2 D); bound whole (it is only
// used under a loop budget).
@group(0) @binding(19) var<storage, read_write> state: array<u32>;

// The staged rows: keys and values (dq), or queries and their do (dk/dv).
var<workgroup> tile_a: array<array<vec4<f32>, MAX_D4>, CHUNK>;
var<workgroup> tile_b: array<array<vec4<f32>, MAX_D4>, CHUNK>;
// dk/dv: the staged queries' lse (+inf for none: P = 0) and D.
var<workgroup> row_lse: array<f32, CHUNK>;
var<workgroup> row_delta: array<f32, CHUNK>;

// Values 4c .. 4c+3 of the row starting at element `base` (even: strides are multiples of 8).
fn q4(base: u32, c: u32) -> vec4<f32> { let w = (base >> 1u) + 2u * c; return load4(q_at(w), q_at(w + 1u)); }
fn k4(base: u32, c: u32) -> vec4<f32> { let w = (base >> 1u) + 2u * c; return load4(k_at(w), k_at(w + 1u)); }
fn v4(base: u32, c: u32) -> vec4<f32> { let w = (base >> 1u) + 2u * c; return load4(v_at(w), v_at(w + 1u)); }
fn do4(base: u32, c: u32) -> vec4<f32> { let w = (base >> 1u) + 2u * c; return load4(d_o_at(w), d_o_at(w + 1u)); }

// Query (batch, head, i)'s lse, or +inf for a query without keys (lse = −inf: its P is 0).
fn lse_of(batch: u32, head: u32, i: u32) -> f32 {
    let value = lse[(batch * params.heads_q + head) * params.lq + i];
    if (bitcast<u32>(value) == 0xff800000u) {
        return bitcast<f32>(0x7f800000u);
    }
    return value;
}

// Values 4c .. 4c+3 of a packed gradient row starting at element `base` (a multiple of 4):
// where they go (in words: 4 f32, or 2 words of two 16-bit values) and the words.
fn gradient_at(base: u32, c: u32) -> u32 {
    return select((base + 4u * c) / 2u, base + 4u * c, G_F32);
}
fn gradient_words(value: vec4<f32>) -> vec4<u32> {
    if (G_F32) {
        return bitcast<vec4<u32>>(value);
    }
    return vec4<u32>(to_bits(value.x) | (to_bits(value.y) << 16u),
                     to_bits(value.z) | (to_bits(value.w) << 16u), 0u, 0u);
}
// Words per 4 values.
fn gradient_words_per4() -> u32 {
    return select(2u, 4u, G_F32);
}

fn state4(at: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<f32>(state[at]), bitcast<f32>(state[at + 1u]),
                     bitcast<f32>(state[at + 2u]), bitcast<f32>(state[at + 3u]));
}

fn save4(at: u32, value: vec4<f32>) {
    for (var e = 0u; e < 4u; e++) {
        state[at + e] = bitcast<u32>(value[e]);
    }
}
