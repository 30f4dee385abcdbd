//! The WGSL scan's scratch memory, kept from call to call.

use crate::backend::wgpu::{GpuBuffer, Wgpu};
use crate::error::Result;

/// What a scratch buffer of the WGSL scan holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// The chunks' composed maps (A, B, reset flag) and end states (scan.wgsl).
    MapA,
    MapB,
    MapReset,
    Ends,
    /// f32 copies of 16-bit u, h, dh and du.
    WideU,
    WideH,
    WideDh,
    WideDu,
    /// The backward's scratch: the final state of its passes, the forward's states when
    /// recomputed, a time-invariant da's partial sums, a dh0 nobody asked for.
    Last,
    States,
    Partials,
    Sums,
    Unread,
}

const ROLES: usize = Role::Unread as usize + 1;

/// Device memory for the WGSL scan and its backward pass (scan.wgsl's chunk maps, the f32
/// copies of 16-bit states, the backward's scratch), kept from call to call:
/// [`scan_with_workspace`](super::scan_with_workspace) and
/// [`scan_backward_with_workspace`](super::scan_backward_with_workspace) then allocate
/// nothing once it has served a call as large. Every pass writes what it reads of it first,
/// so it is never cleared. It belongs to the device it was first used on (passing it to
/// another is an error); calls that share it must be submitted one after another, as one
/// `Wgpu` handle's queue does.
#[derive(Debug, Default)]
pub struct ScanWorkspace {
    buffers: [Option<GpuBuffer<u32>>; ROLES],
}

impl ScanWorkspace {
    /// An empty workspace; the first call allocates it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.buffers.iter().flatten().map(|b| 4 * b.len()).sum()
    }

    /// Grows each buffer of `needs` (a role and its bytes) to at least its size on `gpu`.
    pub(super) fn prepare(&mut self, gpu: &Wgpu, needs: &[(Role, usize)]) -> Result<()> {
        for &(role, bytes) in needs {
            let slot = &mut self.buffers[role as usize];
            if let Some(buffer) = slot {
                gpu.check_buffer("workspace", buffer)?;
            }
            let words = bytes.div_ceil(4).max(1);
            if slot.as_ref().is_none_or(|b| b.len() < words) {
                *slot = Some(gpu.zeros::<u32>(words)?);
            }
        }
        Ok(())
    }

    /// The buffer of `role`, which [`Self::prepare`] grew.
    pub(super) fn buffer(&self, role: Role) -> &wgpu::Buffer {
        self.buffers[role as usize]
            .as_ref()
            .map(GpuBuffer::raw)
            .expect("the workspace was prepared for this role")
    }
}
