//! The element types of the ops' tensors, shared by every op and backend.
//!
//! - [`Float16`]: the 16-bit operand types, [`struct@f16`] and [`bf16`] (spmm's weight and
//!   activations, attention's q, k and v).
//! - [`OutputElement`]: what a product over a [`Float16`] `T` may be written as: `T` itself or
//!   `f32`.
//! - [`DeviceFloat16`] and [`DeviceOutput`]: the same, with what the GPU backends built into
//!   this crate also ask of a type (on CUDA, cudarc's `DeviceRepr`).
//!
//! The scan's own element types (f32 and Complex32) are [`crate::scan::ScanElement`].

use half::{bf16, f16};

/// Which 16-bit format a [`Float16`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype16 {
    /// IEEE half precision.
    F16 = 0,
    /// bfloat16.
    Bf16 = 1,
}

/// A 16-bit floating-point operand type: [`struct@f16`] or [`bf16`]; also an output type of
/// its own products.
pub trait Float16:
    sealed::Sealed
    + OutputElement<Self>
    + Copy
    + Default
    + PartialEq
    + bytemuck::Pod
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    /// `"f16"` or `"bf16"`, as kernel names and file metadata spell it.
    const NAME: &'static str;
    /// Which one it is.
    const DTYPE: Dtype16;
    /// The value's bits.
    fn bits(self) -> u16;
    /// The value with these bits.
    fn from_bits(bits: u16) -> Self;
    /// The nearest value to `value`.
    fn from_f64(value: f64) -> Self;
}

impl Float16 for f16 {
    const NAME: &'static str = "f16";
    const DTYPE: Dtype16 = Dtype16::F16;
    fn bits(self) -> u16 {
        self.to_bits()
    }
    fn from_bits(bits: u16) -> Self {
        f16::from_bits(bits)
    }
    fn from_f64(value: f64) -> Self {
        f16::from_f64(value)
    }
}

impl Float16 for bf16 {
    const NAME: &'static str = "bf16";
    const DTYPE: Dtype16 = Dtype16::Bf16;
    fn bits(self) -> u16 {
        self.to_bits()
    }
    fn from_bits(bits: u16) -> Self {
        bf16::from_bits(bits)
    }
    fn from_f64(value: f64) -> Self {
        bf16::from_f64(value)
    }
}

/// An output type of a product over `T` (an spmm or attention result): `T` itself or `f32`.
pub trait OutputElement<T>:
    sealed::SealedOutput<T> + Copy + bytemuck::Pod + Send + Sync + 'static
{
    /// Whether the output is f32.
    const F32: bool;
    /// As f64, for comparisons.
    fn to_f64(self) -> f64;
}

impl OutputElement<f16> for f16 {
    const F32: bool = false;
    fn to_f64(self) -> f64 {
        self.into()
    }
}

impl OutputElement<bf16> for bf16 {
    const F32: bool = false;
    fn to_f64(self) -> f64 {
        self.into()
    }
}

impl<T: Float16> OutputElement<T> for f32 {
    const F32: bool = true;
    fn to_f64(self) -> f64 {
        self.into()
    }
}

/// A [`Float16`] the GPU backends of this build take (on CUDA it is also `DeviceRepr`).
#[cfg(feature = "cuda")]
pub trait DeviceFloat16: Float16 + cudarc::driver::DeviceRepr {}
#[cfg(feature = "cuda")]
impl<T: Float16 + cudarc::driver::DeviceRepr> DeviceFloat16 for T {}
/// A [`Float16`] the GPU backends of this build take.
#[cfg(not(feature = "cuda"))]
pub trait DeviceFloat16: Float16 {}
#[cfg(not(feature = "cuda"))]
impl<T: Float16> DeviceFloat16 for T {}

/// An [`OutputElement`] the GPU backends of this build write (on CUDA it is also `DeviceRepr`).
#[cfg(feature = "cuda")]
pub trait DeviceOutput<T>: OutputElement<T> + cudarc::driver::DeviceRepr {}
#[cfg(feature = "cuda")]
impl<T, O: OutputElement<T> + cudarc::driver::DeviceRepr> DeviceOutput<T> for O {}
/// An [`OutputElement`] the GPU backends of this build write.
#[cfg(not(feature = "cuda"))]
pub trait DeviceOutput<T>: OutputElement<T> {}
#[cfg(not(feature = "cuda"))]
impl<T, O: OutputElement<T>> DeviceOutput<T> for O {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}

    pub trait SealedOutput<T> {}
    impl SealedOutput<half::f16> for half::f16 {}
    impl SealedOutput<half::bf16> for half::bf16 {}
    impl<T> SealedOutput<T> for f32 {}
}
