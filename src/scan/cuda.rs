//! The scan on CUDA: one pass, decoupled look-back across time chunks (`cuda/scan.cu`).
//!
//! Complex buffers are f32 buffers holding interleaved `(re, im)` pairs (the layout of
//! [`Complex32`](num_complex::Complex32) and cuComplex); upload host data with
//! `bytemuck::cast_slice`.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::{BufferLengths, Decay, Scan, ScanElement, elements_of};
use crate::backend::abi::{TF_SCAN_CHUNK, TF_SCAN_LANES, TF_SCAN_WARPS, TfScanParams};
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
    launch(cuda, scan, inputs, Some(h), h_last)
}

/// Enqueues the scan on `cuda`'s stream, writing only the final state `h_last` (for carrying
/// a rollout's state into the next call without storing every step).
pub fn scan_final<T: ScanElement, F: DevicePtr<f32>, R: DevicePtr<u8>>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R>,
    h_last: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    launch(cuda, scan, inputs, None::<&mut CudaSlice<f32>>, h_last)
}

fn launch<T: ScanElement, F: DevicePtr<f32>, R: DevicePtr<u8>>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R>,
    h: Option<&mut impl DevicePtrMut<f32>>,
    h_last: &mut impl DevicePtrMut<f32>,
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
    if let Some(h) = &h {
        cuda.check_device("h", *h)?;
    }
    cuda.check_device("h_last", h_last)?;

    let grid = Grid::new(scan)?;
    let mut workspace = grid.workspace::<T>(cuda, 0)?;
    enqueue(cuda, scan, &grid, inputs, h, h_last, &mut workspace)
}

/// Enqueues the forward kernel on buffers checked by the caller, with `workspace` (at least
/// the grid's words, flags zeroed).
fn enqueue<T: ScanElement, F: DevicePtr<f32>, R: DevicePtr<u8>>(
    cuda: &Cuda,
    scan: &Scan<T>,
    grid: &Grid,
    inputs: ScanInputs<'_, F, R>,
    mut h: Option<&mut impl DevicePtrMut<f32>>,
    h_last: &mut impl DevicePtrMut<f32>,
    workspace: &mut CudaSlice<u32>,
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
            h_last: args.write(h_last),
            workspace: args.write(workspace),
        },
    );
    // SAFETY: TfScanParams is the parameter struct of every scan kernel; its addresses come
    // from `args`. Lengths were checked against the shape (a: p or b·t·p elements; u, h:
    // b·t·p; reset: b·t bytes; h0, h_last: b·p; each element T::LANES f32s), and the strides
    // are the layout's own, so every index the kernel forms (b < batch, t < time, channel <
    // channels, all guarded) is inside its buffer. The workspace has the size abi.h asks for
    // the grid (Grid::workspace_words, or more) and its flags are zero (scratch, as
    // Grid::workspace makes it; the callers pass a fresh one). Grid::new keeps
    // the block count (= record count) under 2^31. The kernel writes h
    // only when h != 0, and h is absent exactly for the `_final` kernels.
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

    /// u32 words of the look-back workspace (layout in abi.h).
    fn workspace_words<T: ScanElement>(&self) -> usize {
        self.flag_words() + 3 * self.record_words::<T>()
    }

    /// u32 words of the workspace's flags (the kernel reads a record only after seeing the
    /// flag its writer set afterwards, so only these need zeroing).
    fn flag_words(&self) -> usize {
        self.records.next_multiple_of(4)
    }

    /// u32 words of one array of records: an element per record and lane.
    fn record_words<T: ScanElement>(&self) -> usize {
        self.records * TF_SCAN_LANES as usize * T::LANES
    }

    /// A fresh workspace of the grid's look-back and `extra` words after it, flags zeroed.
    fn workspace<T: ScanElement>(&self, cuda: &Cuda, extra: usize) -> Result<CudaSlice<u32>> {
        cuda.scratch(self.workspace_words::<T>() + extra, 0..self.flag_words())
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

pub use backward::{ScanCotangents, ScanGradients, scan_backward};
