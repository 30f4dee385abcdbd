// The scan's backward pass, after scan.wgsl's REVERSED passes have written every step's
// cotangent g (= du): the cotangents of a and h0 (src/scan/mod.rs states them).
//   gradients  per step, g[t]·h[t−1] (0 at a reset; h[−1] = h0): written as da for a
//              time-varying a, else summed over the invocation's steps and then over the
//              warps in order into one partial per (batch, group, chunk) record and lane;
//              dh0 = reset[0] ? 0 : a[0]·g[0]
//   da_total   a time-invariant da: per channel the records' partials in a fixed order
//              (warp w adds records w, w + WARPS, .. of its group, batch-major, carrying its
//              sum from pass to pass; the last pass adds the warps in order)
// The places and layouts are scan.wgsl's.

struct Params {
    batch: u32,
    time: u32,
    channels: u32,
    chunks: u32,
    groups: u32,
    stride_batch: u32,
    stride_time: u32,
    reset_stride_batch: u32,
    reset_stride_time: u32,
    has_h0: u32,
    // gradients: this dispatch's workgroup x is chunk chunk_first + x. da_total: this pass
    // adds records [chunk_first, chunk_first + chunk_count) of each group's batch · chunks.
    chunk_first: u32,
    chunk_count: u32,
}

override COMPLEX: bool = false;
override VARYING: bool = false;

const LANES: u32 = 32u;
const WARPS: u32 = 8u;
const STEPS: u32 = 16u;
const CHUNK: u32 = 128u;  // WARPS * STEPS

@group(0) @binding(0) var<uniform> params: Params;
//#windowed @binding(1, 11, 12, 13) var<storage, read> a: array<f32>;
//#windowed @binding(2, 14, 15, 16) var<storage, read> g: array<f32>;
//#windowed @binding(3, 17, 18, 19) var<storage, read> reset: array<u32>;
//#windowed @binding(4, 20, 21, 22) var<storage, read> h: array<f32>;
//#windowed @binding(5, 23, 24, 25) var<storage, read_write> da: array<f32>;
@group(0) @binding(6) var<storage, read> h0: array<f32>;
@group(0) @binding(7) var<storage, read_write> dh0: array<f32>;
@group(0) @binding(8) var<storage, read_write> partials: array<vec2<f32>>;
// da_total's running sums: [group][warp][lane].
@group(0) @binding(9) var<storage, read_write> sums: array<vec2<f32>>;

var<workgroup> warp_sums: array<array<vec2<f32>, LANES>, WARPS>;

fn cmul(x: vec2<f32>, y: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(x.x * y.x - x.y * y.y, x.x * y.y + x.y * y.x);
}

fn load_a(i: u32) -> vec2<f32> {
    if (COMPLEX) {
        return vec2<f32>(a_at(2u * i), a_at(2u * i + 1u));
    }
    return vec2<f32>(a_at(i), 0.0);
}

fn load_g(i: u32) -> vec2<f32> {
    if (COMPLEX) {
        return vec2<f32>(g_at(2u * i), g_at(2u * i + 1u));
    }
    return vec2<f32>(g_at(i), 0.0);
}

fn load_h(i: u32) -> vec2<f32> {
    if (COMPLEX) {
        return vec2<f32>(h_at(2u * i), h_at(2u * i + 1u));
    }
    return vec2<f32>(h_at(i), 0.0);
}

fn load_h0(i: u32) -> vec2<f32> {
    if (COMPLEX) {
        return vec2<f32>(h0[2u * i], h0[2u * i + 1u]);
    }
    return vec2<f32>(h0[i], 0.0);
}

fn store_da(i: u32, value: vec2<f32>) {
    if (COMPLEX) {
        da_set(2u * i, value.x);
        da_set(2u * i + 1u, value.y);
    } else {
        da_set(i, value.x);
    }
}

fn is_reset(b: u32, t: u32) -> bool {
    let i = b * params.reset_stride_batch + t * params.reset_stride_time;
    return ((reset_at(i >> 2u) >> (8u * (i & 3u))) & 0xffu) != 0u;
}

@compute @workgroup_size(32, 8)
fn gradients(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let batch = group.z;
    let chunk = params.chunk_first + group.x;
    let channel = group.y * LANES + local.x;
    let live = channel < params.channels;
    let t0 = chunk * CHUNK + local.y * STEPS;
    var steps = 0u;
    if (t0 < params.time) {
        steps = min(STEPS, params.time - t0);
    }
    let row = batch * params.stride_batch + channel;
    let final_at = batch * params.channels + channel;
    var sum = vec2<f32>(0.0, 0.0);
    for (var i = 0u; i < steps; i++) {
        let t = t0 + i;
        let at = row + t * params.stride_time;
        let reset_here = is_reset(batch, t);
        var product = vec2<f32>(0.0, 0.0);
        if (live) {
            let g_t = load_g(at);
            var before = vec2<f32>(0.0, 0.0);
            if (t > 0u) {
                before = load_h(at - params.stride_time);
            } else if (params.has_h0 != 0u) {
                before = load_h0(final_at);
            }
            if (!reset_here) {
                product = cmul(g_t, before);
            }
            if (t == 0u && params.has_h0 != 0u) {
                var a0 = load_a(channel);
                if (VARYING) {
                    a0 = load_a(row);
                }
                var d = vec2<f32>(0.0, 0.0);
                if (!reset_here) {
                    d = cmul(a0, g_t);
                }
                if (COMPLEX) {
                    dh0[2u * final_at] = d.x;
                    dh0[2u * final_at + 1u] = d.y;
                } else {
                    dh0[final_at] = d.x;
                }
            }
            if (VARYING) {
                store_da(at, product);
            }
        }
        sum += product;
    }
    if (VARYING) {
        return;
    }
    warp_sums[local.y][local.x] = sum;
    workgroupBarrier();
    if (local.y == 0u) {
        var total = vec2<f32>(0.0, 0.0);
        for (var w = 0u; w < WARPS; w++) {
            total += warp_sums[w][local.x];
        }
        let record = (batch * params.groups + group.y) * params.chunks + chunk;
        partials[record * LANES + local.x] = total;
    }
}

@compute @workgroup_size(32, 8)
fn da_total(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let records = params.batch * params.chunks;  // per group, batch-major
    let slot = (group.x * WARPS + local.y) * LANES + local.x;
    var sum = vec2<f32>(0.0, 0.0);
    if (params.chunk_first > 0u) {
        sum = sums[slot];
    }
    let end = min(records, params.chunk_first + params.chunk_count);
    // The first record of this pass that is this warp's (k ≡ warp mod WARPS).
    var k = params.chunk_first + (local.y + WARPS - params.chunk_first % WARPS) % WARPS;
    for (; k < end; k += WARPS) {
        let batch = k / params.chunks;
        let chunk = k % params.chunks;
        let record = (batch * params.groups + group.x) * params.chunks + chunk;
        sum += partials[record * LANES + local.x];
    }
    sums[slot] = sum;
    if (end < records) {
        return;
    }
    warp_sums[local.y][local.x] = sum;
    workgroupBarrier();
    let channel = group.x * LANES + local.x;
    if (local.y == 0u && channel < params.channels) {
        var total = vec2<f32>(0.0, 0.0);
        for (var w = 0u; w < WARPS; w++) {
            total += warp_sums[w][local.x];
        }
        store_da(channel, total);
    }
}
