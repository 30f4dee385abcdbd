//! SpMM through WGSL (`wgsl/spmm.wgsl`): the same Tiled-CSL buffers, scattered into
//! workgroup memory, f32 arithmetic.

use std::marker::PhantomData;

use super::SpmmOutput;
use super::format::{SpmmElement, TILE_K, TiledCsl};
use super::reference::output_tokens;
use crate::backend::wgpu::{GpuBuffer, Shader, Wgpu};
use crate::error::Result;

const SHADER: Shader = Shader {
    name: "spmm.wgsl",
    source: concat!(
        include_str!("../../wgsl/common/to_bits.wgsl"),
        include_str!("../../wgsl/spmm.wgsl")
    ),
};
/// Rows and tokens per workgroup.
const ROWS: usize = 64;
const TOKENS: usize = 16;

/// A [`TiledCsl`] weight in a wgpu device's memory.
#[derive(Debug)]
pub struct GpuTiledCsl<T: SpmmElement> {
    m: usize,
    k: usize,
    entries: GpuBuffer<u32>,
    tile_offsets: GpuBuffer<u32>,
    element: PhantomData<T>,
}

impl<T: SpmmElement> GpuTiledCsl<T> {
    /// Copies `w` to `gpu`'s device.
    pub fn upload(gpu: &Wgpu, w: &TiledCsl<T>) -> Result<Self> {
        Ok(GpuTiledCsl {
            m: w.m(),
            k: w.k(),
            entries: gpu.upload(w.device_entries())?,
            tile_offsets: gpu.upload(w.tile_offsets())?,
            element: PhantomData,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    tiles_k: u32,
    tile_first: u32,
    tile_count: u32,
    accumulate: u32,
    pad: u32,
}

/// Submits `y [n, m] = x [n, k] · wᵀ`, with `n = x.len() / k`.
pub fn spmm<T: SpmmElement, O: SpmmOutput<T>>(
    gpu: &Wgpu,
    w: &GpuTiledCsl<T>,
    x: &GpuBuffer<T>,
    y: &mut GpuBuffer<O>,
) -> Result<()> {
    let n = output_tokens(x.len(), y.len(), w.m, w.k)?;
    gpu.check_buffer("w", &w.entries)?;
    gpu.check_buffer("x", x)?;
    gpu.check_buffer("y", y)?;
    let tiles_k = w.k.div_ceil(TILE_K);
    let mut params = Params {
        m: w.m as u32,
        n: n as u32,
        k: w.k as u32,
        tiles_k: tiles_k as u32,
        tile_first: 0,
        tile_count: u32::MAX,
        accumulate: 0,
        pad: 0,
    };
    let constants = [("BF16", if T::NAME == "bf16" { 1.0 } else { 0.0 })];
    let groups = [w.m.div_ceil(ROWS) as u32, n.div_ceil(TOKENS) as u32, 1];
    let pipeline = gpu.pipeline(SHADER, "spmm", &constants)?;
    let product = if O::F32 {
        None
    } else {
        Some(gpu.zeros::<f32>(n * w.m)?)
    };
    let sums = product.as_ref().map_or(y.raw(), |p| p.raw());
    let bound = [
        (1, w.entries.raw()),
        (2, w.tile_offsets.raw()),
        (3, x.raw()),
        (4, sums),
    ];
    // Where the driver cuts long loops short, k is split over dispatches that add up. Loop
    // iterations per k tile, as if none were unrolled: the tile loop, zeroing (16 steps),
    // scattering (at most 8), staging x (4) and 64 columns of 4 tokens.
    let per_tile = 1 + 16 + 8 + 4 + TILE_K * (1 + 4);
    for tiles in gpu.loop_passes(tiles_k, per_tile, 32) {
        params.tile_first = tiles.start as u32;
        params.tile_count = tiles.len() as u32;
        params.accumulate = u32::from(tiles.start > 0);
        gpu.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), &bound, groups)?;
    }
    let Some(product) = product else {
        return Ok(());
    };
    let bytes = bytemuck::bytes_of(&params);
    let pack = gpu.pipeline(SHADER, "pack_output", &constants)?;
    let words = (n * w.m).div_ceil(2);
    let pack_groups = words.div_ceil(256).min(u16::MAX as usize) as u32;
    gpu.dispatch_bound(
        &pack,
        bytes,
        &[(4, product.raw()), (5, y.raw())],
        [pack_groups, 1, 1],
    )
}
