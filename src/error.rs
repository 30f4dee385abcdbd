//! The crate's one error type.
//!
//! Every public entry point validates its arguments before launching anything and reports the
//! first problem as an [`Error`] that names the argument, what was expected and what came.

use std::fmt;

/// A specialised `Result` for tilefuse.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tilefuse.
///
/// The enum is `#[non_exhaustive]`: new operations add variants in minor releases, so match
/// with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CUDA backend cannot be used here; `reason` says which part is missing (driver,
    /// device, or kernels that were not compiled into this build).
    #[error("CUDA backend unavailable: {reason}")]
    CudaUnavailable {
        /// Why, and what to do about it.
        reason: String,
    },

    /// The wgpu backend cannot be used here (no adapter, or the adapter refused a device).
    #[error("wgpu backend unavailable: {reason}")]
    WgpuUnavailable {
        /// Why, and what to do about it.
        reason: String,
    },

    /// An array has the wrong shape.
    #[error("{what}: expected shape {expected}, got {got}")]
    Shape {
        /// The argument, e.g. `"x"`.
        what: &'static str,
        /// The shape the call needs, e.g. `"[n, k] = [16, 520]"`.
        expected: String,
        /// The shape that came.
        got: String,
    },

    /// A buffer holds a different number of elements than its shape needs.
    #[error("{what}: expected {expected} elements, got {got}")]
    Length {
        /// The argument.
        what: &'static str,
        /// Elements the shape needs.
        expected: usize,
        /// Elements the buffer holds.
        got: usize,
    },

    /// An argument is out of its allowed range or inconsistent with another.
    #[error("{what}: expected {expected}, got {got}")]
    InvalidArgument {
        /// The argument.
        what: &'static str,
        /// What is allowed.
        expected: String,
        /// What came.
        got: String,
    },

    /// A buffer lives on another device, context or wgpu instance than the handle in use.
    #[error("{what}: expected a buffer on {expected}, got one on {got}")]
    DeviceMismatch {
        /// The argument.
        what: &'static str,
        /// The device of the handle.
        expected: String,
        /// The device of the buffer.
        got: String,
    },

    /// A request exceeds a limit of the device (shared memory, buffer binding size, grid).
    #[error("{what}: needs {needed} but the device allows at most {limit} ({limit_name})")]
    DeviceLimit {
        /// What needed it.
        what: &'static str,
        /// The device limit's name.
        limit_name: &'static str,
        /// The amount needed.
        needed: u64,
        /// The limit.
        limit: u64,
    },

    /// The CUDA driver returned an error.
    #[cfg(feature = "cuda")]
    #[error("CUDA driver error while {during}: {source}")]
    Cuda {
        /// The step that failed, e.g. `"loading module smoke"`.
        during: String,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },

    /// wgpu reported an error (validation, out of memory, device lost, timeout).
    #[error("wgpu error while {during}: {message}")]
    Wgpu {
        /// The step that failed, e.g. `"compiling shader smoke.wgsl"`.
        during: String,
        /// wgpu's message.
        message: String,
    },
}

impl Error {
    /// An [`Error::DeviceLimit`] if `needed` is over `limit`.
    #[cfg(feature = "wgpu")]
    pub(crate) fn check_limit(
        what: &'static str,
        limit_name: &'static str,
        needed: u64,
        limit: u64,
    ) -> Result<()> {
        if needed > limit {
            return Err(Error::DeviceLimit {
                what,
                limit_name,
                needed,
                limit,
            });
        }
        Ok(())
    }

    /// An [`Error::InvalidArgument`].
    pub(crate) fn invalid(
        what: &'static str,
        expected: impl fmt::Display,
        got: impl fmt::Display,
    ) -> Self {
        Error::InvalidArgument {
            what,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    /// Whether this error says a backend is absent (rather than that a call was wrong).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::CudaUnavailable { .. } | Error::WgpuUnavailable { .. }
        )
    }
}

/// Attaches the step that failed to a CUDA driver error.
#[cfg(feature = "cuda")]
pub(crate) trait CudaResultExt<T> {
    /// Maps the driver error into [`Error::Cuda`] with `during` as context.
    fn during(self, during: impl FnOnce() -> String) -> Result<T>;
}

#[cfg(feature = "cuda")]
impl<T> CudaResultExt<T> for std::result::Result<T, cudarc::driver::DriverError> {
    fn during(self, during: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Cuda {
            during: during(),
            source,
        })
    }
}
