//! TMA tensor maps for the sm_90a kernels: what a kernel's bulk tensor copies read, described
//! once ([`TensorMap`]), checked against the rules of `cuTensorMapEncodeTiled` with a typed
//! error, and encoded by the driver for a GPU or in the CPU emulator's own format
//! (`TfEmulatedTensorMap`, abi.h) for its tests.

use cudarc::driver::sys;

use super::super::abi::TfTensorMap;
use crate::error::{CudaResultExt, Error, Result};

/// The element type of a tensor a map describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TmaElement {
    F16,
    Bf16,
}

/// How a box lands in shared memory: packed rows, or rows of 128 bytes with their 16-byte
/// chunks permuted as wgmma's descriptors of the 128-byte swizzle read them (the kernels' one
/// mode; the emulator's tests also load unswizzled boxes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TmaSwizzle {
    #[cfg_attr(not(test), allow(dead_code))]
    None,
    B128,
}

impl TmaSwizzle {
    /// The bytes of a swizzled row (none: no limit but the box's).
    fn span(self) -> Option<u64> {
        match self {
            TmaSwizzle::None => None,
            TmaSwizzle::B128 => Some(128),
        }
    }

    /// `CUtensorMapSwizzle`'s value.
    #[cfg_attr(not(test), allow(dead_code))]
    fn code(self) -> u32 {
        match self {
            TmaSwizzle::None => 0,
            TmaSwizzle::B128 => 3,
        }
    }
}

/// A tensor of 16-bit elements at `address` and the boxes a kernel loads from it: `dims`
/// elements per dimension, innermost (contiguous) first; dimension i (from 1) `strides[i - 1]`
/// bytes apart; boxes of `boxes` elements. Elements of a box outside the tensor load as zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorMap {
    pub element: TmaElement,
    pub address: u64,
    pub dims: Vec<u64>,
    pub strides: Vec<u64>,
    pub boxes: Vec<u32>,
    pub swizzle: TmaSwizzle,
}

const ELEMENT_BYTES: u64 = 2;

impl TensorMap {
    /// An error unless the driver can encode this map: rank 1 to 5; the address and every
    /// stride a multiple of 16 bytes, strides below 2^40; dimensions 1 to 2^32; boxes 1 to 256
    /// elements, a box row a multiple of 16 bytes and, swizzled, exactly the swizzle's span.
    pub(crate) fn check(&self) -> Result<()> {
        let rank = self.dims.len();
        let invalid = |what: &'static str, expected: String, got: String| {
            Err(Error::InvalidArgument {
                what,
                expected,
                got,
            })
        };
        if !(1..=5).contains(&rank) || self.strides.len() + 1 != rank || self.boxes.len() != rank {
            return invalid(
                "tensor map rank",
                "1 to 5 dimensions, rank - 1 strides and rank box sizes".into(),
                format!(
                    "{rank} dimensions, {} strides, {} box sizes",
                    self.strides.len(),
                    self.boxes.len()
                ),
            );
        }
        if !self.address.is_multiple_of(16) {
            return invalid(
                "tensor map address",
                "a multiple of 16 bytes".into(),
                format!("{:#x}", self.address),
            );
        }
        if let Some(&dim) = self.dims.iter().find(|&&d| d == 0 || d > 1 << 32) {
            return invalid("tensor map dimension", "1 to 2^32".into(), dim.to_string());
        }
        if let Some(&stride) = self
            .strides
            .iter()
            .find(|&&s| !s.is_multiple_of(16) || s >= 1 << 40)
        {
            return invalid(
                "tensor map stride",
                "a multiple of 16 bytes below 2^40".into(),
                stride.to_string(),
            );
        }
        if let Some(&size) = self.boxes.iter().find(|&&b| b == 0 || b > 256) {
            return invalid(
                "tensor map box",
                "1 to 256 elements".into(),
                size.to_string(),
            );
        }
        let row = u64::from(self.boxes[0]) * ELEMENT_BYTES;
        match self.swizzle.span() {
            Some(span) if row != span => invalid(
                "tensor map box row",
                format!("the swizzle's {span} bytes"),
                format!("{row} bytes"),
            ),
            None if !row.is_multiple_of(16) => invalid(
                "tensor map box row",
                "a multiple of 16 bytes".into(),
                format!("{row} bytes"),
            ),
            _ => Ok(()),
        }
    }

    /// The map as the driver encodes it for a GPU (checked first).
    pub(crate) fn encode(&self) -> Result<TfTensorMap> {
        self.check()?;
        let data_type = match self.element {
            TmaElement::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            TmaElement::Bf16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        };
        let swizzle = match self.swizzle {
            TmaSwizzle::None => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
            TmaSwizzle::B128 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
        };
        let element_strides = vec![1u32; self.dims.len()];
        let mut map = sys::CUtensorMap { opaque: [0; 16] };
        // SAFETY: `map` is a local CUtensorMap the driver writes; the dimension, stride, box and
        // element-stride arrays hold rank, rank - 1, rank and rank entries (checked above), and
        // the driver only reads them. The address is not dereferenced by the encoding.
        let status = unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map,
                data_type,
                self.dims.len() as u32,
                self.address as *mut std::ffi::c_void,
                self.dims.as_ptr(),
                self.strides.as_ptr(),
                self.boxes.as_ptr(),
                element_strides.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                swizzle,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        status
            .result()
            .during(|| format!("encoding a tensor map of {:?} elements", self.dims))?;
        Ok(TfTensorMap { opaque: map.opaque })
    }

    /// The map in the CPU emulator's format (abi.h's `TfEmulatedTensorMap`), checked first.
    #[cfg(test)]
    pub(crate) fn emulated(&self) -> Result<TfTensorMap> {
        use super::super::abi::TF_EMULATED_TENSOR_MAP_MAGIC;
        self.check()?;
        let mut words = [0u64; 16];
        words[0] = TF_EMULATED_TENSOR_MAP_MAGIC;
        words[1] = self.address;
        words[2] = self.dims.len() as u64 | ELEMENT_BYTES << 32;
        words[3] = u64::from(self.swizzle.code());
        words[4..4 + self.dims.len()].copy_from_slice(&self.dims);
        words[9..9 + self.strides.len()].copy_from_slice(&self.strides);
        let mut boxes = [0u32; 6];
        boxes[..self.boxes.len()].copy_from_slice(&self.boxes);
        for (i, pair) in boxes.chunks(2).enumerate() {
            words[13 + i] = u64::from(pair[0]) | u64::from(pair[1]) << 32;
        }
        Ok(TfTensorMap { opaque: words })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile() -> TensorMap {
        TensorMap {
            element: TmaElement::F16,
            address: 0x1000,
            dims: vec![128, 4096, 8],
            strides: vec![256, 256 * 4096],
            boxes: vec![64, 64, 1],
            swizzle: TmaSwizzle::B128,
        }
    }

    /// Every rule of the driver's encoder is an error here, naming what it expected.
    #[test]
    fn maps_the_driver_would_refuse_are_errors() {
        assert!(tile().check().is_ok());
        type Change = fn(&mut TensorMap);
        let cases: [(&str, Change); 8] = [
            ("rank", |m| m.dims.push(1)),
            ("address", |m| m.address += 8),
            ("dimension", |m| m.dims[1] = 0),
            ("stride", |m| m.strides[0] = 200),
            ("box", |m| m.boxes[1] = 257),
            ("box row", |m| m.boxes[0] = 32),
            ("box row", |m| {
                m.swizzle = TmaSwizzle::None;
                m.boxes[0] = 12;
            }),
            ("rank", |m| {
                m.dims = vec![1; 6];
                m.strides = vec![16; 5];
                m.boxes = vec![8; 6];
            }),
        ];
        for (what, change) in cases {
            let mut map = tile();
            change(&mut map);
            let error = map.check().expect_err(what).to_string();
            assert!(
                error.contains(&format!("tensor map {what}")),
                "{what}: {error}"
            );
            assert!(
                map.emulated().is_err(),
                "{what}: the emulated encoding checks too"
            );
        }
    }
}
