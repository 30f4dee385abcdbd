//! Attention through WGSL (`wgsl/attention.wgsl`): one workgroup per (query block, head,
//! batch), visiting only the mask's listed key blocks, online softmax in f32.

use super::{AttentionShape, BlockMask, ElementMask, MaskShape};
use crate::backend::wgpu::{GpuBuffer, Shader, Wgpu};
use crate::error::{Error, Result};
use crate::spmm::{SpmmElement, SpmmOutput};

const SHADER: Shader = Shader {
    name: "attention.wgsl",
    source: include_str!("../../wgsl/attention.wgsl"),
};

/// A [`BlockMask`] in a wgpu device's memory.
#[derive(Debug)]
pub struct GpuBlockMask {
    shape: MaskShape,
    element: ElementMask,
    partial_offsets: GpuBuffer<u32>,
    partial: GpuBuffer<u32>,
    full_offsets: GpuBuffer<u32>,
    full: GpuBuffer<u32>,
    /// The most blocks (partial and full) any row lists.
    max_row_blocks: usize,
}

impl GpuBlockMask {
    /// Copies `mask` to `gpu`'s device.
    pub fn upload(gpu: &Wgpu, mask: &BlockMask) -> Result<Self> {
        let (partial_offsets, partial, full_offsets, full) = mask.parts();
        Ok(GpuBlockMask {
            shape: mask.shape(),
            element: mask.element(),
            partial_offsets: gpu.upload(partial_offsets)?,
            partial: gpu.upload(partial)?,
            full_offsets: gpu.upload(full_offsets)?,
            full: gpu.upload(full)?,
            max_row_blocks: mask.stats().max_blocks_per_row,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    lq: u32,
    lk: u32,
    heads_q: u32,
    heads_kv: u32,
    d: u32,
    block_m: u32,
    block_n: u32,
    q_blocks: u32,
    mask_batch: u32,
    mask_heads: u32,
    element: u32,
    window: u32,
    scale: f32,
    pass_first: u32,
    pass_count: u32,
    pass_flags: u32,
    pad: [u32; 3],
    /// (batch, position, head, start) element strides of q, k, v and o.
    strides: [[u32; 4]; 4],
}

/// The input tensors of one call, q `[b, lq, hq, d]` and k, v `[b, lk, hkv, d]`, with the
/// strides of the shape's [`Layout`](super::Layout).
#[derive(Debug)]
pub struct Inputs<'a, T> {
    /// Queries.
    pub q: &'a GpuBuffer<T>,
    /// Keys.
    pub k: &'a GpuBuffer<T>,
    /// Values.
    pub v: &'a GpuBuffer<T>,
}

/// Submits `o = softmax(q·kᵀ·scale + mask)·v` (f16 or bf16 inputs, f32 arithmetic), writing
/// `o [b, lq, hq, d]` in the inputs' type or f32 and, when given, `lse [b, hq, lq]` (packed;
/// natural log; −inf for a query that sees no key, whose `o` row is 0). `d` is 64 or 128.
/// q, k, v and o are read and written with the strides of `shape.layout()`; elements of
/// `o`'s buffer outside its rows are left as they were. Scores `scale·q·k` must be finite in
/// f32 (an overflowing score gives NaN rows).
pub fn attention<T: SpmmElement, O: SpmmOutput<T>>(
    gpu: &Wgpu,
    shape: &AttentionShape,
    inputs: Inputs<'_, T>,
    mask: &GpuBlockMask,
    o: &mut GpuBuffer<O>,
    lse: Option<&mut GpuBuffer<f32>>,
    scale: f32,
) -> Result<()> {
    let Inputs { q, k, v } = inputs;
    let lse_len = lse.as_ref().map(|lse| lse.len());
    shape.check_call([q.len(), k.len(), v.len()], mask.shape, o.len(), lse_len)?;
    if !scale.is_finite() {
        return Err(Error::invalid("scale", "a finite number", scale));
    }
    gpu.check_buffer("q", q)?;
    gpu.check_buffer("k", k)?;
    gpu.check_buffer("v", v)?;
    gpu.check_buffer("mask", &mask.full)?;
    gpu.check_buffer("o", o)?;
    let scratch;
    let lse = match lse {
        Some(lse) => {
            gpu.check_buffer("lse", lse)?;
            lse.raw()
        }
        None => {
            scratch = gpu.zeros::<f32>(shape.batch * shape.lq * shape.heads_q)?;
            scratch.raw()
        }
    };
    let (element, window) = mask.element.kernel_code();
    let m = mask.shape;
    // check_call kept every tensor below element 2^31, so its start and the strides of
    // dimensions of more than one element fit u32 (the others only ever multiply index 0).
    let layout = shape.layout();
    let mut params = Params {
        batch: shape.batch as u32,
        lq: shape.lq as u32,
        lk: shape.lk as u32,
        heads_q: shape.heads_q as u32,
        heads_kv: shape.heads_kv as u32,
        d: shape.d as u32,
        block_m: m.block_m as u32,
        block_n: m.block_n as u32,
        q_blocks: m.q_blocks() as u32,
        mask_batch: m.batch as u32,
        mask_heads: m.heads as u32,
        element,
        window,
        scale,
        pass_first: 0,
        pass_count: u32::MAX,
        pass_flags: FIRST_PASS | LAST_PASS,
        pad: [0; 3],
        strides: [layout.q, layout.k, layout.v, layout.o]
            .map(|s| [s.batch as u32, s.seq as u32, s.head as u32, s.start as u32]),
    };
    let constants = [
        ("BF16", if T::NAME == "bf16" { 1.0 } else { 0.0 }),
        ("D", shape.d as f64),
        ("O_F32", if O::F32 { 1.0 } else { 0.0 }),
    ];
    let pipeline = gpu.pipeline(SHADER, "attention", &constants)?;
    // Where the driver cuts long loops short, each row's list is split over passes that
    // carry the online softmax's state (running max, sum, output row) in a scratch buffer.
    let passes = gpu.loop_passes(
        mask.max_row_blocks,
        iterations_per_block(shape.d, m.block_n),
        shape.d + 64,
    );
    let rows = shape.batch * shape.heads_q * shape.lq;
    let state = (passes.len() > 1)
        .then(|| gpu.zeros::<f32>(rows * (shape.d + 2)))
        .transpose()?;
    let state = match &state {
        Some(state) => state.raw(),
        None => gpu.placeholder()?,
    };
    let buffers = [
        q.raw(),
        k.raw(),
        v.raw(),
        mask.partial_offsets.raw(),
        mask.partial.raw(),
        mask.full_offsets.raw(),
        mask.full.raw(),
        o.raw(),
        lse,
        state,
    ];
    let groups = [
        m.q_blocks() as u32,
        shape.heads_q as u32,
        shape.batch as u32,
    ];
    let last = passes.len() - 1;
    for (pass, blocks) in passes.into_iter().enumerate() {
        params.pass_first = blocks.start as u32;
        params.pass_count = blocks.len().min(u32::MAX as usize) as u32;
        params.pass_flags = u32::from(pass == 0) * FIRST_PASS + u32::from(pass == last) * LAST_PASS;
        gpu.dispatch(&pipeline, bytemuck::bytes_of(&params), &buffers, groups)?;
    }
    Ok(())
}

/// `pass_flags` bits (see `wgsl/attention.wgsl`).
const FIRST_PASS: u32 = 1;
const LAST_PASS: u32 = 2;

/// Loop iterations of one listed key block, as if no loop were unrolled: per chunk of 16 keys
/// the chunk loop, the 4-step staging loop and, for each key, its two loops over d/4; the
/// block loop. (The loops over the rows of q, o and the state add about d more per pass.)
fn iterations_per_block(d: usize, block_n: usize) -> usize {
    const CHUNK: usize = 16; // the shader's CHUNK
    const STAGING: usize = 4; // CHUNK * MAX_D4 / THREADS
    block_n.div_ceil(CHUNK) * (1 + STAGING + CHUNK * (1 + 2 * (d / 4))) + 1
}
