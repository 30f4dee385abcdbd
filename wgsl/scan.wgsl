// The diagonal linear recurrence with resets, h[t] = reset[t] ? u[t] : a·h[t-1] + u[t], in
// three passes over chunks of CHUNK time steps (WGSL has no forward-progress guarantee
// between workgroups, so the CUDA kernel's look-back is replaced by a carry pass):
//   chunk_maps   each chunk's steps composed into one affine map h -> r ? B : A·h + B
//   chunk_ends   per (batch, channel), the maps applied in order (a row's chunks shared by
//                the 8 warps of a workgroup): the state at each chunk's end
//   states       each chunk re-run from its carry-in, every state written
// Invocation (lane, warp) of a workgroup owns channel group·32 + lane and STEPS consecutive
// steps. Values are vec2<f32> (re, im); real scans (COMPLEX = false) keep im = 0 and read
// and write one f32 per element. reset holds u8 flags, four per u32.
// REVERSED runs the backward pass's recurrence instead (src/scan/mod.rs): step s is time
// t = T − 1 − s, with g = reset[t+1] ? dh[t] : a[t+1]·g + dh[t] (a' = 1, no reset at t = T −
// 1), u bound to dh, h0 to dh_last and h to du: every state written is g.

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
    // chunk_maps, states: this dispatch's workgroup x is chunk chunk_first + x (grids hold at
    // most 65535 chunks). chunk_ends: this dispatch carries chunks [chunk_first,
    // chunk_first + chunk_count) on from the end of chunk chunk_first - 1 (the host splits
    // long rows where the driver cuts long loops short).
    chunk_first: u32,
    chunk_count: u32,
}

override COMPLEX: bool = false;
override VARYING: bool = false;
override REVERSED: bool = false;

const LANES: u32 = 32u;
const WARPS: u32 = 8u;
const STEPS: u32 = 16u;
const CHUNK: u32 = 128u;  // WARPS * STEPS

@group(0) @binding(0) var<uniform> params: Params;
// a, u, reset and h may be larger than one binding (src/backend/wgpu/window.rs).
//#windowed @binding(1, 11, 12, 13) var<storage, read> a: array<f32>;
//#windowed @binding(2, 14, 15, 16) var<storage, read> u: array<f32>;
//#windowed @binding(3, 17, 18, 19) var<storage, read> reset: array<u32>;
@group(0) @binding(4) var<storage, read_write> map_a: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> map_b: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> map_reset: array<u32>;
@group(0) @binding(7) var<storage, read_write> ends: array<vec2<f32>>;
@group(0) @binding(8) var<storage, read> h0: array<f32>;
@group(0) @binding(9) var<storage, read_write> h_last: array<f32>;
//#windowed @binding(10, 20, 21, 22) var<storage, read_write> h: array<f32>;

// The affine map h -> reset ? b : a·h + b.
struct Map {
    a: vec2<f32>,
    b: vec2<f32>,
    reset: bool,
}

var<workgroup> warp_maps: array<array<Map, LANES>, WARPS>;
var<workgroup> chunk_in: array<vec2<f32>, LANES>;

fn cmul(x: vec2<f32>, y: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(x.x * y.x - x.y * y.y, x.x * y.y + x.y * y.x);
}

fn identity() -> Map {
    return Map(vec2<f32>(1.0, 0.0), vec2<f32>(0.0, 0.0), false);
}

// `first` followed by `next`.
fn then(first: Map, next: Map) -> Map {
    if (next.reset) {
        return next;
    }
    return Map(cmul(next.a, first.a), cmul(next.a, first.b) + next.b, first.reset);
}

fn apply(m: Map, state: vec2<f32>) -> vec2<f32> {
    if (m.reset) {
        return m.b;
    }
    return cmul(m.a, state) + m.b;
}

fn load_a(i: u32) -> vec2<f32> {
    if (COMPLEX) {
        return vec2<f32>(a_at(2u * i), a_at(2u * i + 1u));
    }
    return vec2<f32>(a_at(i), 0.0);
}

fn load_u(i: u32) -> vec2<f32> {
    if (COMPLEX) {
        return vec2<f32>(u_at(2u * i), u_at(2u * i + 1u));
    }
    return vec2<f32>(u_at(i), 0.0);
}

fn load_h0(i: u32) -> vec2<f32> {
    if (COMPLEX) {
        return vec2<f32>(h0[2u * i], h0[2u * i + 1u]);
    }
    return vec2<f32>(h0[i], 0.0);
}

fn is_reset(b: u32, t: u32) -> bool {
    let i = b * params.reset_stride_batch + t * params.reset_stride_time;
    return ((reset_at(i >> 2u) >> (8u * (i & 3u))) & 0xffu) != 0u;
}

// One invocation's place: its channel, its first step and how many of its steps exist.
struct Place {
    channel: u32,
    live: bool,
    t0: u32,
    steps: u32,
    row: u32,      // element index of (batch, t = 0, channel)
    record: u32,   // (batch, group, chunk)
}

fn place(lane: u32, warp: u32, chunk: u32, group: u32, batch: u32) -> Place {
    let channel = group * LANES + lane;
    let t0 = chunk * CHUNK + warp * STEPS;
    var steps = 0u;
    if (t0 < params.time) {
        steps = min(STEPS, params.time - t0);
    }
    return Place(channel, channel < params.channels, t0, steps,
                 batch * params.stride_batch + channel,
                 (batch * params.groups + group) * params.chunks + chunk);
}

// The time step that scan step s stands for.
fn time_of(s: u32) -> u32 {
    if (REVERSED) {
        return params.time - 1u - s;
    }
    return s;
}

// The time step whose a and reset step s of this invocation's recurrence reads: the forward
// reads a[t] and reset[t]; the backward a[t+1] and reset[t+1].
fn source_of(p: Place, i: u32) -> u32 {
    let t = time_of(p.t0 + i);
    if (REVERSED) {
        return t + 1u;
    }
    return t;
}

// The decay of this invocation's step i: a[source] (time-varying), `constant_a`, or 1 for the
// backward's last step, whose g has no successor.
fn decay_of(p: Place, i: u32, constant_a: vec2<f32>) -> vec2<f32> {
    let source = source_of(p, i);
    if (!p.live) {
        return vec2<f32>(0.0, 0.0);
    }
    if (REVERSED && source == params.time) {
        return vec2<f32>(1.0, 0.0);
    }
    if (VARYING) {
        return load_a(p.row + source * params.stride_time);
    }
    return constant_a;
}

// The time-invariant a of this invocation's channel (unused when VARYING).
fn constant_decay(p: Place) -> vec2<f32> {
    if (VARYING || !p.live) {
        return vec2<f32>(0.0, 0.0);
    }
    return load_a(p.channel);
}

// Bit i: a reset at this invocation's step i (REVERSED: at its time step + 1; none past the
// end).
fn reset_bits(p: Place, batch: u32) -> u32 {
    var bits = 0u;
    for (var i = 0u; i < STEPS; i++) {
        let source = source_of(p, i);
        if (i < p.steps && source < params.time && is_reset(batch, source)) {
            bits |= 1u << i;
        }
    }
    return bits;
}

// The input u (REVERSED: dh) of this invocation's step i.
fn input_of(p: Place, i: u32) -> vec2<f32> {
    if (!p.live) {
        return vec2<f32>(0.0, 0.0);
    }
    return load_u(p.row + time_of(p.t0 + i) * params.stride_time);
}

fn step_map(p: Place, i: u32, input: vec2<f32>, constant_a: vec2<f32>, resets: u32) -> Map {
    return Map(decay_of(p, i, constant_a), input, ((resets >> i) & 1u) != 0u);
}

// Loops run over all STEPS steps (a constant trip count the compiler can unroll, keeping the
// per-step values in registers), each step guarded.
fn own_map(p: Place, batch: u32) -> Map {
    let constant_a = constant_decay(p);
    let resets = reset_bits(p, batch);
    var m = identity();
    for (var i = 0u; i < STEPS; i++) {
        if (i < p.steps) {
            m = then(m, step_map(p, i, input_of(p, i), constant_a, resets));
        }
    }
    return m;
}

@compute @workgroup_size(32, 8)
fn chunk_maps(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let p = place(local.x, local.y, params.chunk_first + group.x, group.y, group.z);
    warp_maps[local.y][local.x] = own_map(p, group.z);
    workgroupBarrier();
    if (local.y == 0u) {
        var m = identity();
        for (var w = 0u; w < WARPS; w++) {
            m = then(m, warp_maps[w][local.x]);
        }
        let slot = p.record * LANES + local.x;
        map_a[slot] = m.a;
        map_b[slot] = m.b;
        if (local.x == 0u) {
            map_reset[p.record] = select(0u, 1u, m.reset);
        }
    }
}

fn chunk_map(record: u32, lane: u32) -> Map {
    let slot = record * LANES + lane;
    return Map(map_a[slot], map_b[slot], map_reset[record] != 0u);
}

// A workgroup per (batch, channel group): warp w composes the maps of its share of this
// dispatch's chunks, the warps' maps give each warp its carry-in, and each applies its chunks'
// maps in order from there, writing every chunk's end state.
@compute @workgroup_size(32, 8)
fn chunk_ends(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let batch = group.y;
    let lane = local.x;
    let warp = local.y;
    let channel = group.x * LANES + lane;
    let live = channel < params.channels;
    let first = (batch * params.groups + group.x) * params.chunks;
    let end = min(params.chunks, params.chunk_first + min(params.chunk_count, params.chunks));
    let count = end - min(params.chunk_first, end);
    let share = (count + WARPS - 1u) / WARPS;
    let lo = params.chunk_first + min(warp * share, count);
    let hi = params.chunk_first + min((warp + 1u) * share, count);

    var m = identity();
    for (var c = lo; c < hi; c++) {
        m = then(m, chunk_map(first + c, lane));
    }
    warp_maps[warp][lane] = m;
    workgroupBarrier();

    var state = vec2<f32>(0.0, 0.0);
    if (params.chunk_first > 0u) {
        state = ends[(first + params.chunk_first - 1u) * LANES + lane];
    } else if (params.has_h0 != 0u && live) {
        state = load_h0(batch * params.channels + channel);
    }
    for (var w = 0u; w < warp; w++) {
        state = apply(warp_maps[w][lane], state);
    }
    for (var c = lo; c < hi; c++) {
        state = apply(chunk_map(first + c, lane), state);
        ends[(first + c) * LANES + lane] = state;
    }
    if (live && lo < hi && hi == params.chunks) {
        let at = batch * params.channels + channel;
        if (COMPLEX) {
            h_last[2u * at] = state.x;
            h_last[2u * at + 1u] = state.y;
        } else {
            h_last[at] = state.x;
        }
    }
}

@compute @workgroup_size(32, 8)
fn states(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let batch = group.z;
    let chunk = params.chunk_first + group.x;
    let p = place(local.x, local.y, chunk, group.y, batch);
    let constant_a = constant_decay(p);
    let resets = reset_bits(p, batch);
    var inputs: array<vec2<f32>, STEPS>;
    var mine = identity();
    for (var i = 0u; i < STEPS; i++) {
        if (i < p.steps) {
            inputs[i] = input_of(p, i);
            mine = then(mine, step_map(p, i, inputs[i], constant_a, resets));
        }
    }
    warp_maps[local.y][local.x] = mine;
    if (local.y == 0u) {
        var carry = vec2<f32>(0.0, 0.0);
        if (chunk > 0u) {
            carry = ends[(p.record - 1u) * LANES + local.x];
        } else if (params.has_h0 != 0u && p.live) {
            carry = load_h0(batch * params.channels + p.channel);
        }
        chunk_in[local.x] = carry;
    }
    workgroupBarrier();
    var state = chunk_in[local.x];
    for (var w = 0u; w < local.y; w++) {
        state = apply(warp_maps[w][local.x], state);
    }
    if (!p.live) {
        return;
    }
    // The chunk's last state is the one chunk_ends computed, so h and h_last agree exactly.
    let chunk_last = min(params.time - chunk * CHUNK, CHUNK) - 1u;
    for (var i = 0u; i < STEPS; i++) {
        if (i < p.steps) {
            state = apply(step_map(p, i, inputs[i], constant_a, resets), state);
            var out = state;
            if (local.y * STEPS + i == chunk_last) {
                out = ends[p.record * LANES + local.x];
            }
            let at = p.row + time_of(p.t0 + i) * params.stride_time;
            if (COMPLEX) {
                h_set(2u * at, out.x);
                h_set(2u * at + 1u, out.y);
            } else {
                h_set(at, out.x);
            }
        }
    }
}
