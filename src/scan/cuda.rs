//! The scan on CUDA: one pass, decoupled look-back across time chunks (`cuda/scan.cu`).
//!
//! Complex buffers are f32 buffers holding interleaved `(re, im)` pairs (the layout of
//! [`Complex32`](num_complex::Complex32) and cuComplex); upload host data with
//! `bytemuck::cast_slice`. `u` and `h` may also be 16-bit ([`StateStorage`]: the type of
//! their buffers chooses), complex values as pairs of 16-bit values, with `a`, `h0`, `h_last`
//! and the arithmetic in f32. The kernels move a complex value as one pair, so a complex
//! buffer must start on one (a view at an even offset; an odd one is an error).
//!
//! ```no_run
//! # fn main() -> tilefuse::Result<()> {
//! use half::bf16;
//! use num_complex::Complex32;
//! use tilefuse::backend::cuda::Cuda;
//! use tilefuse::scan::{Decay, Layout, Scan, ScanShape, cuda::{ScanInputs, scan}};
//!
//! // u and h in bf16 (a complex value as two), a, h_last and the carry in f32.
//! let cuda = Cuda::new(0)?;
//! let problem = Scan::<Complex32>::new(ScanShape::new(8, 4096, 128)?, Layout::BatchMajor, Decay::TimeInvariant);
//! let a = cuda.upload(&vec![0.9f32; 2 * 128])?;
//! let u = cuda.upload(&vec![bf16::ONE; 2 * problem.states_len()])?;
//! let reset = cuda.upload(&vec![0u8; problem.reset_len()])?;
//! let mut h = cuda.upload(&vec![bf16::ZERO; 2 * problem.states_len()])?;
//! let mut h_last = cuda.upload(&vec![0.0f32; 2 * problem.final_len()])?;
//! let inputs = ScanInputs { a: &a, u: &u, reset: &reset, h0: None };
//! scan(&cuda, &problem, inputs, &mut h, &mut h_last)?;
//! # Ok(())
//! # }
//! ```

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::{BufferLengths, Decay, Scan, ScanElement, StateStorage, elements_of};
use crate::backend::abi::{
    TF_SCAN_CHUNK, TF_SCAN_HEADER_WORDS, TF_SCAN_LANES, TF_SCAN_WARPS, TfScanParams,
};
use crate::backend::cuda::{Cuda, Kernel, LaunchShape, ids};
use crate::error::{Error, Result};

/// The inputs of one scan on the device; `F` is an f32 buffer type (`CudaSlice<f32>`,
/// `CudaView<f32>`), `R` a u8 one, `U` a buffer of the [`StateStorage`] of `u` (f32 unless
/// said).
#[derive(Debug)]
pub struct ScanInputs<'a, F, R, U = F> {
    /// `a [p]` or, time-varying, laid out like `u`.
    pub a: &'a F,
    /// The inputs `u`.
    pub u: &'a U,
    /// The reset flags, u8, non-zero = reset.
    pub reset: &'a R,
    /// The state before the first step, `[b, p]`; `None` starts from zero.
    pub h0: Option<&'a F>,
}

impl<F, R, U> Clone for ScanInputs<'_, F, R, U> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F, R, U> Copy for ScanInputs<'_, F, R, U> {}

/// Enqueues the scan on `cuda`'s stream, writing every state to `h` and the final state to
/// `h_last`. `u` and `h` are stored as `S` (f32, or 16-bit with an f32 carry).
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
pub fn scan<T, S, F, R, U>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R, U>,
    h: &mut impl DevicePtrMut<S>,
    h_last: &mut impl DevicePtrMut<f32>,
) -> Result<()>
where
    T: ScanElement,
    S: StateStorage,
    F: DevicePtr<f32>,
    R: DevicePtr<u8>,
    U: DevicePtr<S>,
{
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
pub fn scan_final<T, S, F, R, U>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R, U>,
    h_last: &mut impl DevicePtrMut<f32>,
) -> Result<()>
where
    T: ScanElement,
    S: StateStorage,
    F: DevicePtr<f32>,
    R: DevicePtr<u8>,
    U: DevicePtr<S>,
{
    let no_states = None::<&mut CudaSlice<S>>;
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
/// `workspace`: no allocation and no memset once it has served a launch as large.
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
pub fn scan_with_workspace<T, S, F, R, U, G>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R, U>,
    h: Option<&mut G>,
    h_last: &mut impl DevicePtrMut<f32>,
    workspace: &mut ScanWorkspace,
) -> Result<()>
where
    T: ScanElement,
    S: StateStorage,
    F: DevicePtr<f32>,
    R: DevicePtr<u8>,
    U: DevicePtr<S>,
    G: DevicePtrMut<S>,
{
    check_forward(cuda, scan, inputs, h.as_deref(), h_last)?;
    let grid = Grid::new(scan)?;
    let region = workspace
        .forward
        .prepare(cuda, grid.records, FORWARD_ARRAYS)?;
    enqueue(cuda, scan, &grid, inputs, h, Some(h_last), region)
}

/// Device memory for the scan's look-back (and the backward pass's), kept from call to call:
/// [`scan_with_workspace`] and [`scan_backward_with_workspace`] then allocate nothing and
/// clear nothing, so a loop of them can be captured into a CUDA graph.
/// Each launch tags its look-back flags with a count the kernels keep on the device, so the
/// flags an earlier launch left never pass for this one's. It grows to the largest launch it
/// has served (clearing only then), and belongs to the device it was first used on (passing
/// it to another is an error).
///
/// Launches that share a workspace must run one after another: on one stream, or on several
/// with cudarc's event tracking on (its default), which orders them. Launches captured into a
/// CUDA graph keep the memory the workspace had at capture: [`reserve`](Self::reserve) it for
/// their shapes before capture, keep it alive, and don't let a larger launch grow it, while
/// the graph may run.
#[derive(Debug, Default)]
pub struct ScanWorkspace {
    /// The forward's look-back (also the backward's recomputing pass).
    forward: Region,
    /// The backward's look-back and the partials of a time-invariant da.
    backward: Region,
    /// The da kernel's counters, zero between launches.
    counters: Option<CudaSlice<u32>>,
}

impl ScanWorkspace {
    /// An empty workspace; the first launch allocates it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        let words = |w: &Option<CudaSlice<u32>>| w.as_ref().map_or(0, |w| w.len());
        4 * (words(&self.forward.words) + words(&self.backward.words) + words(&self.counters))
    }

    /// Grows the workspace to what a forward scan of `scan` needs on `cuda`.
    pub fn reserve<T: ScanElement>(&mut self, cuda: &Cuda, scan: &Scan<T>) -> Result<()> {
        let grid = Grid::new(scan)?;
        self.forward
            .prepare(cuda, grid.records, FORWARD_ARRAYS)
            .map(|_| ())
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
        if recompute {
            self.forward.prepare(cuda, grid.records, FORWARD_ARRAYS)?;
        }
        self.backward.prepare(cuda, grid.records, BACKWARD_ARRAYS)?;
        self.counters(cuda, grid.groups as usize).map(|_| ())
    }

    /// At least `groups` zero counters (zeroed when allocated; the da kernel leaves them so).
    fn counters(&mut self, cuda: &Cuda, groups: usize) -> Result<&mut CudaSlice<u32>> {
        if let Some(counters) = &self.counters {
            cuda.check_device("workspace", counters)?;
        }
        if self.counters.as_ref().is_none_or(|c| c.len() < groups) {
            self.counters = Some(cuda.scratch(groups, 0..groups)?);
        }
        Ok(self.counters.as_mut().expect("allocated above"))
    }
}

/// The forward's record arrays (abi.h), and the backward's (one more: da's partials).
const FORWARD_ARRAYS: usize = 3;
const BACKWARD_ARRAYS: usize = 4;

/// One look-back region of a workspace (abi.h), laid out for `capacity` records: arrays of
/// complex elements, which hold as many f32 ones.
#[derive(Debug, Default)]
pub(super) struct Region {
    words: Option<CudaSlice<u32>>,
    capacity: usize,
}

/// A region's memory and the capacity it is laid out for, for one launch.
pub(super) struct RegionRef<'a> {
    pub(super) words: &'a mut CudaSlice<u32>,
    pub(super) capacity: usize,
}

impl Region {
    /// u32 words of a region for `capacity` records and `arrays` record arrays.
    pub(super) fn words(capacity: usize, arrays: usize) -> usize {
        Self::flag_words(capacity) + arrays * Self::array_words(capacity, 2)
    }

    /// u32 words of the header and flags of a region for `capacity` records.
    pub(super) fn flag_words(capacity: usize) -> usize {
        TF_SCAN_HEADER_WORDS as usize + capacity.next_multiple_of(4)
    }

    /// u32 words of one record array of `lanes`-word elements.
    pub(super) fn array_words(capacity: usize, lanes: usize) -> usize {
        capacity * TF_SCAN_LANES as usize * lanes
    }

    /// The region for a launch of `records` records: grown (and cleared) when too small.
    fn prepare(&mut self, cuda: &Cuda, records: usize, arrays: usize) -> Result<RegionRef<'_>> {
        if let Some(words) = &self.words {
            cuda.check_device("workspace", words)?;
        }
        let needed = Self::words(records.max(self.capacity), arrays);
        if records > self.capacity || self.words.as_ref().is_none_or(|w| w.len() < needed) {
            self.capacity = records.max(self.capacity);
            self.words = Some(cuda.scratch(needed, 0..Self::flag_words(self.capacity))?);
        }
        Ok(RegionRef {
            words: self.words.as_mut().expect("allocated above"),
            capacity: self.capacity,
        })
    }
}

/// An error unless the forward's buffers have the lengths `scan` gives them and are on
/// `cuda`'s device.
fn check_forward<T: ScanElement, S: StateStorage, F: DevicePtr<f32>, R: DevicePtr<u8>>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R, impl DevicePtr<S>>,
    h: Option<&impl DevicePtrMut<S>>,
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

/// Enqueues the forward kernel on buffers checked by the caller, with its look-back in
/// `region` (prepared for at least the grid's records).
fn enqueue<T: ScanElement, S: StateStorage, F: DevicePtr<f32>, R: DevicePtr<u8>>(
    cuda: &Cuda,
    scan: &Scan<T>,
    grid: &Grid,
    inputs: ScanInputs<'_, F, R, impl DevicePtr<S>>,
    mut h: Option<&mut impl DevicePtrMut<S>>,
    h_last: Option<&mut impl DevicePtrMut<f32>>,
    region: RegionRef<'_>,
) -> Result<()> {
    let kernel = kernel::<T, S>(scan.decay, h.is_some());
    let shape = grid.shape_on(cuda, kernel, forward_staging::<T, S>(scan.decay))?;
    let mut args = cuda.args();
    let addresses = Addresses {
        a: args.read(inputs.a),
        u: args.read(inputs.u),
        reset: args.read(inputs.reset),
        h0: inputs.h0.map_or(0, |h0| args.read(h0)),
        h: h.as_mut().map_or(0, |h| args.write(*h)),
        h_last: h_last.map_or(0, |h_last| args.write(h_last)),
        workspace: args.write(region.words),
    };
    let a = &addresses;
    check_pairs::<T, S>(
        &[("a", a.a), ("h0", a.h0), ("h_last", a.h_last)],
        &[("u", a.u), ("h", a.h)],
    )?;
    let params = grid.params(scan, addresses, region.capacity);
    // SAFETY: TfScanParams is the parameter struct of every scan kernel; its addresses come
    // from `args`. Lengths were checked against the shape (a: p or b·t·p elements; u, h:
    // b·t·p; reset: b·t bytes; h0, h_last: b·p; each element T::LANES values, f32 or, for u
    // and h, of S as the kernel's name says), and the strides
    // are the layout's own, so every index the kernel forms (b < batch, t < time, channel <
    // channels, all guarded) is inside its buffer. The region is laid out for its capacity,
    // at least the grid's records (Region::prepare), with the words abi.h asks for it, and
    // its header and flags are as abi.h allows: zeroed when allocated, else as the launches
    // of this region left them, one after another (ScanWorkspace asks this of its callers).
    // Grid::new keeps the record count under 2^31, so the tickets the blocks take (at most
    // records + blocks) stay below 2^32; the launch has the staging bytes abi.h asks for this
    // kernel (forward_staging). The kernel writes h only
    // when h != 0, and h is absent exactly for the `_final` kernels; h_last only when given.
    unsafe { cuda.launch(kernel, shape, &params, args) }
}

/// An error unless every buffer starts on an element: complex values move as pairs (8 bytes
/// of f32, 4 of 16-bit storage), so a view that starts inside a pair would make the kernels'
/// accesses misaligned (a fault that ends the context). Real elements are aligned by their
/// type. `f32s` are addresses of f32 buffers, `stored` of buffers of `S` (0: absent).
pub(super) fn check_pairs<T: ScanElement, S: StateStorage>(
    f32s: &[(&'static str, u64)],
    stored: &[(&'static str, u64)],
) -> Result<()> {
    let pair = |bytes: usize| (T::LANES * bytes) as u64;
    for (buffers, bytes) in [(f32s, pair(4)), (stored, pair(size_of::<S>()))] {
        if let Some(&(what, address)) = buffers.iter().find(|(_, a)| a % bytes != 0) {
            return Err(Error::invalid(
                what,
                format!("a buffer that starts on a {bytes}-byte element"),
                format!("address {address:#x}"),
            ));
        }
    }
    Ok(())
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

/// The launch's work: a record (a chunk of the look-back) per (time chunk, batch row, group of
/// 32 channels), handed out chunk-major by tickets to persistent blocks.
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

    /// The kernel's parameters for `scan` with these buffers, the workspace's region laid out
    /// for `capacity` records.
    fn params<T: ScanElement>(
        &self,
        scan: &Scan<T>,
        buffers: Addresses,
        capacity: usize,
    ) -> TfScanParams {
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
            capacity: capacity as u32,
        }
    }

    /// abi.h's grid: persistent blocks, `wave` of them (those the device holds at once) or
    /// one per record where there are fewer, each with `staging` bytes of dynamic shared
    /// memory.
    fn shape(&self, wave: usize, staging: u32) -> LaunchShape {
        LaunchShape {
            shared_bytes: staging,
            ..LaunchShape::linear(self.records.min(wave.max(1)) as u32, TF_SCAN_WARPS * 32)
        }
    }

    /// [`Grid::shape`] for `kernel` on `cuda`'s device.
    fn shape_on(&self, cuda: &Cuda, kernel: Kernel, staging: u32) -> Result<LaunchShape> {
        let wave = cuda.device_wave(kernel, TF_SCAN_WARPS * 32, staging)?;
        Ok(self.shape(wave, staging))
    }
}

/// Bytes of the forward kernel's staging area (abi.h): `u` as stored, and a time-varying `a`,
/// for one chunk; none where `u`'s elements are 16-bit reals (they are loaded directly).
fn forward_staging<T: ScanElement, S: StateStorage>(decay: Decay) -> u32 {
    let values = TF_SCAN_CHUNK * TF_SCAN_LANES * T::LANES as u32;
    let stored = values * size_of::<S>() as u32;
    if stored / (TF_SCAN_CHUNK * TF_SCAN_LANES) < 4 {
        return 0;
    }
    match decay {
        Decay::TimeInvariant => stored,
        Decay::TimeVarying => stored + values * 4,
    }
}

fn kernel<T: ScanElement, S: StateStorage>(decay: Decay, states: bool) -> Kernel {
    let element = usize::from(T::LANES == 2);
    let varying = usize::from(decay == Decay::TimeVarying);
    ids::scan::SCAN[element][S::STORAGE as usize][varying][usize::from(!states)]
}

mod backward;
#[cfg(test)]
mod emulated;

pub use backward::{ScanCotangents, ScanGradients, scan_backward, scan_backward_with_workspace};
