// Block-sparse attention forward, o = softmax(q·kᵀ·scale + mask)·v, from a BlockMask's CSR
// lists: a workgroup owns one query block (BLOCK_M rows, one per invocation) of one head and
// batch, visits the listed key blocks only (partial ones with the element mask, then full
// ones), and keeps an online softmax (running max, sum, f32 output row) per query. Keys and
// values are staged CHUNK at a time in workgroup memory. q, k, v hold 16-bit values (f16, or
// bf16 when BF16), two per u32, at the strides in params (multiples of 8 elements); o is f32
// when O_F32, else 16-bit like the inputs (an invocation owns its row, so it stores whole
// u32 words); lse is f32. Every loop over d or over a chunk has a trip count fixed at
// pipeline creation (D, CHUNK), so drivers may unroll it. llvmpipe (lavapipe) cuts every loop
// of an invocation short after 65535 iterations in all, so there the host splits each row's
// list over several passes that carry the softmax state.

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
    mask_batch: u32,
    mask_heads: u32,
    element: u32,      // 0 none, 1 causal, 2 sliding window, 3 causal + window
    window: u32,
    scale: f32,
    // This dispatch visits entries [pass_first, pass_first + pass_count) of each row's list
    // (partial then full); bit 0 of pass_flags: the first pass (start afresh, else resume
    // from state), bit 1: the last (write o, else save state), bit 2: lse is wanted (written
    // in the last pass).
    pass_first: u32,
    pass_count: u32,
    pass_flags: u32,
    // This dispatch's workgroup (x, y, z) is query block x of head head_first + y of batch
    // batch_first + z; the state holds slice_heads heads per batch of the slice.
    batch_first: u32,
    head_first: u32,
    slice_heads: u32,
    // Element strides (batch, position, head) and start of q, k, v and o.
    strides: array<vec4<u32>, 4>,
}

override BF16: bool = false;
// o is f32 (else the inputs' 16-bit type).
override O_F32: bool = true;
// The head dimension (64 or 128), fixed per pipeline.
override D: u32 = 64u;

const MAX_D4: u32 = 32u;   // vec4s of the largest head dimension
const CHUNK: u32 = 16u;
const THREADS: u32 = 128u;

@group(0) @binding(0) var<uniform> params: Params;
// q, k, v and o may be larger than one binding (src/backend/wgpu/window.rs).
//#windowed @binding(1, 11, 12, 13) var<storage, read> q: array<u32>;
//#windowed @binding(2, 14, 15, 16) var<storage, read> k: array<u32>;
//#windowed @binding(3, 17, 18, 19) var<storage, read> v: array<u32>;
@group(0) @binding(4) var<storage, read> partial_offsets: array<u32>;
@group(0) @binding(5) var<storage, read> partial: array<u32>;
@group(0) @binding(6) var<storage, read> full_offsets: array<u32>;
@group(0) @binding(7) var<storage, read> full: array<u32>;
//#windowed @binding(8, 20, 21, 22) var<storage, read_write> o: array<u32>;
@group(0) @binding(9) var<storage, read_write> lse: array<f32>;
// Between passes: running max, sum and output row (D values) of each query row.
//#windowed @binding(10, 23, 24, 25) var<storage, read_write> state: array<f32>;

var<workgroup> k_tile: array<array<vec4<f32>, MAX_D4>, CHUNK>;
var<workgroup> v_tile: array<array<vec4<f32>, MAX_D4>, CHUNK>;

// WGSL lets an implementation assume that no NaN or infinity occurs, so non-finite values are
// told apart by their bits, never by comparisons.
fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// A quiet NaN, made at run time (a constant expression may not be NaN).
var<private> nan_bits: u32 = 0x7fc00000u;

fn q4(base: u32, c: u32) -> vec4<f32> { let w = (base >> 1u) + 2u * c; return load4(q_at(w), q_at(w + 1u)); }
fn k4(base: u32, c: u32) -> vec4<f32> { let w = (base >> 1u) + 2u * c; return load4(k_at(w), k_at(w + 1u)); }
fn v4(base: u32, c: u32) -> vec4<f32> { let w = (base >> 1u) + 2u * c; return load4(v_at(w), v_at(w + 1u)); }

// Stores values at..at+3 of o (at a multiple of 4).
fn store4(at: u32, value: vec4<f32>) {
    if (O_F32) {
        o_set(at, bitcast<u32>(value.x));
        o_set(at + 1u, bitcast<u32>(value.y));
        o_set(at + 2u, bitcast<u32>(value.z));
        o_set(at + 3u, bitcast<u32>(value.w));
    } else {
        o_set(at / 2u, to_bits(value.x) | (to_bits(value.y) << 16u));
        o_set(at / 2u + 1u, to_bits(value.z) | (to_bits(value.w) << 16u));
    }
}

@compute @workgroup_size(128)
fn attention(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let q_block = group.x;
    let head = params.head_first + group.y;
    let batch = params.batch_first + group.z;
    let i = q_block * params.block_m + local.x;      // this invocation's query
    let live = local.x < params.block_m && i < params.lq;
    let kv_head = head / (params.heads_q / params.heads_kv);
    let d4 = D / 4u;

    var q_row: array<vec4<f32>, MAX_D4>;
    var out: array<vec4<f32>, MAX_D4>;
    let q_base = row_start(0u, batch, min(i, params.lq - 1u), head);
    for (var c = 0u; c < d4; c++) {
        q_row[c] = q4(q_base, c) * params.scale;
        out[c] = vec4<f32>(0.0);
    }
    var running_max = -3.4e38;
    var sum = 0.0;
    let state_row = (group.z * params.slice_heads + group.y) * params.lq + min(i, params.lq - 1u);
    let state_base = state_row * (D + 2u);
    if ((params.pass_flags & 1u) == 0u && live) {
        running_max = state_at(state_base);
        sum = state_at(state_base + 1u);
        for (var c = 0u; c < d4; c++) {
            let at = state_base + 2u + 4u * c;
            out[c] = vec4<f32>(state_at(at), state_at(at + 1u), state_at(at + 2u), state_at(at + 3u));
        }
    }

    let mask_b = select(batch, 0u, params.mask_batch == 1u);
    let mask_h = select(head, 0u, params.mask_heads == 1u);
    let row = (mask_b * params.mask_heads + mask_h) * params.q_blocks + q_block;
    let partial_count = partial_offsets[row + 1u] - partial_offsets[row];
    let full_count = full_offsets[row + 1u] - full_offsets[row];
    let listed = partial_count + full_count;
    let pass_end = min(listed, params.pass_first + min(params.pass_count, listed));
    for (var n = params.pass_first; n < pass_end; n++) {
        let is_partial = n < partial_count;
        var kv_block = 0u;
        if (is_partial) {
            kv_block = partial[partial_offsets[row] + n];
        } else {
            kv_block = full[full_offsets[row] + n - partial_count];
        }
        let block_end = min((kv_block + 1u) * params.block_n, params.lk);
        for (var j0 = kv_block * params.block_n; j0 < block_end; j0 += CHUNK) {
            workgroupBarrier();  // the previous chunk's reads are done
            // CHUNK keys x d4 vec4s, THREADS at a time.
            for (var r = 0u; r < CHUNK * MAX_D4 / THREADS; r++) {
                let e = r * THREADS + local.x;
                let jj = e / MAX_D4;
                let c = e % MAX_D4;
                let j = j0 + jj;
                var kv = vec4<f32>(0.0);
                var vv = vec4<f32>(0.0);
                if (j < params.lk && c < d4) {
                    kv = k4(row_start(1u, batch, j, kv_head), c);
                    vv = v4(row_start(2u, batch, j, kv_head), c);
                }
                k_tile[jj][c] = kv;
                v_tile[jj][c] = vv;
            }
            workgroupBarrier();
            for (var jj = 0u; jj < CHUNK; jj++) {
                let j = j0 + jj;
                if (live && j < block_end && (!is_partial || element_allows(i, j))) {
                    var dot = vec4<f32>(0.0);
                    for (var c = 0u; c < d4; c++) {
                        dot += q_row[c] * k_tile[jj][c];
                    }
                    let score = dot.x + dot.y + dot.z + dot.w;
                    if (!is_finite(score) || !is_finite(sum)) {
                        sum = bitcast<f32>(nan_bits);  // the row is NaN, whatever comes after
                        continue;
                    }
                    let new_max = max(running_max, score);
                    let correction = exp(running_max - new_max);
                    let p = exp(score - new_max);
                    sum = sum * correction + p;
                    for (var c = 0u; c < d4; c++) {
                        out[c] = out[c] * correction + p * v_tile[jj][c];
                    }
                    running_max = new_max;
                } else if (live && j < block_end) {
                    // A listed block is computed whole on every backend: a masked key adds
                    // 0 · v, NaN where v is not finite.
                    for (var c = 0u; c < d4; c++) {
                        for (var e = 0u; e < 4u; e++) {
                            if (!is_finite(v_tile[jj][c][e])) {
                                out[c][e] = bitcast<f32>(nan_bits);
                            }
                        }
                    }
                }
            }
        }
    }
    if (!live) {
        return;
    }
    if ((params.pass_flags & 2u) == 0u) {
        state_set(state_base, running_max);
        state_set(state_base + 1u, sum);
        for (var c = 0u; c < d4; c++) {
            let at = state_base + 2u + 4u * c;
            state_set(at, out[c].x);
            state_set(at + 1u, out[c].y);
            state_set(at + 2u, out[c].z);
            state_set(at + 3u, out[c].w);
        }
        return;
    }
    let base = row_start(3u, batch, i, head);
    // sum is 0 only for a row without keys (the largest score adds 1), NaN for a row that a
    // non-finite score reached; a non-finite value of v makes its column NaN.
    let seen = bitcast<u32>(sum) != 0u;
    let poisoned = !is_finite(sum);
    for (var c = 0u; c < d4; c++) {
        var value = select(vec4<f32>(0.0), out[c] / sum, seen);
        for (var e = 0u; e < 4u; e++) {
            if (poisoned || !is_finite(value[e])) {
                value[e] = bitcast<f32>(nan_bits);
            }
        }
        store4(base + 4u * c, value);
    }
    let neg_inf = bitcast<f32>(0xff800000u);
    var row_lse = select(neg_inf, running_max + log(sum), seen);
    if (poisoned) {
        row_lse = bitcast<f32>(nan_bits);
    }
    if ((params.pass_flags & 4u) != 0u) {
        lse[(batch * params.heads_q + head) * params.lq + i] = row_lse;
    }
}
