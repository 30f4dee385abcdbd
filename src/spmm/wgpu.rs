//! SpMM through WGSL (`wgsl/spmm.wgsl`): the same Tiled-CSL buffers, scattered into
//! workgroup memory, f32 arithmetic; and on a [`Bitmap`](crate::spmm::Bitmap) weight
//! ([`GpuBitmap`], `wgsl/spmm_bitmap.wgsl`).

use std::marker::PhantomData;

use super::format::{TILE_K, TiledCsl};
use super::reference::output_tokens;
use crate::backend::wgpu::{Bindings, GpuBuffer, Shader, WINDOWS, Wgpu, wgsl_uniform};
use crate::element::{Dtype16, Float16, OutputElement};
use crate::error::Result;

mod bitmap;
pub use bitmap::GpuBitmap;

const SHADER: Shader = Shader {
    name: "spmm.wgsl",
    source: concat!(
        include_str!("../../wgsl/common/to_bits.wgsl"),
        include_str!("../../wgsl/spmm.wgsl")
    ),
};
/// Rows and tokens per workgroup.
const ROWS: usize = 64;
const TOKENS: usize = 16;

/// A [`TiledCsl`] weight in a wgpu device's memory.
#[derive(Debug)]
pub struct GpuTiledCsl<T: Float16> {
    m: usize,
    k: usize,
    entries: GpuBuffer<u32>,
    tile_offsets: GpuBuffer<u32>,
    element: PhantomData<T>,
}

impl<T: Float16> GpuTiledCsl<T> {
    /// Copies `w` to `gpu`'s device.
    pub fn upload(gpu: &Wgpu, w: &TiledCsl<T>) -> Result<Self> {
        Ok(GpuTiledCsl {
            m: w.m(),
            k: w.k(),
            entries: gpu.upload(w.device_entries())?,
            tile_offsets: gpu.upload(w.tile_offsets())?,
            element: PhantomData,
        })
    }
}

wgsl_uniform! {
    struct Params {
        m: u32,
        n: u32,
        k: u32,
        tiles_k: u32,
        splits: u32,
        tiles_per_split: u32,
        tile_first: u32,
        tile_count: u32,
        accumulate: u32,
        out_f32: u32,
        pad0: u32,
        pad1: u32,
    }
}

/// Loop iterations of an invocation per k tile, as if none were unrolled and with llvmpipe
/// counting one more for each loop's exit: the tile loop, scattering (at most 8 steps), staging
/// x (4), and the two halves of a row's mask, up to 32 entries each.
const LOOPS_PER_TILE: usize = 1 + 9 + 5 + 3 + 2 * 33;
/// Loop iterations of an invocation besides its tiles' (at most).
const LOOPS_PER_INVOCATION: usize = 32;

/// Workgroups a launch aims for: enough to fill a large GPU (132 SMs x 16), which a tall
/// weight gives by itself and a short one through split-K.
const WANTED_WORKGROUPS: usize = 2048;

/// The workgroups and k splits of one call.
struct Launch {
    tiles_k: usize,
    /// Workgroups per split: (row blocks, token blocks).
    groups: [usize; 2],
    splits: usize,
    tiles_per_split: usize,
}

impl Launch {
    fn new<T: Float16>(w: &GpuTiledCsl<T>, n: usize) -> Launch {
        let tiles_k = w.k.div_ceil(TILE_K);
        let groups = [w.m.div_ceil(ROWS), n.div_ceil(TOKENS)];
        let tiles_per_split = tiles_k.div_ceil(splits(groups[0] * groups[1], tiles_k));
        Launch {
            tiles_k,
            groups,
            splits: tiles_k.div_ceil(tiles_per_split),
            tiles_per_split,
        }
    }

    /// The f32 sums of all splits for `n` tokens and `m` rows.
    fn sums(&self, n: usize, m: usize) -> usize {
        self.splits * n * m
    }
}

/// Split-K for `groups` workgroups per split: at least four k tiles per split (or the count a
/// unit test sets).
fn splits(groups: usize, tiles_k: usize) -> usize {
    #[cfg(test)]
    if let Some(splits) = tests::SPLITS.get() {
        return splits.clamp(1, tiles_k);
    }
    WANTED_WORKGROUPS
        .div_ceil(groups)
        .clamp(1, tiles_k.div_ceil(4).max(1))
        .min(u16::MAX as usize)
}

/// The f32 sums of split-K (and of 16-bit outputs), kept from one [`spmm_with_workspace`]
/// to the next so that each call saves an allocation; it grows to the largest call it has
/// served. It belongs to the device it was first used on: passing it to another is an
/// error.
#[derive(Debug, Default)]
pub struct SpmmWorkspace {
    sums: Option<GpuBuffer<f32>>,
}

impl SpmmWorkspace {
    /// An empty workspace; the first call that needs one allocates it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.sums.as_ref().map_or(0, |sums| sums.len() * 4)
    }

    /// Grows the workspace to what [`spmm_with_workspace`] needs for `w` and `n` tokens on
    /// `gpu`, so that those calls allocate no storage buffer (each dispatch still makes its small
    /// uniform buffer and bind group).
    pub fn reserve<T: Float16>(
        &mut self,
        gpu: &Wgpu,
        w: &impl GpuWeight<T>,
        n: usize,
    ) -> Result<()> {
        if n > 0 {
            self.grow(gpu, w.scratch_len(n))?;
        }
        Ok(())
    }

    /// At least `len` f32 values on `gpu`'s device. A size that could not be bound is an
    /// error before anything is allocated, so the workspace stays usable for smaller calls.
    fn grow(&mut self, gpu: &Wgpu, len: usize) -> Result<&GpuBuffer<f32>> {
        if let Some(sums) = &self.sums {
            gpu.check_buffer("workspace", sums)?;
        }
        if self.sums.as_ref().is_none_or(|sums| sums.len() < len) {
            gpu.check_windowed_size(len.saturating_mul(4) as u64, gpu.windows_for(SHADER))?;
            self.sums = Some(gpu.zeros(len)?);
        }
        Ok(self.sums.as_ref().expect("allocated above"))
    }
}

/// A sparse weight in a wgpu device's memory that [`spmm`] multiplies: [`GpuTiledCsl`] or
/// [`GpuBitmap`].
pub trait GpuWeight<T: Float16>: sealed::Sealed {
    /// `[m, k]`.
    fn shape(&self) -> [usize; 2];
    /// A buffer of the weight, to check which device holds it.
    fn buffer(&self) -> &GpuBuffer<impl Sized>;
    /// The f32 values of scratch memory a call of `n` tokens needs at most.
    fn scratch_len(&self, n: usize) -> usize;
    /// Submits `y [n, m] = x [n, k] · wᵀ` (lengths and devices checked) with scratch memory
    /// from `workspace`.
    fn submit<O: OutputElement<T>>(
        &self,
        gpu: &Wgpu,
        x: &GpuBuffer<T>,
        y: &mut GpuBuffer<O>,
        n: usize,
        workspace: &mut SpmmWorkspace,
    ) -> Result<()>;
}

mod sealed {
    pub trait Sealed {}
    impl<T: crate::element::Float16> Sealed for super::GpuTiledCsl<T> {}
    impl<T: crate::element::Float16> Sealed for super::GpuBitmap<T> {}
}

/// Submits `y [n, m] = x [n, k] · wᵀ`, with `n = x.len() / k`, for a weight in either format.
/// Calls that need scratch memory (split-K, 16-bit outputs) allocate it each time:
/// [`spmm_with_workspace`] reuses it.
pub fn spmm<T: Float16, O: OutputElement<T>>(
    gpu: &Wgpu,
    w: &impl GpuWeight<T>,
    x: &GpuBuffer<T>,
    y: &mut GpuBuffer<O>,
) -> Result<()> {
    spmm_with_workspace(gpu, w, x, y, &mut SpmmWorkspace::new())
}

/// [`spmm`] with its scratch memory taken from `workspace` (grown there when too small).
pub fn spmm_with_workspace<T: Float16, O: OutputElement<T>>(
    gpu: &Wgpu,
    w: &impl GpuWeight<T>,
    x: &GpuBuffer<T>,
    y: &mut GpuBuffer<O>,
    workspace: &mut SpmmWorkspace,
) -> Result<()> {
    let [m, k] = w.shape();
    let n = output_tokens(x.len(), y.len(), m, k)?;
    gpu.check_buffer("w", w.buffer())?;
    gpu.check_buffer("x", x)?;
    gpu.check_buffer("y", y)?;
    w.submit(gpu, x, y, n, workspace)
}

impl<T: Float16> GpuWeight<T> for GpuTiledCsl<T> {
    fn shape(&self) -> [usize; 2] {
        [self.m, self.k]
    }

    fn buffer(&self) -> &GpuBuffer<impl Sized> {
        &self.entries
    }

    fn scratch_len(&self, n: usize) -> usize {
        Launch::new(self, n).sums(n, self.m)
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
        let launch = Launch::new(w, n);
        let Launch {
            tiles_k,
            groups,
            splits,
            tiles_per_split,
        } = launch;
        let mut params = Params {
            m: w.m as u32,
            n: n as u32,
            k: w.k as u32,
            tiles_k: tiles_k as u32,
            splits: splits as u32,
            tiles_per_split: tiles_per_split as u32,
            tile_first: 0,
            tile_count: u32::MAX,
            accumulate: 0,
            out_f32: u32::from(O::F32),
            pad0: 0,
            pad1: 0,
        };
        let constants = [("BF16", if T::DTYPE == Dtype16::Bf16 { 1.0 } else { 0.0 })];
        let pipeline = gpu.pipeline(SHADER, "spmm", &constants)?;
        // With one split and f32 output the sums are y; else they go to scratch for `finish`.
        let scratch = if O::F32 && splits == 1 {
            None
        } else {
            Some(workspace.grow(gpu, launch.sums(n, w.m))?)
        };
        let sums = scratch.as_ref().map_or(y.raw(), |s| s.raw());
        // entries, x, the sums and y may span several bindings (wgsl/spmm.wgsl).
        let bound = Bindings::new(gpu, SHADER)
            .windowed([1, 11, 12, 13], w.entries.raw(), false)?
            .whole(2, w.tile_offsets.raw())
            .windowed([3, 14, 15, 16], x.raw(), false)?
            .windowed(SUMS, sums, true)?;
        // Where the driver cuts long loops short, each split's tiles go over dispatches that add
        // up.
        let grid = [groups[0] as u32, groups[1] as u32, splits as u32];
        for tiles in gpu.loop_passes(tiles_per_split, LOOPS_PER_TILE, LOOPS_PER_INVOCATION) {
            params.tile_first = tiles.start as u32;
            params.tile_count = tiles.len() as u32;
            params.accumulate = u32::from(tiles.start > 0);
            gpu.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), bound.list(), grid)?;
        }
        match scratch {
            Some(scratch) => finish::<T, O>(gpu, scratch, y, [n, w.m], splits),
            None => Ok(()),
        }
    }
}

/// Submits `y [n, m]` as the sum of the `splits` f32 sums in `scratch`, in split order, as f32
/// or packed 16-bit values.
fn finish<T: Float16, O: OutputElement<T>>(
    gpu: &Wgpu,
    scratch: &GpuBuffer<f32>,
    y: &mut GpuBuffer<O>,
    [n, m]: [usize; 2],
    splits: usize,
) -> Result<()> {
    let constants = [("BF16", if T::DTYPE == Dtype16::Bf16 { 1.0 } else { 0.0 })];
    let finish = gpu.pipeline(SHADER, "finish", &constants)?;
    let params = Params {
        m: m as u32,
        n: n as u32,
        splits: splits as u32,
        out_f32: u32::from(O::F32),
        ..bytemuck::Zeroable::zeroed()
    };
    let words = if O::F32 { n * m } else { (n * m).div_ceil(2) };
    let finish_groups = words.div_ceil(256).min(u16::MAX as usize) as u32;
    let bound = Bindings::new(gpu, SHADER)
        .windowed(SUMS, scratch.raw(), true)?
        .windowed([5, 20, 21, 22], y.raw(), true)?;
    gpu.dispatch_bound(
        &finish,
        bytemuck::bytes_of(&params),
        bound.list(),
        [finish_groups, 1, 1],
    )
}

/// The bindings of the sums' windows.
const SUMS: [u32; WINDOWS] = [4, 17, 18, 19];

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use half::{bf16, f16};

    use super::*;

    /// The uniform struct is laid out as the shader reads it.
    #[test]
    fn params_match_the_shader() {
        SHADER.assert_uniform("Params", Params::LAYOUT, size_of::<Params>());
    }
    use crate::error::Error;
    use crate::harness::Rng;
    use crate::spmm::check::{Case, check_with, nan_bits};

    thread_local! {
        pub(super) static SPLITS: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// y for `w` and `x` on `gpu`, poisoned with NaN first.
    fn run<T: Float16, O: OutputElement<T>>(
        gpu: &Wgpu,
        w: &TiledCsl<T>,
        x: &[T],
    ) -> Result<Option<Vec<O>>> {
        run_in(gpu, w, x, &mut SpmmWorkspace::new())
    }

    /// [`run`] with `workspace`.
    fn run_in<T: Float16, O: OutputElement<T>>(
        gpu: &Wgpu,
        w: &TiledCsl<T>,
        x: &[T],
        workspace: &mut SpmmWorkspace,
    ) -> Result<Option<Vec<O>>> {
        let device_w = GpuTiledCsl::upload(gpu, w)?;
        let y_len = x.len() / w.k() * w.m();
        let (x, mut y) = (gpu.upload(x)?, gpu.upload(&vec![nan_bits::<O>(); y_len])?);
        spmm_with_workspace(gpu, &device_w, &x, &mut y, workspace)?;
        gpu.download(&y).map(Some)
    }

    /// A call whose sums could not be bound (twice the size of its 16-bit y, past the four
    /// windows of a device with capped bindings) is an error that leaves the workspace as it
    /// was, so that the next, smaller call runs.
    #[test]
    fn a_call_too_large_to_bind_leaves_the_workspace_usable() {
        let Some(gpu) = crate::backend::wgpu::tests::capped_gpu() else {
            return;
        };
        let windows = (1usize << gpu.window_log2()) * WINDOWS;
        let mut workspace = SpmmWorkspace::new();
        let small = Case::new(300, 520, 16, 0.8);
        let seed = Rng::fresh_seed();
        let before =
            check_with::<f16, f16>(&small, seed, |w, x| run_in(&gpu, w, x, &mut workspace));
        let held = workspace.bytes();
        // One k tile (one split), and as many tokens as a 16-bit y the size of the windows holds.
        let (m, k) = (512, 64);
        let n = windows / (2 * m);
        let w = TiledCsl::encode(&vec![f16::ONE; m * k], m, k).unwrap();
        let error =
            run_in::<f16, f16>(&gpu, &w, &vec![f16::ONE; n * k], &mut workspace).unwrap_err();
        assert!(
            matches!(
                error,
                Error::DeviceLimit {
                    limit_name: "its windows of max_storage_buffer_binding_size",
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(workspace.bytes(), held);
        let after = check_with::<f16, f16>(&small, seed, |w, x| run_in(&gpu, w, x, &mut workspace));
        for comparison in [before, after] {
            let comparison = comparison.unwrap().unwrap();
            assert!(comparison.passed(), "{small}, seed {seed}: {comparison}");
        }
    }

    /// One case with the split count forced, on lavapipe with k long enough that each split's
    /// tiles take several dispatches.
    fn check_with_splits(splits: usize, case: &Case) {
        let Some(gpu) = crate::backend::wgpu::tests::gpu() else {
            return;
        };
        let seed = Rng::fresh_seed();
        SPLITS.set(Some(splits));
        let comparison = if case.bf16 {
            check_with::<bf16, f32>(case, seed, |w, x| run(&gpu, w, x))
        } else {
            check_with::<f16, f16>(case, seed, |w, x| run(&gpu, w, x))
        };
        SPLITS.set(None);
        let comparison = comparison.unwrap().unwrap();
        assert!(
            comparison.passed(),
            "{case}, {splits} splits, seed {seed}: {comparison}"
        );
    }

    #[test]
    fn an_odd_length_output_leaves_the_next_value_alone() {
        let Some(gpu) = crate::backend::wgpu::tests::gpu() else {
            return;
        };
        let (m, k) = (3, 5);
        let dense: Vec<f16> = (1..=m * k).map(|v| f16::from_f32(v as f32)).collect();
        let w = GpuTiledCsl::upload(&gpu, &TiledCsl::encode(&dense, m, k).unwrap()).unwrap();
        let x = gpu.upload(&[f16::ONE; 5]).unwrap();
        // The caller's buffer holds y (3 values) and then a value of its own.
        let buffer = gpu
            .upload(&[f16::NAN, f16::NAN, f16::NAN, f16::PI])
            .unwrap();
        let mut y = GpuBuffer::<f16>::from_raw(&gpu, buffer.raw().clone(), m).unwrap();
        spmm(&gpu, &w, &x, &mut y).unwrap();
        let row_sums = [15.0, 40.0, 65.0].map(f16::from_f32);
        let expected = [row_sums[0], row_sums[1], row_sums[2], f16::PI];
        assert_eq!(gpu.download(&buffer).unwrap(), expected);
    }

    /// A ragged k whose splits each take two dispatches where loops stop after 65535
    /// iterations (lavapipe).
    fn k_for_two_passes(splits: usize) -> usize {
        let tiles_per_pass = (65_535 - LOOPS_PER_INVOCATION) / LOOPS_PER_TILE;
        splits * (tiles_per_pass + 1) * TILE_K - 63
    }

    /// Fully dense tiles: the scatter loop's most steps.
    #[test]
    fn one_split_in_several_passes() {
        check_with_splits(1, &Case::new(130, k_for_two_passes(1), 9, 0.0));
    }

    #[test]
    fn three_splits_in_several_passes() {
        let case = Case {
            bf16: true,
            out_f32: true,
            ..Case::new(70, k_for_two_passes(3), 3, 0.9)
        };
        check_with_splits(3, &case);
    }
}
