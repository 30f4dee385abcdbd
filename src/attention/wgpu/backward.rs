//! The attention backward through WGSL (`wgsl/attention_backward.wgsl`): a dq dispatch over
//! the forward's lists, then a dk/dv dispatch over the transposed lists, an invocation per
//! row, f32 arithmetic, no atomics.

use super::GpuBlockMask;
use crate::attention::AttentionShape;
use crate::attention::backward::check_call;
use crate::backend::wgpu::{Bindings, GpuBuffer, Shader, Wgpu, wgsl_uniform};
use crate::element::{Dtype16, Float16, OutputElement};
use crate::error::{Error, Result};

/// The two kernels, each with the shared part (`attention_backward_common.wgsl`) first.
const DQ_SHADER: Shader = Shader {
    name: "attention_backward_dq.wgsl",
    source: concat!(
        include_str!("../../../wgsl/common/to_bits.wgsl"),
        include_str!("../../../wgsl/common/attention_rows.wgsl"),
        include_str!("../../../wgsl/attention_backward_common.wgsl"),
        include_str!("../../../wgsl/attention_backward_dq.wgsl")
    ),
};
const DKDV_SHADER: Shader = Shader {
    name: "attention_backward_dkdv.wgsl",
    source: concat!(
        include_str!("../../../wgsl/common/to_bits.wgsl"),
        include_str!("../../../wgsl/common/attention_rows.wgsl"),
        include_str!("../../../wgsl/attention_backward_common.wgsl"),
        include_str!("../../../wgsl/attention_backward_dkdv.wgsl")
    ),
};

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
        kv_blocks: u32,
        mask_batch: u32,
        mask_heads: u32,
        element: u32,
        window: u32,
        scale: f32,
        pass_first: u32,
        pass_count: u32,
        pass_flags: u32,
        /// (The strides start at a multiple of 16 bytes.)
        padding0: u32,
        padding1: u32,
        /// (batch, position, head, start) element strides of q, k, v and o (and do).
        strides: [[u32; 4]; 4],
    }
}

/// What the backward pass reads: the forward's inputs q `[b, lq, hq, d]`, k, v `[b, lk, hkv,
/// d]` and output o (with the strides of the shape's [`Layout`](crate::attention::Layout)),
/// `d_o` (the cotangent of o, laid out as o) and the forward's `lse` `[b, hq, lq]`.
#[derive(Debug)]
pub struct BackwardInputs<'a, T> {
    /// Queries.
    pub q: &'a GpuBuffer<T>,
    /// Keys.
    pub k: &'a GpuBuffer<T>,
    /// Values.
    pub v: &'a GpuBuffer<T>,
    /// The forward's output.
    pub o: &'a GpuBuffer<T>,
    /// The cotangent of o.
    pub d_o: &'a GpuBuffer<T>,
    /// The forward's log-sum-exp per query (natural log).
    pub lse: &'a GpuBuffer<f32>,
}

/// The gradients, packed: `dq [b, lq, hq, d]`, `dk` and `dv` `[b, lk, hkv, d]`, in f32 or in
/// the inputs' type.
#[derive(Debug)]
pub struct BackwardOutputs<'a, G> {
    /// Of q.
    pub dq: &'a mut GpuBuffer<G>,
    /// Of k, summed over the query heads that share each key/value head.
    pub dk: &'a mut GpuBuffer<G>,
    /// Of v, summed likewise.
    pub dv: &'a mut GpuBuffer<G>,
}

/// Submits the backward pass of [`attention`](super::attention): given `d_o`, the gradients
/// of q, k and v as [`reference_backward`](crate::attention::reference_backward) defines them,
/// in `G` (f32, or the inputs' type `T`), every element of the three written, the same values
/// call after call. The forward's `o` and `lse` are inputs (P is recomputed from `lse`, D =
/// rowsum(dO ∘ O) from `o` as stored); `d_o` has o's strides. Inputs must be finite. It
/// allocates its scratch each time: [`attention_backward_with_workspace`] keeps it.
pub fn attention_backward<T: Float16, G: OutputElement<T>>(
    gpu: &Wgpu,
    shape: &AttentionShape,
    inputs: BackwardInputs<'_, T>,
    mask: &GpuBlockMask,
    outputs: BackwardOutputs<'_, G>,
    scale: f32,
) -> Result<()> {
    let mut workspace = BackwardWorkspace::new();
    attention_backward_with_workspace(gpu, shape, inputs, mask, outputs, scale, &mut workspace)
}

/// Scratch memory of [`attention_backward_with_workspace`] kept from call to call: D, one f32
/// per query row, and on drivers with a loop budget (lavapipe) the accumulators carried from
/// pass to pass. It grows to the largest call it has served and belongs to the device it was
/// first used on (passing it to another is an error).
#[derive(Debug, Default)]
pub struct BackwardWorkspace {
    delta: Option<GpuBuffer<f32>>,
    state: Option<GpuBuffer<f32>>,
}

impl BackwardWorkspace {
    /// An empty workspace; the first call allocates it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        let bytes = |b: &Option<GpuBuffer<f32>>| b.as_ref().map_or(0, |b| b.len() * 4);
        bytes(&self.delta) + bytes(&self.state)
    }
}

/// At least `len` f32 values in `slot` on `gpu`'s device (none asked: nothing allocated).
fn grown<'a>(
    slot: &'a mut Option<GpuBuffer<f32>>,
    gpu: &Wgpu,
    len: usize,
) -> Result<Option<&'a GpuBuffer<f32>>> {
    if let Some(buffer) = slot.as_ref() {
        gpu.check_buffer("workspace", buffer)?;
    }
    if len == 0 {
        return Ok(None);
    }
    if slot.as_ref().is_none_or(|buffer| buffer.len() < len) {
        *slot = Some(gpu.zeros(len)?);
    }
    Ok(slot.as_ref())
}

/// [`attention_backward`] with its scratch taken from `workspace` (grown there when too
/// small), as a training loop calls it layer after layer.
pub fn attention_backward_with_workspace<T: Float16, G: OutputElement<T>>(
    gpu: &Wgpu,
    shape: &AttentionShape,
    inputs: BackwardInputs<'_, T>,
    mask: &GpuBlockMask,
    outputs: BackwardOutputs<'_, G>,
    scale: f32,
    workspace: &mut BackwardWorkspace,
) -> Result<()> {
    let BackwardInputs {
        q,
        k,
        v,
        o,
        d_o,
        lse,
    } = inputs;
    let BackwardOutputs { dq, dk, dv } = outputs;
    check_call(
        shape,
        [q.len(), k.len(), v.len(), o.len(), d_o.len(), lse.len()],
        [dq.len(), dk.len(), dv.len()],
        mask.shape,
    )?;
    if !scale.is_finite() {
        return Err(Error::invalid("scale", "a finite number", scale));
    }
    for (what, buffer) in [("q", q), ("k", k), ("v", v), ("o", o), ("do", d_o)] {
        gpu.check_buffer(what, buffer)?;
    }
    gpu.check_buffer("lse", lse)?;
    gpu.check_buffer("mask", &mask.full)?;
    gpu.check_buffer("dq", dq)?;
    gpu.check_buffer("dk", dk)?;
    gpu.check_buffer("dv", dv)?;
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
        kv_blocks: m.kv_blocks() as u32,
        mask_batch: m.batch as u32,
        mask_heads: m.heads as u32,
        element,
        window,
        scale,
        pass_first: 0,
        pass_count: u32::MAX,
        pass_flags: FIRST_PASS | LAST_PASS,
        padding0: 0,
        padding1: 0,
        strides: [layout.q, layout.k, layout.v, layout.o]
            .map(|s| [s.batch as u32, s.seq as u32, s.head as u32, s.start as u32]),
    };
    let constants = [
        ("BF16", if T::DTYPE == Dtype16::Bf16 { 1.0 } else { 0.0 }),
        ("D", shape.d as f64),
        ("G_F32", if G::F32 { 1.0 } else { 0.0 }),
    ];
    let [t_partial_offsets, t_partial, t_full_offsets, t_full] = &mask.transposed;
    let group = shape.heads_q / shape.heads_kv;
    let dq_passes = gpu.loop_passes(
        mask.max_row_blocks,
        iterations_per_block(shape.d, m.block_n),
        2 * shape.d + 64,
    );
    let dkdv_passes = gpu.loop_passes(
        group * mask.max_column_blocks,
        iterations_per_block(shape.d, m.block_m),
        2 * shape.d + 64 + group,
    );
    // The accumulators of a kernel that takes several passes: dq rows, or dk and dv rows.
    let state_len = |passes: &[std::ops::Range<usize>], rows: usize| match passes.len() {
        1 => 0,
        _ => rows * shape.d,
    };
    let state = state_len(&dq_passes, shape.batch * shape.heads_q * shape.lq).max(state_len(
        &dkdv_passes,
        shape.batch * shape.heads_kv * shape.lk * 2,
    ));
    let BackwardWorkspace { delta, state: kept } = workspace;
    let rows = shape.batch * shape.heads_q * shape.lq;
    let delta = grown(delta, gpu, rows)?.expect("every shape has a row");
    let [_, no_state] = gpu.placeholders()?;
    let state = grown(kept, gpu, state)?.map_or(no_state, |state| state.raw());

    // dq (and D), over each query block's lists.
    let bindings = Bindings::new(gpu, DQ_SHADER)
        .windowed([1, 20, 21, 22], q.raw(), false)?
        .windowed([2, 23, 24, 25], k.raw(), false)?
        .windowed([3, 26, 27, 28], v.raw(), false)?
        .windowed([4, 29, 30, 31], o.raw(), false)?
        .windowed([5, 32, 33, 34], d_o.raw(), false)?
        .whole(6, mask.partial_offsets.raw())
        .whole(7, mask.partial.raw())
        .whole(8, mask.full_offsets.raw())
        .whole(9, mask.full.raw())
        .whole(14, lse.raw())
        .whole(15, delta.raw())
        .windowed([16, 35, 36, 37], dq.raw(), true)?
        .whole(STATE, state);
    Dispatch {
        shader: DQ_SHADER,
        entry: "backward_dq",
        bindings,
        groups: [params.q_blocks, params.heads_q, params.batch],
        passes: dq_passes,
    }
    .run(gpu, &constants, params)?;

    // dk and dv, over each key block's transposed lists, the group's heads one after another.
    let bindings = Bindings::new(gpu, DKDV_SHADER)
        .windowed([1, 20, 21, 22], q.raw(), false)?
        .windowed([2, 23, 24, 25], k.raw(), false)?
        .windowed([3, 26, 27, 28], v.raw(), false)?
        .windowed([5, 32, 33, 34], d_o.raw(), false)?
        .whole(10, t_partial_offsets.raw())
        .whole(11, t_partial.raw())
        .whole(12, t_full_offsets.raw())
        .whole(13, t_full.raw())
        .whole(14, lse.raw())
        .whole(15, delta.raw())
        .windowed([17, 38, 39, 40], dk.raw(), true)?
        .windowed([18, 41, 42, 43], dv.raw(), true)?
        .whole(STATE, state);
    Dispatch {
        shader: DKDV_SHADER,
        entry: "backward_dkdv",
        bindings,
        groups: [params.kv_blocks, params.heads_kv, params.batch],
        passes: dkdv_passes,
    }
    .run(gpu, &constants, params)
}

/// One kernel's dispatches: `entry` of `shader` over `groups`, once per pass of `passes`
/// (ranges of each row's list; the accumulators carried between passes in the state that
/// `bindings` holds).
struct Dispatch<'a> {
    shader: Shader,
    entry: &'static str,
    bindings: Bindings<'a>,
    groups: [u32; 3],
    passes: Vec<std::ops::Range<usize>>,
}

impl Dispatch<'_> {
    fn run(self, gpu: &Wgpu, constants: &[(&str, f64)], mut params: Params) -> Result<()> {
        let pipeline = gpu.pipeline(self.shader, self.entry, constants)?;
        let passes = &self.passes;
        for (pass, entries) in passes.iter().enumerate() {
            if passes.len() > 1 {
                params.pass_first = entries.start as u32;
                params.pass_count = entries.len() as u32;
            }
            params.pass_flags =
                u32::from(pass == 0) * FIRST_PASS + u32::from(pass + 1 == passes.len()) * LAST_PASS;
            let bytes = bytemuck::bytes_of(&params);
            gpu.dispatch_bound(&pipeline, bytes, self.bindings.list(), self.groups)?;
        }
        Ok(())
    }
}

/// The binding of the pass state (whole: it is only made under a loop budget, on lavapipe,
/// whose 32 storage bindings the large tensors' windows fill).
const STATE: u32 = 19;

/// `pass_flags` bits (see `wgsl/attention_backward.wgsl`).
const FIRST_PASS: u32 = 1;
const LAST_PASS: u32 = 2;

/// Loop iterations of one listed block of `rows` keys (dq) or queries (dk/dv), as if no loop
/// were unrolled: per chunk of 16 the chunk loop, the 4-step staging loop and, for each row,
/// its two loops over d/4; the block loop.
fn iterations_per_block(d: usize, rows: usize) -> usize {
    const CHUNK: usize = 16; // the shader's CHUNK
    const STAGING: usize = 4; // CHUNK * MAX_D4 / THREADS
    rows.div_ceil(CHUNK) * (1 + STAGING + CHUNK * (1 + 2 * (d / 4))) + 1
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::attention::{BlockMask, MaskShape};
    use crate::harness::Rng;

    /// A kept workspace gives the bits a fresh one gives, call after call, and grows only on
    /// the first call; the case is long enough for passes on lavapipe, so the state is kept
    /// too.
    #[test]
    fn a_kept_workspace_gives_the_same_bits_and_stops_growing() {
        let Some(gpu) = crate::backend::wgpu::tests::gpu() else {
            return;
        };
        let (lq, lk, hq, d) = (70, 1500, 2, 128);
        let shape = AttentionShape::new(1, lq, lk, hq, 1, d).unwrap();
        let mut rng = Rng::new(Rng::fresh_seed());
        let mut random = |n: usize| gpu.upload(&rng.fill(n, -1.0, 1.0, f16::from_f64)).unwrap();
        let (q, k, v) = (random(lq * hq * d), random(lk * d), random(lk * d));
        let (o, d_o) = (random(lq * hq * d), random(lq * hq * d));
        let lse = gpu.upload(&vec![3.0f32; lq * hq]).unwrap();
        let mask = BlockMask::dense(MaskShape::new(lq, lk)).unwrap();
        let mask = GpuBlockMask::upload(&gpu, &mask).unwrap();
        let run = |workspace: &mut BackwardWorkspace| {
            let [mut dq, mut dk, mut dv] =
                [lq * hq * d, lk * d, lk * d].map(|n| gpu.upload(&vec![f32::NAN; n]).unwrap());
            let inputs = BackwardInputs {
                q: &q,
                k: &k,
                v: &v,
                o: &o,
                d_o: &d_o,
                lse: &lse,
            };
            let outputs = BackwardOutputs {
                dq: &mut dq,
                dk: &mut dk,
                dv: &mut dv,
            };
            attention_backward_with_workspace(&gpu, &shape, inputs, &mask, outputs, 0.1, workspace)
                .unwrap();
            [dq, dk, dv].map(|g| gpu.download(&g).unwrap())
        };
        let fresh = run(&mut BackwardWorkspace::new());
        let mut kept = BackwardWorkspace::new();
        let first = run(&mut kept);
        let bytes = kept.bytes();
        let second = run(&mut kept);
        let bits = |g: &[Vec<f32>; 3]| g.concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&first), bits(&fresh));
        assert_eq!(bits(&second), bits(&fresh));
        assert_eq!(kept.bytes(), bytes);
        assert!(bits(&fresh).iter().all(|&b| f32::from_bits(b).is_finite()));
    }

    /// The uniform struct is laid out as the shader reads it.
    #[test]
    fn params_match_the_shader() {
        for shader in [DQ_SHADER, DKDV_SHADER] {
            shader.assert_uniform("Params", Params::LAYOUT, size_of::<Params>());
        }
    }
}
