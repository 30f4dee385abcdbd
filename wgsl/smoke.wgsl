// The plumbing test: c[m, n] = a[m, k] · b[n, k]ᵀ with 16x16 tiles staged in workgroup memory.
// a and b hold f16 bits, two per u32 (read with unpack2x16float, so no SHADER_F16 is needed);
// c is f32. One invocation per element of c; ragged edges read zeros. A dispatch takes k
// tiles [tile_first, tile_first + tile_count) and adds into c when accumulate is 1 (the host
// splits k where the driver cuts long loops short: llvmpipe).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    tile_first: u32,
    tile_count: u32,
    accumulate: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// Each may be larger than one binding (src/backend/wgpu/window.rs).
//#windowed @binding(1, 11, 12, 13) var<storage, read> a: array<u32>;
//#windowed @binding(2, 14, 15, 16) var<storage, read> b: array<u32>;
//#windowed @binding(3, 17, 18, 19) var<storage, read_write> c: array<f32>;

const TILE: u32 = 16u;

var<workgroup> a_tile: array<array<f32, TILE>, TILE>;
var<workgroup> b_tile: array<array<f32, TILE>, TILE>;

fn load_a(i: u32) -> f32 {
    return unpack2x16float(a_at(i >> 1u))[i & 1u];
}

fn load_b(i: u32) -> f32 {
    return unpack2x16float(b_at(i >> 1u))[i & 1u];
}

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_id) local: vec3<u32>) {
    let row = group.y * TILE + local.y;      // of a and c
    let col = group.x * TILE + local.x;      // of c
    let b_row = group.x * TILE + local.y;    // row of b this invocation stages
    var acc = 0.0;
    let tiles_k = params.k / TILE + select(0u, 1u, params.k % TILE != 0u);  // no k0 + 16 that can wrap
    let tile_end = min(tiles_k, params.tile_first + min(params.tile_count, tiles_k));
    for (var t = params.tile_first; t < tile_end; t++) {
        let kk = t * TILE + local.x;
        var av = 0.0;
        if (row < params.m && kk < params.k) {
            av = load_a(row * params.k + kk);
        }
        var bv = 0.0;
        if (b_row < params.n && kk < params.k) {
            bv = load_b(b_row * params.k + kk);
        }
        a_tile[local.y][local.x] = av;
        b_tile[local.y][local.x] = bv;
        workgroupBarrier();
        for (var i = 0u; i < TILE; i++) {
            acc += a_tile[local.y][i] * b_tile[local.x][i];
        }
        workgroupBarrier();
    }
    if (row < params.m && col < params.n) {
        let at = row * params.n + col;
        c_set(at, select(acc, c_at(at) + acc, params.accumulate != 0u));
    }
}
