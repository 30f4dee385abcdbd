// y[n, m] = x[n, k] · w[m, k]ᵀ with w in Tiled-CSL (src/spmm/format.rs): a workgroup owns 64
// rows of m (half of a 128-row tile row), 16 tokens and one split of the k tiles; for each
// 128 x 64 weight tile it scatters the entries of its half into an f32 tile in workgroup
// memory, marking each place in its row's 64-bit mask, stages the x tile beside it, and each
// invocation accumulates one row for four tokens over the columns its row's mask marks, so
// the time follows the nonzeros (and the tile needs no zeroing). f32 arithmetic. Weights and x hold 16-bit values (f16, or bf16 when BF16), two per
// u32. Each split writes its f32 sums [split][n][m]; with one split and f32 output they are y,
// else `finish` adds the splits in order and writes y as f32 or packed 16-bit values. Where
// the driver cuts long loops short (llvmpipe: 65535 iterations per invocation in all), the
// host also splits each split's tiles over several dispatches that add into its sums.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    tiles_k: u32,
    // Workgroup z takes k tiles [z * tiles_per_split, (z + 1) * tiles_per_split).
    splits: u32,
    tiles_per_split: u32,
    // This dispatch takes tiles [tile_first, tile_first + tile_count) of each split and adds
    // its sums to the split's when accumulate is 1 (else it stores them).
    tile_first: u32,
    tile_count: u32,
    accumulate: u32,
    // finish writes f32 values (else pairs of 16-bit ones).
    out_f32: u32,
    pad0: u32,
    pad1: u32,
}

override BF16: bool = false;

const ROWS: u32 = 64u;     // rows of m per workgroup
const TILE_K: u32 = 64u;
const TOKENS: u32 = 16u;   // tokens per workgroup
const PER_INVOCATION: u32 = 4u;

@group(0) @binding(0) var<uniform> params: Params;
// entries, x, sums and out may be larger than one binding (src/backend/wgpu/window.rs).
//#windowed @binding(1, 11, 12, 13) var<storage, read> entries: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> tile_offsets: array<u32>;
//#windowed @binding(3, 14, 15, 16) var<storage, read> x: array<u32>;
//#windowed @binding(4, 17, 18, 19) var<storage, read_write> sums: array<f32>;
//#windowed @binding(5, 20, 21, 22) var<storage, read_write> out: array<u32>;

// The tile's values, each row padded by one value (rows 65 words apart fall on every bank);
// only the places its row's mask marks hold this tile's values. Scalars, not vectors, because
// the scatter's invocations write neighbouring values at once, and WGSL lets a write of one
// vector component touch the whole vector.
var<workgroup> dense: array<array<f32, TILE_K + 1u>, ROWS>;
// Bit c % 32 of row_bits[r][c / 32]: the tile has an entry at (r, c).
var<workgroup> row_bits: array<array<atomic<u32>, 2>, ROWS>;
// The x tile by column: x_tile[c][g] holds tokens 4g .. 4g + 3 of column c, the four that one
// invocation multiplies (one broadcast load), staged one vec4 per invocation.
const GROUPS: u32 = TOKENS / PER_INVOCATION;
var<workgroup> x_tile: array<array<vec4<f32>, GROUPS>, TILE_K>;
const_assert TILE_K * GROUPS == 256u;

fn from_bits(bits: u32) -> f32 {
    if (BF16) {
        return bitcast<f32>(bits << 16u);
    }
    return unpack2x16float(bits).x;
}

fn load_x(i: u32) -> f32 {
    return from_bits((x_at(i >> 1u) >> (16u * (i & 1u))) & 0xffffu);
}

// Column `col` of tokens token0 .. token0 + 3 of x (0 past its end).
fn x_group(col: u32, token0: u32) -> vec4<f32> {
    var values = vec4<f32>(0.0);
    for (var t = 0u; t < PER_INVOCATION; t++) {
        if (token0 + t < params.n && col < params.k) {
            values[t] = load_x((token0 + t) * params.k + col);
        }
    }
    return values;
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
    atomicOr(&row_bits[row - row0][col / 32u], 1u << (col % 32u));
}

@compute @workgroup_size(64, 4)
fn spmm(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>,
        @builtin(local_invocation_index) index: u32) {
    let tile_m = group.x / 2u;
    let row0 = (group.x % 2u) * ROWS;     // in the tile
    let token0 = group.y * TOKENS;
    let row = tile_m * 128u + row0 + local.x;
    var acc = vec4<f32>(0.0);  // tokens 4 local.y .. 4 local.y + 3
    let split_first = group.z * params.tiles_per_split;
    let split_end = min(params.tiles_k, split_first + params.tiles_per_split);
    let first = split_first + min(params.tile_first, params.tiles_per_split);
    let tile_end = min(split_end, first + min(params.tile_count, params.tiles_per_split));
    for (var tile_k = first; tile_k < tile_end; tile_k++) {
        if (index < ROWS * 2u) {
            atomicStore(&row_bits[index / 2u][index % 2u], 0u);
        }
        workgroupBarrier();
        let tile = tile_m * params.tiles_k + tile_k;
        // Whole vectors per invocation: padding repeats an entry inside its own vector.
        for (var v = tile_offsets[tile] + index; v < tile_offsets[tile + 1u]; v += 256u) {
            let e = entries_at(v);
            scatter(e.x, row0);
            scatter(e.y, row0);
            scatter(e.z, row0);
            scatter(e.w, row0);
        }
        x_tile[index / GROUPS][index % GROUPS] = x_group(tile_k * TILE_K + index / GROUPS,
                                                         token0 + (index % GROUPS) * PER_INVOCATION);
        workgroupBarrier();
        // The row's entries in column order (so the sums' order is fixed).
        for (var half = 0u; half < 2u; half++) {
            var bits = atomicLoad(&row_bits[local.x][half]);
            while (bits != 0u) {
                let c = 32u * half + firstTrailingBit(bits);
                acc += dense[local.x][c] * x_tile[c][local.y];
                bits &= bits - 1u;
            }
        }
        workgroupBarrier();
    }
    for (var t = 0u; t < PER_INVOCATION; t++) {
        let token = token0 + local.y * PER_INVOCATION + t;
        if (token < params.n && row < params.m) {
            let at = (group.z * params.n + token) * params.m + row;
            if (params.accumulate != 0u) {
                sums_set(at, sums_at(at) + acc[t]);
            } else {
                sums_set(at, acc[t]);
            }
        }
    }
}

// Element i of y: the splits' sums added in split order.
fn total_of(i: u32) -> f32 {
    let size = params.m * params.n;
    var sum = sums_at(i);
    for (var split = 1u; split < params.splits; split++) {
        sum += sums_at(split * size + i);
    }
    return sum;
}

// out = y as f32 bits, or as 16-bit pairs (out[j] = y[2j] | y[2j + 1] << 16; past the end of
// an odd-length y the high half keeps what the caller's buffer holds there), grid-stride.
@compute @workgroup_size(256)
fn finish(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let size = params.m * params.n;
    if (params.out_f32 != 0u) {
        for (var i = id.x; i < size; i += groups.x * 256u) {
            out_set(i, bitcast<u32>(total_of(i)));
        }
        return;
    }
    for (var j = id.x; j < (size + 1u) / 2u; j += groups.x * 256u) {
        var high: u32;
        if (2u * j + 1u < size) {
            high = to_bits(total_of(2u * j + 1u));
        } else {
            high = out_at(j) >> 16u;
        }
        out_set(j, to_bits(total_of(2u * j)) | (high << 16u));
    }
}
