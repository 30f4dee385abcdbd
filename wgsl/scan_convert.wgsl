// 16-bit states (f16 or bf16, two to a u32, the first in the low half) to f32 and back: the
// WGSL scan computes on f32 copies of 16-bit u, h, dh and du (src/scan/wgpu.rs says when).
// Invocation i owns packed word i, so no two invocations write one word. Narrowing rounds to
// nearest even; the high half of a last, half-used word is left as it was.

struct Params {
    // 16-bit values in the tensor.
    count: u32,
    // Words per row of workgroups (x), for grids of more than 65535 workgroups.
    row_words: u32,
}

override BF16: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
// Both may be larger than one binding (src/backend/wgpu/window.rs).
//#windowed @binding(1, 3, 4, 5) var<storage, read_write> packed: array<u32>;
//#windowed @binding(2, 6, 7, 8) var<storage, read_write> wide: array<f32>;

fn widen_half(bits: u32) -> f32 {
    if (BF16) {
        return bitcast<f32>(bits << 16u);
    }
    return unpack2x16float(bits).x;
}

// Round to nearest even. f16 through pack2x16float; bf16 by hand: carry the rounding bit into
// the kept half unless the value is NaN (kept a quiet NaN).
fn narrow(value: f32) -> u32 {
    if (BF16) {
        let bits = bitcast<u32>(value);
        if ((bits & 0x7fffffffu) > 0x7f800000u) {
            return (bits >> 16u) | 0x40u;
        }
        return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
    }
    return pack2x16float(vec2<f32>(value, 0.0)) & 0xffffu;
}

fn word_of(id: vec3<u32>) -> u32 {
    return id.y * params.row_words + id.x;
}

@compute @workgroup_size(256)
fn widen(@builtin(global_invocation_id) id: vec3<u32>) {
    let word = word_of(id);
    let first = 2u * word;
    if (first >= params.count) {
        return;
    }
    let bits = packed_at(word);
    wide_set(first, widen_half(bits & 0xffffu));
    if (first + 1u < params.count) {
        wide_set(first + 1u, widen_half(bits >> 16u));
    }
}

@compute @workgroup_size(256)
fn narrow_states(@builtin(global_invocation_id) id: vec3<u32>) {
    let word = word_of(id);
    let first = 2u * word;
    if (first >= params.count) {
        return;
    }
    var high = packed_at(word) & 0xffff0000u;
    if (first + 1u < params.count) {
        high = narrow(wide_at(first + 1u)) << 16u;
    }
    packed_set(word, narrow(wide_at(first)) | high);
}
