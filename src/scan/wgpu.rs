//! The scan through WGSL (`wgsl/scan.wgsl`): chunk maps, a carry pass over the chunks, and
//! a pass that writes every state (skipped in final-state-only mode).

use super::{BufferLengths, Decay, Scan, ScanElement};
use crate::backend::abi::{TF_SCAN_CHUNK, TF_SCAN_LANES};
use crate::backend::wgpu::{GpuBuffer, Shader, Wgpu};
use crate::error::{Error, Result};

const SHADER: Shader = Shader {
    name: "scan.wgsl",
    source: include_str!("../../wgsl/scan.wgsl"),
};

/// The inputs of one scan on a wgpu device.
#[derive(Debug)]
pub struct ScanInputs<'a, T> {
    /// `a [p]` or, time-varying, laid out like `u`.
    pub a: &'a GpuBuffer<T>,
    /// The inputs `u`.
    pub u: &'a GpuBuffer<T>,
    /// The reset flags, u8, non-zero = reset.
    pub reset: &'a GpuBuffer<u8>,
    /// The state before the first step, `[b, p]`; `None` starts from zero.
    pub h0: Option<&'a GpuBuffer<T>>,
}

impl<T> Clone for ScanInputs<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ScanInputs<'_, T> {}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
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
    pad: [u32; 2],
}

/// Submits the scan, writing every state to `h` and the final state to `h_last`.
pub fn scan<T: ScanElement>(
    gpu: &Wgpu,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, T>,
    h: &mut GpuBuffer<T>,
    h_last: &mut GpuBuffer<T>,
) -> Result<()> {
    run(gpu, scan, inputs, Some(h), h_last)
}

/// Submits the scan, writing only the final state `h_last`.
pub fn scan_final<T: ScanElement>(
    gpu: &Wgpu,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, T>,
    h_last: &mut GpuBuffer<T>,
) -> Result<()> {
    run(gpu, scan, inputs, None, h_last)
}

fn run<T: ScanElement>(
    gpu: &Wgpu,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, T>,
    h: Option<&mut GpuBuffer<T>>,
    h_last: &mut GpuBuffer<T>,
) -> Result<()> {
    scan.check_lengths(BufferLengths {
        a: inputs.a.len(),
        u: inputs.u.len(),
        reset: inputs.reset.len(),
        h0: inputs.h0.map(GpuBuffer::len),
        h: h.as_ref().map(|h| h.len()),
        h_last: h_last.len(),
    })?;
    gpu.check_buffer("a", inputs.a)?;
    gpu.check_buffer("u", inputs.u)?;
    gpu.check_buffer("reset", inputs.reset)?;
    if let Some(h0) = inputs.h0 {
        gpu.check_buffer("h0", h0)?;
    }
    if let Some(h) = &h {
        gpu.check_buffer("h", h)?;
    }
    gpu.check_buffer("h_last", h_last)?;

    let params = params(scan, inputs.h0.is_some())?;
    let records = (params.batch * params.groups * params.chunks) as usize;
    let slots = records * TF_SCAN_LANES as usize;
    let map_a = gpu.zeros::<[f32; 2]>(slots)?;
    let map_b = gpu.zeros::<[f32; 2]>(slots)?;
    let map_reset = gpu.zeros::<u32>(records)?;
    let ends = gpu.zeros::<[f32; 2]>(slots)?;
    // A bound buffer that is never read stands in for an absent h0.
    let h0 = inputs.h0.map_or(inputs.u.raw(), GpuBuffer::raw);

    let constants = [
        ("COMPLEX", if T::LANES == 2 { 1.0 } else { 0.0 }),
        (
            "VARYING",
            if scan.decay == Decay::TimeVarying {
                1.0
            } else {
                0.0
            },
        ),
    ];
    let bytes = bytemuck::bytes_of(&params);
    let chunk_grid = [params.chunks, params.groups, params.batch];
    let pipeline = gpu.pipeline(SHADER, "chunk_maps", &constants)?;
    let (a, u, reset) = (inputs.a.raw(), inputs.u.raw(), inputs.reset.raw());
    let maps = [(4, map_a.raw()), (5, map_b.raw()), (6, map_reset.raw())];
    let read = [(1, a), (2, u), (3, reset)];
    gpu.dispatch_bound(
        &pipeline,
        bytes,
        &[&read[..], &maps[..]].concat(),
        chunk_grid,
    )?;

    let pipeline = gpu.pipeline(SHADER, "chunk_ends", &constants)?;
    let carry = [(7, ends.raw()), (8, h0), (9, h_last.raw())];
    let carry_grid = [params.groups, params.batch, 1];
    gpu.dispatch_bound(
        &pipeline,
        bytes,
        &[&maps[..], &carry[..]].concat(),
        carry_grid,
    )?;

    if let Some(h) = h {
        let pipeline = gpu.pipeline(SHADER, "states", &constants)?;
        let write = [(7, ends.raw()), (8, h0), (10, h.raw())];
        gpu.dispatch_bound(
            &pipeline,
            bytes,
            &[&read[..], &write[..]].concat(),
            chunk_grid,
        )?;
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
        pad: [0; 2],
    })
}
