//! The scan's backward pass on CUDA (`cuda/scan_backward.cu`): one pass over time in reverse
//! with the forward's decoupled look-back, and for a time-invariant `a` a fixed-order sum.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::{
    BACKWARD_ARRAYS, FORWARD_ARRAYS, Grid, Region, ScanInputs, ScanWorkspace, check_pairs, enqueue,
};
use crate::backend::abi::{TF_SCAN_WARPS, TfScanBackwardParams};
use crate::backend::cuda::{Cuda, Kernel, LaunchShape, ids};
use crate::error::{Error, Result};
use crate::scan::{BufferLengths, Decay, Scan, ScanElement, StateStorage, elements_of};

/// The cotangents a backward pass starts from (complex interleaved): `dh` stored as `u` is,
/// `dh_last` in f32.
#[derive(Debug)]
pub struct ScanCotangents<'a, F, D = F> {
    /// Of every state, laid out like `u` (zeros allowed).
    pub dh: &'a D,
    /// Of the final state, `[b, p]`, when the loss depends on it.
    pub dh_last: Option<&'a F>,
}

/// Where a backward pass writes the cotangents of the scan's inputs: `du` stored as `u` is,
/// `da` and `dh0` in f32.
#[derive(Debug)]
pub struct ScanGradients<'a, G, D = G> {
    /// Of `u`, laid out like `u`.
    pub du: &'a mut D,
    /// Of `a`, laid out like `a` (`[p]` for a time-invariant `a`: summed over b and t).
    pub da: &'a mut G,
    /// Of `h0`, `[b, p]`, when wanted; written only when the scan has an `h0`.
    pub dh0: Option<&'a mut G>,
}

/// Enqueues the scan's backward pass on `cuda`'s stream (the [`scan`](crate::scan) module
/// states it): `du`, `da` and, when asked, `dh0` from the cotangents `dh` and `dh_last`.
/// `h` is the forward's every state when the caller kept it; without it each chunk
/// recomputes its states from `u`, after a forward pass that keeps only the chunks' end
/// states (for a final-state-only forward). With f32 storage results are bitwise the same
/// either way (16-bit states are the forward's rounded f32 carries, which a recomputation
/// uses unrounded), and from run to run: the time-invariant `da` is a sum in a fixed order.
/// `u`, `h`, `dh` and `du` are stored as `S`.
///
/// ```no_run
/// # fn main() -> tilefuse::Result<()> {
/// use tilefuse::backend::cuda::Cuda;
/// use tilefuse::scan::{Decay, Layout, Scan, ScanShape};
/// use tilefuse::scan::cuda::{ScanCotangents, ScanGradients, ScanInputs, scan_backward};
///
/// let cuda = Cuda::new(0)?;
/// let problem = Scan::<f32>::new(ScanShape::new(8, 4096, 64)?, Layout::BatchMajor, Decay::TimeInvariant);
/// let a = cuda.upload(&vec![0.9f32; 64])?;
/// let u = cuda.upload(&vec![1.0f32; problem.states_len()])?;
/// let reset = cuda.upload(&vec![0u8; problem.reset_len()])?;
/// let dh = cuda.upload(&vec![1.0f32; problem.states_len()])?;
/// let (mut du, mut da) = (cuda.upload(&vec![0.0f32; problem.states_len()])?, cuda.upload(&vec![0.0f32; 64])?);
/// let inputs = ScanInputs { a: &a, u: &u, reset: &reset, h0: None };
/// let cotangents = ScanCotangents { dh: &dh, dh_last: None };
/// let gradients = ScanGradients { du: &mut du, da: &mut da, dh0: None };
/// scan_backward(&cuda, &problem, inputs, None, cotangents, gradients)?; // h recomputed
/// # Ok(())
/// # }
/// ```
pub fn scan_backward<T, S, F, R, U, G, D>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R, U>,
    h: Option<&U>,
    cotangents: ScanCotangents<'_, F, U>,
    gradients: ScanGradients<'_, G, D>,
) -> Result<()>
where
    T: ScanElement,
    S: StateStorage,
    F: DevicePtr<f32>,
    R: DevicePtr<u8>,
    U: DevicePtr<S>,
    G: DevicePtrMut<f32>,
    D: DevicePtrMut<S>,
{
    let mut workspace = ScanWorkspace::new();
    scan_backward_with_workspace(cuda, scan, inputs, h, cotangents, gradients, &mut workspace)
}

/// [`scan_backward`] with its memory taken from `workspace` (see [`ScanWorkspace`]).
pub fn scan_backward_with_workspace<T, S, F, R, U, G, D>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R, U>,
    h: Option<&U>,
    cotangents: ScanCotangents<'_, F, U>,
    gradients: ScanGradients<'_, G, D>,
    workspace: &mut ScanWorkspace,
) -> Result<()>
where
    T: ScanElement,
    S: StateStorage,
    F: DevicePtr<f32>,
    R: DevicePtr<u8>,
    U: DevicePtr<S>,
    G: DevicePtrMut<f32>,
    D: DevicePtrMut<S>,
{
    check(cuda, scan, inputs, h, &cotangents, &gradients)?;
    let grid = Grid::new(scan)?;
    let recompute = h.is_none();
    let mut checkpoints = None;
    if recompute {
        // A forward pass leaves every chunk's end state in the forward's region.
        let region = workspace
            .forward
            .prepare(cuda, grid.records, FORWARD_ARRAYS)?;
        let capacity = region.capacity;
        let no_states = None::<&mut CudaSlice<S>>;
        let no_last = None::<&mut CudaSlice<f32>>;
        enqueue(cuda, scan, &grid, inputs, no_states, no_last, region)?;
        // Its state array: after the header, the flags and two record arrays (abi.h).
        let offset = Region::flag_words(capacity) + 2 * Region::array_words(capacity, T::LANES);
        checkpoints = Some(offset);
    }
    workspace.counters(cuda, grid.groups as usize)?;
    let ScanWorkspace {
        forward,
        backward,
        counters,
    } = workspace;
    let counters = counters.as_mut().expect("allocated above");
    let region = backward.prepare(cuda, grid.records, BACKWARD_ARRAYS)?;
    let capacity = region.capacity;
    let invariant = scan.decay == Decay::TimeInvariant;
    let ScanGradients { du, da, dh0 } = gradients;
    let mut args = cuda.args();
    let checkpoints = match (checkpoints, forward.words.as_ref()) {
        (Some(offset), Some(words)) => args.read(words) + 4 * offset as u64,
        _ => 0,
    };
    let addresses = [
        args.read(inputs.a),
        args.read(inputs.u),
        args.read(inputs.reset),
        inputs.h0.map_or(0, |h0| args.read(h0)),
        h.map_or(0, |h| args.read(h)),
        checkpoints,
        args.read(cotangents.dh),
        cotangents.dh_last.map_or(0, |d| args.read(d)),
        args.write(du),
        args.write(da),
        // The cotangent of an h0 the scan was not given is not asked for.
        dh0.filter(|_| inputs.h0.is_some())
            .map_or(0, |d| args.write(d)),
        args.write(region.words),
        args.write(counters),
    ];
    let [a, u, _, h0, h_at, _, dh, dh_last, du_at, da_at, dh0_at, ..] = addresses;
    check_pairs::<T, S>(
        &[
            ("a", a),
            ("h0", h0),
            ("dh_last", dh_last),
            ("da", da_at),
            ("dh0", dh0_at),
        ],
        &[("u", u), ("h", h_at), ("dh", dh), ("du", du_at)],
    )?;
    let params = params(scan, &grid, capacity, addresses);
    let kernel = kernel::<T, S>(scan.decay, recompute);
    let shape = grid.shape_on(cuda, kernel, 0)?;
    // SAFETY: TfScanBackwardParams is the parameter struct of every scan_backward kernel; its
    // addresses come from `args`. `check` matched every length to the shape (a and da: p or
    // b·t·p elements; u, h, dh, du: b·t·p; reset: b·t bytes; h0, dh_last, dh0: b·p; each
    // element T::LANES values, f32 or, for u, h, dh and du, of S as the kernel's name says)
    // and the strides are the layout's own, so every index the kernel
    // forms (b < batch, t < time, channel < channels, all guarded) is inside its buffer. The
    // "_states" kernel reads h (present), the "_recompute" one `checkpoints`: the state array
    // of the forward's region, enqueued above on the same grid, whose every record the
    // forward writes. The backward's region is laid out for its capacity, at least the grid's
    // records, with four record arrays (Region::prepare), its header and flags zeroed when
    // allocated or as launches of this region left them; the counters are zero (zeroed when
    // allocated; the da kernel leaves them so). Grid::new keeps the record count under 2^31,
    // so the tickets the blocks take (at most records + blocks) stay below 2^32.
    unsafe { cuda.launch(kernel, shape, &params, args) }?;
    if !invariant {
        return Ok(());
    }
    let mut args = cuda.args();
    let region = backward.words.as_mut().expect("prepared above");
    let params = params_for_da(
        &params,
        [args.write(da), args.write(region), args.write(counters)],
    );
    let shape = LaunchShape::linear(grid.groups * scan.shape.batch() as u32, TF_SCAN_WARPS * 32);
    // SAFETY: the da kernel takes the backward launch's parameters: it reads the partials of
    // every record from the backward's region (written by that launch, enqueued before on
    // this stream), leaves each row's sum in the region's first record array, writes da [p]
    // (checked) and the counters, `groups` words that are zero. The addresses of du, dh0 and
    // the inputs in `params` are not used by it.
    unsafe { cuda.launch(da_kernel::<T>(), shape, &params, args) }
}

/// An error unless every buffer has the length `scan` gives it and is on `cuda`'s device.
fn check<T, S, F, R, U, G, D>(
    cuda: &Cuda,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, F, R, U>,
    h: Option<&U>,
    cotangents: &ScanCotangents<'_, F, U>,
    gradients: &ScanGradients<'_, G, D>,
) -> Result<()>
where
    T: ScanElement,
    S: StateStorage,
    F: DevicePtr<f32>,
    R: DevicePtr<u8>,
    U: DevicePtr<S>,
    G: DevicePtrMut<f32>,
    D: DevicePtrMut<S>,
{
    let len = |what, floats: usize| elements_of::<T>(what, floats);
    scan.check_lengths(BufferLengths {
        a: len("a", inputs.a.len())?,
        u: len("u", inputs.u.len())?,
        reset: inputs.reset.len(),
        h0: inputs.h0.map(|h0| len("h0", h0.len())).transpose()?,
        h: h.map(|h| len("h", h.len())).transpose()?,
        h_last: scan.final_len(),
    })?;
    let expected = [
        ("dh", scan.states_len(), Some(cotangents.dh.len())),
        (
            "dh_last",
            scan.final_len(),
            cotangents.dh_last.map(|d| d.len()),
        ),
        ("du", scan.states_len(), Some(gradients.du.len())),
        ("da", scan.a_len(), Some(gradients.da.len())),
        (
            "dh0",
            scan.final_len(),
            gradients.dh0.as_ref().map(|d| d.len()),
        ),
    ];
    for (what, expected, floats) in expected {
        if let Some(floats) = floats {
            let got = len(what, floats)?;
            if got != expected {
                return Err(Error::Length {
                    what,
                    expected,
                    got,
                });
            }
        }
    }
    cuda.check_device("a", inputs.a)?;
    cuda.check_device("u", inputs.u)?;
    cuda.check_device("reset", inputs.reset)?;
    if let Some(h0) = inputs.h0 {
        cuda.check_device("h0", h0)?;
    }
    if let Some(h) = h {
        cuda.check_device("h", h)?;
    }
    cuda.check_device("dh", cotangents.dh)?;
    if let Some(dh_last) = cotangents.dh_last {
        cuda.check_device("dh_last", dh_last)?;
    }
    cuda.check_device("du", gradients.du)?;
    cuda.check_device("da", gradients.da)?;
    if let Some(dh0) = &gradients.dh0 {
        cuda.check_device("dh0", *dh0)?;
    }
    Ok(())
}

/// The backward kernels' parameters for `scan` on `grid`, the workspace's region laid out for
/// `capacity` records, with the buffers a, u, reset, h0, h, checkpoints, dh, dh_last, du, da,
/// dh0, workspace and counters (0: absent).
pub(super) fn params<T: ScanElement>(
    scan: &Scan<T>,
    grid: &Grid,
    capacity: usize,
    [
        a,
        u,
        reset,
        h0,
        h,
        checkpoints,
        dh,
        dh_last,
        du,
        da,
        dh0,
        workspace,
        counters,
    ]: [u64; 13],
) -> TfScanBackwardParams {
    let (stride_batch, stride_time) = scan.strides();
    let (reset_stride_batch, reset_stride_time) = scan.reset_strides();
    TfScanBackwardParams {
        a,
        u,
        reset,
        h0,
        h,
        checkpoints,
        dh,
        dh_last,
        du,
        da,
        dh0,
        workspace,
        counters,
        stride_batch: stride_batch as u64,
        stride_time: stride_time as u64,
        reset_stride_batch: reset_stride_batch as u64,
        reset_stride_time: reset_stride_time as u64,
        batch: scan.shape.batch() as u32,
        time: scan.shape.time() as u32,
        channels: scan.shape.channels() as u32,
        chunks: grid.chunks,
        groups: grid.groups,
        capacity: capacity as u32,
    }
}

/// The da kernel's parameters: the backward launch's, with da, the workspace and the counters
/// at the addresses of the da launch's own arguments.
pub(super) fn params_for_da(
    backward: &TfScanBackwardParams,
    [da, workspace, counters]: [u64; 3],
) -> TfScanBackwardParams {
    TfScanBackwardParams {
        da,
        workspace,
        counters,
        ..*backward
    }
}

/// The backward kernel for `T`, the decay, and whether it recomputes the states.
pub(super) fn kernel<T: ScanElement, S: StateStorage>(decay: Decay, recompute: bool) -> Kernel {
    let element = usize::from(T::LANES == 2);
    let varying = usize::from(decay == Decay::TimeVarying);
    ids::scan_backward::SCAN_BACKWARD[element][S::STORAGE as usize][varying][usize::from(recompute)]
}

/// The kernel that adds up a time-invariant da.
pub(super) fn da_kernel<T: ScanElement>() -> Kernel {
    ids::scan_backward::DA[usize::from(T::LANES == 2)]
}

#[cfg(test)]
mod emulated;
