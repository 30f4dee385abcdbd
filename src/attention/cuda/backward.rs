//! The attention backward on CUDA (`cuda/attention_backward.cu`): a dq launch over the
//! forward's block lists, then a dk/dv launch over the transposed lists, both recomputing P
//! from the forward's `lse`; deterministic (no atomics). GPU verification pending (see
//! BENCH.md).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};

use super::{AttentionWorkspace, DeviceBlockMask, check_aligned};
use crate::attention::backward::check_call;
use crate::attention::{AttentionShape, ElementMask, MaskShape};
use crate::backend::abi::{
    TF_ATTENTION_BACKWARD_THREADS, TF_ATTENTION_KV_TILE, TfAttentionBackwardParams,
};
use crate::backend::cuda::{Cuda, Kernel, LaunchShape, ids};
use crate::element::{Float16, OutputElement};
use crate::error::{Error, Result};

/// What the backward pass reads: the forward's inputs q `[b, lq, hq, d]`, k, v `[b, lk, hkv,
/// d]` and output o (with the strides of the shape's [`Layout`](crate::attention::Layout)),
/// `d_o` (the cotangent of o, laid out as o) and the forward's `lse` `[b, hq, lq]`.
#[derive(Debug)]
pub struct BackwardInputs<'a, Q, K, V, O, DO> {
    /// Queries.
    pub q: &'a Q,
    /// Keys.
    pub k: &'a K,
    /// Values.
    pub v: &'a V,
    /// The forward's output.
    pub o: &'a O,
    /// The cotangent of o.
    pub d_o: &'a DO,
    /// The forward's log-sum-exp per query (natural log).
    pub lse: &'a CudaSlice<f32>,
}

/// The gradients, packed: `dq [b, lq, hq, d]`, `dk` and `dv` `[b, lk, hkv, d]`, in f32 or in
/// the inputs' type.
#[derive(Debug)]
pub struct BackwardOutputs<'a, X> {
    /// Of q.
    pub dq: &'a mut X,
    /// Of k, summed over the query heads that share each key/value head.
    pub dk: &'a mut X,
    /// Of v, summed likewise.
    pub dv: &'a mut X,
}

/// Enqueues the backward pass of [`attention`](super::attention) on `cuda`'s stream: given
/// `d_o`, the gradients of q, k and v as [`reference_backward`](crate::attention::reference_backward)
/// defines them, in `G` (f32, or the inputs' type `T`), every element of the three written.
/// Calls with the same arguments give the same bits. It allocates its scratch (one f32 per
/// query row) each time: [`attention_backward_with_workspace`] reuses it.
///
/// The forward's `o` and `lse` are inputs: the pass recomputes P from `lse`, and D =
/// rowsum(dO ∘ O) from `o` as stored. Buffers follow the forward's rules (16-byte aligned,
/// starts and strides multiples of 8 elements); `d_o` has o's strides. Numerics: P and dS
/// enter their products rounded to `T`, as in FlashAttention; inputs must be finite.
pub fn attention_backward<T, G, Q, K, V, O, DO, X>(
    cuda: &Cuda,
    shape: &AttentionShape,
    inputs: BackwardInputs<'_, Q, K, V, O, DO>,
    mask: &DeviceBlockMask,
    outputs: BackwardOutputs<'_, X>,
    scale: f32,
) -> Result<()>
where
    T: Float16 + DeviceRepr,
    G: OutputElement<T> + DeviceRepr,
    Q: DevicePtr<T>,
    K: DevicePtr<T>,
    V: DevicePtr<T>,
    O: DevicePtr<T>,
    DO: DevicePtr<T>,
    X: DevicePtrMut<G>,
{
    let mut workspace = AttentionWorkspace::new();
    attention_backward_with_workspace::<T, G, _, _, _, _, _, _>(
        cuda,
        shape,
        inputs,
        mask,
        outputs,
        scale,
        &mut workspace,
    )
}

/// [`attention_backward`] with its scratch taken from `workspace` (grown there when too
/// small), as a training loop calls it layer after layer.
///
/// ```no_run
/// # fn main() -> tilefuse::Result<()> {
/// use half::f16;
/// use tilefuse::attention::{AttentionShape, BlockMask, MaskShape};
/// use tilefuse::attention::cuda::{
///     AttentionWorkspace, BackwardInputs, BackwardOutputs, DeviceBlockMask, Inputs, Outputs,
///     attention_with_workspace, attention_backward_with_workspace,
/// };
/// use tilefuse::backend::cuda::Cuda;
///
/// let cuda = Cuda::new(0)?;
/// let shape = AttentionShape::new(2, 1024, 1024, 8, 8, 64)?;
/// let mask = DeviceBlockMask::upload(&cuda, &BlockMask::causal(MaskShape::new(1024, 1024))?)?;
/// let len = 2 * 1024 * 8 * 64;
/// let (q, k, v) = (cuda.upload(&vec![f16::ONE; len])?, cuda.upload(&vec![f16::ONE; len])?, cuda.upload(&vec![f16::ONE; len])?);
/// let mut o = cuda.upload(&vec![f16::ZERO; len])?;
/// let mut lse = cuda.upload(&vec![0.0f32; 2 * 8 * 1024])?;
/// let d_o = cuda.upload(&vec![f16::ONE; len])?;
/// let [mut dq, mut dk, mut dv] = [0; 3].map(|_| cuda.upload(&vec![0.0f32; len]));
/// let (mut dq, mut dk, mut dv) = (dq?, dk?, dv?);
/// let mut workspace = AttentionWorkspace::new();
/// let outputs = Outputs { o: &mut o, lse: Some(&mut lse) };
/// attention_with_workspace(&cuda, &shape, Inputs { q: &q, k: &k, v: &v }, &mask, outputs, 0.125, &mut workspace)?;
/// let inputs = BackwardInputs { q: &q, k: &k, v: &v, o: &o, d_o: &d_o, lse: &lse };
/// let outputs = BackwardOutputs { dq: &mut dq, dk: &mut dk, dv: &mut dv };
/// attention_backward_with_workspace::<f16, f32, _, _, _, _, _, _>(&cuda, &shape, inputs, &mask, outputs, 0.125, &mut workspace)?;
/// # Ok(())
/// # }
/// ```
pub fn attention_backward_with_workspace<T, G, Q, K, V, O, DO, X>(
    cuda: &Cuda,
    shape: &AttentionShape,
    inputs: BackwardInputs<'_, Q, K, V, O, DO>,
    mask: &DeviceBlockMask,
    outputs: BackwardOutputs<'_, X>,
    scale: f32,
    workspace: &mut AttentionWorkspace,
) -> Result<()>
where
    T: Float16 + DeviceRepr,
    G: OutputElement<T> + DeviceRepr,
    Q: DevicePtr<T>,
    K: DevicePtr<T>,
    V: DevicePtr<T>,
    O: DevicePtr<T>,
    DO: DevicePtr<T>,
    X: DevicePtrMut<G>,
{
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
    cuda.check_device("q", q)?;
    cuda.check_device("k", k)?;
    cuda.check_device("v", v)?;
    cuda.check_device("o", o)?;
    cuda.check_device("do", d_o)?;
    cuda.check_device("lse", lse)?;
    cuda.check_device("mask", &mask.full)?;
    cuda.check_device("dq", dq)?;
    cuda.check_device("dk", dk)?;
    cuda.check_device("dv", dv)?;
    let plan = BackwardPlan::new::<T, G>(shape, mask.shape, mask.element, scale)?;
    for shared in plan.shared_bytes {
        cuda.info()
            .shared_memory("attention backward shared memory", shared)?;
    }
    let delta = workspace.delta(cuda, shape)?;
    // The same addresses serve both launches; each launch's arguments hold their own guards.
    for (kernel, launch) in [(plan.dq, plan.dq_shape()), (plan.dkdv, plan.dkdv_shape())] {
        let mut args = cuda.args();
        let tensors = [
            ("q", args.read(q)),
            ("k", args.read(k)),
            ("v", args.read(v)),
            ("o", args.read(o)),
            ("do", args.read(d_o)),
        ];
        check_aligned(&tensors)?;
        let gradients = [
            args.write(&mut *dq),
            args.write(&mut *dk),
            args.write(&mut *dv),
        ];
        let t = &mask.transposed;
        let lists = [
            args.read(&mask.partial_offsets),
            args.read(&mask.partial),
            args.read(&mask.full_offsets),
            args.read(&mask.full),
            args.read(&t[0]),
            args.read(&t[1]),
            args.read(&t[2]),
            args.read(&t[3]),
        ];
        let params = plan.params::<T>(
            shape,
            tensors.map(|(_, address)| address),
            [args.read(lse), args.write(&mut *delta)],
            gradients,
            lists,
        );
        // SAFETY: TfAttentionBackwardParams is both kernels' parameter struct; addresses
        // come from `args` (plus each tensor's start), all on this context (checked).
        // check_call established what abi.h asks: q, k, v, o and do reach one past the last
        // element their starts and strides address, starts and strides are multiples of 8
        // elements and the buffers 16-byte aligned (checked above), as cp.async and the
        // 16-byte reads of o need; lse holds b·hq·lq values; dq, dk and dv hold their packed
        // lengths, so every gradient row the kernels store (queries below lq, keys below lk)
        // is inside, and no two threads store one element. heads_kv divides heads_q. The mask
        // passed BlockMask's validation (forward and transposed offsets from 0 to the lists'
        // lengths, q blocks below ceil(lq / block_m), kv blocks below ceil(lk / block_n)) and
        // matches this shape, so every list read is in range. delta holds b·hq·lq values
        // (AttentionWorkspace::delta); the dq launch writes every row of it before the dk/dv
        // launch, enqueued after it on the same stream, reads them. Shared memory was
        // checked against the device's limit.
        unsafe { cuda.launch(kernel, launch, &params, args)? };
    }
    Ok(())
}

/// The two launches of one backward call but for their buffers.
#[derive(Clone, Debug)]
pub(crate) struct BackwardPlan {
    pub(crate) dq: Kernel,
    pub(crate) dkdv: Kernel,
    /// Dynamic shared memory of the dq and the dk/dv launch.
    pub(crate) shared_bytes: [usize; 2],
    element: (u32, u32),
    scale: f32,
    mask: MaskShape,
    lq: usize,
    lk: usize,
    heads_q: usize,
    heads_kv: usize,
    batch: usize,
}

impl BackwardPlan {
    /// For `shape` (checked with its buffers by the caller) and a mask of `mask_shape` whose
    /// partial blocks apply `element`, with gradients in `G`.
    pub(crate) fn new<T: Float16, G: OutputElement<T>>(
        shape: &AttentionShape,
        mask_shape: MaskShape,
        element: ElementMask,
        scale: f32,
    ) -> Result<Self> {
        if !(scale * std::f32::consts::LOG2_E).is_finite() {
            return Err(Error::invalid(
                "scale",
                "a finite number below 2.3e38",
                scale,
            ));
        }
        let grid_ok = shape.heads_q <= u16::MAX as usize && shape.batch <= u16::MAX as usize;
        if !grid_ok {
            return Err(Error::DeviceLimit {
                what: "attention backward grid",
                limit_name: "max grid y and z (heads, batch)",
                needed: shape.heads_q.max(shape.batch) as u64,
                limit: u16::MAX.into(),
            });
        }
        let (dtype, d, out) = (
            T::DTYPE as usize,
            usize::from(shape.d != 64),
            usize::from(G::F32),
        );
        let tile = TF_ATTENTION_KV_TILE as usize * shape.d * 2;
        let row_values = TF_ATTENTION_KV_TILE as usize * 4;
        Ok(BackwardPlan {
            dq: ids::attention_backward::DQ[dtype][d][out],
            dkdv: ids::attention_backward::DKDV[dtype][d][out],
            shared_bytes: [6 * tile + row_values, 6 * tile + 4 * row_values],
            element: element.kernel_code(),
            scale,
            mask: mask_shape,
            lq: shape.lq,
            lk: shape.lk,
            heads_q: shape.heads_q,
            heads_kv: shape.heads_kv,
            batch: shape.batch,
        })
    }

    /// The dq launch: a block per 64 query rows of each head and batch row.
    pub(crate) fn dq_shape(&self) -> LaunchShape {
        self.launch(self.lq, self.heads_q, self.shared_bytes[0])
    }

    /// The dk/dv launch: a block per 64 keys of each key/value head and batch row.
    pub(crate) fn dkdv_shape(&self) -> LaunchShape {
        self.launch(self.lk, self.heads_kv, self.shared_bytes[1])
    }

    fn launch(&self, len: usize, heads: usize, shared_bytes: usize) -> LaunchShape {
        let blocks = len.div_ceil(TF_ATTENTION_KV_TILE as usize);
        LaunchShape {
            grid: [blocks as u32, heads as u32, self.batch as u32],
            block: [TF_ATTENTION_BACKWARD_THREADS, 1, 1],
            shared_bytes: shared_bytes as u32,
        }
    }

    /// Both launches' parameters, with the buffers of q, k, v, o and do (each tensor's start
    /// is added; do takes o's), lse and delta, the gradients, and the mask's forward then
    /// transposed lists (partial offsets, partial, full offsets, full).
    pub(crate) fn params<T>(
        &self,
        shape: &AttentionShape,
        tensors: [u64; 5],
        [lse, delta]: [u64; 2],
        [dq, dk, dv]: [u64; 3],
        lists: [u64; 8],
    ) -> TfAttentionBackwardParams {
        let layout = shape.layout();
        let starts = [layout.q, layout.k, layout.v, layout.o, layout.o]
            .map(|s| (s.start * size_of::<T>()) as u64);
        let [q, k, v, o, d_o] = [0, 1, 2, 3, 4].map(|i| tensors[i] + starts[i]);
        let m = self.mask;
        TfAttentionBackwardParams {
            q,
            k,
            v,
            o,
            d_o,
            lse,
            delta,
            dq,
            dk,
            dv,
            partial_offsets: lists[0],
            partial: lists[1],
            full_offsets: lists[2],
            full: lists[3],
            t_partial_offsets: lists[4],
            t_partial: lists[5],
            t_full_offsets: lists[6],
            t_full: lists[7],
            q_stride_b: layout.q.batch as u64,
            q_stride_l: layout.q.seq as u64,
            q_stride_h: layout.q.head as u64,
            k_stride_b: layout.k.batch as u64,
            k_stride_l: layout.k.seq as u64,
            k_stride_h: layout.k.head as u64,
            v_stride_b: layout.v.batch as u64,
            v_stride_l: layout.v.seq as u64,
            v_stride_h: layout.v.head as u64,
            o_stride_b: layout.o.batch as u64,
            o_stride_l: layout.o.seq as u64,
            o_stride_h: layout.o.head as u64,
            batch: shape.batch as u32,
            lq: shape.lq as u32,
            lk: shape.lk as u32,
            heads_q: shape.heads_q as u32,
            heads_kv: shape.heads_kv as u32,
            block_m: m.block_m as u32,
            block_n: m.block_n as u32,
            q_blocks: m.q_blocks() as u32,
            kv_blocks: m.kv_blocks() as u32,
            mask_batch: m.batch as u32,
            mask_heads: m.heads as u32,
            element: self.element.0,
            window: self.element.1,
            scale_log2: self.scale * std::f32::consts::LOG2_E,
            scale: self.scale,
            reserved: 0,
        }
    }
}

#[cfg(test)]
mod emulated;
