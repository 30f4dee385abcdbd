//! Attention on CUDA (`cuda/attention.cu`): FlashAttention-2's design over the mask's block
//! lists, mma.sync on f16 / bf16 with f32 softmax. GPU verification pending (see BENCH.md).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};

use super::{AttentionShape, BlockMask, ElementMask, MaskShape};
use crate::backend::abi::{
    TF_ATTENTION_KV_TILE, TF_ATTENTION_MAX_SPLITS, TF_ATTENTION_WARP_ROWS_D64,
    TF_ATTENTION_WARP_ROWS_D128, TfAttentionParams,
};
use crate::backend::cuda::tma::TensorMap;
use crate::backend::cuda::{Cuda, CudaDeviceInfo, Kernel, LaunchShape, SplitScratch, ids};
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
    /// The transposed lists, which the backward pass walks: partial offsets, partial, full
    /// offsets, full.
    transposed: [CudaSlice<u32>; 4],
    /// The most key blocks one query block visits.
    longest_row: usize,
}

impl DeviceBlockMask {
    /// Copies `mask` (its lists and their transposes) to `cuda`'s device (enqueued on its
    /// stream).
    pub fn upload(cuda: &Cuda, mask: &BlockMask) -> Result<Self> {
        let (partial_offsets, partial, full_offsets, full) = mask.parts();
        // Empty lists are never read, but their buffers must exist.
        let list = |values: &[u32]| cuda.upload(if values.is_empty() { &[0] } else { values });
        let (t_partial_offsets, t_partial, t_full_offsets, t_full) = mask.transposed_parts();
        Ok(DeviceBlockMask {
            transposed: [
                cuda.upload(t_partial_offsets)?,
                list(t_partial)?,
                cuda.upload(t_full_offsets)?,
                list(t_full)?,
            ],
            shape: mask.shape(),
            element: mask.element(),
            partial_offsets: cuda.upload(partial_offsets)?,
            partial: list(partial)?,
            full_offsets: cuda.upload(full_offsets)?,
            full: list(full)?,
            longest_row: mask.stats().max_blocks_per_row,
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

/// The outputs of one call: `o [b, lq, hq, d]` in the inputs' type and, when given, `lse [b,
/// hq, lq]`.
#[derive(Debug)]
pub struct Outputs<'a, O> {
    /// The attention output.
    pub o: &'a mut O,
    /// The log-sum-exp of each query's scores (packed, natural log).
    pub lse: Option<&'a mut CudaSlice<f32>>,
}

/// Enqueues `o = softmax(q·kᵀ·scale + mask)·v` on `cuda`'s stream: `o [b, lq, hq, d]` in the
/// inputs' type and, when given, `lse [b, hq, lq]` (packed; natural log, −inf for a query
/// that sees no key, whose `o` row is 0). `d` is 64 or 128. q, k, v and o are read and
/// written with the starts and strides of `shape.layout()`; elements of `o`'s buffer outside
/// its rows are left as they were. Buffers start 16-byte aligned (a `CudaView` at an offset
/// that is a multiple of 8 elements is); one buffer may serve as q, k and v.
///
/// Calls with too few query blocks to fill the GPU (decode) split the keys and allocate a
/// workspace for the splits' results each time: [`attention_with_workspace`] reuses one.
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
    let outputs = Outputs { o, lse };
    let mut workspace = AttentionWorkspace::new();
    attention_with_workspace(cuda, shape, inputs, mask, outputs, scale, &mut workspace)
}

/// [`attention`] with split-KV's memory taken from `workspace` (grown there when too small),
/// as a decode loop calls it layer after layer and step after step.
///
/// ```no_run
/// # fn main() -> tilefuse::Result<()> {
/// use half::f16;
/// use tilefuse::attention::{AttentionShape, BlockMask, MaskShape};
/// use tilefuse::attention::cuda::{
///     AttentionWorkspace, DeviceBlockMask, Inputs, Outputs, attention_with_workspace,
/// };
/// use tilefuse::backend::cuda::Cuda;
///
/// let cuda = Cuda::new(0)?;
/// // One new query against a cache of 32k keys, 32 query heads sharing 8 key/value heads.
/// let shape = AttentionShape::new(1, 1, 32768, 32, 8, 128)?;
/// let mask = DeviceBlockMask::upload(&cuda, &BlockMask::dense(MaskShape::new(1, 32768))?)?;
/// let q = cuda.upload(&vec![f16::ONE; 32 * 128])?;
/// let kv = cuda.upload(&vec![f16::ONE; 32768 * 8 * 128])?;
/// let mut o = cuda.upload(&vec![f16::ZERO; 32 * 128])?;
/// let mut workspace = AttentionWorkspace::new();
/// for _layer in 0..32 {
///     let inputs = Inputs { q: &q, k: &kv, v: &kv };
///     let outputs = Outputs { o: &mut o, lse: None };
///     attention_with_workspace(&cuda, &shape, inputs, &mask, outputs, 0.088, &mut workspace)?;
/// }
/// # Ok(())
/// # }
/// ```
pub fn attention_with_workspace<T, Q, K, V, O>(
    cuda: &Cuda,
    shape: &AttentionShape,
    inputs: Inputs<'_, Q, K, V>,
    mask: &DeviceBlockMask,
    outputs: Outputs<'_, O>,
    scale: f32,
    workspace: &mut AttentionWorkspace,
) -> Result<()>
where
    T: Float16 + DeviceRepr,
    Q: DevicePtr<T>,
    K: DevicePtr<T>,
    V: DevicePtr<T>,
    O: DevicePtrMut<T>,
{
    let Inputs { q, k, v } = inputs;
    let Outputs { o, lse } = outputs;
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
    let plan = Plan::for_mask::<T>(cuda, shape, mask, scale)?;
    let hopper = HopperPlan::choose::<T>(cuda, &plan, workspace.kernel)?;
    cuda.info()
        .shared_memory("attention shared memory", plan.shared_bytes)?;
    let mut args = cuda.args();
    let buffers = [
        ("q", args.read(q)),
        ("k", args.read(k)),
        ("v", args.read(v)),
        ("o", args.write(o)),
    ];
    check_aligned(&buffers)?;
    let lists = [
        args.read(&mask.partial_offsets),
        args.read(&mask.partial),
        args.read(&mask.full_offsets),
        args.read(&mask.full),
    ];
    let lse = lse.map_or(0, |lse| args.write(lse));
    let addresses = buffers.map(|(_, address)| address);
    let encoded = match hopper {
        Some(hopper) => match hopper.params::<T>(shape, addresses, lse, lists, TensorMap::encode) {
            Ok(params) => Some((hopper, params)),
            // A map the driver will not encode sends `Auto` to the portable kernel.
            Err(_) if workspace.kernel == ForwardKernel::Auto => None,
            Err(error) => return Err(error),
        },
        None => None,
    };
    if let Some((hopper, params)) = encoded {
        let shared = hopper.shape().shared_bytes as usize;
        cuda.info()
            .shared_memory("attention shared memory (Hopper kernel)", shared)?;
        // SAFETY: TfAttentionSm90aParams is the Hopper kernel's parameter struct (abi.h): the
        // portable parameters, for which everything said below holds, with one split and heads
        // not packed (HopperPlan::choose), and tensor maps that the driver encoded for q, k
        // and v from the same buffers, starts, strides and sizes (so every box the kernel
        // loads lies in them or reads as zeros outside the tensor); the shared memory is
        // abi.h's and was checked against the device's limit.
        return unsafe { cuda.launch(hopper.kernel, hopper.shape(), &params, args) };
    }
    let split_kv = workspace.args(cuda, &plan, &mut args)?;
    let params = plan.params::<T>(shape, addresses, lse, lists, split_kv);
    // SAFETY: TfAttentionParams is the kernel's parameter struct; addresses come from `args`
    // (plus each tensor's start), all on this context (checked). The buffers of q, k, v and o
    // reach at least one past the last element their start and strides address (check_call),
    // and heads_kv divides heads_q, so the kernel's key/value head stays below heads_kv; the
    // plan packs query heads only in groups that share a key/value head. Buffers are 16-byte
    // aligned (checked); starts and strides are multiples of 8 elements and d a multiple of 8,
    // as cp.async and the 4-byte output stores need; o's rows do not overlap, so no two
    // threads store to one element. The mask passed BlockMask's validation (offsets from 0 to
    // the list lengths, key blocks below ceil(lk / block_n), one row per (batch, head, query
    // block) of its own broadcast shape) and matches this shape (check_mask_shape), so every
    // list read and every key the kernel forms is in range; keys at or past lk and queries at
    // or past lq are masked or skipped in the kernel. lse, when present, holds b·hq·lq values.
    // With splits > 1 the workspace holds at least the plan's partials and counters (abi.h),
    // the counters zero: zeroed when allocated and left zero by every launch since (each runs
    // to completion before the next: one stream, or cudarc's events through `args`, as
    // AttentionWorkspace asks of its callers); with one split the kernel never touches it.
    // Shared memory was checked against the device's limit and holds the merge's weights.
    unsafe { cuda.launch(plan.kernel, plan.shape(), &params, args) }
}

/// An error naming the first of the `(name, device address)` pairs that is not 16-byte
/// aligned, as cp.async and the kernels' 16-byte accesses need.
fn check_aligned(buffers: &[(&'static str, u64)]) -> Result<()> {
    match buffers.iter().find(|(_, address)| address % 16 != 0) {
        Some(&(what, address)) => Err(Error::invalid(
            what,
            "a 16-byte aligned buffer",
            format!("address {address:#x}"),
        )),
        None => Ok(()),
    }
}

/// Device memory for split-KV, kept from one [`attention_with_workspace`] to the next: each
/// split's f32 results, and the counters that find each block's last split, which every
/// launch leaves at zero; and the backward pass's row sums D
/// ([`attention_backward_with_workspace`]). Reusing one saves each call an allocation and a
/// memset. It grows to the largest launch it has served, and belongs to the device it was
/// first used on (passing it to another is an error).
///
/// Launches that share a workspace must run one after another: on one stream, or on several
/// with cudarc's event tracking on (its default), which orders them. Launches captured into a
/// CUDA graph keep the memory the workspace had at capture: [`reserve`](Self::reserve) it for
/// their shapes before capture, keep it alive, and don't let a larger launch grow it, while
/// the graph may run.
#[derive(Debug, Default)]
pub struct AttentionWorkspace {
    scratch: SplitScratch,
    /// The backward pass's D = rowsum(dO ∘ O), one f32 per query row.
    delta: Option<CudaSlice<f32>>,
    /// The forward kernel the calls with this workspace run.
    kernel: ForwardKernel,
}

impl AttentionWorkspace {
    /// An empty workspace; the first launch that needs memory allocates it. Its calls run
    /// [`ForwardKernel::Auto`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The workspace with its calls of the forward running `kernel`: the Hopper kernel on a
    /// GPU of compute capability 9.0 (where `Auto` picks it too), or the portable one
    /// anywhere, as a test or a benchmark of either wants.
    pub fn with_forward_kernel(self, kernel: ForwardKernel) -> Self {
        AttentionWorkspace { kernel, ..self }
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.scratch.bytes() + self.delta.as_ref().map_or(0, |delta| delta.len() * 4)
    }

    /// Grows the workspace to what [`attention_with_workspace`] needs for `shape` and `mask`
    /// with `T` inputs on `cuda`, so that those calls allocate nothing.
    pub fn reserve<T: Float16>(
        &mut self,
        cuda: &Cuda,
        shape: &AttentionShape,
        mask: &DeviceBlockMask,
    ) -> Result<()> {
        let plan = Plan::for_mask::<T>(cuda, shape, mask, 1.0)?;
        if plan.splits > 1 {
            self.grow(cuda, &plan)?;
        }
        Ok(())
    }

    /// Grows the workspace to what [`attention_backward_with_workspace`] needs for `shape`,
    /// so that those calls allocate nothing.
    pub fn reserve_backward(&mut self, cuda: &Cuda, shape: &AttentionShape) -> Result<()> {
        self.delta(cuda, shape).map(|_| ())
    }

    /// The backward pass's D rows for `shape` (`b·hq·lq` f32), grown on `cuda`'s stream if
    /// needed.
    fn delta(&mut self, cuda: &Cuda, shape: &AttentionShape) -> Result<&mut CudaSlice<f32>> {
        let rows = shape.batch * shape.heads_q * shape.lq;
        if let Some(delta) = &self.delta {
            cuda.check_device("workspace", delta)?;
        }
        let delta = match self.delta.take() {
            Some(delta) if delta.len() >= rows => delta,
            _ => cuda.scratch(rows, 0..0)?,
        };
        Ok(self.delta.insert(delta))
    }

    /// The addresses of split-KV's partial o, partial lse and counters for `plan` (grown if
    /// needed) among `args`, or zeros for a launch of one split, which never reads them.
    fn args<'a>(
        &'a mut self,
        cuda: &Cuda,
        plan: &Plan,
        args: &mut crate::backend::cuda::LaunchArgs<'a>,
    ) -> Result<SplitKv> {
        if plan.splits == 1 {
            return Ok(SplitKv::default());
        }
        let (partials, counters) = self.grow(cuda, plan)?;
        let partials = args.write(partials);
        Ok(SplitKv {
            partial_o: partials,
            partial_lse: partials + 4 * plan.partial_o_words() as u64,
            counters: args.write(counters),
        })
    }

    /// The partials and (zeroed) counters for `plan`, grown on `cuda`'s stream if needed.
    fn grow(
        &mut self,
        cuda: &Cuda,
        plan: &Plan,
    ) -> Result<(&mut CudaSlice<u32>, &mut CudaSlice<u32>)> {
        let (partial_words, counter_words) = plan.workspace_words();
        self.scratch.grow(cuda, partial_words, counter_words)
    }
}

/// The split-KV addresses of a launch (abi.h), zeros without split-KV.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SplitKv {
    pub(super) partial_o: u64,
    pub(super) partial_lse: u64,
    pub(super) counters: u64,
}

/// One launch but for its buffers: the kernel, grid, block and shared memory, and the
/// parameters that do not depend on addresses.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub(super) kernel: Kernel,
    /// Blocks of the kernel's rows (abi.h) per batch row and head group.
    row_blocks: u32,
    /// Query heads whose rows one block covers together (1, or the GQA group).
    pub(super) packed_heads: u32,
    /// Head groups (query heads / packed heads) and batch rows: the grid's y and z.
    groups: u32,
    batch: u32,
    pub(super) threads: u32,
    /// K/V tiles in flight (2 or 3).
    pub(super) stages: u32,
    /// Splits of each block's key tiles, and the tiles each takes (all of them with one).
    pub(super) splits: u32,
    tiles_per_split: u32,
    pub(super) shared_bytes: usize,
    element: (u32, u32),
    scale_log2: f32,
    mask: MaskShape,
    d: usize,
    lq: usize,
    heads_q: usize,
}

/// Split-KV gives each split at least this many key tiles, so that its pipeline fills.
const MIN_TILES_PER_SPLIT: usize = 4;

impl Plan {
    /// The launch `cuda` runs for `shape` (checked with its buffers by the caller) and `mask`.
    pub(super) fn for_mask<T: Float16>(
        cuda: &Cuda,
        shape: &AttentionShape,
        mask: &DeviceBlockMask,
        scale: f32,
    ) -> Result<Plan> {
        let plan = Plan::new::<T>(shape, mask.shape, mask.element, scale)?;
        let registers = cuda.registers(plan.kernel)?;
        Ok(plan.for_device(cuda.info(), registers, mask.longest_row))
    }

    /// For `shape` (checked with its buffers by the caller) and a mask of `mask_shape` whose
    /// partial blocks apply `element`: one split, two stages.
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
        // GQA's query heads share one block's K and V tiles when each has a single query
        // block and one mask serves all heads (decode).
        let group = shape.heads_q / shape.heads_kv;
        let packed_heads = if m.q_blocks() == 1 && m.heads == 1 {
            group
        } else {
            1
        };
        let d = usize::from(shape.d != 64);
        let block_m = usize::from(m.block_m != 64);
        let kernel = ids::attention::ATTENTION[T::DTYPE as usize][d][block_m];
        Ok(Plan {
            kernel,
            row_blocks: (packed_heads * shape.lq).div_ceil(m.block_m) as u32,
            packed_heads: packed_heads as u32,
            groups: (shape.heads_q / packed_heads) as u32,
            batch: shape.batch as u32,
            threads: (m.block_m / warp_rows(shape.d) * 32) as u32,
            stages: 2,
            splits: 1,
            tiles_per_split: u32::MAX,
            shared_bytes: 0,
            element: element.kernel_code(),
            scale_log2,
            mask: m,
            d: shape.d,
            lq: shape.lq,
            heads_q: shape.heads_q,
        }
        .with_stages(2))
    }

    /// The plan with `stages` K/V tiles in flight, and the shared memory that takes (abi.h).
    pub(super) fn with_stages(self, stages: u32) -> Plan {
        let tiles = self.mask.block_m + 2 * stages as usize * TF_ATTENTION_KV_TILE as usize;
        Plan {
            stages,
            shared_bytes: (tiles * self.d * 2).max(self.merge_bytes()),
            ..self
        }
    }

    /// The plan for `device`, with `registers` a thread and a mask whose query blocks visit
    /// at most `longest_row` key blocks: three stages where shared memory gives a block that
    /// and still holds as many blocks an SM, else two; the keys split where the blocks would
    /// leave SMs idle.
    pub(super) fn for_device(
        self,
        device: &CudaDeviceInfo,
        registers: u32,
        longest_row: usize,
    ) -> Plan {
        let warps = self.threads / 32;
        let resident = |plan: &Plan| device.resident_blocks(plan.shared_bytes, warps, registers);
        let three = self.clone().with_stages(3);
        let fits = three.shared_bytes as u64 <= device.max_shared_per_block;
        let plan = if fits && resident(&three) >= resident(&self) {
            three
        } else {
            self
        };
        // One wave of resident blocks, each split with at least MIN_TILES_PER_SPLIT tiles.
        let wave = device.sm_count as usize * resident(&plan);
        let blocks = (plan.row_blocks * plan.groups * plan.batch) as usize;
        let tiles = longest_row * plan.tiles_per_block();
        let splits = (wave / blocks).min(tiles / MIN_TILES_PER_SPLIT);
        plan.with_splits(splits, longest_row)
    }

    /// The plan with each block's key tiles split `splits` ways (at most
    /// TF_ATTENTION_MAX_SPLITS, and fewer where the longest query block, of `longest_row`
    /// key blocks, has fewer tiles to share), and the shared memory the merge takes.
    pub(super) fn with_splits(self, splits: usize, longest_row: usize) -> Plan {
        let tiles = longest_row * self.tiles_per_block();
        let splits = splits.clamp(1, TF_ATTENTION_MAX_SPLITS as usize).min(tiles);
        let (splits, tiles_per_split) = if splits > 1 {
            let per_split = tiles.div_ceil(splits);
            (tiles.div_ceil(per_split), per_split as u32)
        } else {
            (1, u32::MAX)
        };
        let stages = self.stages;
        Plan {
            splits: splits as u32,
            tiles_per_split,
            ..self
        }
        .with_stages(stages)
    }

    /// Key tiles in a key block.
    fn tiles_per_block(&self) -> usize {
        self.mask.block_n / TF_ATTENTION_KV_TILE as usize
    }

    /// Shared memory split-KV's merge takes: each row's weights and their sum, and a flag.
    fn merge_bytes(&self) -> usize {
        match self.splits {
            1 => 0,
            splits => (self.mask.block_m * (splits as usize + 1) + 1) * 4,
        }
    }

    /// Words of split-KV's partial o: `[splits, b, hq, lq, d]` f32.
    fn partial_o_words(&self) -> usize {
        self.splits as usize * self.batch as usize * self.heads_q * self.lq * self.d
    }

    /// Words of split-KV's workspace: partial o then partial lse, and the counters.
    pub(super) fn workspace_words(&self) -> (usize, usize) {
        let lse = self.partial_o_words() / self.d;
        let counters = self.batch * self.groups * self.row_blocks;
        (self.partial_o_words() + lse, counters as usize)
    }

    /// abi.h's grid: (row blocks · splits, head groups, batch).
    pub(super) fn shape(&self) -> LaunchShape {
        LaunchShape {
            grid: [self.row_blocks * self.splits, self.groups, self.batch],
            block: [self.threads, 1, 1],
            shared_bytes: self.shared_bytes as u32,
        }
    }

    /// The kernel's parameters, with the buffers of q, k, v and o (each tensor's start is
    /// added), lse (0: none), the mask's lists (partial offsets, partial, full offsets, full)
    /// and split-KV's workspace.
    pub(super) fn params<T>(
        &self,
        shape: &AttentionShape,
        buffers: [u64; 4],
        lse: u64,
        [partial_offsets, partial, full_offsets, full]: [u64; 4],
        split_kv: SplitKv,
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
            packed_heads: self.packed_heads,
            splits: self.splits,
            tiles_per_split: self.tiles_per_split,
            partial_o: split_kv.partial_o,
            partial_lse: split_kv.partial_lse,
            counters: split_kv.counters,
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

mod backward;
#[cfg(test)]
mod emulated;
mod hopper;

pub use hopper::ForwardKernel;
use hopper::HopperPlan;

pub use backward::{
    BackwardInputs, BackwardOutputs, attention_backward, attention_backward_with_workspace,
};
