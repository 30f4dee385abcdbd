//! SpMM on a [`Bitmap`] weight through WGSL (`wgsl/spmm_bitmap.wgsl`): each invocation walks
//! its row's set bits, so the time follows the nonzeros; 16-bit outputs go through
//! `spmm.wgsl`'s `finish`.

use std::marker::PhantomData;

use super::{GpuWeight, SpmmWorkspace};
use crate::backend::wgpu::{Bindings, GpuBuffer, Shader, Wgpu, wgsl_uniform};
use crate::element::{Dtype16, Float16, OutputElement};
use crate::error::Result;
use crate::spmm::bitmap::{Bitmap, UNIT_K};

const SHADER: Shader = Shader {
    name: "spmm_bitmap.wgsl",
    source: include_str!("../../../wgsl/spmm_bitmap.wgsl"),
};
/// Rows and tokens per workgroup.
const ROWS: usize = 64;
const TOKENS: usize = 8;

/// Loop iterations of an invocation per unit column, as if none were unrolled and with
/// llvmpipe counting one more for each loop's exit: the column loop, staging x (8), the 16
/// blocks, and for each of the 8 blocks of its row up to 8 values of 8 tokens.
const LOOPS_PER_UNIT: usize = 1 + 9 + 17 + 8 * (1 + 8 * 9);
/// Loop iterations of an invocation besides its unit columns' (at most).
const LOOPS_PER_INVOCATION: usize = 16;

/// A [`Bitmap`] weight in a wgpu device's memory.
#[derive(Debug)]
pub struct GpuBitmap<T: Float16> {
    m: usize,
    k: usize,
    masks: GpuBuffer<u64>,
    unit_offsets: GpuBuffer<u32>,
    values: GpuBuffer<u16>,
    element: PhantomData<T>,
}

impl<T: Float16> GpuBitmap<T> {
    /// Copies `w` to `gpu`'s device.
    pub fn upload(gpu: &Wgpu, w: &Bitmap<T>) -> Result<Self> {
        Ok(GpuBitmap {
            m: w.m(),
            k: w.k(),
            masks: gpu.upload(w.masks())?,
            unit_offsets: gpu.upload(w.unit_offsets())?,
            values: gpu.upload(w.values())?,
            element: PhantomData,
        })
    }
}

wgsl_uniform! {
    struct Params {
        m: u32,
        n: u32,
        k: u32,
        units_k: u32,
        unit_first: u32,
        unit_count: u32,
        accumulate: u32,
        pad0: u32,
    }
}

impl<T: Float16> GpuWeight<T> for GpuBitmap<T> {
    fn shape(&self) -> [usize; 2] {
        [self.m, self.k]
    }

    fn buffer(&self) -> &GpuBuffer<impl Sized> {
        &self.values
    }

    fn scratch_len(&self, n: usize) -> usize {
        n * self.m // the sums of a 16-bit output, before `finish`
    }

    fn submit<O: OutputElement<T>>(
        &self,
        gpu: &Wgpu,
        x: &GpuBuffer<T>,
        y: &mut GpuBuffer<O>,
        n: usize,
        workspace: &mut SpmmWorkspace,
    ) -> Result<()> {
        let w = self;
        let units_k = w.k.div_ceil(UNIT_K);
        let scratch = match O::F32 {
            true => None,
            false => Some(workspace.grow(gpu, n * w.m)?),
        };
        let sums = scratch.map_or(y.raw(), |s| s.raw());
        let bound = Bindings::new(gpu, SHADER)
            .windowed([1, 11, 12, 13], w.masks.raw(), false)?
            .whole(2, w.unit_offsets.raw())
            .windowed([3, 14, 15, 16], w.values.raw(), false)?
            .windowed([4, 17, 18, 19], x.raw(), false)?
            .windowed([5, 20, 21, 22], sums, true)?;
        let constants = [("BF16", if T::DTYPE == Dtype16::Bf16 { 1.0 } else { 0.0 })];
        let pipeline = gpu.pipeline(SHADER, "bitmap", &constants)?;
        let grid = [w.m.div_ceil(ROWS) as u32, n.div_ceil(TOKENS) as u32, 1];
        for units in gpu.loop_passes(units_k, LOOPS_PER_UNIT, LOOPS_PER_INVOCATION) {
            let params = Params {
                m: w.m as u32,
                n: n as u32,
                k: w.k as u32,
                units_k: units_k as u32,
                unit_first: units.start as u32,
                unit_count: units.len() as u32,
                accumulate: u32::from(units.start > 0),
                pad0: 0,
            };
            gpu.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), bound.list(), grid)?;
        }
        match scratch {
            Some(scratch) => super::finish::<T, O>(gpu, scratch, y, [n, w.m], 1),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;
    use crate::harness::{Rng, compare};
    use crate::spmm::check::nan_bits;
    use crate::spmm::{Case, reference, tolerance, weight};

    /// The uniform struct is laid out as the shader reads it.
    #[test]
    fn params_match_the_shader() {
        SHADER.assert_uniform("Params", Params::LAYOUT, size_of::<Params>());
    }

    /// `case` with a bitmap weight on `gpu`, `y` poisoned with NaN, against the reference.
    fn check<T, O>(gpu: &Wgpu, case: &Case, seed: u64)
    where
        T: Float16,
        O: OutputElement<T>,
    {
        let case = &Case {
            bf16: T::DTYPE == Dtype16::Bf16,
            out_f32: O::F32,
            ..*case
        };
        let dense = weight::<T>(case, seed).unwrap().decode();
        let w = Bitmap::encode(&dense, case.m, case.k).unwrap();
        let mut rng = Rng::new(seed ^ 1);
        let x: Vec<T> = (0..case.n * case.k)
            .map(|_| T::from_f64(rng.uniform(-1.0, 1.0)))
            .collect();
        let device_w = GpuBitmap::upload(gpu, &w).unwrap();
        let x_device = gpu.upload(&x).unwrap();
        let mut y = gpu.upload(&vec![nan_bits::<O>(); case.n * case.m]).unwrap();
        super::super::spmm(gpu, &device_w, &x_device, &mut y).unwrap();
        let got: Vec<f64> = gpu
            .download(&y)
            .unwrap()
            .into_iter()
            .map(O::to_f64)
            .collect();
        let want = reference(&w, &x).unwrap();
        let c = compare(&got, &want, tolerance(case.bf16, case.out_f32, case.k));
        assert!(c.passed(), "{case}, seed {seed}: {c}");
    }

    /// Every density, ragged shapes, every token count up to a few workgroups, both types and
    /// both outputs, and k long enough that lavapipe takes several passes.
    #[test]
    fn bitmap_spmm_matches_the_reference() {
        let Some(gpu) = crate::backend::wgpu::tests::gpu() else {
            return;
        };
        let seed = Rng::fresh_seed();
        for (m, k, n, sparsity) in [
            (1, 1, 1, 0.0),
            (17, 65, 3, 0.5),
            (130, 200, 9, 0.8),
            (300, 520, 16, 0.0),
            (64, 128, 17, 1.0),
            (100, 64 * 120, 5, 0.5),
        ] {
            let case = Case::new(m, k, n, sparsity);
            check::<f16, f32>(&gpu, &case, seed);
            check::<f16, f16>(&gpu, &case, seed);
            check::<bf16, bf16>(&gpu, &case, seed);
        }
    }

    /// On a device whose bindings hold 64 KiB, values, x and y span several windows.
    #[test]
    fn bitmap_spmm_runs_in_windows() {
        let Some(gpu) = crate::backend::wgpu::tests::capped_gpu() else {
            return;
        };
        let case = Case::new(300, 520, 64, 0.3);
        check::<f16, f32>(&gpu, &case, Rng::fresh_seed());
    }
}
