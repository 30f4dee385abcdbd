// Shared by the attention shaders, forward and backward (prepended to their source): reading
// 16-bit rows and the element mask. The including shader declares the BF16 override and a
// uniform `params` with lq, lk, element, window and strides (batch, position, head, start of
// q, k, v and o, in elements).

fn to_f32(h: u32) -> f32 {
    if (BF16) {
        return bitcast<f32>(h << 16u);
    }
    return unpack2x16float(h).x;
}

// Four 16-bit values from two words: values 4c .. 4c+3 of a row whose start is even (strides
// are multiples of 8).
fn load4(word0: u32, word1: u32) -> vec4<f32> {
    return vec4<f32>(to_f32(word0 & 0xffffu), to_f32(word0 >> 16u),
                     to_f32(word1 & 0xffffu), to_f32(word1 >> 16u));
}

// Element (batch, position, head, 0) of tensor `t` (0 q, 1 k, 2 v, 3 o; the backward's do
// shares o's).
fn row_start(t: u32, batch: u32, position: u32, head: u32) -> u32 {
    let s = params.strides[t];
    return s.w + batch * s.x + position * s.y + head * s.z;
}

// Whether the element mask lets query i see key j (bottom-right aligned).
fn element_allows(i: u32, j: u32) -> bool {
    let distance = i32(i) + i32(params.lk) - i32(params.lq) - i32(j);  // i' - j
    switch params.element {
        case 1u: { return distance >= 0; }
        case 2u: { return u32(abs(distance)) < params.window; }
        case 3u: { return distance >= 0 && u32(distance) < params.window; }
        default: { return true; }
    }
}
