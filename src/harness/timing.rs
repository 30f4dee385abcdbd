//! Timing runs on each backend: CUDA events on the stream, wall clock around a bounded wait on
//! wgpu, wall clock on the host. Each sample repeats the run enough times to last
//! [`BenchSettings::min_sample`]; the median sample is reported.

use std::time::{Duration, Instant};

#[cfg(feature = "cuda")]
use crate::backend::cuda::Cuda;
#[cfg(feature = "wgpu")]
use crate::backend::wgpu::Wgpu;
use crate::error::Result;

/// How long and how often to time.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Untimed runs first (module loading, pipeline building, clocks ramping up).
    pub warmup: usize,
    /// Timed samples; the median is reported.
    pub samples: usize,
    /// Each sample repeats the run until it lasts about this long.
    pub min_sample: Duration,
}

impl Default for BenchSettings {
    fn default() -> Self {
        BenchSettings {
            warmup: 3,
            samples: 11,
            min_sample: Duration::from_millis(2),
        }
    }
}

impl BenchSettings {
    /// Few, short samples: for smoke runs of the benchmark code itself.
    pub fn quick() -> Self {
        BenchSettings {
            warmup: 1,
            samples: 3,
            min_sample: Duration::ZERO,
        }
    }

    /// Runs per sample, from how long one run took.
    fn repeats(&self, one_run: Duration) -> u64 {
        let one = one_run.as_secs_f64().max(1e-7);
        ((self.min_sample.as_secs_f64() / one).ceil() as u64).clamp(1, 10_000)
    }
}

/// Per-run times of the samples, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// One entry per sample: the sample's time divided by its runs.
    pub samples_us: Vec<f64>,
}

impl Timing {
    /// The median per-run time in microseconds.
    pub fn median_us(&self) -> f64 {
        let mut sorted = self.samples_us.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]),
        }
    }

    /// The fastest per-run time in microseconds.
    pub fn min_us(&self) -> f64 {
        self.samples_us
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    }
}

/// Where a run executes, which decides how it is timed.
#[derive(Debug, Clone, Copy)]
pub enum Clock<'a> {
    /// Host code: wall clock.
    Host,
    /// Work enqueued on the handle's stream: CUDA events.
    #[cfg(feature = "cuda")]
    Cuda(&'a Cuda),
    /// Work submitted to the handle's queue: wall clock around a wait for the queue.
    #[cfg(feature = "wgpu")]
    Wgpu(&'a Wgpu),
    #[doc(hidden)]
    _Lifetime(std::marker::PhantomData<&'a ()>),
}

/// A prepared benchmark: inputs are on the device, and each call of the closure does one run
/// (enqueues it, without waiting).
pub struct Runner<'a> {
    clock: Clock<'a>,
    run: Box<dyn FnMut() -> Result<()> + 'a>,
}

impl<'a> Runner<'a> {
    /// A runner that does one run per call of `run`, timed by `clock`.
    pub fn new(clock: Clock<'a>, run: impl FnMut() -> Result<()> + 'a) -> Self {
        Runner {
            clock,
            run: Box::new(run),
        }
    }

    /// Warms up, then takes `settings.samples` samples of enough runs each.
    pub fn time(&mut self, settings: &BenchSettings) -> Result<Timing> {
        for _ in 0..settings.warmup {
            (self.run)()?;
        }
        self.wait()?;
        let one = self.time_runs(1)?;
        let repeats = settings.repeats(one);
        let samples_us = (0..settings.samples.max(1))
            .map(|_| Ok(self.time_runs(repeats)?.as_secs_f64() * 1e6 / repeats as f64))
            .collect::<Result<_>>()?;
        Ok(Timing { samples_us })
    }

    /// The time `runs` back-to-back runs take, from the first start to the last end (what
    /// criterion's `iter_custom` wants).
    pub fn time_runs(&mut self, runs: u64) -> Result<Duration> {
        match self.clock {
            #[cfg(feature = "cuda")]
            Clock::Cuda(cuda) => time_on_stream(cuda, runs, &mut self.run),
            _ => {
                let start = Instant::now();
                for _ in 0..runs {
                    (self.run)()?;
                }
                self.wait()?;
                Ok(start.elapsed())
            }
        }
    }

    fn wait(&self) -> Result<()> {
        match self.clock {
            #[cfg(feature = "cuda")]
            Clock::Cuda(cuda) => cuda.synchronize(),
            #[cfg(feature = "wgpu")]
            Clock::Wgpu(gpu) => gpu.synchronize(),
            _ => Ok(()),
        }
    }
}

#[cfg(feature = "cuda")]
fn time_on_stream(cuda: &Cuda, runs: u64, run: &mut dyn FnMut() -> Result<()>) -> Result<Duration> {
    use crate::error::CudaResultExt;
    use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;

    let event = || {
        cuda.stream()
            .record_event(Some(CU_EVENT_DEFAULT))
            .during(|| "recording a timing event".into())
    };
    let start = event()?;
    for _ in 0..runs {
        run()?;
    }
    let end = event()?;
    end.synchronize()
        .during(|| "waiting for a timing event".into())?;
    let ms = start
        .elapsed_ms(&end)
        .during(|| "reading a timing event".into())?;
    Ok(Duration::from_secs_f64(f64::from(ms) * 1e-3))
}

/// One line of `tilefuse bench --json` (and of the GPU bundle's peer script, same schema).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRecord {
    /// The op, e.g. `"spmm"`, or `"copy"` for the bandwidth baseline.
    pub op: String,
    /// The case; tilefuse and its peers use the same string for the same work.
    pub case: String,
    /// The backend, e.g. `"cuda"`.
    pub backend: String,
    /// Whose code ran: `"tilefuse"`, or a baseline or peer such as `"cublas"`.
    pub implementation: String,
    /// The device or adapter name.
    pub device: String,
    /// Median time per run, µs.
    pub median_us: f64,
    /// Fastest time per run, µs.
    pub min_us: f64,
    /// Samples taken.
    pub samples: usize,
    /// Bytes moved per run.
    pub bytes: u64,
    /// Floating-point operations per run.
    pub flops: u64,
}

impl BenchRecord {
    /// Achieved bandwidth in GB/s (10⁹ bytes per second) at the median time.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / self.median_us / 1e3
    }

    /// Achieved TFLOP/s at the median time.
    pub fn tflops(&self) -> f64 {
        self.flops as f64 / self.median_us / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let t = Timing {
            samples_us: vec![3.0, 1.0, 2.0],
        };
        assert_eq!((t.median_us(), t.min_us()), (2.0, 1.0));
        let t = Timing {
            samples_us: vec![4.0, 1.0, 2.0, 3.0],
        };
        assert_eq!(t.median_us(), 2.5);
    }

    #[test]
    fn host_timing_counts_every_run() {
        let mut runs = 0;
        let settings = BenchSettings::quick();
        let timing = Runner::new(Clock::Host, || {
            runs += 1;
            Ok(())
        })
        .time(&settings)
        .unwrap();
        assert_eq!(timing.samples_us.len(), settings.samples);
        assert!(runs >= settings.warmup + 1 + settings.samples);
    }

    #[test]
    fn bandwidth_and_rate() {
        let r = BenchRecord {
            op: "copy".into(),
            case: "c".into(),
            backend: "cuda".into(),
            implementation: "tilefuse".into(),
            device: "d".into(),
            median_us: 1000.0,
            min_us: 900.0,
            samples: 3,
            bytes: 2_000_000_000,
            flops: 3_000_000_000,
        };
        approx::assert_relative_eq!(r.gbps(), 2000.0);
        approx::assert_relative_eq!(r.tflops(), 3.0);
    }
}
