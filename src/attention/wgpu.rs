//! Attention through WGSL (`wgsl/attention.wgsl`): one workgroup per (query block, head,
//! batch), visiting only the mask's listed key blocks, online softmax in f32.

use super::{AttentionShape, BlockMask, ElementMask, MaskShape};
use crate::backend::wgpu::{Bindings, GpuBuffer, Shader, WINDOWS, Wgpu, wgsl_uniform};
use crate::element::{Dtype16, Float16, OutputElement};
use crate::error::{Error, Result};

const SHADER: Shader = Shader {
    name: "attention.wgsl",
    source: concat!(
        include_str!("../../wgsl/common/to_bits.wgsl"),
        include_str!("../../wgsl/common/attention_rows.wgsl"),
        include_str!("../../wgsl/attention.wgsl")
    ),
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
    /// The transposed lists, which the backward pass walks: partial offsets, partial, full
    /// offsets, full.
    transposed: [GpuBuffer<u32>; 4],
    /// The most blocks (partial and full) any row lists.
    max_row_blocks: usize,
    /// The most q blocks (partial and full) that list one key block of one head.
    max_column_blocks: usize,
}

impl GpuBlockMask {
    /// Copies `mask` (its lists and their transposes) to `gpu`'s device.
    pub fn upload(gpu: &Wgpu, mask: &BlockMask) -> Result<Self> {
        let (partial_offsets, partial, full_offsets, full) = mask.parts();
        let (t_partial_offsets, t_partial, t_full_offsets, t_full) = mask.transposed_parts();
        let column = |c: usize| {
            let count = |offsets: &[u32]| (offsets[c + 1] - offsets[c]) as usize;
            count(t_partial_offsets) + count(t_full_offsets)
        };
        let columns = t_partial_offsets.len() - 1;
        Ok(GpuBlockMask {
            transposed: [
                gpu.upload(t_partial_offsets)?,
                gpu.upload(t_partial)?,
                gpu.upload(t_full_offsets)?,
                gpu.upload(t_full)?,
            ],
            max_column_blocks: (0..columns).map(column).max().unwrap_or(0),
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

wgsl_uniform! {
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
        batch_first: u32,
        head_first: u32,
        slice_heads: u32,
        /// (batch, position, head, start) element strides of q, k, v and o.
        strides: [[u32; 4]; 4],
    }
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
pub fn attention<T: Float16, O: OutputElement<T>>(
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
    if let Some(lse) = &lse {
        gpu.check_buffer("lse", lse)?;
    }
    let [no_lse, no_state] = gpu.placeholders()?;
    let want_lse = if lse.is_some() { WANT_LSE } else { 0 };
    let lse = lse.map_or(no_lse, |lse| lse.raw());
    let (element, window) = mask.element.kernel_code();
    let m = mask.shape;
    // check_call kept every tensor below element 2^31, so its start and the strides of
    // dimensions of more than one element fit u32 (the others only ever multiply index 0).
    let layout = shape.layout();
    let params = Params {
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
        pass_flags: FIRST_PASS | LAST_PASS | want_lse,
        batch_first: 0,
        head_first: 0,
        slice_heads: shape.heads_q as u32,
        strides: [layout.q, layout.k, layout.v, layout.o]
            .map(|s| [s.batch as u32, s.seq as u32, s.head as u32, s.start as u32]),
    };
    let constants = [
        ("BF16", if T::DTYPE == Dtype16::Bf16 { 1.0 } else { 0.0 }),
        ("D", shape.d as f64),
        ("O_F32", if O::F32 { 1.0 } else { 0.0 }),
    ];
    let pipeline = gpu.pipeline(SHADER, "attention", &constants)?;
    // q, k, v, o and the pass state may span several bindings (wgsl/attention.wgsl); the
    // state comes last.
    let buffers = Bindings::new(gpu, SHADER)
        .windowed([1, 11, 12, 13], q.raw(), false)?
        .windowed([2, 14, 15, 16], k.raw(), false)?
        .windowed([3, 17, 18, 19], v.raw(), false)?
        .whole(4, mask.partial_offsets.raw())
        .whole(5, mask.partial.raw())
        .whole(6, mask.full_offsets.raw())
        .whole(7, mask.full.raw())
        .windowed([8, 20, 21, 22], o.raw(), true)?
        .whole(9, lse);
    let passes = gpu.loop_passes(
        mask.max_row_blocks,
        iterations_per_block(shape.d, m.block_n),
        shape.d + 64,
    );
    if passes.len() > 1 {
        return run_in_passes(gpu, &pipeline, params, buffers, shape, &passes);
    }
    let buffers = buffers.windowed(STATE, no_state, true)?;
    let groups = [params.q_blocks, params.heads_q, params.batch];
    gpu.dispatch_bound(
        &pipeline,
        bytemuck::bytes_of(&params),
        buffers.list(),
        groups,
    )
}

/// Where the driver cuts long loops short: each row's list over `passes`, the online
/// softmax's state (running max, sum, output row) carried between them in a scratch buffer,
/// (batch, head) slice by slice so that the state fits one binding.
fn run_in_passes(
    gpu: &Wgpu,
    pipeline: &wgpu::ComputePipeline,
    mut params: Params,
    buffers: Bindings,
    shape: &AttentionShape,
    passes: &[std::ops::Range<usize>],
) -> Result<()> {
    let limit = state_limit(gpu);
    let per_head = (shape.lq * (shape.d + 2) * size_of::<f32>()) as u64;
    Error::check_limit(
        "attention pass state of one head",
        "its windows of max_storage_buffer_binding_size",
        per_head,
        limit,
    )?;
    let fit = (limit / per_head) as usize;
    let heads = shape.heads_q.min(fit);
    let batches = if heads == shape.heads_q {
        (fit / heads).min(shape.batch)
    } else {
        1
    };
    let state = gpu.zeros::<f32>(batches * heads * shape.lq * (shape.d + 2))?;
    let buffers = buffers.windowed(STATE, state.raw(), true)?;
    params.slice_heads = heads as u32;
    let want_lse = params.pass_flags & WANT_LSE;
    for batch_first in (0..shape.batch).step_by(batches) {
        for head_first in (0..shape.heads_q).step_by(heads) {
            params.batch_first = batch_first as u32;
            params.head_first = head_first as u32;
            let grid = [
                params.q_blocks,
                heads.min(shape.heads_q - head_first) as u32,
                batches.min(shape.batch - batch_first) as u32,
            ];
            for (pass, blocks) in passes.iter().enumerate() {
                params.pass_first = blocks.start as u32;
                params.pass_count = blocks.len() as u32;
                params.pass_flags = u32::from(pass == 0) * FIRST_PASS
                    + u32::from(pass + 1 == passes.len()) * LAST_PASS
                    + want_lse;
                gpu.dispatch_bound(pipeline, bytemuck::bytes_of(&params), buffers.list(), grid)?;
            }
        }
    }
    Ok(())
}

/// The most bytes of pass state one dispatch binds: the state's windows (or fewer bytes a
/// unit test sets, to take several slices).
fn state_limit(gpu: &Wgpu) -> u64 {
    #[cfg(test)]
    if let Some(limit) = tests::STATE_LIMIT.get() {
        return limit;
    }
    let windows = (1u64 << gpu.window_log2()) * gpu.windows_for(SHADER) as u64;
    windows.min(gpu.limits().max_buffer_size)
}

/// The bindings of the pass state's windows.
const STATE: [u32; WINDOWS] = [10, 23, 24, 25];

/// `pass_flags` bits (see `wgsl/attention.wgsl`).
const FIRST_PASS: u32 = 1;
const LAST_PASS: u32 = 2;
const WANT_LSE: u32 = 4;

/// Loop iterations of one listed key block, as if no loop were unrolled: per chunk of 16 keys
/// the chunk loop, the 4-step staging loop and, for each key, its two loops over d/4; the
/// block loop. (The loops over the rows of q, o and the state add about d more per pass.)
fn iterations_per_block(d: usize, block_n: usize) -> usize {
    const CHUNK: usize = 16; // the shader's CHUNK
    const STAGING: usize = 4; // CHUNK * MAX_D4 / THREADS
    block_n.div_ceil(CHUNK) * (1 + STAGING + CHUNK * (1 + 2 * (d / 4))) + 1
}

mod backward;

pub use backward::{
    BackwardInputs, BackwardOutputs, BackwardWorkspace, attention_backward,
    attention_backward_with_workspace,
};

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use half::f16;

    use super::*;

    /// The uniform struct is laid out as the shader reads it.
    #[test]
    fn params_match_the_shader() {
        SHADER.assert_uniform("Params", Params::LAYOUT, size_of::<Params>());
    }
    use crate::attention::{MaskShape, reference};
    use crate::harness::{Rng, Tolerance, compare};

    thread_local! {
        pub(super) static STATE_LIMIT: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// Without `lse` (nothing bound but the placeholders) `o` is what it is with it.
    #[test]
    fn lse_is_optional() {
        let Some(gpu) = crate::backend::wgpu::tests::gpu() else {
            return;
        };
        let shape = AttentionShape::new(1, 100, 70, 2, 1, 64).unwrap();
        let mut rng = Rng::new(Rng::fresh_seed());
        let mut random = |n: usize| rng.fill(n, -1.0, 1.0, f16::from_f64);
        let (q, k, v) = (random(100 * 2 * 64), random(70 * 64), random(70 * 64));
        let mask = BlockMask::causal(MaskShape::new(100, 70)).unwrap();
        let device_mask = GpuBlockMask::upload(&gpu, &mask).unwrap();
        let inputs = (
            gpu.upload(&q).unwrap(),
            gpu.upload(&k).unwrap(),
            gpu.upload(&v).unwrap(),
        );
        let run = |lse: Option<&mut GpuBuffer<f32>>| {
            let inputs = Inputs {
                q: &inputs.0,
                k: &inputs.1,
                v: &inputs.2,
            };
            let mut o = gpu.upload(&vec![f32::NAN; q.len()]).unwrap();
            attention(&gpu, &shape, inputs, &device_mask, &mut o, lse, 0.1).unwrap();
            gpu.download(&o).unwrap()
        };
        let mut lse = gpu.upload(&vec![f32::NAN; 200]).unwrap();
        let with = run(Some(&mut lse));
        assert!(gpu.download(&lse).unwrap().iter().all(|x| !x.is_nan()));
        assert_eq!(run(None), with);
    }

    /// Rows long enough for several passes where the device has a loop budget (lavapipe),
    /// with the pass state limited to 3 (batch, head) pairs: slices of 3 heads and of 1.
    #[test]
    fn pass_state_in_slices_of_batches_and_heads() {
        let Some(gpu) = crate::backend::wgpu::tests::gpu() else {
            return;
        };
        let (b, lq, lk, hq, hkv, d) = (2, 130, 2500, 4, 2, 128);
        let shape = AttentionShape::new(b, lq, lk, hq, hkv, d).unwrap();
        let mut rng = Rng::new(Rng::fresh_seed());
        let mut random = |n: usize| rng.fill(n, -1.0, 1.0, f16::from_f64);
        let (q, k, v) = (
            random(b * lq * hq * d),
            random(b * lk * hkv * d),
            random(b * lk * hkv * d),
        );
        let mask = BlockMask::causal(MaskShape::new(lq, lk)).unwrap();
        let inputs = (
            gpu.upload(&q).unwrap(),
            gpu.upload(&k).unwrap(),
            gpu.upload(&v).unwrap(),
        );
        let inputs = Inputs {
            q: &inputs.0,
            k: &inputs.1,
            v: &inputs.2,
        };
        let device_mask = GpuBlockMask::upload(&gpu, &mask).unwrap();
        let mut o = gpu.upload(&vec![f32::NAN; q.len()]).unwrap();
        let mut lse = gpu.upload(&vec![f32::NAN; b * hq * lq]).unwrap();
        let per_head = (lq * (d + 2) * 4) as u64;
        STATE_LIMIT.set(Some(3 * per_head));
        let ran = attention(
            &gpu,
            &shape,
            inputs,
            &device_mask,
            &mut o,
            Some(&mut lse),
            0.1,
        );
        STATE_LIMIT.set(None);
        ran.unwrap();
        let want = reference(&shape, &q, &k, &v, &mask, 0.1).unwrap();
        let got = [gpu.download(&o).unwrap(), gpu.download(&lse).unwrap()].concat();
        let c = compare(&got, &[want.o, want.lse].concat(), Tolerance::F32);
        assert!(c.passed(), "{c}");
    }
}
