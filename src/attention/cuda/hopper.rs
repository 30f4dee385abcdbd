//! The Hopper forward (`cuda/attention_sm90a.cu`, built for sm_90a alone): when it runs, and
//! its launch. It takes the portable kernel's calls but those whose plan packs the query
//! heads of a GQA group into one block or splits the keys (decode shapes): those stay on the
//! portable kernel, which is built for every GPU.

use super::Plan;
use crate::attention::{AttentionShape, Strides};
use crate::backend::abi::{TfAttentionSm90aParams, TfTensorMap};
use crate::backend::cuda::tma::{TensorMap, TmaElement, TmaSwizzle};
use crate::backend::cuda::{Cuda, CudaDeviceInfo, Kernel, LaunchShape, ids};
use crate::element::{Dtype16, Float16};
use crate::error::{Error, Result};

/// Which forward kernel a call runs ([`super::AttentionWorkspace::with_forward_kernel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardKernel {
    /// The Hopper kernel on a GPU of compute capability 9.0 where the plan allows it (one
    /// split, heads not packed) and the build has it, else the portable one.
    #[default]
    Auto,
    /// The portable kernel (`mma.sync`, `cp.async`) on every GPU.
    Portable,
    /// The Hopper kernel (`wgmma`, TMA, warp specialization): an error where it cannot run
    /// the call (another GPU, a build without sm_90, a decode plan).
    Hopper,
}

/// The Hopper kernel's launch of a portable plan.
#[derive(Debug, Clone)]
pub(super) struct HopperPlan {
    pub(super) kernel: Kernel,
    pub(super) base: Plan,
    /// The persistent grid's blocks (at most one per work item).
    blocks: u32,
}

impl HopperPlan {
    /// The Hopper launch of `plan`, or None where the kernel does not take it (heads packed
    /// into one block, or the keys split).
    pub(super) fn of<T: Float16>(plan: &Plan) -> Option<HopperPlan> {
        if plan.packed_heads != 1 || plan.splits != 1 {
            return None;
        }
        let d = usize::from(plan.d != 64);
        let block_m = usize::from(plan.mask.block_m != 64);
        Some(HopperPlan {
            kernel: ids::attention_sm90a::ATTENTION_SM90A[T::DTYPE as usize][d][block_m],
            base: plan.clone(),
            blocks: items(plan),
        })
    }

    /// The plan with `blocks` persistent blocks (one per work item where there are fewer).
    pub(super) fn with_blocks(self, blocks: u32) -> HopperPlan {
        HopperPlan {
            blocks: blocks.clamp(1, items(&self.base).max(1)),
            ..self
        }
    }

    /// Whether `device` runs the Hopper kernel (compute capability 9.0).
    pub(super) fn runs_on(device: &CudaDeviceInfo) -> bool {
        device.compute_capability == (9, 0)
    }

    /// The Hopper launch of `plan` on `cuda`, if `kernel` asks for it or (`Auto`) the device,
    /// the plan and the build allow it: three stages where shared memory holds them, else two.
    /// An error where `Hopper` is asked for and cannot run.
    pub(super) fn choose<T: Float16>(
        cuda: &Cuda,
        plan: &Plan,
        kernel: ForwardKernel,
    ) -> Result<Option<HopperPlan>> {
        let device = cuda.info();
        let fits =
            |h: &HopperPlan| u64::from(h.shape().shared_bytes) <= device.max_shared_per_block;
        // One block an SM (its shared memory and registers hold no second).
        let candidate = HopperPlan::of::<T>(&plan.clone().with_stages(3))
            .filter(fits)
            .or_else(|| HopperPlan::of::<T>(&plan.clone().with_stages(2)))
            .map(|h| h.with_blocks(device.sm_count));
        match kernel {
            ForwardKernel::Portable => Ok(None),
            ForwardKernel::Auto => {
                let built = |h: &HopperPlan| cuda.function(h.kernel).is_ok();
                Ok(candidate.filter(|h| Self::runs_on(device) && built(h)))
            }
            ForwardKernel::Hopper if !Self::runs_on(device) => Err(Error::invalid(
                "forward kernel Hopper",
                "a GPU of compute capability 9.0",
                format!(
                    "{} ({}.{})",
                    device.name, device.compute_capability.0, device.compute_capability.1
                ),
            )),
            ForwardKernel::Hopper => match candidate {
                Some(h) => cuda.function(h.kernel).map(|_| Some(h)),
                None => Err(Error::invalid(
                    "forward kernel Hopper",
                    "a call of one split whose query heads are not packed (not a decode shape)",
                    format!("{} splits, {} packed heads", plan.splits, plan.packed_heads),
                )),
            },
        }
    }

    /// abi.h's grid, block and shared memory: the persistent blocks, each a producer and
    /// BM / 64 consumer warpgroups.
    pub(super) fn shape(&self) -> LaunchShape {
        let p = &self.base;
        let tiles = p.mask.block_m + 2 * p.stages as usize * 64;
        LaunchShape {
            grid: [self.blocks, 1, 1],
            block: [(p.mask.block_m as u32 / 64 + 1) * 128, 1, 1],
            shared_bytes: (2048 + tiles * p.d * 2) as u32,
        }
    }

    /// The kernel's parameters: the portable kernel's (see [`Plan::params`]) and the tensor
    /// maps of q, k and v, encoded by `encode` (the driver's encoder, or the emulator's).
    pub(super) fn params<T: Float16>(
        &self,
        shape: &AttentionShape,
        buffers: [u64; 4],
        lse: u64,
        lists: [u64; 4],
        encode: impl Fn(&TensorMap) -> Result<TfTensorMap>,
    ) -> Result<TfAttentionSm90aParams> {
        let layout = shape.layout();
        let element = match T::DTYPE {
            Dtype16::F16 => TmaElement::F16,
            Dtype16::Bf16 => TmaElement::Bf16,
        };
        let map = |buffer: u64, strides: Strides, len: usize, heads: usize| {
            encode(&TensorMap {
                element,
                address: buffer + (strides.start * 2) as u64,
                dims: vec![shape.d as u64, len as u64, heads as u64, shape.batch as u64],
                strides: [strides.seq, strides.head, strides.batch]
                    .map(|s| (s * 2) as u64)
                    .to_vec(),
                boxes: vec![64, 64, 1, 1],
                swizzle: TmaSwizzle::B128,
            })
        };
        Ok(TfAttentionSm90aParams {
            q_map: map(buffers[0], layout.q, shape.lq, shape.heads_q)?,
            k_map: map(buffers[1], layout.k, shape.lk, shape.heads_kv)?,
            v_map: map(buffers[2], layout.v, shape.lk, shape.heads_kv)?,
            base: self
                .base
                .params::<T>(shape, buffers, lse, lists, super::SplitKv::default()),
        })
    }
}

/// The work items of `plan` (abi.h): a query block of one head and batch row each.
fn items(plan: &Plan) -> u32 {
    plan.row_blocks * plan.groups * plan.batch
}
