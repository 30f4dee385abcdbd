//! Kernels that the benchmark times beside the ones [`super::spmm`] runs for f16 in and out:
//! probes of the 16-token kernel (`cuda/spmm_probe.cu`, built with the `probes` feature),
//! which leave part of its work out (they write y = 0) to show where a tile's time goes, and
//! variants of every token count's kernel (`cuda/spmm.cu`), which do the same work another
//! way.

use crate::backend::abi::TF_SPMM_HELD_VECTORS;
use crate::backend::cuda::{Kernel, ids};
use crate::element::{Dtype16, Float16, OutputElement};
use crate::error::{Error, Result};

/// A probe or variant kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    /// Probe: the loads, waits and barriers alone.
    ProbeLoads,
    /// Probe: the loads and the scatter.
    ProbeScatter,
    /// Probe: all but the mma (the loads, the scatter and the zeroing of the dense tiles).
    ProbeNoMultiply,
    /// A tile's first `TF_SPMM_HELD_VECTORS` entry vectors through registers (Flash-LLM's way)
    /// instead of the shared-memory stages, for any number of tokens.
    EntriesInRegisters,
}

impl Variant {
    /// Every one, the probes first, from the least work to the most.
    pub(crate) const ALL: [Variant; 4] = [
        Variant::ProbeLoads,
        Variant::ProbeScatter,
        Variant::ProbeNoMultiply,
        Variant::EntriesInRegisters,
    ];

    /// The benchmark's name for its rows.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Variant::ProbeLoads => "tilefuse probe: loads only",
            Variant::ProbeScatter => "tilefuse probe: loads + scatter",
            Variant::ProbeNoMultiply => "tilefuse probe: all but mma",
            Variant::EntriesInRegisters => "tilefuse, entries in registers",
        }
    }

    /// Whether it leaves work out (and writes y = 0).
    pub(crate) fn is_probe(self) -> bool {
        self != Variant::EntriesInRegisters
    }

    /// Vectors of each tile that skip the stages.
    pub(crate) fn held_vectors(self) -> usize {
        match self {
            Variant::EntriesInRegisters => TF_SPMM_HELD_VECTORS as usize,
            _ => 0,
        }
    }

    /// Its kernel of `tokens_per_block`, which stands for spmm.cu's for f16 in and out (a
    /// probe: of 16 tokens per block only).
    pub(crate) fn kernel<T: Float16, O: OutputElement<T>>(
        self,
        tokens_per_block: u32,
    ) -> Result<Kernel> {
        f16_only::<T, O>("spmm variant")?;
        self.f16_kernel(tokens_per_block).ok_or_else(|| {
            Error::invalid(
                "n (spmm probe)",
                "9 to 16 tokens",
                format!("a launch of {tokens_per_block} tokens per block"),
            )
        })
    }

    /// Its kernel for `tokens_per_block` (8, 16, 32 or 64), if it has one.
    fn f16_kernel(self, tokens_per_block: u32) -> Option<Kernel> {
        let tokens = tokens_per_block.trailing_zeros() as usize - 3;
        match (self, tokens_per_block) {
            (Variant::ProbeLoads, 16) => Some(ids::spmm_probe::SPMM_PROBE[0]),
            (Variant::ProbeScatter, 16) => Some(ids::spmm_probe::SPMM_PROBE[1]),
            (Variant::ProbeNoMultiply, 16) => Some(ids::spmm_probe::SPMM_PROBE[2]),
            (Variant::EntriesInRegisters, _) => Some(ids::spmm::REGISTERS[tokens]),
            _ => None,
        }
    }
}

/// A probe of the bitmap kernel (`cuda/spmm_bitmap_probe.cu`, built with the `probes`
/// feature): its kernel of 16 tokens with part of the work left out (it writes y = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BitmapProbe {
    /// The stages' copies, waits and releases alone.
    Loads,
    /// All but the mma: the copies and the decode into fragments.
    NoMultiply,
}

impl BitmapProbe {
    /// Both, from the least work to the most.
    pub(crate) const ALL: [BitmapProbe; 2] = [BitmapProbe::Loads, BitmapProbe::NoMultiply];

    /// The benchmark's name for its rows.
    pub(crate) fn label(self) -> &'static str {
        match self {
            BitmapProbe::Loads => "tilefuse bitmap probe: loads only",
            BitmapProbe::NoMultiply => "tilefuse bitmap probe: all but mma",
        }
    }

    /// Its kernel, which stands for the bitmap kernel of f16 in and out and 16 tokens a block.
    pub(crate) fn kernel<T: Float16, O: OutputElement<T>>(
        self,
        tokens_per_block: u32,
    ) -> Result<Kernel> {
        f16_only::<T, O>("spmm bitmap probe")?;
        if tokens_per_block != 16 {
            return Err(Error::invalid(
                "n (spmm bitmap probe)",
                "9 to 16 tokens",
                format!("a launch of {tokens_per_block} tokens per block"),
            ));
        }
        Ok(ids::spmm_bitmap_probe::SPMM_BITMAP_PROBE[self as usize])
    }
}

/// An error unless `T` and `O` are f16 (the types the variants and probes have kernels for).
fn f16_only<T: Float16, O: OutputElement<T>>(what: &'static str) -> Result<()> {
    if T::DTYPE == Dtype16::F16 && !O::F32 {
        return Ok(());
    }
    let out = if O::F32 { "f32" } else { T::NAME };
    Err(Error::invalid(
        what,
        "f16 in and out",
        format!("{} in, {out} out", T::NAME),
    ))
}
