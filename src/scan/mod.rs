//! The diagonal linear recurrence with hidden-state resets: the scan inside S4/S5 layers as
//! used for in-context reinforcement learning (Lu et al. 2023; popjaxrl's
//! `binary_operator_reset` with the carried state prepended).
//!
//! For each batch row b, time step t and channel p:
//!
//! ```text
//! h[b,t,p] = u[b,t,p]                      if reset[b,t]
//! h[b,t,p] = a · h[b,t−1,p] + u[b,t,p]     otherwise,      h[b,−1,p] = h0[b,p] (0 if none)
//! ```
//!
//! A reset at t discards the state before t and keeps the input at t, so episodes of any
//! length can be packed back to back in one rollout, and the final state `h_last [b, p]` is
//! carried into the next call as `h0`.
//!
//! - `a` is time-invariant `[p]` (S5's Λ̄, never materialised per step) or time-varying
//!   `[b, t, p]` (selective, Mamba-like), see [`Decay`].
//! - Elements are `f32` or [`Complex32`] ([`ScanElement`]). On the GPU backends `u` and `h`
//!   (and the backward's `dh` and `du`) may be stored in f16 or bf16 ([`StateStorage`],
//!   complex values as pairs), as Mamba's kernels take bf16: every operation and every carry
//!   stays f32, and the error is one rounding of each stored value (the carry is never
//!   rounded, so it does not accumulate). The CPU functions take the values as f32s.
//! - `u`, `h` and a time-varying `a` are `[b, t, p]` batch-major or `[t, b, p]` time-major
//!   ([`Layout`]), p contiguous; `reset` is u8 `[b, t]` or `[t, b]` in the same order
//!   (non-zero = reset); `h0` and `h_last` are `[b, p]`.
//! - A final-state-only mode returns `h_last` without writing `h`.
//!
//! ```
//! use tilefuse::scan::{Decay, Layout, Scan, ScanShape, reference};
//!
//! // One channel, four steps, a reset at t = 2.
//! let scan = Scan::<f32>::new(ScanShape::new(1, 4, 1)?, Layout::BatchMajor, Decay::TimeInvariant);
//! let states = reference(&scan, &[0.5], &[1.0, 1.0, 1.0, 1.0], &[0, 0, 1, 0], Some(&[2.0]))?;
//! assert_eq!(states.h, vec![2.0, 2.0, 1.0, 1.5]);
//! assert_eq!(states.h_last, vec![1.5]);
//! # Ok::<(), tilefuse::Error>(())
//! ```
//!
//! On CUDA ([`cuda::scan`]) the kernel reads `u` once and writes `h` once, with a decoupled
//! look-back across time chunks, so a long rollout runs at memory speed; complex buffers are
//! interleaved `(re, im)` f32 pairs, the layout of [`Complex32`]. Through WGSL
//! ([`wgpu::scan`]) the same function runs on any adapter. Results are deterministic: the same
//! inputs give the same bits run after run.
//!
//! # Backward
//!
//! Given the cotangents `dh [b, t, p]` of every state (zeros allowed) and optionally
//! `dh_last [b, p]` of the final state, with `g[T−1] = dh[T−1] + dh_last` and, going back in
//! time, `g[t] = dh[t] + (reset[t+1] ? 0 : a[t+1]·g[t+1])`:
//!
//! ```text
//! du[t] = g[t]
//! da[t] = reset[t] ? 0 : g[t]·h[t−1]      (time-invariant a: summed over b and t)
//! dh0   = reset[0] ? 0 : a[0]·g[0]
//! ```
//!
//! with `h[−1] = h0`: the gradient stops at every reset, so nothing flows from an episode into
//! the one before it. For complex64 these are plain products, without conjugation: the
//! transpose convention of `jax.vjp` (for `h = a·h' + u`, JAX's cotangents are `da = ct·h'`
//! and `dh' = ct·a`); PyTorch's convention for complex gradients is the conjugate of this one.
//! [`reference_backward`] is the specification.

/// `$f::<T, S>`, the instance of a function generic over the element type `T` (f32, or
/// Complex32 when `$complex`) and the states' storage `S` that `$storage` names, as a fn
/// pointer: one place that turns a case's flags into types.
macro_rules! typed_for {
    ($f:ident, $complex:expr, $storage:expr) => {
        match ($complex, $storage) {
            (false, $crate::scan::Storage::F32) => $f::<f32, f32>,
            (false, $crate::scan::Storage::F16) => $f::<f32, half::f16>,
            (false, $crate::scan::Storage::Bf16) => $f::<f32, half::bf16>,
            (true, $crate::scan::Storage::F32) => $f::<num_complex::Complex32, f32>,
            (true, $crate::scan::Storage::F16) => $f::<num_complex::Complex32, half::f16>,
            (true, $crate::scan::Storage::Bf16) => $f::<num_complex::Complex32, half::bf16>,
        }
    };
}
pub(crate) use typed_for;

mod backward;
mod bench;
mod check;
mod check_backward;
#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "cuda")]
pub mod cuda;
mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use std::marker::PhantomData;

pub use backward::{
    BackwardCase, Cotangents, DeviceGradients, Gradients, associative_backward, random_cotangents,
    reference_backward,
};
pub use bench::BENCH_SHAPES;
pub use check::{Case, ENTRY, Inputs, Outputs, ResetPattern, check, run};
pub use check_backward::{BACKWARD_ENTRY, check_backward, run_backward};
use num_complex::{Complex32, Complex64};
pub use reference::{States, associative_scan, reference};

use crate::error::{Error, Result};

/// An element type of the scan: `f32` or [`Complex32`].
pub trait ScanElement:
    sealed::Sealed + Copy + bytemuck::Pod + Send + Sync + std::fmt::Debug + 'static
{
    /// The name used in kernel names and case names: `"f32"` or `"c64"`.
    const NAME: &'static str;
    /// f32 values per element: 1 or 2 (`re, im`).
    const LANES: usize;
    /// The value as a complex f64 (imaginary part 0 for reals).
    fn widen(self) -> Complex64;
    /// The nearest element to `value` (the imaginary part is dropped for reals).
    fn narrow(value: Complex64) -> Self;
}

impl ScanElement for f32 {
    const NAME: &'static str = "f32";
    const LANES: usize = 1;
    fn widen(self) -> Complex64 {
        Complex64::new(self.into(), 0.0)
    }
    fn narrow(value: Complex64) -> Self {
        value.re as f32
    }
}

impl ScanElement for Complex32 {
    const NAME: &'static str = "c64";
    const LANES: usize = 2;
    fn widen(self) -> Complex64 {
        Complex64::new(self.re.into(), self.im.into())
    }
    fn narrow(value: Complex64) -> Self {
        Complex32::new(value.re as f32, value.im as f32)
    }
}

/// How `u` and `h` (and the backward's `dh`, `du`) are stored on the GPU backends: `f32`, or
/// 16-bit ([`struct@half::f16`], [`half::bf16`]) with the arithmetic and every carry in f32.
/// A complex value is an interleaved `(re, im)` pair of the storage type. `a`, `h0`, `h_last`
/// and the backward's `da`, `dh0`, `dh_last` stay f32 whatever the storage.
pub trait StateStorage:
    sealed::SealedStorage
    + Copy
    + Default
    + PartialEq
    + bytemuck::Pod
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    /// Which one it is.
    const STORAGE: Storage;
    /// The nearest stored value to `value` (round to nearest even).
    fn from_f32(value: f32) -> Self;
    /// The stored value, exactly.
    fn to_f32(self) -> f32;
}

/// The storage types of [`StateStorage`], by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Storage {
    /// f32: the storage of the arithmetic itself.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl Storage {
    /// `"f32"`, `"f16"` or `"bf16"`, as kernel names and case names spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F16 => "f16",
            Storage::Bf16 => "bf16",
        }
    }

    /// `value` rounded to this storage and widened back: what a stored f32 reads as.
    pub fn round(self, value: f32) -> f32 {
        match self {
            Storage::F32 => value,
            Storage::F16 => half::f16::from_f32(value).to_f32(),
            Storage::Bf16 => half::bf16::from_f32(value).to_f32(),
        }
    }

    /// The relative rounding error of one stored value (the unit roundoff, 2^−p).
    pub fn unit_roundoff(self) -> f64 {
        match self {
            Storage::F32 => f64::from(f32::EPSILON) / 2.0,
            Storage::F16 => 2f64.powi(-11),
            Storage::Bf16 => 2f64.powi(-8),
        }
    }
}

impl StateStorage for f32 {
    const STORAGE: Storage = Storage::F32;
    fn from_f32(value: f32) -> Self {
        value
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl StateStorage for half::f16 {
    const STORAGE: Storage = Storage::F16;
    fn from_f32(value: f32) -> Self {
        half::f16::from_f32(value)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl StateStorage for half::bf16 {
    const STORAGE: Storage = Storage::Bf16;
    fn from_f32(value: f32) -> Self {
        half::bf16::from_f32(value)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for num_complex::Complex32 {}

    /// On CUDA a stored value also crosses into kernels (cudarc's `DeviceRepr`).
    #[cfg(feature = "cuda")]
    pub trait SealedStorage: cudarc::driver::DeviceRepr {}
    #[cfg(not(feature = "cuda"))]
    pub trait SealedStorage {}
    impl SealedStorage for f32 {}
    impl SealedStorage for half::f16 {}
    impl SealedStorage for half::bf16 {}
}

/// How `u`, `h`, a time-varying `a` and `reset` are laid out in memory (p is contiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// `[b, t, p]` (and `reset [b, t]`): each batch row's rollout is contiguous.
    #[default]
    BatchMajor,
    /// `[t, b, p]` (and `reset [t, b]`): each time step of all rows is contiguous, as rollout
    /// buffers in RL usually are.
    TimeMajor,
}

/// Whether `a` depends on time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Decay {
    /// `a [p]`, the same at every step (S4/S5's discretised Λ̄).
    #[default]
    TimeInvariant,
    /// `a` laid out like `u`, one value per (b, t, p) (selective scans).
    TimeVarying,
}

/// The sizes of a scan, validated by [`ScanShape::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScanShape {
    batch: usize,
    time: usize,
    channels: usize,
}

/// The longest sequence the kernels take (their time arithmetic is 32-bit).
pub const MAX_TIME: usize = 1 << 30;

impl ScanShape {
    /// A shape with every size at least 1, `time ≤` [`MAX_TIME`], and `b·t·p` complex values
    /// addressable in bytes.
    pub fn new(batch: usize, time: usize, channels: usize) -> Result<Self> {
        for (what, size) in [("batch", batch), ("time", time), ("channels", channels)] {
            if size == 0 {
                return Err(Error::invalid(what, "a size of at least 1", size));
            }
        }
        if time > MAX_TIME {
            return Err(Error::invalid(
                "time",
                format!("at most {MAX_TIME} steps"),
                time,
            ));
        }
        if batch
            .checked_mul(time)
            .and_then(|bt| bt.checked_mul(channels))
            .and_then(|n| n.checked_mul(8))
            .is_none_or(|bytes| bytes > isize::MAX as usize)
        {
            return Err(Error::invalid(
                "shape",
                "b·t·p complex values addressable in memory",
                format!("[{batch}, {time}, {channels}]"),
            ));
        }
        Ok(ScanShape {
            batch,
            time,
            channels,
        })
    }

    /// Batch rows (b).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Time steps (t).
    pub fn time(&self) -> usize {
        self.time
    }

    /// Channels (p).
    pub fn channels(&self) -> usize {
        self.channels
    }
}

/// One scan problem: shape, layout, kind of `a`, and element type `T`. It says how long each
/// buffer must be and where each element lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scan<T: ScanElement> {
    /// The sizes.
    pub shape: ScanShape,
    /// The memory order of `u`, `h`, a time-varying `a` and `reset`.
    pub layout: Layout,
    /// Whether `a` depends on time.
    pub decay: Decay,
    element: PhantomData<fn() -> T>,
}

impl<T: ScanElement> Scan<T> {
    /// A scan of `T` elements.
    pub const fn new(shape: ScanShape, layout: Layout, decay: Decay) -> Self {
        Scan {
            shape,
            layout,
            decay,
            element: PhantomData,
        }
    }

    /// Elements of `u` and `h`: b·t·p.
    pub fn states_len(&self) -> usize {
        self.shape.batch * self.shape.time * self.shape.channels
    }

    /// Elements of `a`: p, or b·t·p when time-varying.
    pub fn a_len(&self) -> usize {
        match self.decay {
            Decay::TimeInvariant => self.shape.channels,
            Decay::TimeVarying => self.states_len(),
        }
    }

    /// Bytes of `reset`: b·t.
    pub fn reset_len(&self) -> usize {
        self.shape.batch * self.shape.time
    }

    /// Elements of `h0` and `h_last`: b·p.
    pub fn final_len(&self) -> usize {
        self.shape.batch * self.shape.channels
    }

    /// Element strides `(batch, time)` of `u`, `h` and a time-varying `a`.
    pub fn strides(&self) -> (usize, usize) {
        let (b, t, p) = (self.shape.batch, self.shape.time, self.shape.channels);
        match self.layout {
            Layout::BatchMajor => (t * p, p),
            Layout::TimeMajor => (p, b * p),
        }
    }

    /// Byte strides `(batch, time)` of `reset`.
    pub fn reset_strides(&self) -> (usize, usize) {
        match self.layout {
            Layout::BatchMajor => (self.shape.time, 1),
            Layout::TimeMajor => (1, self.shape.batch),
        }
    }

    /// The index of element (b, t, p) of `u` and `h`; none outside the shape.
    pub fn index(&self, b: usize, t: usize, p: usize) -> Option<usize> {
        let s = self.shape;
        (b < s.batch && t < s.time && p < s.channels).then(|| self.at(b, t, p))
    }

    /// The index of reset flag (b, t); none outside the shape.
    pub fn reset_index(&self, b: usize, t: usize) -> Option<usize> {
        let s = self.shape;
        (b < s.batch && t < s.time).then(|| self.reset_at(b, t))
    }

    /// [`Self::index`] inside the shape, which bounds it below `states_len`.
    pub(crate) fn at(&self, b: usize, t: usize, p: usize) -> usize {
        let (batch, time) = self.strides();
        b * batch + t * time + p
    }

    /// [`Self::reset_index`] inside the shape.
    pub(crate) fn reset_at(&self, b: usize, t: usize) -> usize {
        let (batch, time) = self.reset_strides();
        b * batch + t * time
    }

    /// Checks buffer lengths, given in elements of `T` (`h0`/`h` absent: `None`).
    pub(crate) fn check_lengths(&self, buffers: BufferLengths) -> Result<()> {
        let expected = [
            ("a", Some(self.a_len()), Some(buffers.a)),
            ("u", Some(self.states_len()), Some(buffers.u)),
            ("reset", Some(self.reset_len()), Some(buffers.reset)),
            ("h0", buffers.h0.map(|_| self.final_len()), buffers.h0),
            ("h", buffers.h.map(|_| self.states_len()), buffers.h),
            ("h_last", Some(self.final_len()), Some(buffers.h_last)),
        ];
        for (what, expected, got) in expected {
            if let (Some(expected), Some(got)) = (expected, got)
                && expected != got
            {
                return Err(Error::Length {
                    what,
                    expected,
                    got,
                });
            }
        }
        Ok(())
    }
}

/// Buffer lengths in elements, for [`Scan::check_lengths`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct BufferLengths {
    pub a: usize,
    pub u: usize,
    pub reset: usize,
    pub h0: Option<usize>,
    pub h: Option<usize>,
    pub h_last: usize,
}

/// A buffer length in f32 (or stored 16-bit) values as a count of `T` elements, or the error
/// naming `what`.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) fn elements_of<T: ScanElement>(what: &'static str, values: usize) -> Result<usize> {
    if values.is_multiple_of(T::LANES) {
        Ok(values / T::LANES)
    } else {
        Err(Error::invalid(
            what,
            format!(
                "a whole number of {} elements ({} values each)",
                T::NAME,
                T::LANES
            ),
            format!("{values} values"),
        ))
    }
}
