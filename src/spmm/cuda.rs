//! SpMM on CUDA: Flash-LLM's Load-as-Sparse, Compute-as-Dense kernel (`cuda/spmm.cu`).

use std::marker::PhantomData;

use half::f16;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig};

use super::format::{TILE_K, TILE_M, TiledCsl};
use super::reference::output_tokens;
use crate::backend::abi::{TF_SPMM_HELD_VECTORS, TF_SPMM_STAGES, TF_SPMM_WARPS, TfSpmmParams};
use crate::backend::cuda::{Cuda, CudaDeviceInfo, Kernel};
use crate::element::{Float16, OutputElement};
use crate::error::{Error, Result};

/// A [`TiledCsl`] weight in device memory, uploaded once and used by every [`spmm`].
#[derive(Debug)]
pub struct DeviceTiledCsl<T: Float16> {
    m: usize,
    k: usize,
    max_tile_vectors: usize,
    entries: CudaSlice<u32>,
    tile_offsets: CudaSlice<u32>,
    element: PhantomData<T>,
}

impl<T: Float16> DeviceTiledCsl<T> {
    /// Copies `w` to `cuda`'s device (enqueued on its stream).
    pub fn upload(cuda: &Cuda, w: &TiledCsl<T>) -> Result<Self> {
        Ok(DeviceTiledCsl {
            m: w.m(),
            k: w.k(),
            max_tile_vectors: w.max_tile_vectors(),
            entries: cuda.upload(w.device_entries())?,
            tile_offsets: cuda.upload(w.tile_offsets())?,
            element: PhantomData,
        })
    }

    /// Rows (outputs).
    pub fn m(&self) -> usize {
        self.m
    }

    /// Columns (inputs).
    pub fn k(&self) -> usize {
        self.k
    }
}

/// Device memory for split-K, kept from one [`spmm_with_workspace`] to the next: the f32
/// partial sums, and the counters that find each output tile's last block, which every launch
/// leaves at zero. Reusing one saves each launch an allocation and a memset of the counters
/// (a second operation on the stream, beside a kernel that should take about 22 µs at
/// 8192 x 8192, n = 16, 80% sparsity). It grows to the largest launch it has served, and
/// belongs to the device it was first used on (passing it to another is an error).
///
/// Launches that share a workspace must run one after another: on one stream, or on several
/// with cudarc's event tracking on (its default), which orders them. Launches captured into a
/// CUDA graph keep the memory the workspace had at capture: [`reserve`](Self::reserve) it for
/// their shapes before capture, keep it alive, and don't let a larger launch grow it, while
/// the graph may run.
#[derive(Debug, Default)]
pub struct SpmmWorkspace {
    partials: Option<CudaSlice<u32>>,
    counters: Option<CudaSlice<u32>>,
}

impl SpmmWorkspace {
    /// An empty workspace; the first launch that needs split-K allocates it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        [&self.partials, &self.counters]
            .into_iter()
            .flatten()
            .map(|words| words.len() * 4)
            .sum()
    }

    /// Grows the workspace to what [`spmm_with_workspace`] needs for `w` and `n` tokens on
    /// `cuda`, so that those calls allocate nothing: before capturing them into a CUDA graph,
    /// say.
    ///
    /// ```no_run
    /// # fn main() -> tilefuse::Result<()> {
    /// # use half::f16;
    /// # use tilefuse::backend::cuda::Cuda;
    /// # use tilefuse::spmm::{TiledCsl, cuda::{DeviceTiledCsl, SpmmWorkspace}};
    /// # let cuda = Cuda::new(0)?;
    /// # let w = DeviceTiledCsl::upload(&cuda, &TiledCsl::encode(&vec![f16::ONE; 4096 * 4096], 4096, 4096)?)?;
    /// let mut workspace = SpmmWorkspace::new();
    /// for n in [1, 8, 16, 64] {
    ///     workspace.reserve(&cuda, &w, n)?; // the decode batch sizes a graph will replay
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn reserve<T: Float16>(
        &mut self,
        cuda: &Cuda,
        w: &DeviceTiledCsl<T>,
        n: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        // The output type picks the kernel, whose registers may change the plan.
        for out_f32 in [false, true] {
            let kernel = kernel(T::NAME, tokens_per_block(n), out_f32);
            let plan = Plan::for_weight(cuda, w, n, 0, cuda.registers(kernel)?)?;
            if plan.splits > 1 {
                self.grow(cuda, &plan, w.m)?;
            }
        }
        Ok(())
    }

    /// The partials and (zeroed) counters for `plan`, grown on `cuda`'s stream if needed.
    fn grow(
        &mut self,
        cuda: &Cuda,
        plan: &Plan,
        m: usize,
    ) -> Result<(&mut CudaSlice<u32>, &mut CudaSlice<u32>)> {
        for slice in [&self.partials, &self.counters].into_iter().flatten() {
            cuda.check_device("workspace", slice)?;
        }
        let fits = |slice: &Option<CudaSlice<u32>>, words| {
            slice.as_ref().is_some_and(|s| s.len() >= words)
        };
        let (partial_words, counter_words) = (plan.partials(m), plan.counters());
        if !fits(&self.partials, partial_words) {
            self.partials = Some(cuda.scratch(partial_words, 0..0)?);
        }
        if !fits(&self.counters, counter_words) {
            self.counters = Some(cuda.scratch(counter_words, 0..counter_words)?);
        }
        match (&mut self.partials, &mut self.counters) {
            (Some(partials), Some(counters)) => Ok((partials, counters)),
            _ => unreachable!("both were allocated above"),
        }
    }
}

/// Enqueues `y [n, m] = x [n, k] · wᵀ` on `cuda`'s stream, with `n = x.len() / k`; `O` is
/// the weight's own type or f32. Split-K launches allocate their workspace each time:
/// [`spmm_with_workspace`] reuses one.
///
/// ```no_run
/// # fn main() -> tilefuse::Result<()> {
/// use half::f16;
/// use tilefuse::backend::cuda::Cuda;
/// use tilefuse::spmm::{TiledCsl, Pruning, prune, cuda::{DeviceTiledCsl, spmm}};
///
/// let cuda = Cuda::new(0)?;
/// let (m, k, n) = (4096, 4096, 16);
/// let dense: Vec<f16> = (0..m * k).map(|i| f16::from_f32(((i % 7) as f32 - 3.0) / 8.0)).collect();
/// let w = TiledCsl::encode(&prune(&dense, m, k, 0.8, Pruning::PerRow)?, m, k)?;
/// let w = DeviceTiledCsl::upload(&cuda, &w)?;
/// let x = cuda.upload(&vec![f16::ONE; n * k])?;
/// let mut y = cuda.upload(&vec![0.0f32; n * m])?;
/// spmm(&cuda, &w, &x, &mut y)?; // enqueued, not waited for
/// # Ok(())
/// # }
/// ```
pub fn spmm<T, O>(
    cuda: &Cuda,
    w: &DeviceTiledCsl<T>,
    x: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<O>,
) -> Result<()>
where
    T: Float16 + DeviceRepr,
    O: OutputElement<T> + DeviceRepr,
{
    spmm_with_workspace(cuda, w, x, y, &mut SpmmWorkspace::new())
}

/// [`spmm`] with split-K's memory taken from `workspace` (grown there when too small), as a
/// decode loop calls it layer after layer.
///
/// ```no_run
/// # fn main() -> tilefuse::Result<()> {
/// # use half::f16;
/// # use tilefuse::backend::cuda::Cuda;
/// # use tilefuse::spmm::{TiledCsl, cuda::{DeviceTiledCsl, SpmmWorkspace, spmm_with_workspace}};
/// # let cuda = Cuda::new(0)?;
/// # let (m, k, n) = (4096, 4096, 16);
/// # let dense = vec![f16::ONE; m * k];
/// let layers = [DeviceTiledCsl::upload(&cuda, &TiledCsl::encode(&dense, m, k)?)?];
/// let mut workspace = SpmmWorkspace::new();
/// let x = cuda.upload(&vec![f16::ONE; n * k])?;
/// let mut y = cuda.upload(&vec![f16::ZERO; n * m])?;
/// for w in &layers {
///     spmm_with_workspace(&cuda, w, &x, &mut y, &mut workspace)?;
/// }
/// # Ok(())
/// # }
/// ```
pub fn spmm_with_workspace<T, O>(
    cuda: &Cuda,
    w: &DeviceTiledCsl<T>,
    x: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<O>,
    workspace: &mut SpmmWorkspace,
) -> Result<()>
where
    T: Float16 + DeviceRepr,
    O: OutputElement<T> + DeviceRepr,
{
    launch(cuda, w, x, y, workspace, None)
}

/// Kernels that the benchmark times beside the ones [`spmm`] runs for f16 in and out
/// (`cuda/spmm.cu`): probes of the 16-token kernel, which leave part of its work out (they
/// write y = 0) to show where a tile's time goes, and variants of every token count's kernel,
/// which do the same work another way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    /// Probe: the loads, waits and barriers alone.
    ProbeLoads,
    /// Probe: the loads and the scatter.
    ProbeScatter,
    /// Probe: all but the mma (the loads, the scatter and the zeroing of the dense tiles).
    ProbeNoMultiply,
    /// A tile's first `TF_SPMM_HELD_VECTORS` entry vectors through registers (Flash-LLM's way)
    /// instead of the shared-memory stages, for any number of tokens.
    EntriesInRegisters,
}

impl Variant {
    /// Every one, the probes first, from the least work to the most.
    pub(crate) const ALL: [Variant; 4] = [
        Variant::ProbeLoads,
        Variant::ProbeScatter,
        Variant::ProbeNoMultiply,
        Variant::EntriesInRegisters,
    ];

    /// The benchmark's name for its rows.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Variant::ProbeLoads => "tilefuse probe: loads only",
            Variant::ProbeScatter => "tilefuse probe: loads + scatter",
            Variant::ProbeNoMultiply => "tilefuse probe: all but mma",
            Variant::EntriesInRegisters => "tilefuse, entries in registers",
        }
    }

    /// Whether it leaves work out (and writes y = 0).
    pub(crate) fn is_probe(self) -> bool {
        self != Variant::EntriesInRegisters
    }

    /// Vectors of each tile that skip the stages.
    fn held_vectors(self) -> usize {
        match self {
            Variant::EntriesInRegisters => TF_SPMM_HELD_VECTORS as usize,
            _ => 0,
        }
    }

    /// Its kernel for `tokens_per_block` (8, 16, 32 or 64), if it has one.
    fn kernel(self, tokens_per_block: u32) -> Option<Kernel> {
        let name = match (self, tokens_per_block) {
            (Variant::ProbeLoads, 16) => "tilefuse_spmm_probe_loads_f16_n16",
            (Variant::ProbeScatter, 16) => "tilefuse_spmm_probe_scatter_f16_n16",
            (Variant::ProbeNoMultiply, 16) => "tilefuse_spmm_probe_no_mma_f16_n16",
            (Variant::EntriesInRegisters, 8) => "tilefuse_spmm_registers_f16_n8_same",
            (Variant::EntriesInRegisters, 16) => "tilefuse_spmm_registers_f16_n16_same",
            (Variant::EntriesInRegisters, 32) => "tilefuse_spmm_registers_f16_n32_same",
            (Variant::EntriesInRegisters, 64) => "tilefuse_spmm_registers_f16_n64_same",
            _ => return None,
        };
        Some(Kernel {
            module: "spmm",
            name,
        })
    }
}

/// Runs `variant` where [`spmm_with_workspace`] would run its kernel (a probe: for 9 to 16
/// tokens, an error for other counts). Its launch is planned for it, so it may grow a
/// workspace that [`SpmmWorkspace::reserve`] sized for the kernel.
pub(crate) fn spmm_variant(
    cuda: &Cuda,
    w: &DeviceTiledCsl<f16>,
    x: &impl DevicePtr<f16>,
    y: &mut impl DevicePtrMut<f16>,
    workspace: &mut SpmmWorkspace,
    variant: Variant,
) -> Result<()> {
    launch(cuda, w, x, y, workspace, Some(variant))
}

/// Checks the arguments, plans the launch and enqueues spmm.cu's kernel for `T` in and `O` out,
/// or `variant` (f16 in and out only) in its place.
fn launch<T, O>(
    cuda: &Cuda,
    w: &DeviceTiledCsl<T>,
    x: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<O>,
    workspace: &mut SpmmWorkspace,
    variant: Option<Variant>,
) -> Result<()>
where
    T: Float16 + DeviceRepr,
    O: OutputElement<T> + DeviceRepr,
{
    let n = output_tokens(x.len(), y.len(), w.m, w.k)?;
    cuda.check_device("w", &w.entries)?;
    cuda.check_device("x", x)?;
    cuda.check_device("y", y)?;
    let kernel = launched_kernel::<T, O>(variant, n)?;
    let held = variant.map_or(0, Variant::held_vectors);
    let plan = Plan::for_weight(cuda, w, n, held, cuda.registers(kernel)?)?;
    // Without split-K the kernel never touches a workspace.
    let workspace = (plan.splits > 1)
        .then(|| workspace.grow(cuda, &plan, w.m))
        .transpose()?;
    let mut args = cuda.args();
    let (workspace, counters) = match workspace {
        Some((partials, counters)) => (args.write(partials), args.write(counters)),
        None => (0, 0),
    };
    let params = TfSpmmParams {
        entries: args.read(&w.entries),
        tile_offsets: args.read(&w.tile_offsets),
        x: args.read(x),
        y: args.write(y),
        workspace,
        counters,
        m: w.m as u32,
        n: n as u32,
        k: w.k as u32,
        splits: plan.splits,
        tiles_per_split: plan.tiles_per_split,
        stage_vectors: plan.stage_vectors,
    };
    let config = LaunchConfig {
        grid_dim: (plan.tiles_m, plan.n_blocks, plan.splits),
        block_dim: (TF_SPMM_WARPS * 32, 1, 1),
        shared_mem_bytes: plan.shared_bytes,
    };
    // SAFETY: `kernel` is one of spmm.cu's kernels for T in and O out and the plan's tokens per
    // block, or a variant (variant_kernel checked that T and O are f16), which reads and writes
    // what the kernel it stands for does, or less, and was planned for (its held vectors).
    // TfSpmmParams is their parameter struct; addresses come from `args`. The weight passed
    // TiledCsl's validation (offsets monotone and ending at the entry count, every place inside its
    // tile and the matrix) before upload, so every entry the kernel reads and every shared-memory
    // place it scatters to is in bounds; a stage holds plan.stage_vectors vectors and the kernel
    // copies no more into it (the rest of a denser tile it reads from global memory). x holds n·k
    // values and y n·m (checked above), and the kernel guards token < n, row < m, column < k. With
    // splits > 1 the workspace holds at least abi.h's split-K partials for this grid
    // (Plan::partials) and counters (Plan::counters), which are zero: zeroed when allocated, and
    // left zero by every launch since (each runs to completion before the next starts: one stream,
    // or cudarc's events through `args`; SpmmWorkspace asks this of its callers); with one split
    // the kernel returns before any workspace access. Plan checked the grid and shared memory
    // against the device's limits.
    unsafe { cuda.launch(kernel, config, &params, args) }
}

/// The most k tiles one block walks (its tile offsets are in shared memory).
const MAX_TILES_PER_SPLIT: usize = 4096;

/// What one launch's split-K choice weighs.
struct SplitCosts {
    /// Blocks without split-K: (m tiles) x (token blocks).
    blocks: usize,
    tiles_k: usize,
    /// Bytes one block reads per k tile: the average tile's entries and the x tile.
    tile_bytes: usize,
    /// Bytes of f32 partials one split writes and the last block reads back.
    partial_bytes: usize,
    /// Dynamic shared memory of one block, less its tile offsets (4 bytes per k tile, and 4).
    stages_shared: usize,
    /// Registers per thread of the kernel.
    registers: u32,
}

/// The number of k splits: the one (the smallest, among equals) that minimises the bytes the
/// busiest SM moves. The grid's blocks are spread over the SMs, whose time is the k tiles of
/// their blocks; an SM streams at full rate only with all the blocks it can hold resident
/// ([`resident_blocks`]: fewer leave it waiting on latency, so they count as if it held that
/// many), and every split beyond one adds its partials.
fn split_k(device: &CudaDeviceInfo, costs: SplitCosts) -> usize {
    let sm_count = device.sm_count.max(1) as usize;
    // Blocks an SM holds with `tiles_per_split` tile offsets each.
    let resident = |tiles_per_split: usize| {
        let block_shared = costs.stages_shared + 4 * (tiles_per_split + 1);
        resident_blocks(device, block_shared, costs.registers)
    };
    // The block's tile offsets live in shared memory: at most 16 KiB of them.
    let min_splits = costs.tiles_k.div_ceil(MAX_TILES_PER_SPLIT);
    // At least four k tiles per block, and no more splits than a few per resident block
    // (beyond, only the partials grow).
    let max_splits = costs
        .tiles_k
        .div_ceil(4)
        .min(4 * sm_count * resident(4))
        .max(min_splits);
    let bytes = |splits: usize| {
        let tiles_per_split = costs.tiles_k.div_ceil(splits);
        let resident = resident(tiles_per_split);
        let blocks_per_sm = (costs.blocks * splits).div_ceil(sm_count).max(resident);
        let streamed = tiles_per_split * blocks_per_sm * costs.tile_bytes / resident;
        let reduced = if splits > 1 {
            splits * costs.partial_bytes / sm_count
        } else {
            0
        };
        streamed + reduced
    };
    (min_splits..=max_splits)
        .min_by_key(|&splits| bytes(splits))
        .unwrap_or(min_splits)
}

/// Blocks of spmm.cu's kernels an SM of `device` holds at once, with `shared_bytes` of
/// dynamic shared memory and `registers` a thread: the fewest that its shared memory (less the
/// 1 KiB the driver keeps per block), threads and registers (given out per warp, in units of
/// 256) allow; at least one.
fn resident_blocks(device: &CudaDeviceInfo, shared_bytes: usize, registers: u32) -> usize {
    let warps = TF_SPMM_WARPS as usize;
    let warp_registers = (registers as usize * 32).next_multiple_of(256).max(256);
    let by_shared = device.max_shared_per_sm as usize / (shared_bytes + 1024);
    let by_threads = device.max_threads_per_sm as usize / (warps * 32);
    let by_registers = device.registers_per_sm as usize / warp_registers / warps;
    by_shared.min(by_threads).min(by_registers).max(1)
}

/// What a launch plan needs to know of a weight `w [m, k]`.
#[derive(Clone, Copy, Debug)]
struct WeightSize {
    m: usize,
    k: usize,
    /// 16-byte vectors of entries, in all.
    vectors: usize,
    /// Vectors of the largest tile.
    max_tile_vectors: usize,
}

/// Tokens per block for `n` tokens: the kernels come in 8, 16, 32 and 64.
fn tokens_per_block(n: usize) -> u32 {
    [8, 16, 32, 64]
        .into_iter()
        .find(|&t| n <= t as usize)
        .unwrap_or(64)
}

/// The kernel a launch of `n` tokens runs for `T` in and `O` out: `variant`'s (f16 in and out
/// only; a probe for 9 to 16 tokens), or spmm.cu's.
fn launched_kernel<T: Float16, O: OutputElement<T>>(
    variant: Option<Variant>,
    n: usize,
) -> Result<Kernel> {
    let tokens = tokens_per_block(n);
    match variant {
        Some(variant) => variant_kernel::<T, O>(variant, tokens),
        None => Ok(kernel(T::NAME, tokens, O::F32)),
    }
}

/// Tokens per block, split-K and memory of one launch.
struct Plan {
    tokens_per_block: u32,
    tiles_m: u32,
    n_blocks: u32,
    splits: u32,
    tiles_per_split: u32,
    /// Vectors of a tile that a stage holds.
    stage_vectors: u32,
    shared_bytes: u32,
}

impl Plan {
    /// For `w` and `n` tokens on `cuda`'s device, with the first `held` vectors of each tile
    /// kept out of the stages (in registers), for a kernel of `registers` a thread.
    fn for_weight<T: Float16>(
        cuda: &Cuda,
        w: &DeviceTiledCsl<T>,
        n: usize,
        held: usize,
        registers: u32,
    ) -> Result<Plan> {
        let weight = WeightSize {
            m: w.m,
            k: w.k,
            vectors: w.entries.len() / 4,
            max_tile_vectors: w.max_tile_vectors,
        };
        Plan::new(cuda.info(), weight, held, n, registers)
    }

    /// For `y [n, m] = x [n, k] · wᵀ` with a weight of size `weight`, the first `held` vectors
    /// of each tile kept out of the stages, and a kernel of `registers` a thread.
    fn new(
        device: &CudaDeviceInfo,
        weight: WeightSize,
        held: usize,
        n: usize,
        registers: u32,
    ) -> Result<Plan> {
        let WeightSize {
            m,
            k,
            vectors,
            max_tile_vectors,
        } = weight;
        let tokens_per_block = tokens_per_block(n) as usize;
        let n_blocks = n.div_ceil(tokens_per_block);
        if n_blocks > u16::MAX as usize {
            return Err(Error::DeviceLimit {
                what: "spmm grid",
                limit_name: "max grid y (blocks of 64 tokens)",
                needed: n_blocks as u64,
                limit: u16::MAX.into(),
            });
        }
        let tiles_m = m.div_ceil(TILE_M);
        let tiles_k = k.div_ceil(TILE_K);
        let x_tile_bytes = tokens_per_block * TILE_K * 2;
        let stages = TF_SPMM_STAGES as usize;
        // abi.h: two dense tiles, the stages of x tiles and of entries, the tile offsets.
        let dense_and_x = 2 * TILE_M * TILE_K * 2 + stages * x_tile_bytes;
        let most_offsets = 4 * (tiles_k.min(MAX_TILES_PER_SPLIT) + 1);
        // A stage holds the densest tile's staged vectors where shared memory allows (an H100
        // always); beyond, the scatter reads the rest of a tile from global memory.
        let room =
            (device.max_shared_per_block as usize).saturating_sub(dense_and_x + most_offsets);
        let staged_vectors = max_tile_vectors.saturating_sub(held);
        let stage_vectors = staged_vectors.clamp(1, (room / (stages * 16)).max(1));
        let stages_bytes = dense_and_x + stages * stage_vectors * 16;
        let splits = split_k(
            device,
            SplitCosts {
                blocks: tiles_m * n_blocks,
                tiles_k,
                tile_bytes: (vectors * 16 / (tiles_m * tiles_k)) + x_tile_bytes,
                partial_bytes: n_blocks * tokens_per_block * m * 8,
                stages_shared: stages_bytes,
                registers,
            },
        );
        let tiles_per_split = tiles_k.div_ceil(splits);
        let splits = tiles_k.div_ceil(tiles_per_split);
        // abi.h: two dense tiles and the stages, then the block's tile offsets.
        let shared_bytes = stages_bytes + (tiles_per_split + 1) * 4;
        let shared_bytes = device.shared_memory("spmm shared memory", shared_bytes)?;
        Ok(Plan {
            tokens_per_block: tokens_per_block as u32,
            tiles_m: tiles_m as u32,
            n_blocks: n_blocks as u32,
            splits: splits as u32,
            tiles_per_split: tiles_per_split as u32,
            stage_vectors: stage_vectors as u32,
            shared_bytes,
        })
    }

    /// f32 partial results of every split (split-K only).
    fn partials(&self, m: usize) -> usize {
        self.splits as usize * (self.n_blocks * self.tokens_per_block) as usize * m
    }

    /// The split-K counters, zero at launch (the kernel leaves them zero).
    fn counters(&self) -> usize {
        (self.tiles_m * self.n_blocks) as usize
    }
}

/// `variant`'s kernel of `tokens_per_block`, which stands for spmm.cu's for f16 in and out (a
/// probe: of 16 tokens per block).
fn variant_kernel<T: Float16, O: OutputElement<T>>(
    variant: Variant,
    tokens_per_block: u32,
) -> Result<Kernel> {
    if T::NAME != "f16" || O::F32 {
        return Err(Error::invalid(
            "spmm variant",
            "f16 in and out",
            format!(
                "{} in, {} out",
                T::NAME,
                if O::F32 { "f32" } else { T::NAME }
            ),
        ));
    }
    variant.kernel(tokens_per_block).ok_or_else(|| {
        Error::invalid(
            "n (spmm probe)",
            "9 to 16 tokens",
            format!("a launch of {tokens_per_block} tokens per block"),
        )
    })
}

/// spmm.cu's kernel for `element` ("f16" or "bf16") in, f32 or the same type out, and
/// `tokens_per_block` (8, 16, 32 or 64).
fn kernel(element: &str, tokens_per_block: u32, out_f32: bool) -> Kernel {
    const NAMES: [[[&str; 2]; 4]; 2] = [
        [
            [
                "tilefuse_spmm_tiledcsl_f16_n8_same",
                "tilefuse_spmm_tiledcsl_f16_n8_f32",
            ],
            [
                "tilefuse_spmm_tiledcsl_f16_n16_same",
                "tilefuse_spmm_tiledcsl_f16_n16_f32",
            ],
            [
                "tilefuse_spmm_tiledcsl_f16_n32_same",
                "tilefuse_spmm_tiledcsl_f16_n32_f32",
            ],
            [
                "tilefuse_spmm_tiledcsl_f16_n64_same",
                "tilefuse_spmm_tiledcsl_f16_n64_f32",
            ],
        ],
        [
            [
                "tilefuse_spmm_tiledcsl_bf16_n8_same",
                "tilefuse_spmm_tiledcsl_bf16_n8_f32",
            ],
            [
                "tilefuse_spmm_tiledcsl_bf16_n16_same",
                "tilefuse_spmm_tiledcsl_bf16_n16_f32",
            ],
            [
                "tilefuse_spmm_tiledcsl_bf16_n32_same",
                "tilefuse_spmm_tiledcsl_bf16_n32_f32",
            ],
            [
                "tilefuse_spmm_tiledcsl_bf16_n64_same",
                "tilefuse_spmm_tiledcsl_bf16_n64_f32",
            ],
        ],
    ];
    let element = usize::from(element == "bf16");
    let tokens = tokens_per_block.trailing_zeros() as usize - 3;
    Kernel {
        module: "spmm",
        name: NAMES[element][tokens][usize::from(out_f32)],
    }
}

#[cfg(test)]
mod emulated;
#[cfg(test)]
mod on_device;
