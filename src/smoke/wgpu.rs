//! The smoke op through WGSL.

use half::f16;

use super::MatmulShape;
use crate::backend::wgpu::{Bindings, GpuBuffer, Shader, Wgpu, wgsl_uniform};
use crate::error::Result;

const SHADER: Shader = Shader {
    name: "smoke.wgsl",
    source: include_str!("../../wgsl/smoke.wgsl"),
};
/// The shader's workgroup tile edge.
const TILE: u32 = 16;

wgsl_uniform! {
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
}

/// Submits `c = a · bᵀ` (16x16 tiles in workgroup memory, f32 arithmetic).
pub fn matmul(
    gpu: &Wgpu,
    a: &GpuBuffer<f16>,
    b: &GpuBuffer<f16>,
    c: &mut GpuBuffer<f32>,
    shape: MatmulShape,
) -> Result<()> {
    shape.check_lengths(a.len(), b.len(), c.len())?;
    gpu.check_buffer("a", a)?;
    gpu.check_buffer("b", b)?;
    gpu.check_buffer("c", c)?;
    let pipeline = gpu.pipeline(SHADER, "matmul", &[])?;
    let (m, n, k) = shape.as_u32();
    let groups = [n.div_ceil(TILE), m.div_ceil(TILE), 1];
    // Loop iterations per k tile, as if none were unrolled: the tile loop and 16 products.
    let tiles_k = shape.k().div_ceil(TILE as usize);
    for tiles in gpu.loop_passes(tiles_k, 1 + TILE as usize, 16) {
        let params = Params {
            m,
            n,
            k,
            tile_first: tiles.start as u32,
            tile_count: tiles.len() as u32,
            accumulate: u32::from(tiles.start > 0),
            pad0: 0,
            pad1: 0,
        };
        let bound = Bindings::new(gpu, SHADER)
            .windowed([1, 11, 12, 13], a.raw(), false)?
            .windowed([2, 14, 15, 16], b.raw(), false)?
            .windowed([3, 17, 18, 19], c.raw(), true)?;
        gpu.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), bound.list(), groups)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The uniform struct is laid out as the shader reads it.
    #[test]
    fn params_match_the_shader() {
        SHADER.assert_uniform("Params", Params::LAYOUT, size_of::<Params>());
    }
}
