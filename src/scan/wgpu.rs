//! The scan through WGSL (`wgsl/scan.wgsl`): chunk maps, a carry pass over the chunks, and
//! a pass that writes every state (skipped in final-state-only mode).

use num_complex::Complex32;

use super::{BufferLengths, Decay, Scan, ScanElement, StateStorage, Storage, elements_of};
use crate::backend::abi::{TF_SCAN_CHUNK, TF_SCAN_LANES};
use crate::backend::wgpu::{Binding, Bindings, GpuBuffer, Shader, Wgpu, wgsl_uniform};
use crate::error::{Error, Result};

const SHADER: Shader = Shader {
    name: "scan.wgsl",
    source: include_str!("../../wgsl/scan.wgsl"),
};

const CONVERT: Shader = Shader {
    name: "scan_convert.wgsl",
    source: include_str!("../../wgsl/scan_convert.wgsl"),
};

/// What the states of a scan of `T` (`u` and `h`, the backward's `dh` and `du`) may be stored
/// as through WGSL: `f32` values (complex ones interleaved), `T` itself, or 16-bit values
/// ([`struct@half::f16`], [`half::bf16`]; complex ones as pairs), which the passes widen to
/// f32 copies first and round back last (the carry and every operation stay f32).
pub trait StatesOf<T: ScanElement>: bytemuck::Pod {
    /// How the values are stored.
    const STORAGE: Storage;
    /// Values of this type per element of `T`.
    const PER_ELEMENT: usize;
}

impl<T: ScanElement, S: StateStorage> StatesOf<T> for S {
    const STORAGE: Storage = S::STORAGE;
    const PER_ELEMENT: usize = T::LANES;
}

impl StatesOf<Complex32> for Complex32 {
    const STORAGE: Storage = Storage::F32;
    const PER_ELEMENT: usize = 1;
}

/// The elements of `T` that a buffer of states holds, or why it holds no whole number.
fn states_len<T: ScanElement, U: StatesOf<T>>(
    what: &'static str,
    buffer: &GpuBuffer<U>,
) -> Result<usize> {
    match U::PER_ELEMENT {
        1 => Ok(buffer.len()),
        _ => elements_of::<T>(what, buffer.len()),
    }
}

/// The inputs of one scan on a wgpu device; `u` is stored as `U` ([`StatesOf`]).
#[derive(Debug)]
pub struct ScanInputs<'a, T, U = T> {
    /// `a [p]` or, time-varying, laid out like `u`.
    pub a: &'a GpuBuffer<T>,
    /// The inputs `u`.
    pub u: &'a GpuBuffer<U>,
    /// The reset flags, u8, non-zero = reset.
    pub reset: &'a GpuBuffer<u8>,
    /// The state before the first step, `[b, p]`; `None` starts from zero.
    pub h0: Option<&'a GpuBuffer<T>>,
}

impl<T, U> Clone for ScanInputs<'_, T, U> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T, U> Copy for ScanInputs<'_, T, U> {}

impl<'a, T, U> ScanInputs<'a, T, U> {
    /// The device buffers, untyped.
    fn raw(&self) -> RawInputs<'a> {
        RawInputs {
            a: self.a.raw(),
            u: self.u.raw(),
            reset: self.reset.raw(),
            h0: self.h0.map(GpuBuffer::raw),
        }
    }
}

/// A scan's input buffers once their lengths are checked.
#[derive(Clone, Copy)]
struct RawInputs<'a> {
    a: &'a wgpu::Buffer,
    u: &'a wgpu::Buffer,
    reset: &'a wgpu::Buffer,
    h0: Option<&'a wgpu::Buffer>,
}

wgsl_uniform! {
    struct Params {
        batch: u32,
        time: u32,
        channels: u32,
        chunks: u32,
        groups: u32,
        stride_batch: u32,
        stride_time: u32,
        reset_stride_batch: u32,
        reset_stride_time: u32,
        has_h0: u32,
        chunk_first: u32,
        chunk_count: u32,
    }
}

wgsl_uniform! {
    struct ConvertParams {
        count: u32,
        row_words: u32,
    }
}

/// Submits the scan, writing every state to `h` and the final state to `h_last`; `u` and
/// `h` are stored as `U` ([`StatesOf`]).
pub fn scan<T: ScanElement, U: StatesOf<T>>(
    gpu: &Wgpu,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, T, U>,
    h: &mut GpuBuffer<U>,
    h_last: &mut GpuBuffer<T>,
) -> Result<()> {
    scan_with_workspace(
        gpu,
        scan,
        inputs,
        Some(h),
        h_last,
        &mut ScanWorkspace::new(),
    )
}

/// Which recurrence the passes of scan.wgsl run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The scan.
    Forward,
    /// The backward pass's recurrence of g (REVERSED), from the last step to the first.
    Backward,
}

/// Submits the scan, writing only the final state `h_last`.
pub fn scan_final<T: ScanElement, U: StatesOf<T>>(
    gpu: &Wgpu,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, T, U>,
    h_last: &mut GpuBuffer<T>,
) -> Result<()> {
    let no_states = None::<&mut GpuBuffer<U>>;
    scan_with_workspace(
        gpu,
        scan,
        inputs,
        no_states,
        h_last,
        &mut ScanWorkspace::new(),
    )
}

/// [`scan`] (with `h`) or [`scan_final`] (without), with its scratch memory taken from
/// `workspace`: no allocation once it has served a call as large.
pub fn scan_with_workspace<T: ScanElement, U: StatesOf<T>>(
    gpu: &Wgpu,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, T, U>,
    h: Option<&mut GpuBuffer<U>>,
    h_last: &mut GpuBuffer<T>,
    workspace: &mut ScanWorkspace,
) -> Result<()> {
    check(gpu, scan, inputs, h.as_deref(), h_last)?;
    let raw = inputs.raw();
    let mut needs = pass_needs(scan)?.to_vec();
    let stored = U::STORAGE != Storage::F32;
    let wide_bytes = 4 * scan.states_len() * T::LANES;
    if stored {
        needs.push((Role::WideU, wide_bytes));
        if h.is_some() {
            needs.push((Role::WideH, wide_bytes));
        }
    }
    workspace.prepare(gpu, &needs)?;
    let ws = &*workspace;
    if !stored {
        let h = h.map(|h| h.raw());
        return passes(gpu, scan, raw, h, h_last.raw(), Direction::Forward, ws);
    }
    let u = ws.buffer(Role::WideU);
    widen_into::<T>(gpu, U::STORAGE, inputs.u.raw(), u, scan.states_len())?;
    let wide = RawInputs { u, ..raw };
    let states = h.is_some().then(|| ws.buffer(Role::WideH));
    passes(
        gpu,
        scan,
        wide,
        states,
        h_last.raw(),
        Direction::Forward,
        ws,
    )?;
    match (h, states) {
        (Some(h), Some(wide_h)) => {
            narrow_into::<T>(gpu, U::STORAGE, wide_h, h.raw(), scan.states_len())
        }
        _ => Ok(()),
    }
}

/// What scan.wgsl's passes use of a workspace for `scan`: the chunk maps and end states.
fn pass_needs<T: ScanElement>(scan: &Scan<T>) -> Result<[(Role, usize); 4]> {
    let params = params(scan, false)?;
    let records = (params.batch * params.groups * params.chunks) as usize;
    let slots = 8 * records * TF_SCAN_LANES as usize; // vec2<f32> each
    Ok([
        (Role::MapA, slots),
        (Role::MapB, slots),
        (Role::MapReset, 4 * records),
        (Role::Ends, slots),
    ])
}

/// `elements` elements of `T` stored as 16-bit `storage` values in `packed`, widened into the
/// f32 buffer `wide`.
fn widen_into<T: ScanElement>(
    gpu: &Wgpu,
    storage: Storage,
    packed: &wgpu::Buffer,
    wide: &wgpu::Buffer,
    elements: usize,
) -> Result<()> {
    convert(gpu, storage, "widen", packed, wide, elements * T::LANES)
}

/// `elements` elements of `T` in the f32 buffer `wide`, rounded into `packed` as 16-bit
/// `storage` values.
fn narrow_into<T: ScanElement>(
    gpu: &Wgpu,
    storage: Storage,
    wide: &wgpu::Buffer,
    packed: &wgpu::Buffer,
    elements: usize,
) -> Result<()> {
    convert(
        gpu,
        storage,
        "narrow_states",
        packed,
        wide,
        elements * T::LANES,
    )
}

/// One entry of scan_convert.wgsl over `count` 16-bit values: a word of `packed` per
/// invocation, in rows of at most the grid's limit of workgroups.
fn convert(
    gpu: &Wgpu,
    storage: Storage,
    entry: &'static str,
    packed: &wgpu::Buffer,
    wide: &wgpu::Buffer,
    count: usize,
) -> Result<()> {
    const WORKGROUP: usize = 256;
    let words = count.div_ceil(2);
    let workgroups = words.div_ceil(WORKGROUP);
    let grid_limit = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let columns = workgroups.clamp(1, grid_limit.max(1));
    let rows = workgroups.div_ceil(columns);
    if count > u32::MAX as usize || rows > grid_limit {
        return Err(Error::DeviceLimit {
            what: "wgsl scan states",
            limit_name: "32-bit indices of 16-bit values",
            needed: count as u64,
            limit: u32::MAX.into(),
        });
    }
    let constants = [("BF16", if storage == Storage::Bf16 { 1.0 } else { 0.0 })];
    let pipeline = gpu.pipeline(CONVERT, entry, &constants)?;
    let params = ConvertParams {
        count: count as u32,
        row_words: (columns * WORKGROUP) as u32,
    };
    let buffers = Bindings::new(gpu, CONVERT)
        .windowed([1, 3, 4, 5], packed, true)?
        .windowed([2, 6, 7, 8], wide, true)?;
    let grid = [columns as u32, rows as u32, 1];
    gpu.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), buffers.list(), grid)
}

/// An error unless the buffers have the lengths `scan` gives them and belong to `gpu`.
fn check<T: ScanElement, U: StatesOf<T>>(
    gpu: &Wgpu,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, T, U>,
    h: Option<&GpuBuffer<U>>,
    h_last: &GpuBuffer<T>,
) -> Result<()> {
    scan.check_lengths(BufferLengths {
        a: inputs.a.len(),
        u: states_len::<T, U>("u", inputs.u)?,
        reset: inputs.reset.len(),
        h0: inputs.h0.map(GpuBuffer::len),
        h: h.map(|h| states_len::<T, U>("h", h)).transpose()?,
        h_last: h_last.len(),
    })?;
    gpu.check_buffer("a", inputs.a)?;
    gpu.check_buffer("u", inputs.u)?;
    gpu.check_buffer("reset", inputs.reset)?;
    if let Some(h0) = inputs.h0 {
        gpu.check_buffer("h0", h0)?;
    }
    if let Some(h) = h {
        gpu.check_buffer("h", h)?;
    }
    gpu.check_buffer("h_last", h_last)
}

/// Submits scan.wgsl's passes on checked buffers: the scan, or (Backward, with `u` the
/// cotangents dh, `h0` dh_last and `h` du) the recurrence of g. `u` and `h` hold f32s; the
/// chunk maps live in `workspace`, prepared with [`pass_needs`].
fn passes<'a, T: ScanElement>(
    gpu: &'a Wgpu,
    scan: &Scan<T>,
    inputs: RawInputs<'a>,
    h: Option<&'a wgpu::Buffer>,
    h_last: &'a wgpu::Buffer,
    direction: Direction,
    workspace: &'a ScanWorkspace,
) -> Result<()> {
    let params = params(scan, inputs.h0.is_some())?;
    let map_a = workspace.buffer(Role::MapA);
    let map_b = workspace.buffer(Role::MapB);
    let map_reset = workspace.buffer(Role::MapReset);
    let ends = workspace.buffer(Role::Ends);
    // A bound buffer that is never read stands in for an absent h0.
    let h0 = match inputs.h0 {
        Some(h0) => h0,
        None => &gpu.placeholders()?[0],
    };

    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    let constants = [
        ("COMPLEX", flag(T::LANES == 2)),
        ("VARYING", flag(scan.decay == Decay::TimeVarying)),
        ("REVERSED", flag(direction == Direction::Backward)),
    ];
    // a, u, reset (and h) may span several bindings (wgsl/scan.wgsl).
    let read = || -> Result<Bindings> {
        Bindings::new(gpu, SHADER)
            .windowed([1, 11, 12, 13], inputs.a, false)?
            .windowed([2, 14, 15, 16], inputs.u, false)?
            .windowed([3, 17, 18, 19], inputs.reset, false)
    };
    let maps =
        |bindings: Bindings<'a>| bindings.whole(4, map_a).whole(5, map_b).whole(6, map_reset);
    // One workgroup per chunk, at most the grid's limit of chunks per dispatch.
    let chunks = params.chunks as usize;
    let grid_limit = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let per_chunk_dispatches = |entry: &'static str, buffers: &[Binding]| -> Result<()> {
        let pipeline = gpu.pipeline(SHADER, entry, &constants)?;
        for first in (0..chunks).step_by(grid_limit.max(1)) {
            let params = Params {
                chunk_first: first as u32,
                ..params
            };
            let grid = [
                (chunks - first).min(grid_limit) as u32,
                params.groups,
                params.batch,
            ];
            gpu.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), buffers, grid)?;
        }
        Ok(())
    };
    per_chunk_dispatches("chunk_maps", maps(read()?).list())?;

    // The carry runs along each row's chunks, split where the driver cuts long loops short
    // (one loop iteration per chunk).
    let pipeline = gpu.pipeline(SHADER, "chunk_ends", &constants)?;
    let carry = maps(Bindings::new(gpu, SHADER))
        .whole(7, ends)
        .whole(8, h0)
        .whole(9, h_last);
    for range in gpu.loop_passes(chunks, 1, 16) {
        let params = Params {
            chunk_first: range.start as u32,
            chunk_count: range.len() as u32,
            ..params
        };
        let grid = [params.groups, params.batch, 1];
        gpu.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), carry.list(), grid)?;
    }

    if let Some(h) = h {
        let write = read()?
            .whole(7, ends)
            .whole(8, h0)
            .windowed([10, 20, 21, 22], h, true)?;
        per_chunk_dispatches("states", write.list())?;
    }
    Ok(())
}

/// The shader's parameters; every index it forms must fit in u32.
fn params<T: ScanElement>(scan: &Scan<T>, has_h0: bool) -> Result<Params> {
    let (batch, time, channels) = (scan.shape.batch(), scan.shape.time(), scan.shape.channels());
    let chunks = time.div_ceil(TF_SCAN_CHUNK as usize);
    let groups = channels.div_ceil(TF_SCAN_LANES as usize);
    let records = batch * groups * chunks;
    let largest = (scan.states_len() * T::LANES).max(records * TF_SCAN_LANES as usize);
    if largest > u32::MAX as usize {
        return Err(Error::DeviceLimit {
            what: "wgsl scan",
            limit_name: "32-bit element indices",
            needed: largest as u64,
            limit: u32::MAX.into(),
        });
    }
    let (stride_batch, stride_time) = scan.strides();
    let (reset_stride_batch, reset_stride_time) = scan.reset_strides();
    Ok(Params {
        batch: batch as u32,
        time: time as u32,
        channels: channels as u32,
        chunks: chunks as u32,
        groups: groups as u32,
        stride_batch: stride_batch as u32,
        stride_time: stride_time as u32,
        reset_stride_batch: reset_stride_batch as u32,
        reset_stride_time: reset_stride_time as u32,
        has_h0: has_h0.into(),
        chunk_first: 0,
        chunk_count: chunks as u32,
    })
}

mod backward;
mod workspace;

pub use backward::{ScanCotangents, ScanGradients, scan_backward, scan_backward_with_workspace};
use workspace::Role;
pub use workspace::ScanWorkspace;

/// The convert shader's uniform struct is laid out as it reads it.
#[cfg(test)]
#[test]
fn convert_params_match_the_shader() {
    CONVERT.assert_uniform("Params", ConvertParams::LAYOUT, size_of::<ConvertParams>());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The uniform struct is laid out as the shader reads it.
    #[test]
    fn params_match_the_shader() {
        SHADER.assert_uniform("Params", Params::LAYOUT, size_of::<Params>());
    }
}
