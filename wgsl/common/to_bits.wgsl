// Shared by the shaders that store 16-bit outputs (prepended to their source): `value` as f16
// bits, or as bf16 bits when the including shader's BF16 override is set, rounded to nearest
// even, NaN kept NaN, and finite values past the 16-bit range made infinite (WGSL leaves
// pack2x16float of those undefined).
fn to_bits(value: f32) -> u32 {
    let bits = bitcast<u32>(value);
    if (value != value) {
        return select(0x7e00u, (bits >> 16u) | 0x40u, BF16);  // a quiet NaN
    }
    if (BF16) {
        return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
    }
    if (abs(value) >= 65520.0) {  // rounds past 65504
        return select(0x7c00u, 0xfc00u, value < 0.0);
    }
    return pack2x16float(vec2<f32>(value, 0.0)) & 0xffffu;
}

