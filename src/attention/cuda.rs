//! Attention on CUDA (`cuda/attention.cu`): FlashAttention-2's design over the mask's block
//! lists, mma.sync on f16 / bf16 with f32 softmax. GPU verification pending (see BENCH.md).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};

use super::{AttentionShape, BlockMask, ElementMask, MaskShape};
use crate::backend::abi::{
    TF_ATTENTION_KV_TILE, TF_ATTENTION_WARP_ROWS_D64, TF_ATTENTION_WARP_ROWS_D128,
    TfAttentionParams,
};
use crate::backend::cuda::{Cuda, CudaDeviceInfo, Kernel, LaunchShape, ids};
use crate::element::Float16;
use crate::error::{Error, Result};

/// A [`BlockMask`] in device memory.
#[derive(Debug)]
pub struct DeviceBlockMask {
    shape: MaskShape,
    element: ElementMask,
    partial_offsets: CudaSlice<u32>,
    partial: CudaSlice<u32>,
    full_offsets: CudaSlice<u32>,
    full: CudaSlice<u32>,
}

impl DeviceBlockMask {
    /// Copies `mask` to `cuda`'s device (enqueued on its stream).
    pub fn upload(cuda: &Cuda, mask: &BlockMask) -> Result<Self> {
        let (partial_offsets, partial, full_offsets, full) = mask.parts();
        // Empty lists are never read, but their buffers must exist.
        let list = |values: &[u32]| cuda.upload(if values.is_empty() { &[0] } else { values });
        Ok(DeviceBlockMask {
            shape: mask.shape(),
            element: mask.element(),
            partial_offsets: cuda.upload(partial_offsets)?,
            partial: list(partial)?,
            full_offsets: cuda.upload(full_offsets)?,
            full: list(full)?,
        })
    }
}

/// The input tensors of one call in the FlashAttention layout, q `[b, lq, hq, d]` and k, v
/// `[b, lk, hkv, d]`, with the strides of the shape's [`Layout`](super::Layout).
#[derive(Debug)]
pub struct Inputs<'a, Q, K, V> {
    /// Queries.
    pub q: &'a Q,
    /// Keys.
    pub k: &'a K,
    /// Values.
    pub v: &'a V,
}

/// Enqueues `o = softmax(q·kᵀ·scale + mask)·v` on `cuda`'s stream: `o [b, lq, hq, d]` in the
/// inputs' type and, when given, `lse [b, hq, lq]` (packed; natural log, −inf for a query
/// that sees no key, whose `o` row is 0). `d` is 64 or 128. q, k, v and o are read and
/// written with the starts and strides of `shape.layout()`; elements of `o`'s buffer outside
/// its rows are left as they were. Buffers start 16-byte aligned (a `CudaView` at an offset
/// that is a multiple of 8 elements is); one buffer may serve as q, k and v.
///
/// Numerics: scores `scale·q·k` must be finite in f32 (an overflowing score gives NaN rows).
/// As in FlashAttention, a key that the element mask removes inside a visited block still
/// enters the P·V product with weight 0, so a NaN or infinity in such a row of `v` reaches
/// `o`; keys at or past `lk` and keys of skipped blocks are never read.
pub fn attention<T, Q, K, V>(
    cuda: &Cuda,
    shape: &AttentionShape,
    inputs: Inputs<'_, Q, K, V>,
    mask: &DeviceBlockMask,
    o: &mut impl DevicePtrMut<T>,
    lse: Option<&mut CudaSlice<f32>>,
    scale: f32,
) -> Result<()>
where
    T: Float16 + DeviceRepr,
    Q: DevicePtr<T>,
    K: DevicePtr<T>,
    V: DevicePtr<T>,
{
    let Inputs { q, k, v } = inputs;
    let lse_len = lse.as_ref().map(|lse| lse.len());
    shape.check_call([q.len(), k.len(), v.len()], mask.shape, o.len(), lse_len)?;
    cuda.check_device("q", q)?;
    cuda.check_device("k", k)?;
    cuda.check_device("v", v)?;
    cuda.check_device("mask", &mask.full)?;
    cuda.check_device("o", o)?;
    if let Some(lse) = &lse {
        cuda.check_device("lse", *lse)?;
    }
    let plan = Plan::new::<T>(shape, mask.shape, mask.element, scale)?;
    let registers = cuda.registers(plan.kernel)?;
    let plan = plan.for_device(cuda.info(), registers);
    cuda.info()
        .shared_memory("attention shared memory", plan.shared_bytes)?;
    let mut args = cuda.args();
    let buffers = [
        ("q", args.read(q)),
        ("k", args.read(k)),
        ("v", args.read(v)),
        ("o", args.write(o)),
    ];
    for (what, address) in buffers {
        if address % 16 != 0 {
            return Err(Error::invalid(
                what,
                "a 16-byte aligned buffer",
                format!("address {address:#x}"),
            ));
        }
    }
    let params = plan.params::<T>(
        shape,
        buffers.map(|(_, address)| address),
        lse.map_or(0, |lse| args.write(lse)),
        [
            args.read(&mask.partial_offsets),
            args.read(&mask.partial),
            args.read(&mask.full_offsets),
            args.read(&mask.full),
        ],
    );
    // SAFETY: TfAttentionParams is the kernel's parameter struct; addresses come from `args`
    // (plus each tensor's start), all on this context (checked). The buffers of q, k, v and o
    // reach at least one past the last element their start and strides address (check_call),
    // and heads_kv divides heads_q, so the kernel's key/value head stays below heads_kv.
    // Buffers are 16-byte aligned (checked); starts and strides are multiples of 8 elements
    // and d a multiple of 8, as cp.async and the 4-byte output stores need; o's rows do not
    // overlap, so no two threads store to one element. The mask passed BlockMask's
    // validation (offsets from 0 to the list lengths, key blocks below ceil(lk / block_n),
    // one row per (batch, head, query block) of its own broadcast shape) and matches this
    // shape (check_mask_shape), so every list read and every key the kernel forms is in
    // range; keys at or past lk and queries at or past lq are masked or skipped in the
    // kernel. lse, when present, holds b·hq·lq values. Shared memory was checked against the
    // device's limit.
    unsafe { cuda.launch(plan.kernel, plan.shape(), &params, args) }
}

/// One launch but for its buffers: the kernel, grid, block and shared memory, and the
/// parameters that do not depend on addresses.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub(super) kernel: Kernel,
    pub(super) grid: (u32, u32, u32),
    pub(super) threads: u32,
    /// K/V tiles in flight (2 or 3).
    pub(super) stages: u32,
    pub(super) shared_bytes: usize,
    element: (u32, u32),
    scale_log2: f32,
    mask: MaskShape,
    d: usize,
}

impl Plan {
    /// For `shape` (checked with its buffers by the caller) and a mask of `mask_shape` whose
    /// partial blocks apply `element`.
    pub(super) fn new<T: Float16>(
        shape: &AttentionShape,
        mask_shape: MaskShape,
        element: ElementMask,
        scale: f32,
    ) -> Result<Plan> {
        let scale_log2 = scale * std::f32::consts::LOG2_E;
        if !scale_log2.is_finite() {
            return Err(Error::invalid(
                "scale",
                "a finite number below 2.3e38",
                scale,
            ));
        }
        let m = mask_shape;
        let grid_ok = shape.heads_q <= u16::MAX as usize && shape.batch <= u16::MAX as usize;
        if !grid_ok {
            return Err(Error::DeviceLimit {
                what: "attention grid",
                limit_name: "max grid y and z (heads, batch)",
                needed: shape.heads_q.max(shape.batch) as u64,
                limit: u16::MAX.into(),
            });
        }
        let d = usize::from(shape.d != 64);
        let block_m = usize::from(m.block_m != 64);
        let kernel = ids::attention::ATTENTION[T::DTYPE as usize][d][block_m];
        Ok(Plan {
            kernel,
            grid: (
                m.q_blocks() as u32,
                shape.heads_q as u32,
                shape.batch as u32,
            ),
            threads: (m.block_m / warp_rows(shape.d) * 32) as u32,
            stages: 2,
            shared_bytes: 0,
            element: element.kernel_code(),
            scale_log2,
            mask: m,
            d: shape.d,
        }
        .with_stages(2))
    }

    /// The plan with `stages` K/V tiles in flight, and the shared memory that takes (abi.h).
    pub(super) fn with_stages(self, stages: u32) -> Plan {
        let tiles = self.mask.block_m + 2 * stages as usize * TF_ATTENTION_KV_TILE as usize;
        Plan {
            stages,
            shared_bytes: tiles * self.d * 2,
            ..self
        }
    }

    /// Three stages where `device` gives a block that shared memory and still holds as many
    /// blocks an SM (with `registers` a thread), else two.
    pub(super) fn for_device(self, device: &CudaDeviceInfo, registers: u32) -> Plan {
        let warps = self.threads / 32;
        let resident = |plan: &Plan| device.resident_blocks(plan.shared_bytes, warps, registers);
        let three = self.clone().with_stages(3);
        let fits = three.shared_bytes as u64 <= device.max_shared_per_block;
        if fits && resident(&three) >= resident(&self) {
            three
        } else {
            self
        }
    }

    /// abi.h's grid: (query blocks, heads, batch), a warp per 16 query rows.
    pub(super) fn shape(&self) -> LaunchShape {
        LaunchShape {
            grid: [self.grid.0, self.grid.1, self.grid.2],
            block: [self.threads, 1, 1],
            shared_bytes: self.shared_bytes as u32,
        }
    }

    /// The kernel's parameters, with the buffers of q, k, v and o (each tensor's start is
    /// added), lse (0: none) and the mask's lists (partial offsets, partial, full offsets,
    /// full).
    pub(super) fn params<T>(
        &self,
        shape: &AttentionShape,
        buffers: [u64; 4],
        lse: u64,
        [partial_offsets, partial, full_offsets, full]: [u64; 4],
    ) -> TfAttentionParams {
        let layout = shape.layout();
        // The kernel takes each tensor's element (0, 0, 0, 0); check_call kept starts below 2^31.
        let starts =
            [layout.q, layout.k, layout.v, layout.o].map(|s| (s.start * size_of::<T>()) as u64);
        let [q, k, v, o] = [0, 1, 2, 3].map(|i| buffers[i] + starts[i]);
        let m = self.mask;
        TfAttentionParams {
            q,
            k,
            v,
            o,
            lse,
            partial_offsets,
            partial,
            full_offsets,
            full,
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
            block_n: m.block_n as u32,
            q_blocks: m.q_blocks() as u32,
            mask_batch: m.batch as u32,
            mask_heads: m.heads as u32,
            element: self.element.0,
            window: self.element.1,
            scale_log2: self.scale_log2,
            stages: self.stages,
            reserved: 0,
        }
    }
}

/// Query rows a warp of the kernel for head dimension `d` owns (abi.h).
fn warp_rows(d: usize) -> usize {
    match d {
        64 => TF_ATTENTION_WARP_ROWS_D64 as usize,
        _ => TF_ATTENTION_WARP_ROWS_D128 as usize,
    }
}

#[cfg(test)]
mod emulated;
