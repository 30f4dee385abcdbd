// y[n, m] = x[n, k] · w[m, k]ᵀ with w in the bitmap format (src/spmm/bitmap.rs), in time
// that follows the nonzeros: a workgroup owns 64 rows of m and 8 tokens; for each 16 x 64 unit
// column it stages the x tile, and each invocation walks its row's set bits (a byte of each
// of the 8 blocks that hold the row), finds each value's place by popcounts, and multiplies
// it into its 8 tokens. f32 arithmetic; the sums [n][m] are f32 (y itself for f32 output,
// else spmm.wgsl's `finish` packs them). Where the driver cuts long loops short, the host
// splits the unit columns over dispatches that add into the sums.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    units_k: u32,
    // This dispatch takes unit columns [unit_first, unit_first + unit_count) and adds its sums
    // to the ones there when accumulate is 1 (else it stores them).
    unit_first: u32,
    unit_count: u32,
    accumulate: u32,
    pad0: u32,
}

override BF16: bool = false;

const ROWS: u32 = 64u;     // rows of m per workgroup
const UNIT_M: u32 = 16u;
const UNIT_K: u32 = 64u;
const TOKENS: u32 = 8u;    // tokens per workgroup

@group(0) @binding(0) var<uniform> params: Params;
// masks, values, x and the sums may be larger than one binding (src/backend/wgpu/window.rs).
//#windowed @binding(1, 11, 12, 13) var<storage, read> masks: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> unit_offsets: array<u32>;
//#windowed @binding(3, 14, 15, 16) var<storage, read> values: array<u32>;
//#windowed @binding(4, 17, 18, 19) var<storage, read> x: array<u32>;
//#windowed @binding(5, 20, 21, 22) var<storage, read_write> sums: array<f32>;

// The x tile by column: x_tile[c][t] is token t of column c of the unit column.
var<workgroup> x_tile: array<array<f32, TOKENS>, UNIT_K>;

fn from_bits(bits: u32) -> f32 {
    if (BF16) {
        return bitcast<f32>(bits << 16u);
    }
    return unpack2x16float(bits).x;
}

// Element i of a buffer of 16-bit values packed two per u32.
fn half_of(word: u32, i: u32) -> f32 {
    return from_bits((word >> (16u * (i & 1u))) & 0xffffu);
}

// The set bits of a 64-bit mask below bit 8·r (r < 8).
fn bits_below_row(mask: vec2<u32>, r: u32) -> u32 {
    if (r < 4u) {
        return countOneBits(mask.x & ((1u << (8u * r)) - 1u));
    }
    return countOneBits(mask.x) + countOneBits(mask.y & ((1u << (8u * (r - 4u))) - 1u));
}

// `acc` plus the products of one unit's values in the row (of `half` and `r`) with the staged
// x tile.
fn unit_column(acc_in: array<f32, TOKENS>, unit: u32, half: u32, r: u32) -> array<f32, TOKENS> {
    var acc = acc_in;
    var next = unit_offsets[unit];  // the first value of block b
    for (var b = 0u; b < 16u; b++) {
        let mask = masks_at(unit * 16u + b);
        let pair = b % 4u;
        if (pair % 2u == half) {
            var bits = (select(mask.x, mask.y, r >= 4u) >> (8u * (r % 4u))) & 0xffu;
            var at = next + bits_below_row(mask, r);
            let col0 = 16u * (b / 4u) + 8u * (pair / 2u);
            while (bits != 0u) {
                let w = half_of(values_at(at >> 1u), at);
                let c = col0 + firstTrailingBit(bits);
                for (var t = 0u; t < TOKENS; t++) {
                    acc[t] += w * x_tile[c][t];
                }
                at += 1u;
                bits &= bits - 1u;
            }
        }
        next += countOneBits(mask.x) + countOneBits(mask.y);
    }
    return acc;
}

@compute @workgroup_size(64)
fn bitmap(@builtin(local_invocation_index) index: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let row = group.x * ROWS + index;
    let token0 = group.y * TOKENS;
    let live = row < params.m;
    // The row's place in its units: which half of the 16 rows, which row of the 8.
    let half = (row % UNIT_M) / 8u;
    let r = row % 8u;
    var acc: array<f32, TOKENS>;
    let unit_end = min(params.units_k, params.unit_first + min(params.unit_count, params.units_k));
    for (var uk = params.unit_first; uk < unit_end; uk++) {
        workgroupBarrier();  // the previous unit column's reads are done
        for (var s = 0u; s < TOKENS; s++) {
            let e = s * ROWS + index;
            let t = e / UNIT_K;
            let c = e % UNIT_K;
            let col = uk * UNIT_K + c;
            var value = 0.0;
            if (token0 + t < params.n && col < params.k) {
                let i = (token0 + t) * params.k + col;
                value = half_of(x_at(i >> 1u), i);
            }
            x_tile[c][t] = value;
        }
        workgroupBarrier();
        if (live) {
            acc = unit_column(acc, (row / UNIT_M) * params.units_k + uk, half, r);
        }
    }
    if (!live) {
        return;
    }
    for (var t = 0u; t < TOKENS; t++) {
        if (token0 + t < params.n) {
            let at = (token0 + t) * params.m + row;
            if (params.accumulate != 0u) {
                sums_set(at, sums_at(at) + acc[t]);
            } else {
                sums_set(at, acc[t]);
            }
        }
    }
}
