//! One launch of spmm.cu's kernels, described once for the launcher ([`super::spmm`]) and the
//! CPU emulator's tests: which kernel, how many k splits, the grid, the shared memory and the
//! parameter struct. Pure functions of the device's limits and the weight's size, unit-tested
//! here.

use super::variant::Variant;
use crate::backend::abi::{
    TF_SPMM_BITMAP_WARPS, TF_SPMM_STAGES, TF_SPMM_WARPS, TfSpmmBitmapParams, TfSpmmParams,
};
use crate::backend::cuda::{CudaDeviceInfo, Kernel, LaunchShape};
use crate::element::{Float16, OutputElement};
use crate::error::{Error, Result};
use crate::spmm::{TILE_K, TILE_M};

/// The most k tiles one block of the Tiled-CSL kernel walks (its tile offsets are in shared
/// memory).
const MAX_TILES_PER_SPLIT: usize = 4096;
/// The same for the bitmap kernel, which keeps the offsets of each of its unit rows.
const MAX_BITMAP_TILES_PER_SPLIT: usize = 256;
/// Unit rows of a tile (one consumer warp each in the bitmap kernel).
const UNIT_ROWS: usize = TILE_M / crate::spmm::bitmap::UNIT_M;
/// The most stages of the bitmap kernel's ring.
const MAX_BITMAP_STAGES: usize = 8;
/// Bytes an SM keeps in flight to stream at its share of an HBM3 GPU's bandwidth (about
/// 3 TB/s times a microsecond and a half of latency, over 132 SMs).
const BYTES_IN_FLIGHT_PER_SM: usize = 32 << 10;

/// What a launch plan needs to know of a weight `w [m, k]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WeightSize {
    pub m: usize,
    pub k: usize,
    /// 16-byte vectors of entries, in all.
    pub vectors: usize,
    /// Vectors of the largest tile.
    pub max_tile_vectors: usize,
}

/// The device addresses of one launch's buffers. `workspace` and `counters` are split-K's
/// (see [`Plan::partials`] and [`Plan::counters`]); a launch of one split never reads them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Buffers {
    pub entries: u64,
    pub tile_offsets: u64,
    pub x: u64,
    pub y: u64,
    pub workspace: u64,
    pub counters: u64,
}

/// What a launch plan needs to know of a bitmap weight `w [m, k]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BitmapSize {
    pub m: usize,
    pub k: usize,
    /// Values (padding included), in all.
    pub values: usize,
    /// Values of the tile (its unit rows' units of one k tile together) that has the most.
    pub max_tile_values: usize,
}

/// The device addresses of a bitmap launch's buffers (see [`Buffers`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BitmapBuffers {
    pub masks: u64,
    pub unit_offsets: u64,
    pub values: u64,
    pub x: u64,
    pub y: u64,
    pub workspace: u64,
    pub counters: u64,
}

/// What one launch runs: the kernel, and how it is launched.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpmmLaunch {
    pub kernel: Kernel,
    pub plan: Plan,
}

impl SpmmLaunch {
    /// The launch of `y [n, m] = x [n, k] · wᵀ` for `T` in and `O` out on `device`: spmm.cu's
    /// kernel, or `variant` (f16 in and out only) in its place; `registers` tells how many
    /// registers a thread of a kernel takes (the driver's count on a device, ptxas's in tests).
    pub(crate) fn new<T: Float16, O: OutputElement<T>>(
        device: &CudaDeviceInfo,
        weight: WeightSize,
        n: usize,
        variant: Option<Variant>,
        registers: impl FnOnce(Kernel) -> Result<u32>,
    ) -> Result<SpmmLaunch> {
        let tokens = tokens_per_block(n);
        let kernel = match variant {
            Some(variant) => variant.kernel::<T, O>(tokens)?,
            None => super::kernel::<T, O>(tokens),
        };
        let held = variant.map_or(0, Variant::held_vectors);
        let plan = Plan::new(device, weight, held, n, registers(kernel)?)?;
        Ok(SpmmLaunch { kernel, plan })
    }
}

/// Tokens per block, split-K and memory of one launch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub tokens_per_block: u32,
    pub tiles_m: u32,
    pub n_blocks: u32,
    pub splits: u32,
    pub tiles_per_split: u32,
    /// Stages of the ring.
    pub stages: u32,
    /// What a stage holds of a tile's weight: Tiled-CSL vectors, or bitmap values.
    pub stage_capacity: u32,
    /// Warps of a block.
    pub warps: u32,
    pub shared_bytes: u32,
    m: u32,
    k: u32,
    n: u32,
}

impl Plan {
    /// For `y [n, m] = x [n, k] · wᵀ` with a weight of size `weight`, the first `held` vectors
    /// of each tile kept out of the stages (in registers), and a kernel of `registers` a thread.
    pub(crate) fn new(
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
        let (tokens_per_block, n_blocks) = token_blocks(n)?;
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
                offset_bytes: 4,
                max_tiles_per_split: MAX_TILES_PER_SPLIT,
                warps: TF_SPMM_WARPS,
                registers,
                saturating_blocks: usize::MAX,
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
            stages: stages as u32,
            stage_capacity: stage_vectors as u32,
            warps: TF_SPMM_WARPS,
            shared_bytes,
            m: m as u32,
            k: k as u32,
            n: n as u32,
        })
    }

    /// The bitmap kernel's plan for `y [n, m] = x [n, k] · wᵀ` with a weight of size
    /// `weight` and a kernel of `registers` a thread: as many stages as let an SM hold two
    /// blocks (up to [`MAX_BITMAP_STAGES`]; at least one), each sized for the tile with the
    /// most values, and split-K as for Tiled-CSL.
    pub(crate) fn bitmap(
        device: &CudaDeviceInfo,
        weight: BitmapSize,
        n: usize,
        registers: u32,
    ) -> Result<Plan> {
        let BitmapSize {
            m,
            k,
            values,
            max_tile_values,
        } = weight;
        let (tokens_per_block, n_blocks) = token_blocks(n)?;
        let tiles_m = m.div_ceil(TILE_M);
        let tiles_k = k.div_ceil(TILE_K);
        let stage_values = max_tile_values.next_multiple_of(8).max(8);
        // abi.h: a stage holds the tile's masks (16 u64 a unit), its x tile and its values,
        // and has two mbarriers; the block's unit offsets and a word for split-K follow.
        let x_tile_bytes = tokens_per_block * TILE_K * 2;
        let stage_bytes = 16 + UNIT_ROWS * 128 + x_tile_bytes + stage_values * 2;
        let offset_bytes = |tiles_per_split: usize| (UNIT_ROWS * (tiles_per_split + 1) + 4) * 4;
        let most_offsets = offset_bytes(tiles_k.min(MAX_BITMAP_TILES_PER_SPLIT));
        let per_block = (device.max_shared_per_block as usize)
            .min((device.max_shared_per_sm as usize / 2).saturating_sub(1024));
        let stages =
            (per_block.saturating_sub(most_offsets) / stage_bytes).clamp(1, MAX_BITMAP_STAGES);
        // A block keeps its stages but one in flight.
        let tile_bytes = values * 2 / (tiles_m * tiles_k) + UNIT_ROWS * 128 + x_tile_bytes;
        let splits = split_k(
            device,
            SplitCosts {
                blocks: tiles_m * n_blocks,
                tiles_k,
                tile_bytes,
                partial_bytes: n_blocks * tokens_per_block * m * 8,
                stages_shared: stages * stage_bytes + 16,
                offset_bytes: UNIT_ROWS * 4,
                max_tiles_per_split: MAX_BITMAP_TILES_PER_SPLIT,
                warps: TF_SPMM_BITMAP_WARPS,
                registers,
                saturating_blocks: BYTES_IN_FLIGHT_PER_SM
                    .div_ceil(stages.max(2) - 1)
                    .div_ceil(tile_bytes),
            },
        );
        let tiles_per_split = tiles_k.div_ceil(splits);
        let splits = tiles_k.div_ceil(tiles_per_split);
        let shared_bytes = stages * stage_bytes + offset_bytes(tiles_per_split);
        let shared_bytes = device.shared_memory("spmm shared memory", shared_bytes)?;
        Ok(Plan {
            tokens_per_block: tokens_per_block as u32,
            tiles_m: tiles_m as u32,
            n_blocks: n_blocks as u32,
            splits: splits as u32,
            tiles_per_split: tiles_per_split as u32,
            stages: stages as u32,
            stage_capacity: stage_values as u32,
            warps: TF_SPMM_BITMAP_WARPS,
            shared_bytes,
            m: m as u32,
            k: k as u32,
            n: n as u32,
        })
    }

    /// Whether the launch splits k (and so needs a workspace).
    pub(crate) fn split_k(&self) -> bool {
        self.splits > 1
    }

    /// f32 partial results of every split (split-K only).
    pub(crate) fn partials(&self) -> usize {
        self.splits as usize * (self.n_blocks * self.tokens_per_block) as usize * self.m as usize
    }

    /// The split-K counters, zero at launch (the kernel leaves them zero).
    pub(crate) fn counters(&self) -> usize {
        (self.tiles_m * self.n_blocks) as usize
    }

    /// abi.h's grid: blocks in x (m tiles), y (token blocks) and z (k splits); the block and
    /// its shared memory.
    pub(crate) fn shape(&self) -> LaunchShape {
        LaunchShape {
            grid: [self.tiles_m, self.n_blocks, self.splits],
            block: [self.warps * 32, 1, 1],
            shared_bytes: self.shared_bytes,
        }
    }

    /// The kernel's parameters for these buffers; without split-K the workspace's addresses
    /// are passed as 0, as abi.h asks.
    pub(crate) fn params(&self, buffers: Buffers) -> TfSpmmParams {
        let (workspace, counters) = self.workspace(buffers.workspace, buffers.counters);
        TfSpmmParams {
            entries: buffers.entries,
            tile_offsets: buffers.tile_offsets,
            x: buffers.x,
            y: buffers.y,
            workspace,
            counters,
            m: self.m,
            n: self.n,
            k: self.k,
            splits: self.splits,
            tiles_per_split: self.tiles_per_split,
            stage_vectors: self.stage_capacity,
        }
    }

    /// The split-K workspace's addresses as the kernels take them: 0 without split-K.
    fn workspace(&self, partials: u64, counters: u64) -> (u64, u64) {
        if self.split_k() {
            (partials, counters)
        } else {
            (0, 0)
        }
    }

    /// The bitmap kernel's parameters for these buffers (workspace as in [`Plan::params`]).
    pub(crate) fn bitmap_params(&self, buffers: BitmapBuffers) -> TfSpmmBitmapParams {
        let (workspace, counters) = self.workspace(buffers.workspace, buffers.counters);
        TfSpmmBitmapParams {
            masks: buffers.masks,
            unit_offsets: buffers.unit_offsets,
            values: buffers.values,
            x: buffers.x,
            y: buffers.y,
            workspace,
            counters,
            m: self.m,
            n: self.n,
            k: self.k,
            splits: self.splits,
            tiles_per_split: self.tiles_per_split,
            stages: self.stages,
            stage_values: self.stage_capacity,
            reserved: 0,
        }
    }
}

/// Tokens per block and blocks of tokens for `n` tokens, within the grid's y limit.
fn token_blocks(n: usize) -> Result<(usize, usize)> {
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
    Ok((tokens_per_block, n_blocks))
}

/// Tokens per block for `n` tokens: the kernels come in 8, 16, 32 and 64.
pub(crate) fn tokens_per_block(n: usize) -> u32 {
    [8, 16, 32, 64]
        .into_iter()
        .find(|&t| n <= t as usize)
        .unwrap_or(64)
}

/// What one launch's split-K choice weighs.
struct SplitCosts {
    /// Blocks without split-K: (m tiles) x (token blocks).
    blocks: usize,
    tiles_k: usize,
    /// Bytes one block reads per k tile: the average tile's entries and the x tile.
    tile_bytes: usize,
    /// Bytes of f32 partials one split writes and the last block reads back.
    partial_bytes: usize,
    /// Dynamic shared memory of one block, less its offsets.
    stages_shared: usize,
    /// Bytes of offsets a block keeps per k tile it walks (and once more).
    offset_bytes: usize,
    /// The most k tiles a block's offsets may cover.
    max_tiles_per_split: usize,
    /// Warps of a block.
    warps: u32,
    /// Registers per thread of the kernel.
    registers: u32,
    /// Blocks that keep enough bytes in flight to stream at an SM's share of the bandwidth
    /// (fewer than it holds where each block's pipeline is deep).
    saturating_blocks: usize,
}

/// The number of k splits: the one (the smallest, among equals) that minimises the bytes the
/// busiest SM moves. The grid's blocks are spread over the SMs, whose time is the k tiles of
/// their blocks; an SM streams at full rate only with all the blocks it can hold resident
/// ([`CudaDeviceInfo::resident_blocks`]: fewer leave it waiting on latency, so they count as if it held that
/// many), and every split beyond one adds its partials.
fn split_k(device: &CudaDeviceInfo, costs: SplitCosts) -> usize {
    let sm_count = device.sm_count.max(1) as usize;
    // Blocks an SM holds with `tiles_per_split` tiles' offsets each.
    let resident = |tiles_per_split: usize| {
        let block_shared = costs.stages_shared + costs.offset_bytes * (tiles_per_split + 1);
        device
            .resident_blocks(block_shared, costs.warps, costs.registers)
            .min(costs.saturating_blocks)
    };
    // The block's offsets live in shared memory.
    let min_splits = costs.tiles_k.div_ceil(costs.max_tiles_per_split);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A device with `sm_count` SMs and `shared` bytes of shared memory per block.
    pub(crate) fn device(sm_count: u32, shared: u64) -> CudaDeviceInfo {
        CudaDeviceInfo::planned(sm_count, shared)
    }

    /// An SM holds as many blocks as its shared memory, threads and registers all allow. On
    /// an H100, 121 registers a thread allow 4 blocks where a block's shared memory (41 KiB)
    /// would allow 5, and 96 allow 5.
    #[test]
    fn residency_counts_registers() {
        let h100 = device(132, 227 * 1024);
        assert_eq!(h100.resident_blocks(41 * 1024, TF_SPMM_WARPS, 96), 5);
        assert_eq!(h100.resident_blocks(41 * 1024, TF_SPMM_WARPS, 121), 4);
        assert_eq!(h100.resident_blocks(70 * 1024, TF_SPMM_WARPS, 121), 3);
        assert_eq!(h100.resident_blocks(36 * 1024, TF_SPMM_WARPS, 72), 6);
        assert_eq!(h100.resident_blocks(1024, TF_SPMM_WARPS, 32), 16); // threads: 2048 / 128
        assert_eq!(h100.resident_blocks(300 * 1024, TF_SPMM_WARPS, 255), 1);
    }

    /// However long k and however few SMs, a block's tile offsets fit in its shared memory.
    #[test]
    fn long_k_on_one_sm_plans_within_shared_memory() {
        let (m, k) = (128, 1 << 24);
        let tiles_k = k / TILE_K;
        let weight = WeightSize {
            m,
            k,
            vectors: tiles_k * 20,
            max_tile_vectors: 40,
        };
        let plan = Plan::new(&device(1, 227 * 1024), weight, 0, 16, 128).unwrap();
        assert!(plan.tiles_per_split as usize <= MAX_TILES_PER_SPLIT);
        assert!(plan.shared_bytes < 100 * 1024);
    }

    /// A fully dense tile does not fit a stage in 99 KiB: a stage holds part of it, within
    /// the device's shared memory.
    #[test]
    fn dense_tile_with_little_shared_memory() {
        let dense_tile = WeightSize {
            m: 128,
            k: 64,
            vectors: 2048,
            max_tile_vectors: 2048,
        };
        let plan = Plan::new(&device(4, 99 * 1024), dense_tile, 0, 64, 128).unwrap();
        assert!(plan.stage_capacity < 2048 && plan.shared_bytes <= 99 * 1024);
    }

    /// The generated ids pick the kernel named for the types and tokens, as abi.h names them.
    #[test]
    fn kernel_ids_follow_the_names() {
        use half::{bf16, f16};
        assert_eq!(
            super::super::kernel::<f16, f16>(8).name,
            "tilefuse_spmm_tiledcsl_f16_n8_same"
        );
        assert_eq!(
            super::super::kernel::<bf16, f32>(16).name,
            "tilefuse_spmm_tiledcsl_bf16_n16_f32"
        );
        assert_eq!(
            super::super::kernel::<bf16, bf16>(64).name,
            "tilefuse_spmm_tiledcsl_bf16_n64_same"
        );
        assert_eq!(
            super::super::kernel::<f16, f32>(32).name,
            "tilefuse_spmm_tiledcsl_f16_n32_f32"
        );
        let variant = |v: Variant, tokens| v.kernel::<f16, f16>(tokens).unwrap().name;
        assert_eq!(
            variant(Variant::EntriesInRegisters, 32),
            "tilefuse_spmm_registers_f16_n32_same"
        );
        assert_eq!(
            variant(Variant::ProbeScatter, 16),
            "tilefuse_spmm_probe_scatter_f16_n16"
        );
        assert_eq!(
            variant(Variant::ProbeNoMultiply, 16),
            "tilefuse_spmm_probe_no_mma_f16_n16"
        );
        assert_eq!(
            Variant::ProbeLoads.kernel::<f16, f16>(16).unwrap().module,
            "spmm_probe"
        );
    }

    /// The grid covers m, the tokens and k, and the parameters carry the plan and the
    /// buffers; split-K's buffers are passed only to a launch that splits.
    #[test]
    fn grid_and_parameters_follow_the_plan() {
        let buffers = Buffers {
            entries: 1,
            tile_offsets: 2,
            x: 3,
            y: 4,
            workspace: 5,
            counters: 6,
        };
        let weight = |m, k| WeightSize {
            m,
            k,
            vectors: m.div_ceil(TILE_M) * k.div_ceil(TILE_K) * 400,
            max_tile_vectors: 450,
        };
        // One m tile and 64 k tiles on 132 SMs: split.
        let plan = Plan::new(&device(132, 227 * 1024), weight(100, 4096), 0, 70, 128).unwrap();
        assert!(plan.split_k());
        assert_eq!(plan.shape().grid, [1, 2, plan.splits]);
        assert!(plan.splits * plan.tiles_per_split >= 64);
        assert!((plan.splits - 1) * plan.tiles_per_split < 64);
        assert_eq!(plan.partials(), plan.splits as usize * 128 * 100);
        assert_eq!(plan.counters(), 2);
        let params = plan.params(buffers);
        assert_eq!((params.m, params.k, params.n), (100, 4096, 70));
        assert_eq!((params.workspace, params.counters), (5, 6));
        assert_eq!(params.splits, plan.splits);
        // Four k tiles on one SM: not split, and no workspace passed.
        let plan = Plan::new(&device(1, 227 * 1024), weight(300, 256), 0, 5, 128).unwrap();
        assert!(!plan.split_k());
        assert_eq!(plan.shape().grid, [3, 1, 1]);
        let params = plan.params(buffers);
        assert_eq!((params.workspace, params.counters), (0, 0));
        assert_eq!(
            (params.entries, params.tile_offsets, params.x, params.y),
            (1, 2, 3, 4)
        );
    }
}
