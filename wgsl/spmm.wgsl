// y[n, m] = x[n, k] · w[m, k]ᵀ with w in Tiled-CSL (src/spmm/format.rs): a workgroup owns 64
// rows of m (half of a 128-row tile row) and 16 tokens; for each 128 x 64 weight tile it
// scatters the entries of its half into a zeroed f32 tile in workgroup memory, stages the x
// tile beside it, and each invocation accumulates one row for four tokens. f32 arithmetic.
// Weights and x hold 16-bit values (f16, or bf16 when BF16), two per u32; the product is f32,
// packed into 16-bit outputs by pack_output when the caller wants them. Where the driver cuts
// long loops short (llvmpipe: 65535 iterations per invocation in all), the host splits k
// over several dispatches that add into the f32 product.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    tiles_k: u32,
    // This dispatch takes k tiles [tile_first, tile_first + tile_count) and adds its sums to
    // y when accumulate is 1 (else it stores them).
    tile_first: u32,
    tile_count: u32,
    accumulate: u32,
    pad: u32,
}

override BF16: bool = false;

const ROWS: u32 = 64u;     // rows of m per workgroup
const TILE_K: u32 = 64u;
const TOKENS: u32 = 16u;   // tokens per workgroup
const PER_INVOCATION: u32 = 4u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> entries: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> tile_offsets: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> packed: array<u32>;

var<workgroup> dense: array<array<f32, TILE_K>, ROWS>;
var<workgroup> x_tile: array<array<f32, TILE_K>, TOKENS>;

fn from_bits(bits: u32) -> f32 {
    if (BF16) {
        return bitcast<f32>(bits << 16u);
    }
    return unpack2x16float(bits).x;
}

fn load_x(i: u32) -> f32 {
    return from_bits((x[i >> 1u] >> (16u * (i & 1u))) & 0xffffu);
}

// Writes entry `e` (value bits | place << 16) if its row is in rows [row0, row0 + ROWS).
fn scatter(e: u32, row0: u32) {
    let place = e >> 16u;
    let row = place / TILE_K;
    if (row < row0 || row >= row0 + ROWS) {
        return;
    }
    let swizzled = place % TILE_K;
    let col = (((swizzled / 8u) ^ (row % 8u)) * 8u) + swizzled % 8u;
    dense[row - row0][col] = from_bits(e & 0xffffu);
}

@compute @workgroup_size(64, 4)
fn spmm(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>,
        @builtin(local_invocation_index) index: u32) {
    let tile_m = group.x / 2u;
    let row0 = (group.x % 2u) * ROWS;     // in the tile
    let token0 = group.y * TOKENS;
    let row = tile_m * 128u + row0 + local.x;
    var acc = array<f32, PER_INVOCATION>(0.0, 0.0, 0.0, 0.0);
    let tile_end = min(params.tiles_k, params.tile_first + min(params.tile_count, params.tiles_k));
    for (var tile_k = params.tile_first; tile_k < tile_end; tile_k++) {
        for (var i = index; i < ROWS * TILE_K; i += 256u) {
            dense[i / TILE_K][i % TILE_K] = 0.0;
        }
        workgroupBarrier();
        let tile = tile_m * params.tiles_k + tile_k;
        // Whole vectors per invocation: padding repeats an entry inside its own vector.
        for (var v = tile_offsets[tile] + index; v < tile_offsets[tile + 1u]; v += 256u) {
            let e = entries[v];
            scatter(e.x, row0);
            scatter(e.y, row0);
            scatter(e.z, row0);
            scatter(e.w, row0);
        }
        for (var i = index; i < TOKENS * TILE_K; i += 256u) {
            let token = token0 + i / TILE_K;
            let col = tile_k * TILE_K + i % TILE_K;
            var value = 0.0;
            if (token < params.n && col < params.k) {
                value = load_x(token * params.k + col);
            }
            x_tile[i / TILE_K][i % TILE_K] = value;
        }
        workgroupBarrier();
        for (var c = 0u; c < TILE_K; c++) {
            let w = dense[local.x][c];
            for (var t = 0u; t < PER_INVOCATION; t++) {
                acc[t] += w * x_tile[local.y * PER_INVOCATION + t][c];
            }
        }
        workgroupBarrier();
    }
    for (var t = 0u; t < PER_INVOCATION; t++) {
        let token = token0 + local.y * PER_INVOCATION + t;
        if (token < params.n && row < params.m) {
            let at = token * params.m + row;
            if (params.accumulate != 0u) {
                y[at] += acc[t];
            } else {
                y[at] = acc[t];
            }
        }
    }
}

// packed[j] = the 16-bit forms of y[2j] and y[2j + 1] (0 past the end), grid-stride.
@compute @workgroup_size(256)
fn pack_output(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let total = params.m * params.n;
    let words = (total + 1u) / 2u;
    for (var j = id.x; j < words; j += groups.x * 256u) {
        var high = 0u;
        if (2u * j + 1u < total) {
            high = to_bits(y[2u * j + 1u]);
        }
        packed[j] = to_bits(y[2u * j]) | (high << 16u);
    }
}
