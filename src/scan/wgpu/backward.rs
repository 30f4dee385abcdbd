//! The scan's backward pass through WGSL: scan.wgsl's passes run the recurrence of g in
//! reverse (writing du), then `wgsl/scan_backward.wgsl` forms da and dh0.

use super::{
    Direction, Params, RawInputs, Role, ScanInputs, ScanWorkspace, StatesOf, narrow_into, params,
    pass_needs, passes, states_len, widen_into,
};
use crate::backend::abi::TF_SCAN_LANES;
use crate::backend::wgpu::{Binding, Bindings, GpuBuffer, Shader, Wgpu};
use crate::error::{Error, Result};
use crate::scan::{BufferLengths, Decay, Scan, ScanElement, Storage};

const SHADER: Shader = Shader {
    name: "scan_backward.wgsl",
    source: include_str!("../../../wgsl/scan_backward.wgsl"),
};

/// Warps of a workgroup (the shader's WARPS).
const WARPS: usize = 8;

/// The cotangents a backward pass starts from: `dh` stored as `U` ([`StatesOf`]), as `u` is.
#[derive(Debug)]
pub struct ScanCotangents<'a, T, U = T> {
    /// Of every state, laid out like `u` (zeros allowed).
    pub dh: &'a GpuBuffer<U>,
    /// Of the final state, `[b, p]`, when the loss depends on it.
    pub dh_last: Option<&'a GpuBuffer<T>>,
}

/// Where a backward pass writes the cotangents of the scan's inputs: `du` stored as `U`
/// ([`StatesOf`]), as `u` is.
#[derive(Debug)]
pub struct ScanGradients<'a, T, U = T> {
    /// Of `u`, laid out like `u`.
    pub du: &'a mut GpuBuffer<U>,
    /// Of `a`, laid out like `a` (`[p]` for a time-invariant `a`: summed over b and t).
    pub da: &'a mut GpuBuffer<T>,
    /// Of `h0`, `[b, p]`, when wanted (written only when the scan has an `h0`).
    pub dh0: Option<&'a mut GpuBuffer<T>>,
}

/// Submits the scan's backward pass (the [`scan`](crate::scan) module states it): `du`, `da`
/// and `dh0` from `dh` and `dh_last`, with `h` the forward's every state, or (without it) a
/// forward pass first that writes them to a scratch buffer. The time-invariant `da` is a sum
/// in a fixed order, so results are the same run after run. `u`, `h`, `dh` and `du` are
/// stored as `U` ([`StatesOf`]).
pub fn scan_backward<T: ScanElement, U: StatesOf<T>>(
    gpu: &Wgpu,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, T, U>,
    h: Option<&GpuBuffer<U>>,
    cotangents: ScanCotangents<'_, T, U>,
    gradients: ScanGradients<'_, T, U>,
) -> Result<()> {
    let mut workspace = ScanWorkspace::new();
    scan_backward_with_workspace(gpu, scan, inputs, h, cotangents, gradients, &mut workspace)
}

/// [`scan_backward`] with its scratch memory taken from `workspace` (see [`ScanWorkspace`]).
pub fn scan_backward_with_workspace<T: ScanElement, U: StatesOf<T>>(
    gpu: &Wgpu,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, T, U>,
    h: Option<&GpuBuffer<U>>,
    cotangents: ScanCotangents<'_, T, U>,
    gradients: ScanGradients<'_, T, U>,
    workspace: &mut ScanWorkspace,
) -> Result<()> {
    check_gradients(gpu, scan, inputs, h, &cotangents, &gradients)?;
    let ScanGradients { du, da, dh0 } = gradients;
    let stored = U::STORAGE != Storage::F32;
    workspace.prepare(
        gpu,
        &needs(
            scan,
            inputs.h0.is_some(),
            h.is_some(),
            dh0.is_some(),
            stored,
        )?,
    )?;
    let ws = &*workspace;
    let raw = inputs.raw();
    let dh_last = cotangents.dh_last.map(GpuBuffer::raw);
    let dh0 = dh0.map(|d| d.raw());
    if !stored {
        let states = h.map(GpuBuffer::raw);
        let (dh, du) = (cotangents.dh.raw(), du.raw());
        return backward(gpu, scan, raw, states, [dh, du], dh_last, da.raw(), dh0, ws);
    }
    let elements = scan.states_len();
    let widen = |packed: &GpuBuffer<U>, role| {
        let wide = ws.buffer(role);
        widen_into::<T>(gpu, U::STORAGE, packed.raw(), wide, elements).map(|()| wide)
    };
    let u = widen(inputs.u, Role::WideU)?;
    let states = h.map(|h| widen(h, Role::WideH)).transpose()?;
    let dh = widen(cotangents.dh, Role::WideDh)?;
    let wide_du = ws.buffer(Role::WideDu);
    let wide = RawInputs { u, ..raw };
    backward(
        gpu,
        scan,
        wide,
        states,
        [dh, wide_du],
        dh_last,
        da.raw(),
        dh0,
        ws,
    )?;
    narrow_into::<T>(gpu, U::STORAGE, wide_du, du.raw(), elements)
}

/// What a backward pass of `scan` uses of a workspace: the passes' maps, its scratch (the
/// forward's states when not given, dh0 when not wanted but written), and f32 copies of
/// 16-bit states (`stored`).
fn needs<T: ScanElement>(
    scan: &Scan<T>,
    has_h0: bool,
    has_states: bool,
    wants_dh0: bool,
    stored: bool,
) -> Result<Vec<(Role, usize)>> {
    let params = params(scan, has_h0)?;
    let records = (params.batch * params.groups * params.chunks) as usize;
    let lanes = TF_SCAN_LANES as usize;
    let states = 4 * scan.states_len() * T::LANES;
    let finals = 4 * scan.final_len() * T::LANES;
    let invariant = scan.decay == Decay::TimeInvariant;
    let mut needs = pass_needs(scan)?.to_vec();
    needs.extend([
        (Role::Last, finals),
        (
            Role::Partials,
            8 * lanes * if invariant { records } else { 1 },
        ),
        (Role::Sums, 8 * lanes * params.groups as usize * WARPS),
    ]);
    if !has_states {
        needs.push((Role::States, states));
    }
    if has_h0 && !wants_dh0 {
        needs.push((Role::Unread, finals));
    }
    if stored {
        needs.extend([
            (Role::WideU, states),
            (Role::WideDh, states),
            (Role::WideDu, states),
        ]);
        if has_states {
            needs.push((Role::WideH, states));
        }
    }
    Ok(needs)
}

/// The backward pass on checked f32 buffers: `dh` and `du`, `h` when kept; its scratch in
/// `workspace`, prepared with [`needs`].
#[allow(clippy::too_many_arguments)]
fn backward<'a, T: ScanElement>(
    gpu: &'a Wgpu,
    scan: &Scan<T>,
    inputs: RawInputs<'a>,
    h: Option<&'a wgpu::Buffer>,
    [dh, du]: [&'a wgpu::Buffer; 2],
    dh_last: Option<&'a wgpu::Buffer>,
    da: &'a wgpu::Buffer,
    dh0: Option<&'a wgpu::Buffer>,
    workspace: &'a ScanWorkspace,
) -> Result<()> {
    let params = params(scan, inputs.h0.is_some())?;
    let scratch_last = workspace.buffer(Role::Last);
    let h = match h {
        Some(h) => h,
        None => {
            let states = workspace.buffer(Role::States);
            let forward = Direction::Forward;
            passes(
                gpu,
                scan,
                inputs,
                Some(states),
                scratch_last,
                forward,
                workspace,
            )?;
            states
        }
    };
    let reversed = RawInputs {
        a: inputs.a,
        u: dh,
        reset: inputs.reset,
        h0: dh_last,
    };
    let backward = Direction::Backward;
    passes(
        gpu,
        scan,
        reversed,
        Some(du),
        scratch_last,
        backward,
        workspace,
    )?;

    let invariant = scan.decay == Decay::TimeInvariant;
    let partials = workspace.buffer(Role::Partials);
    let sums = workspace.buffer(Role::Sums);
    let placeholders = gpu.placeholders()?;
    let h0 = inputs.h0.unwrap_or(&placeholders[0]);
    // The shader writes dh0 whenever the scan has an h0: into the caller's buffer, or one
    // that nobody reads (never the shared placeholders, which no shader may write).
    let dh0_buffer = match (dh0, inputs.h0) {
        (Some(dh0), Some(_)) => dh0,
        (None, Some(_)) => workspace.buffer(Role::Unread),
        (_, None) => &placeholders[1],
    };
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    let constants = [
        ("COMPLEX", flag(T::LANES == 2)),
        ("VARYING", flag(!invariant)),
    ];
    // Each entry point binds what it uses.
    let gradients = Bindings::new(gpu, SHADER)
        .windowed([1, 11, 12, 13], inputs.a, false)?
        .windowed([2, 14, 15, 16], du, false)?
        .windowed([3, 17, 18, 19], inputs.reset, false)?
        .windowed([4, 20, 21, 22], h, false)?
        .windowed([5, 23, 24, 25], da, true)?
        .whole(6, h0)
        .whole(7, dh0_buffer)
        .whole(8, partials);
    gradients_dispatches(gpu, &constants, params, gradients.list())?;
    if invariant {
        let total = Bindings::new(gpu, SHADER)
            .windowed([5, 23, 24, 25], da, true)?
            .whole(8, partials)
            .whole(9, sums);
        da_total_dispatches(gpu, &constants, params, total.list())?;
    }
    Ok(())
}

/// The gradients entry over every chunk, at most the grid's limit of chunks per dispatch.
fn gradients_dispatches(
    gpu: &Wgpu,
    constants: &[(&str, f64)],
    params: Params,
    buffers: &[Binding],
) -> Result<()> {
    let pipeline = gpu.pipeline(SHADER, "gradients", constants)?;
    let chunks = params.chunks as usize;
    let grid_limit = gpu.limits().max_compute_workgroups_per_dimension as usize;
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
}

/// da_total over each group's batch · chunks records, in passes where the driver cuts long
/// loops short (one iteration per WARPS records).
fn da_total_dispatches(
    gpu: &Wgpu,
    constants: &[(&str, f64)],
    params: Params,
    buffers: &[Binding],
) -> Result<()> {
    let pipeline = gpu.pipeline(SHADER, "da_total", constants)?;
    let records = (params.batch * params.chunks) as usize;
    for range in gpu.loop_passes(records.div_ceil(WARPS), 1, 16) {
        let first = range.start * WARPS;
        let params = Params {
            chunk_first: first as u32,
            chunk_count: (range.len() * WARPS) as u32,
            ..params
        };
        let grid = [params.groups, 1, 1];
        gpu.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), buffers, grid)?;
    }
    Ok(())
}

/// An error unless every buffer of a backward pass has the length `scan` gives it and
/// belongs to `gpu`.
fn check_gradients<T: ScanElement, U: StatesOf<T>>(
    gpu: &Wgpu,
    scan: &Scan<T>,
    inputs: ScanInputs<'_, T, U>,
    h: Option<&GpuBuffer<U>>,
    cotangents: &ScanCotangents<'_, T, U>,
    gradients: &ScanGradients<'_, T, U>,
) -> Result<()> {
    scan.check_lengths(BufferLengths {
        a: inputs.a.len(),
        u: states_len::<T, U>("u", inputs.u)?,
        reset: inputs.reset.len(),
        h0: inputs.h0.map(GpuBuffer::len),
        h: h.map(|h| states_len::<T, U>("h", h)).transpose()?,
        h_last: scan.final_len(),
    })?;
    let states = [("dh", cotangents.dh), ("du", &*gradients.du)];
    for (what, buffer) in states {
        let got = states_len::<T, U>(what, buffer)?;
        if got != scan.states_len() {
            return Err(Error::Length {
                what,
                expected: scan.states_len(),
                got,
            });
        }
        gpu.check_buffer(what, buffer)?;
    }
    let buffers = [
        ("dh_last", scan.final_len(), cotangents.dh_last),
        ("da", scan.a_len(), Some(&*gradients.da)),
        ("dh0", scan.final_len(), gradients.dh0.as_deref()),
    ];
    for (what, expected, buffer) in buffers {
        let Some(buffer) = buffer else { continue };
        if buffer.len() != expected {
            return Err(Error::Length {
                what,
                expected,
                got: buffer.len(),
            });
        }
        gpu.check_buffer(what, buffer)?;
    }
    gpu.check_buffer("a", inputs.a)?;
    gpu.check_buffer("u", inputs.u)?;
    gpu.check_buffer("reset", inputs.reset)?;
    if let Some(h0) = inputs.h0 {
        gpu.check_buffer("h0", h0)?;
    }
    if let Some(h) = h {
        gpu.check_buffer("h", h)?;
    }
    Ok(())
}
