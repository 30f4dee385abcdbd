//! SpMM on CUDA: on a [`DeviceTiledCsl`] weight, Flash-LLM's Load-as-Sparse,
//! Compute-as-Dense kernel (`cuda/spmm.cu`); on a [`DeviceBitmap`], the bitmap kernel
//! (`cuda/spmm_bitmap.cu`), which decodes the masks straight into the mma fragments.

use std::marker::PhantomData;

use half::f16;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};

use super::bitmap::Bitmap;
use super::format::TiledCsl;
use super::reference::output_tokens;
use crate::backend::cuda::{Cuda, Kernel, SplitScratch, ids};
use crate::element::{Float16, OutputElement};
use crate::error::Result;
use plan::{BitmapBuffers, BitmapSize, Buffers, Plan, SpmmLaunch, WeightSize};
pub(crate) use variant::{BitmapProbe, Variant};

mod plan;
mod variant;

/// A sparse weight in device memory that [`spmm`] takes: a [`DeviceTiledCsl`] or a
/// [`DeviceBitmap`] (sealed: the kernels' contracts are this crate's).
pub trait DeviceWeight<T: Float16>: sealed::Sealed {
    /// `[m, k]`.
    fn shape(&self) -> [usize; 2];

    /// What [`spmm_with_workspace`] does for this format (it calls this).
    #[doc(hidden)]
    fn enqueue<O: OutputElement<T> + DeviceRepr>(
        &self,
        cuda: &Cuda,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<O>,
        workspace: &mut SpmmWorkspace,
    ) -> Result<()>
    where
        T: DeviceRepr;

    /// What [`SpmmWorkspace::reserve`] does for this format (it calls this).
    #[doc(hidden)]
    fn reserve(&self, cuda: &Cuda, n: usize, workspace: &mut SpmmWorkspace) -> Result<()>;
}

mod sealed {
    pub trait Sealed {}
    impl<T: crate::element::Float16> Sealed for super::DeviceTiledCsl<T> {}
    impl<T: crate::element::Float16> Sealed for super::DeviceBitmap<T> {}
}

/// A [`Bitmap`] weight in device memory, uploaded once and used by every [`spmm`].
///
/// ```no_run
/// # fn main() -> tilefuse::Result<()> {
/// use half::f16;
/// use tilefuse::backend::cuda::Cuda;
/// use tilefuse::spmm::{Bitmap, Pruning, prune, cuda::{DeviceBitmap, SpmmWorkspace, spmm_with_workspace}};
///
/// let cuda = Cuda::new(0)?;
/// let (m, k, n) = (4096, 4096, 16);
/// let dense: Vec<f16> = (0..m * k).map(|i| f16::from_f32(((i % 7) as f32 - 3.0) / 8.0)).collect();
/// let w = Bitmap::encode(&prune(&dense, m, k, 0.5, Pruning::PerRow)?, m, k)?;
/// let w = DeviceBitmap::upload(&cuda, &w)?;
/// let x = cuda.upload(&vec![f16::ONE; n * k])?;
/// let mut y = cuda.upload(&vec![f16::ZERO; n * m])?;
/// let mut workspace = SpmmWorkspace::new();
/// spmm_with_workspace(&cuda, &w, &x, &mut y, &mut workspace)?; // enqueued, not waited for
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DeviceBitmap<T: Float16> {
    m: usize,
    k: usize,
    max_tile_values: usize,
    masks: CudaSlice<u64>,
    unit_offsets: CudaSlice<u32>,
    values: CudaSlice<u16>,
    element: PhantomData<T>,
}

impl<T: Float16> DeviceBitmap<T> {
    /// Copies `w` to `cuda`'s device (enqueued on its stream).
    pub fn upload(cuda: &Cuda, w: &Bitmap<T>) -> Result<Self> {
        // A weight without nonzeros still passes the kernel a valid address.
        let values = if w.values().is_empty() {
            &[0][..]
        } else {
            w.values()
        };
        Ok(DeviceBitmap {
            m: w.m(),
            k: w.k(),
            max_tile_values: w.max_tile_values(),
            masks: cuda.upload(w.masks())?,
            unit_offsets: cuda.upload(w.unit_offsets())?,
            values: cuda.upload(values)?,
            element: PhantomData,
        })
    }

    /// Rows (outputs).
    pub fn m(&self) -> usize {
        self.m
    }

    /// Columns (inputs).
    pub fn k(&self) -> usize {
        self.k
    }

    /// What a launch plan needs to know of it.
    fn size(&self) -> BitmapSize {
        BitmapSize {
            m: self.m,
            k: self.k,
            values: self.values.len(),
            max_tile_values: self.max_tile_values,
        }
    }

    /// The launch of `n` tokens on `cuda` with `O` out, or of `probe` in its place.
    fn launch<O: OutputElement<T>>(
        &self,
        cuda: &Cuda,
        n: usize,
        probe: Option<BitmapProbe>,
    ) -> Result<SpmmLaunch> {
        let tokens = plan::tokens_per_block(n);
        let kernel = match probe {
            Some(probe) => probe.kernel::<T, O>(tokens)?,
            None => bitmap_kernel::<T, O>(tokens),
        };
        let plan = Plan::bitmap(cuda.info(), self.size(), n, cuda.registers(kernel)?)?;
        Ok(SpmmLaunch { kernel, plan })
    }

    /// Checks the arguments, plans the launch and enqueues spmm_bitmap.cu's kernel for `T` in
    /// and `O` out, or `probe` (f16 in and out only) in its place.
    fn enqueue_kernel<O: OutputElement<T> + DeviceRepr>(
        &self,
        cuda: &Cuda,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<O>,
        workspace: &mut SpmmWorkspace,
        probe: Option<BitmapProbe>,
    ) -> Result<()>
    where
        T: DeviceRepr,
    {
        let n = checked_tokens(cuda, [self.m, self.k], &self.masks, x, y)?;
        let SpmmLaunch { kernel, plan } = self.launch::<O>(cuda, n, probe)?;
        let mut args = cuda.args();
        let (workspace, counters) = workspace.args(cuda, &plan, &mut args)?;
        let params = plan.bitmap_params(BitmapBuffers {
            masks: args.read(&self.masks),
            unit_offsets: args.read(&self.unit_offsets),
            values: args.read(&self.values),
            x: args.read(x),
            y: args.write(y),
            workspace,
            counters,
        });
        // SAFETY: `kernel` is one of spmm_bitmap.cu's kernels for T in and O out and the plan's
        // tokens per block, or a probe (BitmapProbe::kernel checked that T and O are f16 and
        // the tokens 16), which reads and writes what that kernel does, or less;
        // TfSpmmBitmapParams is their parameter struct, and the addresses come from `args`.
        // The weight passed Bitmap's validation before upload (16 masks a unit, no bit past the
        // matrix, unit offsets from 0 to the value count, each unit's values its masks'
        // popcount padded to 8), so every mask, offset and value the kernel reads is in
        // bounds, and a stage holds plan.stage_capacity values, at least the most that one
        // tile has (max_tile_values). x holds n·k values and y n·m (checked above), and the
        // kernel guards token < n, row < m, column < k. The split-K workspace is as for
        // Tiled-CSL (SpmmWorkspace::args). Plan checked the grid and shared memory against the
        // device's limits.
        unsafe { cuda.launch(kernel, plan.shape(), &params, args) }
    }
}

/// Runs `probe` where [`spmm_with_workspace`] would run the bitmap kernel (9 to 16 tokens, f16;
/// an error otherwise).
pub(crate) fn spmm_bitmap_probe(
    cuda: &Cuda,
    w: &DeviceBitmap<f16>,
    x: &impl DevicePtr<f16>,
    y: &mut impl DevicePtrMut<f16>,
    workspace: &mut SpmmWorkspace,
    probe: BitmapProbe,
) -> Result<()> {
    w.enqueue_kernel(cuda, x, y, workspace, Some(probe))
}

impl<T: Float16> DeviceWeight<T> for DeviceBitmap<T> {
    fn shape(&self) -> [usize; 2] {
        [self.m, self.k]
    }

    fn enqueue<O: OutputElement<T> + DeviceRepr>(
        &self,
        cuda: &Cuda,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<O>,
        workspace: &mut SpmmWorkspace,
    ) -> Result<()>
    where
        T: DeviceRepr,
    {
        self.enqueue_kernel(cuda, x, y, workspace, None)
    }

    fn reserve(&self, cuda: &Cuda, n: usize, workspace: &mut SpmmWorkspace) -> Result<()> {
        // The output type picks the kernel, whose registers may change the plan.
        let launches = [
            self.launch::<T>(cuda, n, None)?,
            self.launch::<f32>(cuda, n, None)?,
        ];
        workspace.reserve_for(cuda, launches)
    }
}

impl<T: Float16> DeviceWeight<T> for DeviceTiledCsl<T> {
    fn shape(&self) -> [usize; 2] {
        [self.m, self.k]
    }

    fn enqueue<O: OutputElement<T> + DeviceRepr>(
        &self,
        cuda: &Cuda,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<O>,
        workspace: &mut SpmmWorkspace,
    ) -> Result<()>
    where
        T: DeviceRepr,
    {
        launch(cuda, self, x, y, workspace, None)
    }

    fn reserve(&self, cuda: &Cuda, n: usize, workspace: &mut SpmmWorkspace) -> Result<()> {
        let launches = [
            self.launch::<T>(cuda, n, None)?,
            self.launch::<f32>(cuda, n, None)?,
        ];
        workspace.reserve_for(cuda, launches)
    }
}

/// A [`TiledCsl`] weight in device memory, uploaded once and used by every [`spmm`].
#[derive(Debug)]
pub struct DeviceTiledCsl<T: Float16> {
    m: usize,
    k: usize,
    max_tile_vectors: usize,
    entries: CudaSlice<u32>,
    tile_offsets: CudaSlice<u32>,
    element: PhantomData<T>,
}

impl<T: Float16> DeviceTiledCsl<T> {
    /// Copies `w` to `cuda`'s device (enqueued on its stream).
    pub fn upload(cuda: &Cuda, w: &TiledCsl<T>) -> Result<Self> {
        Ok(DeviceTiledCsl {
            m: w.m(),
            k: w.k(),
            max_tile_vectors: w.max_tile_vectors(),
            entries: cuda.upload(w.device_entries())?,
            tile_offsets: cuda.upload(w.tile_offsets())?,
            element: PhantomData,
        })
    }

    /// Rows (outputs).
    pub fn m(&self) -> usize {
        self.m
    }

    /// Columns (inputs).
    pub fn k(&self) -> usize {
        self.k
    }

    /// What a launch plan needs to know of it.
    fn size(&self) -> WeightSize {
        WeightSize {
            m: self.m,
            k: self.k,
            vectors: self.entries.len() / 4,
            max_tile_vectors: self.max_tile_vectors,
        }
    }

    /// The launch of `n` tokens on `cuda` with `O` out, or of `variant` in its place.
    fn launch<O: OutputElement<T>>(
        &self,
        cuda: &Cuda,
        n: usize,
        variant: Option<Variant>,
    ) -> Result<SpmmLaunch> {
        SpmmLaunch::new::<T, O>(cuda.info(), self.size(), n, variant, |kernel| {
            cuda.registers(kernel)
        })
    }
}

/// Device memory for split-K, kept from one [`spmm_with_workspace`] to the next: the f32
/// partial sums, and the counters that find each output tile's last block, which every launch
/// leaves at zero. Reusing one saves each launch an allocation and a memset of the counters
/// (a second operation on the stream beside a short kernel). It grows to the largest launch
/// it has served, and belongs to the device it was first used on (passing it to another is
/// an error).
///
/// Launches that share a workspace must run one after another: on one stream, or on several
/// with cudarc's event tracking on (its default), which orders them. Launches captured into a
/// CUDA graph keep the memory the workspace had at capture: [`reserve`](Self::reserve) it for
/// their shapes before capture, keep it alive, and don't let a larger launch grow it, while
/// the graph may run.
#[derive(Debug, Default)]
pub struct SpmmWorkspace {
    scratch: SplitScratch,
}

impl SpmmWorkspace {
    /// An empty workspace; the first launch that needs split-K allocates it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.scratch.bytes()
    }

    /// Grows the workspace to what [`spmm_with_workspace`] needs for `w` and `n` tokens on
    /// `cuda`, so that those calls allocate nothing: before capturing them into a CUDA graph,
    /// say.
    ///
    /// ```no_run
    /// # fn main() -> tilefuse::Result<()> {
    /// # use half::f16;
    /// # use tilefuse::backend::cuda::Cuda;
    /// # use tilefuse::spmm::{TiledCsl, cuda::{DeviceTiledCsl, SpmmWorkspace}};
    /// # let cuda = Cuda::new(0)?;
    /// # let w = DeviceTiledCsl::upload(&cuda, &TiledCsl::encode(&vec![f16::ONE; 4096 * 4096], 4096, 4096)?)?;
    /// let mut workspace = SpmmWorkspace::new();
    /// for n in [1, 8, 16, 64] {
    ///     workspace.reserve(&cuda, &w, n)?; // the decode batch sizes a graph will replay
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn reserve<T: Float16>(
        &mut self,
        cuda: &Cuda,
        w: &impl DeviceWeight<T>,
        n: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        w.reserve(cuda, n, self)
    }

    /// Grows the workspace for each of `launches` that splits k.
    fn reserve_for(&mut self, cuda: &Cuda, launches: [SpmmLaunch; 2]) -> Result<()> {
        for SpmmLaunch { plan, .. } in launches {
            if plan.split_k() {
                self.grow(cuda, &plan)?;
            }
        }
        Ok(())
    }

    /// The addresses of split-K's partials and counters for `plan` (grown if needed) among
    /// `args`, or zeros for a launch without split-K, which never touches a workspace.
    fn args<'a>(
        &'a mut self,
        cuda: &Cuda,
        plan: &Plan,
        args: &mut crate::backend::cuda::LaunchArgs<'a>,
    ) -> Result<(u64, u64)> {
        if !plan.split_k() {
            return Ok((0, 0));
        }
        let (partials, counters) = self.grow(cuda, plan)?;
        Ok((args.write(partials), args.write(counters)))
    }

    /// The partials and (zeroed) counters for `plan`, grown on `cuda`'s stream if needed.
    fn grow(
        &mut self,
        cuda: &Cuda,
        plan: &Plan,
    ) -> Result<(&mut CudaSlice<u32>, &mut CudaSlice<u32>)> {
        let (partial_words, counter_words) = (plan.partials(), plan.counters());
        self.scratch.grow(cuda, partial_words, counter_words)
    }
}

/// Enqueues `y [n, m] = x [n, k] · wᵀ` on `cuda`'s stream, with `n = x.len() / k`; `O` is
/// the weight's own type or f32. Split-K launches allocate their workspace each time:
/// [`spmm_with_workspace`] reuses one.
///
/// ```no_run
/// # fn main() -> tilefuse::Result<()> {
/// use half::f16;
/// use tilefuse::backend::cuda::Cuda;
/// use tilefuse::spmm::{TiledCsl, Pruning, prune, cuda::{DeviceTiledCsl, spmm}};
///
/// let cuda = Cuda::new(0)?;
/// let (m, k, n) = (4096, 4096, 16);
/// let dense: Vec<f16> = (0..m * k).map(|i| f16::from_f32(((i % 7) as f32 - 3.0) / 8.0)).collect();
/// let w = TiledCsl::encode(&prune(&dense, m, k, 0.8, Pruning::PerRow)?, m, k)?;
/// let w = DeviceTiledCsl::upload(&cuda, &w)?;
/// let x = cuda.upload(&vec![f16::ONE; n * k])?;
/// let mut y = cuda.upload(&vec![0.0f32; n * m])?;
/// spmm(&cuda, &w, &x, &mut y)?; // enqueued, not waited for
/// # Ok(())
/// # }
/// ```
pub fn spmm<T, O>(
    cuda: &Cuda,
    w: &impl DeviceWeight<T>,
    x: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<O>,
) -> Result<()>
where
    T: Float16 + DeviceRepr,
    O: OutputElement<T> + DeviceRepr,
{
    spmm_with_workspace(cuda, w, x, y, &mut SpmmWorkspace::new())
}

/// [`spmm`] with split-K's memory taken from `workspace` (grown there when too small), as a
/// decode loop calls it layer after layer.
///
/// ```no_run
/// # fn main() -> tilefuse::Result<()> {
/// # use half::f16;
/// # use tilefuse::backend::cuda::Cuda;
/// # use tilefuse::spmm::{TiledCsl, cuda::{DeviceTiledCsl, SpmmWorkspace, spmm_with_workspace}};
/// # let cuda = Cuda::new(0)?;
/// # let (m, k, n) = (4096, 4096, 16);
/// # let dense = vec![f16::ONE; m * k];
/// let layers = [DeviceTiledCsl::upload(&cuda, &TiledCsl::encode(&dense, m, k)?)?];
/// let mut workspace = SpmmWorkspace::new();
/// let x = cuda.upload(&vec![f16::ONE; n * k])?;
/// let mut y = cuda.upload(&vec![f16::ZERO; n * m])?;
/// for w in &layers {
///     spmm_with_workspace(&cuda, w, &x, &mut y, &mut workspace)?;
/// }
/// # Ok(())
/// # }
/// ```
pub fn spmm_with_workspace<T, O>(
    cuda: &Cuda,
    w: &impl DeviceWeight<T>,
    x: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<O>,
    workspace: &mut SpmmWorkspace,
) -> Result<()>
where
    T: Float16 + DeviceRepr,
    O: OutputElement<T> + DeviceRepr,
{
    w.enqueue(cuda, x, y, workspace)
}

/// Runs `variant` where [`spmm_with_workspace`] would run its kernel (a probe: for 9 to 16
/// tokens, an error for other counts). Its launch is planned for it, so it may grow a
/// workspace that [`SpmmWorkspace::reserve`] sized for the kernel.
pub(crate) fn spmm_variant(
    cuda: &Cuda,
    w: &DeviceTiledCsl<f16>,
    x: &impl DevicePtr<f16>,
    y: &mut impl DevicePtrMut<f16>,
    workspace: &mut SpmmWorkspace,
    variant: Variant,
) -> Result<()> {
    launch(cuda, w, x, y, workspace, Some(variant))
}

/// Checks the arguments, plans the launch and enqueues spmm.cu's kernel for `T` in and `O` out,
/// or `variant` (f16 in and out only) in its place.
fn launch<T, O>(
    cuda: &Cuda,
    w: &DeviceTiledCsl<T>,
    x: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<O>,
    workspace: &mut SpmmWorkspace,
    variant: Option<Variant>,
) -> Result<()>
where
    T: Float16 + DeviceRepr,
    O: OutputElement<T> + DeviceRepr,
{
    let n = checked_tokens(cuda, [w.m, w.k], &w.entries, x, y)?;
    let SpmmLaunch { kernel, plan } = w.launch::<O>(cuda, n, variant)?;
    let mut args = cuda.args();
    let (workspace, counters) = workspace.args(cuda, &plan, &mut args)?;
    let params = plan.params(Buffers {
        entries: args.read(&w.entries),
        tile_offsets: args.read(&w.tile_offsets),
        x: args.read(x),
        y: args.write(y),
        workspace,
        counters,
    });
    // SAFETY: `kernel` is one of spmm.cu's kernels for T in and O out and the plan's tokens per
    // block, or a variant (Variant::kernel checked that T and O are f16), which reads and writes
    // what the kernel it stands for does, or less, and was planned for (its held vectors).
    // TfSpmmParams is their parameter struct; addresses come from `args`. The weight passed
    // TiledCsl's validation (offsets monotone and ending at the entry count, every place inside its
    // tile and the matrix) before upload, so every entry the kernel reads and every shared-memory
    // place it scatters to is in bounds; a stage holds plan.stage_capacity vectors and the kernel
    // copies no more into it (the rest of a denser tile it reads from global memory). x holds n·k
    // values and y n·m (checked above), and the kernel guards token < n, row < m, column < k. With
    // splits > 1 the workspace holds at least abi.h's split-K partials for this grid
    // (Plan::partials) and counters (Plan::counters), which are zero: zeroed when allocated, and
    // left zero by every launch since (each runs to completion before the next starts: one stream,
    // or cudarc's events through `args`; SpmmWorkspace asks this of its callers); with one split
    // the kernel returns before any workspace access. Plan checked the grid and shared memory
    // against the device's limits.
    unsafe { cuda.launch(kernel, plan.shape(), &params, args) }
}

/// The token count of `y [n, m] = x [n, k] · wᵀ` for a weight of `shape`, once the lengths of x
/// and y agree with it and the weight (one of its buffers), x and y are on `cuda`'s device.
fn checked_tokens<T, O, W>(
    cuda: &Cuda,
    [m, k]: [usize; 2],
    w: &impl cudarc::driver::DeviceSlice<W>,
    x: &impl DevicePtr<T>,
    y: &impl DevicePtrMut<O>,
) -> Result<usize> {
    let n = output_tokens(x.len(), y.len(), m, k)?;
    cuda.check_device("w", w)?;
    cuda.check_device("x", x)?;
    cuda.check_device("y", y)?;
    Ok(n)
}

/// spmm.cu's kernel for `T` in, `O` out and `tokens_per_block` (8, 16, 32 or 64).
fn kernel<T: Float16, O: OutputElement<T>>(tokens_per_block: u32) -> Kernel {
    let tokens = tokens_per_block.trailing_zeros() as usize - 3;
    ids::spmm::TILEDCSL[T::DTYPE as usize][tokens][usize::from(O::F32)]
}

/// spmm_bitmap.cu's kernel for `T` in, `O` out and `tokens_per_block` (8, 16, 32 or 64).
fn bitmap_kernel<T: Float16, O: OutputElement<T>>(tokens_per_block: u32) -> Kernel {
    let tokens = tokens_per_block.trailing_zeros() as usize - 3;
    ids::spmm_bitmap::SPMM_BITMAP[T::DTYPE as usize][tokens][usize::from(O::F32)]
}

#[cfg(test)]
mod emulated;
#[cfg(test)]
mod emulated_bitmap;
#[cfg(test)]
mod on_device;
