//! The scan on CUDA: one pass, decoupled look-back across time chunks (`cuda/scan.cu`).
//!
//! Complex buffers are f32 buffers holding interleaved `(re, im)` pairs (the layout of
//! [`Complex32`](num_complex::Complex32) and cuComplex); upload host data with
//! `bytemuck::cast_slice`.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::{BufferLengths, Decay, Scan, ScanElement, elements_of};
use crate::backend::abi::{
    TF_SCAN_CHUNK, TF_SCAN_HEADER_WORDS, TF_SCAN_LANES, TF_SCAN_WARPS, TfScanParams,
};
use crate::backend::cuda::{Cuda, Kernel, LaunchShape, ids};
use crate::error::{Error, Result};

/// The inputs of one scan on the device; `F` is an f32 buffer type (`CudaSlice<f32>`,
/// `CudaView<f32>`), `R` a u8 one.
#[derive(Debug)]
pub struct ScanInputs<'a, F, R> {
    /// `a [p]` or, time-varying, laid out like `u`.
    pub a: &'a F,
    /// The inputs `u`.
    pub u: &'a F,
    /// The reset flags, u8, non-zero = reset.
    pub reset: &'a R,
    /// The state before the first step, `[b, p]`; `None` starts from zero.
    pub h0: Option<&'a F>,
}

impl<F, R> Clone for ScanInputs<'_, F, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F, R> Copy for ScanInputs<'_, F, R> {}

/// Enqueues the scan on `cuda`'s stream, writing every state to `h` and the final state to
/// `h_last`.
///
/// ```no_run
/// # fn main() -> tilefuse::Result<()> {
/// use num_complex::Complex32;
/// use tilefuse::backend::cuda::Cuda;
/// use tilefuse::scan::{Decay, Layout, Scan, ScanShape, cuda::{ScanInputs, scan}};
///
/// let cuda = Cuda::new(0)?;
/// let problem = Scan::<Complex32>::new(ScanShape::new(16, 8192, 256)?, Layout::BatchMajor, Decay::TimeInvariant);
/// let a = cuda.upload(&vec![0.9f32; 2 * 256])?;
/// let u = cuda.upload(&vec![1.0f32; 2 * problem.states_len()])?;
/// let reset = cuda.upload(&vec![0u8; problem.reset_len()])?;
/// let mut h = cuda.upload(&vec![0.0f32; 2 * problem.states_len()])?;
/// let mut h_last = cuda.upload(&vec![0.0f32; 2 * problem.final_len()])?;
/// let inputs = ScanInputs { a: &a, u: &u, reset: &reset, h0: None };
/// scan(&cuda, &problem, inputs, &mut h, &mut h_last)?; // enqueued, not waited for
/// let carry = cuda.download(&h_last)?;                  // waits
/// # Ok(())
/// # }
/// ```
pub fn scan<T: ScanElement, F: DevicePtr<f32>, R: DevicePtr<u8>>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R>,
    h: &mut impl DevicePtrMut<f32>,
    h_last: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    scan_with_workspace(
        cuda,
        scan,
        inputs,
        Some(h),
        h_last,
        &mut ScanWorkspace::new(),
    )
}

/// Enqueues the scan on `cuda`'s stream, writing only the final state `h_last` (for carrying
/// a rollout's state into the next call without storing every step).
pub fn scan_final<T: ScanElement, F: DevicePtr<f32>, R: DevicePtr<u8>>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R>,
    h_last: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let no_states = None::<&mut CudaSlice<f32>>;
    scan_with_workspace(
        cuda,
        scan,
        inputs,
        no_states,
        h_last,
        &mut ScanWorkspace::new(),
    )
}

/// [`scan`] (with `h`) or [`scan_final`] (without), with the look-back's memory taken from
/// `workspace`: no allocation and no memset once it has served a launch of the same shape.
///
/// ```no_run
/// # fn main() -> tilefuse::Result<()> {
/// use tilefuse::backend::cuda::Cuda;
/// use tilefuse::scan::{Decay, Layout, Scan, ScanShape, cuda::{ScanInputs, ScanWorkspace, scan_with_workspace}};
///
/// let cuda = Cuda::new(0)?;
/// let problem = Scan::<f32>::new(ScanShape::new(16, 4096, 256)?, Layout::BatchMajor, Decay::TimeInvariant);
/// let a = cuda.upload(&vec![0.9f32; 256])?;
/// let u = cuda.upload(&vec![1.0f32; problem.states_len()])?;
/// let reset = cuda.upload(&vec![0u8; problem.reset_len()])?;
/// let mut h = cuda.upload(&vec![0.0f32; problem.states_len()])?;
/// let mut h_last = cuda.upload(&vec![0.0f32; problem.final_len()])?;
/// let mut workspace = ScanWorkspace::new();
/// workspace.reserve(&cuda, &problem)?; // before capturing the loop into a CUDA graph, say
/// for _step in 0..100 {
///     let inputs = ScanInputs { a: &a, u: &u, reset: &reset, h0: None };
///     scan_with_workspace(&cuda, &problem, inputs, Some(&mut h), &mut h_last, &mut workspace)?;
/// }
/// # Ok(())
/// # }
/// ```
pub fn scan_with_workspace<T, F, R, G>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R>,
    h: Option<&mut G>,
    h_last: &mut impl DevicePtrMut<f32>,
    workspace: &mut ScanWorkspace,
) -> Result<()>
where
    T: ScanElement,
    F: DevicePtr<f32>,
    R: DevicePtr<u8>,
    G: DevicePtrMut<f32>,
{
    check_forward(cuda, scan, inputs, h.as_deref(), h_last)?;
    let grid = Grid::new(scan)?;
    let words = workspace.prepare(cuda, grid.forward_layout::<T>())?;
    enqueue(cuda, scan, &grid, inputs, h, Some(h_last), words, 0)
}

/// Device memory for the scan's look-back (and the backward pass's), kept from call to call:
/// [`scan_with_workspace`] and
/// [`scan_backward_with_workspace`](crate::scan::cuda::scan_backward_with_workspace) then
/// allocate nothing, and clear nothing while the shape stays the same (each launch tags its
/// flags with a count of the workspace's launches, which the kernels keep on the device), so
/// a loop of them can be captured into a CUDA graph. It grows to the largest launch it has
/// served, and belongs to the device it was first used on (passing it to another is an
/// error).
///
/// Launches that share a workspace must run one after another: on one stream, or on several
/// with cudarc's event tracking on (its default), which orders them. Launches captured into a
/// CUDA graph keep the memory the workspace had at capture: [`reserve`](Self::reserve) it for
/// their shapes before capture, keep it alive, and don't let a larger launch grow it, while
/// the graph may run; a capture of launches of different shapes also captures the memsets
/// that a change of shape takes.
#[derive(Debug, Default)]
pub struct ScanWorkspace {
    words: Option<CudaSlice<u32>>,
    /// The ranges the last launch needed cleared (its headers, flags and counters).
    cleared_for: Vec<std::ops::Range<usize>>,
}

impl ScanWorkspace {
    /// An empty workspace; the first launch allocates it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.words.as_ref().map_or(0, |words| words.len() * 4)
    }

    /// Grows the workspace to what a forward scan of `scan` needs on `cuda`.
    pub fn reserve<T: ScanElement>(&mut self, cuda: &Cuda, scan: &Scan<T>) -> Result<()> {
        let grid = Grid::new(scan)?;
        self.prepare(cuda, grid.forward_layout::<T>()).map(|_| ())
    }

    /// Grows the workspace to what a backward pass of `scan` needs on `cuda`, with the
    /// forward's states kept or (`recompute`) recomputed.
    pub fn reserve_backward<T: ScanElement>(
        &mut self,
        cuda: &Cuda,
        scan: &Scan<T>,
        recompute: bool,
    ) -> Result<()> {
        let grid = Grid::new(scan)?;
        let layout = grid.backward_layout::<T>(scan.decay, recompute);
        self.prepare(cuda, layout).map(|_| ())
    }

    /// The memory for a launch of `layout`: grown (and cleared) if too small, else with the
    /// ranges it needs cleared cleared when they differ from the last launch's.
    fn prepare(&mut self, cuda: &Cuda, layout: WorkspaceLayout) -> Result<&mut CudaSlice<u32>> {
        if let Some(words) = &self.words {
            cuda.check_device("workspace", words)?;
        }
        match &mut self.words {
            Some(words) if words.len() >= layout.len => {
                if self.cleared_for != layout.cleared {
                    for range in &layout.cleared {
                        cuda.clear(words, range.clone())?;
                    }
                }
            }
            _ => self.words = Some(cuda.scratch(layout.len, 0..layout.len)?),
        }
        self.cleared_for = layout.cleared;
        Ok(self.words.as_mut().expect("allocated above"))
    }
}

/// Where one launch's look-back regions lie in a workspace, in u32 words: its length, and
/// the ranges that must be zero when a launch of another layout used the memory before
/// (headers, flags, counters).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct WorkspaceLayout {
    pub(super) len: usize,
    pub(super) cleared: Vec<std::ops::Range<usize>>,
}

/// An error unless the forward's buffers have the lengths `scan` gives them and are on
/// `cuda`'s device.
fn check_forward<T: ScanElement, F: DevicePtr<f32>, R: DevicePtr<u8>>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R>,
    h: Option<&impl DevicePtrMut<f32>>,
    h_last: &impl DevicePtrMut<f32>,
) -> Result<()> {
    scan.check_lengths(BufferLengths {
        a: elements_of::<T>("a", inputs.a.len())?,
        u: elements_of::<T>("u", inputs.u.len())?,
        reset: inputs.reset.len(),
        h0: inputs
            .h0
            .map(|h0| elements_of::<T>("h0", h0.len()))
            .transpose()?,
        h: h.as_ref()
            .map(|h| elements_of::<T>("h", h.len()))
            .transpose()?,
        h_last: elements_of::<T>("h_last", h_last.len())?,
    })?;
    cuda.check_device("a", inputs.a)?;
    cuda.check_device("u", inputs.u)?;
    cuda.check_device("reset", inputs.reset)?;
    if let Some(h0) = inputs.h0 {
        cuda.check_device("h0", h0)?;
    }
    if let Some(h) = h {
        cuda.check_device("h", h)?;
    }
    cuda.check_device("h_last", h_last)
}

/// Enqueues the forward kernel on buffers checked by the caller, with its look-back region
/// at word `offset` of `workspace` (prepared for a layout that places it there).
#[allow(clippy::too_many_arguments)]
fn enqueue<T: ScanElement, F: DevicePtr<f32>, R: DevicePtr<u8>>(
    cuda: &Cuda,
    scan: &Scan<T>,
    grid: &Grid,
    inputs: ScanInputs<'_, F, R>,
    mut h: Option<&mut impl DevicePtrMut<f32>>,
    h_last: Option<&mut impl DevicePtrMut<f32>>,
    workspace: &mut CudaSlice<u32>,
    offset: usize,
) -> Result<()> {
    let kernel = kernel::<T>(scan.decay, h.is_some());
    let mut args = cuda.args();
    let params = grid.params(
        scan,
        Addresses {
            a: args.read(inputs.a),
            u: args.read(inputs.u),
            reset: args.read(inputs.reset),
            h0: inputs.h0.map_or(0, |h0| args.read(h0)),
            h: h.as_mut().map_or(0, |h| args.write(*h)),
            h_last: h_last.map_or(0, |h_last| args.write(h_last)),
            workspace: args.write(workspace) + 4 * offset as u64,
        },
    );
    // SAFETY: TfScanParams is the parameter struct of every scan kernel; its addresses come
    // from `args`. Lengths were checked against the shape (a: p or b·t·p elements; u, h:
    // b·t·p; reset: b·t bytes; h0, h_last: b·p; each element T::LANES f32s), and the strides
    // are the layout's own, so every index the kernel forms (b < batch, t < time, channel <
    // channels, all guarded) is inside its buffer. From `offset` the workspace holds the
    // words abi.h asks for the grid (ScanWorkspace::prepare grew it to a layout that places
    // the region there), and its header and flags are as abi.h allows: zeroed when
    // allocated or when the last launch on this memory had another layout, else left by the
    // launches of this layout, one after another (ScanWorkspace asks this of its callers).
    // Grid::new keeps the block count (= record count) under 2^31. The kernel writes h only
    // when h != 0, and h is absent exactly for the `_final` kernels; h_last only when given.
    unsafe { cuda.launch(kernel, grid.shape(), &params, args) }
}

/// The buffers of one launch (0: absent).
struct Addresses {
    a: u64,
    u: u64,
    reset: u64,
    h0: u64,
    h: u64,
    h_last: u64,
    workspace: u64,
}

/// The launch grid: one block per (time chunk, batch row, group of 32 channels), chunk-major.
struct Grid {
    chunks: u32,
    groups: u32,
    records: usize,
}

impl Grid {
    fn new<T: ScanElement>(scan: &Scan<T>) -> Result<Grid> {
        let chunks = scan.shape.time().div_ceil(TF_SCAN_CHUNK as usize);
        let groups = scan.shape.channels().div_ceil(TF_SCAN_LANES as usize);
        let batch = scan.shape.batch();
        let records = chunks
            .checked_mul(groups)
            .and_then(|n| n.checked_mul(batch))
            .unwrap_or(usize::MAX);
        if records > i32::MAX as usize {
            return Err(Error::DeviceLimit {
                what: "scan grid",
                limit_name: "max grid x (time chunks x channel groups x batch rows)",
                needed: records as u64,
                limit: i32::MAX as u64,
            });
        }
        Ok(Grid {
            chunks: chunks as u32,
            groups: groups as u32,
            records,
        })
    }

    /// The kernel's parameters for `scan` with these buffers.
    fn params<T: ScanElement>(&self, scan: &Scan<T>, buffers: Addresses) -> TfScanParams {
        let (stride_batch, stride_time) = scan.strides();
        let (reset_stride_batch, reset_stride_time) = scan.reset_strides();
        TfScanParams {
            a: buffers.a,
            u: buffers.u,
            reset: buffers.reset,
            h0: buffers.h0,
            h: buffers.h,
            h_last: buffers.h_last,
            workspace: buffers.workspace,
            stride_batch: stride_batch as u64,
            stride_time: stride_time as u64,
            reset_stride_batch: reset_stride_batch as u64,
            reset_stride_time: reset_stride_time as u64,
            batch: scan.shape.batch() as u32,
            time: scan.shape.time() as u32,
            channels: scan.shape.channels() as u32,
            chunks: self.chunks,
            groups: self.groups,
            reserved: 0,
        }
    }

    /// abi.h's grid: one block per record.
    fn shape(&self) -> LaunchShape {
        LaunchShape::linear(self.records as u32, TF_SCAN_WARPS * 32)
    }

    /// u32 words of the look-back region (layout in abi.h).
    fn workspace_words<T: ScanElement>(&self) -> usize {
        self.flag_words() + 3 * self.record_words::<T>()
    }

    /// u32 words of the region's header and flags (the kernel reads a record only after
    /// seeing the flag its writer set afterwards, so only these need clearing).
    fn flag_words(&self) -> usize {
        TF_SCAN_HEADER_WORDS as usize + self.records.next_multiple_of(4)
    }

    /// u32 words of one array of records: an element per record and lane.
    fn record_words<T: ScanElement>(&self) -> usize {
        self.records * TF_SCAN_LANES as usize * T::LANES
    }

    /// A forward launch's workspace: its look-back region at 0.
    fn forward_layout<T: ScanElement>(&self) -> WorkspaceLayout {
        WorkspaceLayout {
            len: self.workspace_words::<T>(),
            cleared: std::iter::once(0..self.flag_words()).collect(),
        }
    }

    /// A backward launch's workspace: the forward's region at 0 when the states are
    /// recomputed, then the backward's region (with, time-invariant, the partials of da),
    /// then the da kernel's counters.
    fn backward_layout<T: ScanElement>(&self, decay: Decay, recompute: bool) -> WorkspaceLayout {
        let forward = if recompute {
            self.workspace_words::<T>()
        } else {
            0
        };
        let partials = match decay {
            Decay::TimeInvariant => self.record_words::<T>(),
            Decay::TimeVarying => 0,
        };
        let counters = forward + self.workspace_words::<T>() + partials;
        let forward_flags = recompute.then(|| 0..self.flag_words());
        let cleared = forward_flags
            .into_iter()
            .chain([
                forward..forward + self.flag_words(),
                counters..counters + self.groups as usize,
            ])
            .collect();
        WorkspaceLayout {
            len: counters + self.groups as usize,
            cleared,
        }
    }

    /// Where the backward layout places the backward's region and the counters.
    fn backward_offsets<T: ScanElement>(&self, decay: Decay, recompute: bool) -> (usize, usize) {
        let layout = self.backward_layout::<T>(decay, recompute);
        let backward = layout.cleared[usize::from(recompute)].start;
        (backward, layout.len - self.groups as usize)
    }
}

fn kernel<T: ScanElement>(decay: Decay, states: bool) -> Kernel {
    let element = usize::from(T::LANES == 2);
    let varying = usize::from(decay == Decay::TimeVarying);
    ids::scan::SCAN[element][varying][usize::from(!states)]
}

mod backward;
#[cfg(test)]
mod emulated;

pub use backward::{ScanCotangents, ScanGradients, scan_backward, scan_backward_with_workspace};
