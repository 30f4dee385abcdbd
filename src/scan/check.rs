//! The scan's cases for `tilefuse check`, `tilefuse bench` and the integration tests.

use std::fmt;

use num_complex::Complex32;

use super::{Decay, Layout, Scan, ScanElement, ScanShape, associative_scan, reference};
use crate::error::Result;
use crate::harness::{
    Backend, Backends, BenchCase, CheckCase, Clock, Comparison, OpEntry, Rng, Runner, Tolerance,
    compare,
};

/// The registry entry.
pub const ENTRY: OpEntry = OpEntry {
    name: "scan",
    about: "diagonal linear recurrence with resets, f32 / complex64 (CUDA: one pass, look-back)",
    kernel_modules: &["scan"],
    check_cases,
    bench_cases,
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
    /// roundings), relative to those at M = 100.
    pub fn tolerance(&self) -> Tolerance {
        let max_a = self.a_magnitude.1;
        let time = self.time as f64;
        let memory = if max_a < 1.0 {
            (1.0 / (1.0 - max_a)).min(time)
        } else {
            time
        };
        let growth = (memory / 100.0).max(1.0);
        Tolerance {
            rel_l2: Tolerance::F32.rel_l2 * growth.sqrt(),
            element: Tolerance::F32.element * growth,
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let element = if self.complex { "c64" } else { "f32" };
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
            "{element} b={} t={} p={} {layout} {decay} resets {}{} |a|≤{}{}",
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
        let u = (0..scan.states_len()).map(|_| value(&mut rng)).collect();
        let mut reset = vec![0u8; scan.reset_len()];
        for b in 0..case.batch {
            for t in 0..case.time {
                reset[scan.reset_index(b, t)] = case.resets.at(t, &mut rng).into();
            }
        }
        let h0 = case
            .h0
            .then(|| (0..scan.final_len()).map(|_| value(&mut rng)).collect());
        Inputs { a, u, reset, h0 }
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
    if case.complex {
        check_typed::<Complex32>(backends, backend, case, seed)
    } else {
        check_typed::<f32>(backends, backend, case, seed)
    }
}

fn check_typed<T: ScanElement>(
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
        run(backends, backend, scan, inputs, final_only)
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

/// Runs one scan on a GPU backend (`Ok(None)` on the CPU) with `h` and `h_last` poisoned
/// with NaN, and reads the outputs back.
pub fn run<T: ScanElement>(
    backends: &Backends,
    backend: Backend,
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    final_only: bool,
) -> Result<Option<Outputs>> {
    let Some(mut on_device) = OnDevice::new(backends, backend, scan, inputs)? else {
        return Ok(None);
    };
    on_device.run(scan, final_only)?;
    on_device.read(final_only).map(Some)
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

/// The benchmark shapes (b, t, p): complex64, 1% resets, time-invariant a.
pub const BENCH_SHAPES: [(usize, usize, usize); 3] =
    [(16, 8192, 256), (64, 2048, 256), (4, 65536, 128)];

fn bench_cases() -> Vec<BenchCase> {
    let mut cases = Vec::new();
    for (b, t, p) in BENCH_SHAPES {
        let case = Case {
            complex: true,
            h0: false,
            ..Case::new(b, t, p)
        };
        let name = format!("c64 b={b} t={t} p={p} resets=1%");
        let states_bytes = (b * t * p * 8) as u64;
        let reset_bytes = (b * t) as u64;
        let final_bytes = (b * p * 8) as u64;
        let full = 2 * states_bytes + reset_bytes + final_bytes;
        cases.push(BenchCase::new(
            "scan",
            name.clone(),
            full,
            0,
            move |backends, backend| prepare(backends, backend, &case),
        ));
        cases.push(
            BenchCase::new(
                "scan",
                name.clone(),
                2 * states_bytes,
                0,
                move |backends, backend| {
                    crate::harness::prepare_copy(backends, backend, b * t * p * 8)
                },
            )
            .by("copy"),
        );
        let final_case = Case {
            final_only: true,
            ..case
        };
        cases.push(BenchCase::new(
            "scan",
            format!("{name} final-only"),
            states_bytes + reset_bytes + final_bytes,
            0,
            move |backends, backend| prepare(backends, backend, &final_case),
        ));
    }
    cases
}

fn prepare<'a>(
    backends: &'a Backends,
    backend: Backend,
    case: &Case,
) -> Result<Option<Runner<'a>>> {
    let scan = case.scan::<Complex32>()?;
    let inputs = Inputs::random(case, &scan, 1);
    let Some(mut on_device) = OnDevice::new(backends, backend, &scan, &inputs)? else {
        return Ok(None);
    };
    let clock = on_device.clock();
    let final_only = case.final_only;
    Ok(Some(Runner::new(clock, move || {
        on_device.run(&scan, final_only)
    })))
}

/// One problem's buffers on a backend, ready to run. On CUDA every buffer holds f32s.
// Built once per case; the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum OnDevice<'a, T: ScanElement> {
    #[cfg(feature = "cuda")]
    Cuda {
        cuda: &'a crate::backend::cuda::Cuda,
        a: cudarc::driver::CudaSlice<f32>,
        u: cudarc::driver::CudaSlice<f32>,
        reset: cudarc::driver::CudaSlice<u8>,
        h0: Option<cudarc::driver::CudaSlice<f32>>,
        h: cudarc::driver::CudaSlice<f32>,
        h_last: cudarc::driver::CudaSlice<f32>,
    },
    #[cfg(feature = "wgpu")]
    Wgpu {
        gpu: &'a crate::backend::wgpu::Wgpu,
        a: crate::backend::wgpu::GpuBuffer<T>,
        u: crate::backend::wgpu::GpuBuffer<T>,
        reset: crate::backend::wgpu::GpuBuffer<u8>,
        h0: Option<crate::backend::wgpu::GpuBuffer<T>>,
        h: crate::backend::wgpu::GpuBuffer<T>,
        h_last: crate::backend::wgpu::GpuBuffer<T>,
    },
    #[doc(hidden)]
    _Lifetime(std::marker::PhantomData<&'a T>),
}

impl<'a, T: ScanElement> OnDevice<'a, T> {
    /// Uploads the inputs and NaN-filled outputs; `None` on the CPU.
    fn new(
        backends: &'a Backends,
        backend: Backend,
        scan: &Scan<T>,
        inputs: &Inputs<T>,
    ) -> Result<Option<Self>> {
        let poison = |len: usize| vec![f32::NAN; len * T::LANES];
        match backend {
            Backend::Cpu => Ok(None),
            #[cfg(feature = "cuda")]
            Backend::Cuda => {
                let cuda = backends.cuda()?;
                let upload = |values: &[T]| cuda.upload(bytemuck::cast_slice::<T, f32>(values));
                Ok(Some(OnDevice::Cuda {
                    cuda,
                    a: upload(&inputs.a)?,
                    u: upload(&inputs.u)?,
                    reset: cuda.upload(&inputs.reset)?,
                    h0: inputs.h0.as_deref().map(upload).transpose()?,
                    h: cuda.upload(&poison(scan.states_len()))?,
                    h_last: cuda.upload(&poison(scan.final_len()))?,
                }))
            }
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => {
                let gpu = backends.wgpu()?;
                let poisoned =
                    |len: usize| gpu.upload(bytemuck::cast_slice::<f32, T>(&poison(len)));
                Ok(Some(OnDevice::Wgpu {
                    gpu,
                    a: gpu.upload(&inputs.a)?,
                    u: gpu.upload(&inputs.u)?,
                    reset: gpu.upload(&inputs.reset)?,
                    h0: inputs.h0.as_deref().map(|h0| gpu.upload(h0)).transpose()?,
                    h: poisoned(scan.states_len())?,
                    h_last: poisoned(scan.final_len())?,
                }))
            }
            #[allow(unreachable_patterns)]
            other => Err(other.not_compiled()),
        }
    }

    fn run(&mut self, scan: &Scan<T>, final_only: bool) -> Result<()> {
        match self {
            #[cfg(feature = "cuda")]
            OnDevice::Cuda {
                cuda,
                a,
                u,
                reset,
                h0,
                h,
                h_last,
            } => {
                use super::cuda::{ScanInputs, scan as full, scan_final};
                let inputs = ScanInputs {
                    a: &*a,
                    u: &*u,
                    reset: &*reset,
                    h0: h0.as_ref(),
                };
                if final_only {
                    scan_final(cuda, scan, inputs, h_last)
                } else {
                    full(cuda, scan, inputs, h, h_last)
                }
            }
            #[cfg(feature = "wgpu")]
            OnDevice::Wgpu {
                gpu,
                a,
                u,
                reset,
                h0,
                h,
                h_last,
            } => {
                use super::wgpu::{ScanInputs, scan as full, scan_final};
                let inputs = ScanInputs {
                    a: &*a,
                    u: &*u,
                    reset: &*reset,
                    h0: h0.as_ref(),
                };
                if final_only {
                    scan_final(gpu, scan, inputs, h_last)
                } else {
                    full(gpu, scan, inputs, h, h_last)
                }
            }
            OnDevice::_Lifetime(_) => unreachable!("never constructed"),
        }
    }

    fn read(&self, final_only: bool) -> Result<Outputs> {
        match self {
            #[cfg(feature = "cuda")]
            OnDevice::Cuda {
                cuda, h, h_last, ..
            } => Ok(Outputs {
                h: (!final_only).then(|| cuda.download(h)).transpose()?,
                h_last: cuda.download(h_last)?,
            }),
            #[cfg(feature = "wgpu")]
            OnDevice::Wgpu { gpu, h, h_last, .. } => {
                let floats = |v: Vec<T>| bytemuck::cast_slice::<T, f32>(&v).to_vec();
                Ok(Outputs {
                    h: (!final_only)
                        .then(|| gpu.download(h))
                        .transpose()?
                        .map(floats),
                    h_last: floats(gpu.download(h_last)?),
                })
            }
            OnDevice::_Lifetime(_) => unreachable!("never constructed"),
        }
    }

    fn clock(&self) -> Clock<'a> {
        match self {
            #[cfg(feature = "cuda")]
            OnDevice::Cuda { cuda, .. } => Clock::Cuda(cuda),
            #[cfg(feature = "wgpu")]
            OnDevice::Wgpu { gpu, .. } => Clock::Wgpu(gpu),
            OnDevice::_Lifetime(_) => unreachable!("never constructed"),
        }
    }
}
