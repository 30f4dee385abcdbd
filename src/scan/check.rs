//! The scan's cases for `tilefuse check`, `tilefuse bench` and the integration tests.

use std::fmt;

use super::{
    Decay, Layout, Scan, ScanElement, ScanShape, StateStorage, Storage, associative_scan, reference,
};
use crate::error::Result;
use crate::harness::device::{Device, on_device};
use crate::harness::{Backend, Backends, CheckCase, Comparison, OpEntry, Rng, Tolerance, compare};

/// The registry entry.
pub const ENTRY: OpEntry = OpEntry {
    name: "scan",
    about: "diagonal linear recurrence with resets, f32 / complex64 (CUDA: one pass, look-back)",
    kernel_modules: &["scan"],
    check_cases,
    bench_cases: super::bench::bench_cases,
    #[cfg(feature = "cli")]
    file: Some(&super::cli::FILE),
    #[cfg(all(feature = "cli", feature = "cuda"))]
    profile: Some(&super::cli::PROFILE),
};

/// Where the resets fall in each batch row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResetPattern {
    /// No resets.
    Never,
    /// A reset at every step (every state is its input).
    EveryStep,
    /// One reset at t = 0 (h0 is discarded).
    AtStart,
    /// Resets at the first and last step of every chunk of the CUDA and WGSL kernels.
    ChunkBoundaries,
    /// Each step resets with this probability.
    Random(f64),
}

impl ResetPattern {
    fn at(self, t: usize, rng: &mut Rng) -> bool {
        let chunk = crate::backend::abi::TF_SCAN_CHUNK as usize;
        match self {
            ResetPattern::Never => false,
            ResetPattern::EveryStep => true,
            ResetPattern::AtStart => t == 0,
            ResetPattern::ChunkBoundaries => t.is_multiple_of(chunk) || t % chunk == chunk - 1,
            ResetPattern::Random(p) => rng.unit() < p,
        }
    }
}

impl fmt::Display for ResetPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetPattern::Never => f.write_str("never"),
            ResetPattern::EveryStep => f.write_str("every step"),
            ResetPattern::AtStart => f.write_str("at t=0"),
            ResetPattern::ChunkBoundaries => f.write_str("at chunk edges"),
            ResetPattern::Random(p) => write!(f, "{}%", p * 100.0),
        }
    }
}

/// One check configuration. Start from [`Case::new`] and change fields:
///
/// ```
/// use tilefuse::scan::{Case, Layout, ResetPattern};
///
/// let case = Case { complex: true, layout: Layout::TimeMajor, resets: ResetPattern::Random(0.2), ..Case::new(2, 1000, 40) };
/// assert_eq!(case.to_string(), "c64 b=2 t=1000 p=40 time-major const resets 20% h0 |a|≤0.99");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Case {
    /// Batch rows (b).
    pub batch: usize,
    /// Time steps (t).
    pub time: usize,
    /// Channels (p).
    pub channels: usize,
    /// Complex64 elements (else f32).
    pub complex: bool,
    /// Memory order of u, h, a time-varying a and reset.
    pub layout: Layout,
    /// Time-invariant or time-varying a.
    pub decay: Decay,
    /// Where resets fall.
    pub resets: ResetPattern,
    /// Whether an initial state h0 is given.
    pub h0: bool,
    /// |a| is drawn uniformly from this range (complex a gets a uniform phase, real a a sign).
    pub a_magnitude: (f64, f64),
    /// Final-state-only mode: compare h_last alone, h is not written.
    pub final_only: bool,
    /// How `u` and `h` (the backward's `dh`, `du`) are stored; `u` is drawn as values of it.
    pub storage: Storage,
}

impl Case {
    /// f32, batch-major, time-invariant a with 0.5 ≤ |a| ≤ 0.99, 1% resets, h0 given, every
    /// state written.
    pub fn new(batch: usize, time: usize, channels: usize) -> Case {
        Case {
            batch,
            time,
            channels,
            complex: false,
            layout: Layout::BatchMajor,
            decay: Decay::TimeInvariant,
            resets: ResetPattern::Random(0.01),
            h0: true,
            a_magnitude: (0.5, 0.99),
            final_only: false,
            storage: Storage::F32,
        }
    }

    /// The problem this case runs.
    pub fn scan<T: ScanElement>(&self) -> Result<Scan<T>> {
        let shape = ScanShape::new(self.batch, self.time, self.channels)?;
        Ok(Scan::new(shape, self.layout, self.decay))
    }

    /// The error bound against the f64 reference. Each step rounds once (a few roundings for
    /// complex), and that error then decays like `a` itself, so the error is bounded by the
    /// recurrence's memory `M = min(t, 1 / (1 − |a|max))`, not by t. Up to M = 100 steps the
    /// f32 bounds hold (1e-5); beyond, the per-element bound grows like M (the worst case,
    /// every rounding in the same direction) and the L2 bound like √M (independent
    /// roundings), relative to those at M = 100. 16-bit states add one rounding of each
    /// stored value (the carry stays f32, so roundings do not accumulate).
    pub fn tolerance(&self) -> Tolerance {
        let max_a = self.a_magnitude.1;
        let time = self.time as f64;
        let memory = if max_a < 1.0 {
            (1.0 / (1.0 - max_a)).min(time)
        } else {
            time
        };
        let growth = (memory / 100.0).max(1.0);
        let stored = match self.storage {
            Storage::F32 => 0.0,
            storage => storage.unit_roundoff(),
        };
        Tolerance {
            rel_l2: Tolerance::F32.rel_l2 * growth.sqrt() + stored,
            element: Tolerance::F32.element * growth + stored,
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let element = if self.complex { "c64" } else { "f32" };
        let stored = match self.storage {
            Storage::F32 => String::new(),
            storage => format!(" in {}", storage.name()),
        };
        let layout = match self.layout {
            Layout::BatchMajor => "batch-major",
            Layout::TimeMajor => "time-major",
        };
        let decay = match self.decay {
            Decay::TimeInvariant => "const",
            Decay::TimeVarying => "varying",
        };
        write!(
            f,
            "{element}{stored} b={} t={} p={} {layout} {decay} resets {}{} |a|≤{}{}",
            self.batch,
            self.time,
            self.channels,
            self.resets,
            if self.h0 { " h0" } else { "" },
            self.a_magnitude.1,
            if self.final_only { " final-only" } else { "" },
        )
    }
}

/// Random host inputs of one problem.
#[derive(Debug, Clone)]
pub struct Inputs<T> {
    /// `a`, p or b·t·p elements.
    pub a: Vec<T>,
    /// `u`, b·t·p elements.
    pub u: Vec<T>,
    /// `reset`, b·t flags.
    pub reset: Vec<u8>,
    /// `h0`, b·p elements, when the case has one.
    pub h0: Option<Vec<T>>,
}

impl<T: ScanElement> Inputs<T> {
    /// The inputs of `case` drawn from `seed`.
    pub fn random(case: &Case, scan: &Scan<T>, seed: u64) -> Inputs<T> {
        let mut rng = Rng::new(seed);
        let (lo, hi) = case.a_magnitude;
        let decay = |rng: &mut Rng| {
            let magnitude = rng.uniform(lo, hi);
            let phase = if T::LANES == 2 {
                rng.uniform(0.0, std::f64::consts::TAU)
            } else if rng.unit() < 0.5 {
                std::f64::consts::PI
            } else {
                0.0
            };
            T::narrow(num_complex::Complex64::from_polar(magnitude, phase))
        };
        let a = (0..scan.a_len()).map(|_| decay(&mut rng)).collect();
        let value = |rng: &mut Rng| {
            T::narrow(num_complex::Complex64::new(
                rng.uniform(-1.0, 1.0),
                rng.uniform(-1.0, 1.0),
            ))
        };
        let mut u: Vec<T> = (0..scan.states_len()).map(|_| value(&mut rng)).collect();
        round_to(case.storage, &mut u);
        let mut reset = vec![0u8; scan.reset_len()];
        for b in 0..case.batch {
            for t in 0..case.time {
                reset[scan.reset_at(b, t)] = case.resets.at(t, &mut rng).into();
            }
        }
        let h0 = case
            .h0
            .then(|| (0..scan.final_len()).map(|_| value(&mut rng)).collect());
        Inputs { a, u, reset, h0 }
    }
}

/// Rounds every value of `values` to `storage` (complex parts one by one), so that the
/// values a device stores are exactly the ones the reference reads.
pub(crate) fn round_to<T: ScanElement>(storage: Storage, values: &mut [T]) {
    for value in bytemuck::cast_slice_mut::<T, f32>(values) {
        *value = storage.round(*value);
    }
}

/// What a run returns: every state (unless final-only) and the final state, as f32s
/// (complex values interleaved).
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// All states, `None` in final-state-only mode.
    pub h: Option<Vec<f32>>,
    /// The final states.
    pub h_last: Vec<f32>,
}

/// Runs `case` on `backend` with inputs from `seed` (outputs poisoned with NaN first) and
/// compares `h` and `h_last` with the f64 reference. On the CPU it checks the associative
/// scan.
pub fn check(
    backends: &Backends,
    backend: Backend,
    case: &Case,
    seed: u64,
) -> Result<Option<Comparison>> {
    let check = super::typed_for!(check_typed, case.complex, case.storage);
    check(backends, backend, case, seed)
}

fn check_typed<T: ScanElement, S: StateStorage>(
    backends: &Backends,
    backend: Backend,
    case: &Case,
    seed: u64,
) -> Result<Option<Comparison>> {
    if backend == Backend::Cpu {
        let scan = case.scan::<T>()?;
        let inputs = Inputs::random(case, &scan, seed);
        let h0 = inputs.h0.as_deref();
        let expected = reference(&scan, &inputs.a, &inputs.u, &inputs.reset, h0)?;
        let got = associative_scan(&scan, &inputs.a, &inputs.u, &inputs.reset, h0)?;
        return Ok(Some(compare(
            &[got.h, got.h_last].concat(),
            &[expected.h, expected.h_last].concat(),
            case.tolerance(),
        )));
    }
    check_with::<T>(case, seed, |scan, inputs, final_only| {
        run::<T, S>(backends, backend, scan, inputs, final_only)
    })
}

/// [`check`] on a device, with the run done by `runner`, which takes the arguments of [`run`]
/// after the backend.
pub(crate) fn check_with<T: ScanElement>(
    case: &Case,
    seed: u64,
    runner: impl FnOnce(&Scan<T>, &Inputs<T>, bool) -> Result<Option<Outputs>>,
) -> Result<Option<Comparison>> {
    let scan = case.scan::<T>()?;
    let inputs = Inputs::random(case, &scan, seed);
    let h0 = inputs.h0.as_deref();
    let expected = reference(&scan, &inputs.a, &inputs.u, &inputs.reset, h0)?;
    let Some(got) = runner(&scan, &inputs, case.final_only)? else {
        return Ok(None);
    };
    let wide = |v: Vec<f32>| v.into_iter().map(f64::from);
    let (out, want): (Vec<f64>, Vec<f64>) = match got.h {
        Some(h) => (
            wide(h).chain(wide(got.h_last)).collect(),
            [expected.h, expected.h_last].concat(),
        ),
        None => (wide(got.h_last).collect(), expected.h_last),
    };
    Ok(Some(compare(&out, &want, case.tolerance())))
}

/// Runs one scan on a GPU backend (`Ok(None)` on the CPU) with `u` and `h` stored as `S`, `h`
/// and `h_last` poisoned with NaN, and reads the outputs back (widened to f32).
pub fn run<T: ScanElement, S: StateStorage>(
    backends: &Backends,
    backend: Backend,
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    final_only: bool,
) -> Result<Option<Outputs>> {
    on_device!(backends, backend, |device| {
        let mut problem = Problem::<_, T, S>::upload(device, scan, inputs)?;
        problem.run(device, scan, final_only)?;
        problem.read(device, final_only)
    })
}

fn check_cases() -> Vec<CheckCase> {
    let base = Case::new(3, 1000, 40);
    let cases = [
        base,
        Case {
            complex: true,
            layout: Layout::TimeMajor,
            decay: Decay::TimeVarying,
            resets: ResetPattern::Random(0.2),
            h0: false,
            ..Case::new(2, 4097, 33)
        },
        Case {
            complex: true,
            resets: ResetPattern::ChunkBoundaries,
            ..Case::new(2, 1024, 70)
        },
        Case {
            resets: ResetPattern::EveryStep,
            decay: Decay::TimeVarying,
            ..Case::new(1, 1, 1)
        },
        Case {
            complex: true,
            final_only: true,
            a_magnitude: (0.999, 0.9999),
            resets: ResetPattern::Never,
            ..Case::new(2, 20_000, 5)
        },
    ];
    cases
        .into_iter()
        .map(|case| {
            CheckCase::new("scan", case.to_string(), move |backends, backend| {
                check(backends, backend, &case, 0x5eed)
            })
        })
        .collect()
}

/// One problem's buffers on a device, ready to run: `u` and `h` stored as `S`.
pub(super) struct Problem<D: OnDevice, T: ScanElement, S: StateStorage = f32> {
    pub(super) a: D::Values<T>,
    pub(super) u: D::States<T, S>,
    pub(super) reset: D::Buffer<u8>,
    pub(super) h0: Option<D::Values<T>>,
    pub(super) h: D::States<T, S>,
    pub(super) h_last: D::Values<T>,
}

/// NaN in every value of `len` elements of `T`.
fn poison<T: ScanElement>(len: usize) -> Vec<T> {
    bytemuck::cast_slice::<f32, T>(&vec![f32::NAN; len * T::LANES]).to_vec()
}

impl<D: OnDevice, T: ScanElement, S: StateStorage> Problem<D, T, S> {
    /// Uploads the inputs and NaN-filled outputs.
    pub(super) fn upload(device: &D, scan: &Scan<T>, inputs: &Inputs<T>) -> Result<Self> {
        Ok(Problem {
            a: device.upload_values(&inputs.a)?,
            u: device.upload_states::<T, S>(&inputs.u)?,
            reset: device.upload(&inputs.reset)?,
            h0: inputs
                .h0
                .as_deref()
                .map(|h0| device.upload_values(h0))
                .transpose()?,
            h: device.upload_states::<T, S>(&poison(scan.states_len()))?,
            h_last: device.upload_values(&poison::<T>(scan.final_len()))?,
        })
    }

    /// Enqueues the scan: every state, or the final state only.
    pub(super) fn run(&mut self, device: &D, scan: &Scan<T>, final_only: bool) -> Result<()> {
        let h = (!final_only).then_some(&mut self.h);
        let Problem {
            a, u, reset, h0, ..
        } = self;
        device.scan(scan, (&*a, &*u), reset, h0.as_ref(), h, &mut self.h_last)
    }

    fn read(&self, device: &D, final_only: bool) -> Result<Outputs> {
        Ok(Outputs {
            h: (!final_only)
                .then(|| device.download_states(&self.h))
                .transpose()?,
            h_last: device.download_values(&self.h_last)?,
        })
    }
}

/// The scan's calls on each backend.
pub(super) trait OnDevice: Device {
    /// Values of `T` on the device.
    type Values<T: ScanElement>;
    /// Values of `T` stored as `S` (`u` and `h`, the backward's `dh` and `du`).
    type States<T: ScanElement, S: StateStorage>;
    /// Uploads `values`.
    fn upload_values<T: ScanElement>(&self, values: &[T]) -> Result<Self::Values<T>>;
    /// A buffer's values as f32s (complex values interleaved).
    fn download_values<T: ScanElement>(&self, values: &Self::Values<T>) -> Result<Vec<f32>>;
    /// Uploads `values` stored as `S` (each rounded to it).
    fn upload_states<T: ScanElement, S: StateStorage>(
        &self,
        values: &[T],
    ) -> Result<Self::States<T, S>>;
    /// A buffer's stored values, widened to f32s (complex values interleaved).
    fn download_states<T: ScanElement, S: StateStorage>(
        &self,
        values: &Self::States<T, S>,
    ) -> Result<Vec<f32>>;
    /// Enqueues `scan` of `a` and `u`: every state into `h`, or (without `h`) the final
    /// state alone.
    fn scan<T: ScanElement, S: StateStorage>(
        &self,
        scan: &Scan<T>,
        a_u: (&Self::Values<T>, &Self::States<T, S>),
        reset: &Self::Buffer<u8>,
        h0: Option<&Self::Values<T>>,
        h: Option<&mut Self::States<T, S>>,
        h_last: &mut Self::Values<T>,
    ) -> Result<()>;
    /// Scratch memory the backward pass keeps from call to call.
    type Workspace: Default;
    /// Enqueues the backward pass of `problem`'s scan: from its states `h` unless `recompute`.
    fn scan_backward<T: ScanElement, S: StateStorage>(
        &self,
        scan: &Scan<T>,
        problem: &mut BackwardProblem<Self, T, S>,
        recompute: bool,
    ) -> Result<()>
    where
        Self: Sized;
}

/// A backward pass's buffers on a device: the forward's problem, the cotangents, the
/// gradients (poisoned with NaN) and the kept workspace; `dh` and `du` stored as `S`.
pub(super) struct BackwardProblem<D: OnDevice, T: ScanElement, S: StateStorage = f32> {
    pub(super) forward: Problem<D, T, S>,
    pub(super) dh: D::States<T, S>,
    pub(super) dh_last: Option<D::Values<T>>,
    pub(super) du: D::States<T, S>,
    pub(super) da: D::Values<T>,
    pub(super) dh0: Option<D::Values<T>>,
    // Only the GPU backends' backward passes use it.
    #[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
    pub(super) workspace: D::Workspace,
}

impl<D: OnDevice, T: ScanElement, S: StateStorage> BackwardProblem<D, T, S> {
    /// Uploads the inputs and cotangents, and NaN-filled outputs (dh0 with an h0).
    pub(super) fn upload(
        device: &D,
        scan: &Scan<T>,
        inputs: &Inputs<T>,
        cotangents: &super::Cotangents<T>,
    ) -> Result<Self> {
        Ok(BackwardProblem {
            forward: Problem::upload(device, scan, inputs)?,
            dh: device.upload_states::<T, S>(&cotangents.dh)?,
            dh_last: cotangents
                .dh_last
                .as_deref()
                .map(|d| device.upload_values(d))
                .transpose()?,
            du: device.upload_states::<T, S>(&poison(scan.states_len()))?,
            da: device.upload_values(&poison::<T>(scan.a_len()))?,
            dh0: inputs
                .h0
                .as_ref()
                .map(|_| device.upload_values(&poison::<T>(scan.final_len())))
                .transpose()?,
            workspace: D::Workspace::default(),
        })
    }

    /// Enqueues the backward pass: after the forward (every state) unless `recompute`.
    pub(super) fn run(&mut self, device: &D, scan: &Scan<T>, recompute: bool) -> Result<()> {
        if !recompute {
            self.forward.run(device, scan, false)?;
        }
        device.scan_backward(scan, self, recompute)
    }

    /// The gradients, as f32s.
    pub(super) fn read(&self, device: &D) -> Result<super::DeviceGradients> {
        Ok(super::DeviceGradients {
            du: device.download_states(&self.du)?,
            da: device.download_values(&self.da)?,
            dh0: self
                .dh0
                .as_ref()
                .map(|d| device.download_values(d))
                .transpose()?,
        })
    }
}

/// The f32 values of `values`, each rounded to `S`.
pub(super) fn stored<T: ScanElement, S: StateStorage>(values: &[T]) -> Vec<S> {
    bytemuck::cast_slice::<T, f32>(values)
        .iter()
        .map(|&v| S::from_f32(v))
        .collect()
}

/// `OnDevice` for a backend's handle: its module's `scan` and `scan_final`, the backend's
/// own buffers of values, and its backward pass.
macro_rules! forward_to {
    ($feature:literal, $handle:ty, $module:ident, { $($values:item)* }) => {
        #[cfg(feature = $feature)]
        impl OnDevice for $handle {
            $($values)*
            fn scan<T: ScanElement, S: StateStorage>(
                &self,
                scan: &Scan<T>,
                (a, u): (&Self::Values<T>, &Self::States<T, S>),
                reset: &Self::Buffer<u8>,
                h0: Option<&Self::Values<T>>,
                h: Option<&mut Self::States<T, S>>,
                h_last: &mut Self::Values<T>,
            ) -> Result<()> {
                let inputs = super::$module::ScanInputs { a, u, reset, h0 };
                match h {
                    Some(h) => super::$module::scan(self, scan, inputs, h, h_last),
                    None => super::$module::scan_final(self, scan, inputs, h_last),
                }
            }
        }
    };
}
// CUDA's buffers hold f32s (complex values interleaved), u and h their storage type.
forward_to!("cuda", crate::backend::cuda::Cuda, cuda, {
    type Values<T: ScanElement> = cudarc::driver::CudaSlice<f32>;
    type States<T: ScanElement, S: StateStorage> = cudarc::driver::CudaSlice<S>;
    type Workspace = super::cuda::ScanWorkspace;
    fn upload_values<T: ScanElement>(&self, values: &[T]) -> Result<Self::Values<T>> {
        self.upload(bytemuck::cast_slice::<T, f32>(values))
    }
    fn download_values<T: ScanElement>(&self, values: &Self::Values<T>) -> Result<Vec<f32>> {
        self.download(values)
    }
    fn upload_states<T: ScanElement, S: StateStorage>(
        &self,
        values: &[T],
    ) -> Result<Self::States<T, S>> {
        self.upload(&stored::<T, S>(values))
    }
    fn download_states<T: ScanElement, S: StateStorage>(
        &self,
        values: &Self::States<T, S>,
    ) -> Result<Vec<f32>> {
        Ok(self.download(values)?.into_iter().map(S::to_f32).collect())
    }
    fn scan_backward<T: ScanElement, S: StateStorage>(
        &self,
        scan: &Scan<T>,
        p: &mut BackwardProblem<Self, T, S>,
        recompute: bool,
    ) -> Result<()> {
        use super::cuda::{ScanCotangents, ScanGradients, ScanInputs};
        let f = &p.forward;
        let inputs = ScanInputs {
            a: &f.a,
            u: &f.u,
            reset: &f.reset,
            h0: f.h0.as_ref(),
        };
        let cotangents = ScanCotangents {
            dh: &p.dh,
            dh_last: p.dh_last.as_ref(),
        };
        let gradients = ScanGradients {
            du: &mut p.du,
            da: &mut p.da,
            dh0: p.dh0.as_mut(),
        };
        let h = (!recompute).then_some(&f.h);
        let workspace = &mut p.workspace;
        super::cuda::scan_backward_with_workspace(
            self, scan, inputs, h, cotangents, gradients, workspace,
        )
    }
});
// WGSL's buffers hold T, u and h their storage type.
forward_to!("wgpu", crate::backend::wgpu::Wgpu, wgpu, {
    type Values<T: ScanElement> = crate::backend::wgpu::GpuBuffer<T>;
    type States<T: ScanElement, S: StateStorage> = crate::backend::wgpu::GpuBuffer<S>;
    type Workspace = super::wgpu::ScanWorkspace;
    fn upload_values<T: ScanElement>(&self, values: &[T]) -> Result<Self::Values<T>> {
        self.upload(values)
    }
    fn download_values<T: ScanElement>(&self, values: &Self::Values<T>) -> Result<Vec<f32>> {
        Ok(bytemuck::cast_slice::<T, f32>(&self.download(values)?).to_vec())
    }
    fn upload_states<T: ScanElement, S: StateStorage>(
        &self,
        values: &[T],
    ) -> Result<Self::States<T, S>> {
        self.upload(&stored::<T, S>(values))
    }
    fn download_states<T: ScanElement, S: StateStorage>(
        &self,
        values: &Self::States<T, S>,
    ) -> Result<Vec<f32>> {
        Ok(self.download(values)?.into_iter().map(S::to_f32).collect())
    }
    fn scan_backward<T: ScanElement, S: StateStorage>(
        &self,
        scan: &Scan<T>,
        p: &mut BackwardProblem<Self, T, S>,
        recompute: bool,
    ) -> Result<()> {
        use super::wgpu::{ScanCotangents, ScanGradients, ScanInputs};
        let f = &p.forward;
        let inputs = ScanInputs {
            a: &f.a,
            u: &f.u,
            reset: &f.reset,
            h0: f.h0.as_ref(),
        };
        let cotangents = ScanCotangents {
            dh: &p.dh,
            dh_last: p.dh_last.as_ref(),
        };
        let gradients = ScanGradients {
            du: &mut p.du,
            da: &mut p.da,
            dh0: p.dh0.as_mut(),
        };
        let h = (!recompute).then_some(&f.h);
        let workspace = &mut p.workspace;
        super::wgpu::scan_backward_with_workspace(
            self, scan, inputs, h, cotangents, gradients, workspace,
        )
    }
});
