//! The CUDA backend: a handle on one device and one stream, the per-context module cache, and
//! the launch helper that every op goes through.
//!
//! Kernels come from the fatbins that build.rs embedded (see [`super::kernels`]); they
//! are loaded with the driver API, so a program needs only the NVIDIA driver at run time.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, DeviceSlice, LaunchConfig, PushKernelArg, SyncOnDrop, sys,
};
use cudarc::nvrtc::Ptx;

use super::kernels;

use crate::error::{CudaResultExt, Error, Result};
/// The cudarc this crate is built against, for callers who bring their own streams or buffers.
pub use ::cudarc;

/// The oldest architecture the kernels run on (`mma.sync.m16n8k16`, `cp.async`, `ldmatrix`).
const MIN_COMPUTE_CAPABILITY: (u32, u32) = (8, 0);

/// What tilefuse knows about the device behind a [`Cuda`] handle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CudaDeviceInfo {
    /// The device ordinal.
    pub ordinal: usize,
    /// The device name, e.g. `"NVIDIA H100 80GB HBM3"`.
    pub name: String,
    /// Compute capability (major, minor), e.g. `(9, 0)`.
    pub compute_capability: (u32, u32),
    /// Number of streaming multiprocessors.
    pub sm_count: u32,
    /// L2 cache size in bytes.
    pub l2_bytes: u64,
    /// Shared memory a block may use after opting in, in bytes.
    pub max_shared_per_block: u64,
    /// Shared memory of one SM, in bytes (what its resident blocks share).
    pub max_shared_per_sm: u64,
    /// Threads one SM holds at once.
    pub max_threads_per_sm: u32,
    /// 32-bit registers of one SM (what its resident blocks share).
    pub registers_per_sm: u32,
    /// Device memory in bytes.
    pub total_memory: u64,
    /// The driver's CUDA version as (major, minor), e.g. `(13, 0)`.
    pub driver_cuda_version: (u32, u32),
}

impl CudaDeviceInfo {
    /// `bytes` of dynamic shared memory for one block, as a launch takes it, or a
    /// `DeviceLimit` error naming `what` when the device's opt-in limit is lower.
    pub(crate) fn shared_memory(&self, what: &'static str, bytes: usize) -> Result<u32> {
        let limit = self.max_shared_per_block;
        if bytes as u64 > limit {
            return Err(Error::DeviceLimit {
                what,
                limit_name: "max shared memory per block",
                needed: bytes as u64,
                limit,
            });
        }
        Ok(bytes as u32)
    }

    /// Blocks of `warps` warps an SM holds at once, with `shared_bytes` of dynamic shared
    /// memory and `registers` a thread: the fewest that its shared memory (less the 1 KiB the
    /// driver keeps per block), threads and registers (given out per warp, in units of 256)
    /// allow; at least one.
    pub(crate) fn resident_blocks(&self, shared_bytes: usize, warps: u32, registers: u32) -> usize {
        let warps = warps as usize;
        let warp_registers = (registers as usize * 32).next_multiple_of(256).max(256);
        let by_shared = self.max_shared_per_sm as usize / (shared_bytes + 1024);
        let by_threads = self.max_threads_per_sm as usize / (warps * 32);
        let by_registers = self.registers_per_sm as usize / warp_registers / warps;
        by_shared.min(by_threads).min(by_registers).max(1)
    }
}

#[cfg(test)]
impl CudaDeviceInfo {
    /// For launch-plan tests: a device with `sm_count` SMs and `shared` bytes of shared memory per block (an H100:
    /// 227 KiB; sm_86 and sm_89 have 99 KiB, sm_80 163 KiB).
    pub(crate) fn planned(sm_count: u32, shared: u64) -> CudaDeviceInfo {
        CudaDeviceInfo {
            ordinal: 0,
            name: "planned".into(),
            compute_capability: (9, 0),
            sm_count,
            l2_bytes: 50 << 20,
            max_shared_per_block: shared,
            max_shared_per_sm: shared + 1024,
            max_threads_per_sm: 2048,
            registers_per_sm: 65536,
            total_memory: 80 << 30,
            driver_cuda_version: (13, 0),
        }
    }
}

impl fmt::Display for CudaDeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor) = self.compute_capability;
        let (dmaj, dmin) = self.driver_cuda_version;
        write!(
            f,
            "{} (device {}, sm_{major}{minor}, {} SMs, {} MiB L2, {} GiB, driver CUDA {dmaj}.{dmin})",
            self.name,
            self.ordinal,
            self.sm_count,
            self.l2_bytes >> 20,
            self.total_memory >> 30,
        )
    }
}

/// A launch's grid, block and dynamic shared memory, as an op's plan describes it once for
/// [`Cuda::launch`] and for the CPU emulator's tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LaunchShape {
    /// Blocks in x, y and z.
    pub grid: [u32; 3],
    /// Threads of a block in x, y and z.
    pub block: [u32; 3],
    /// Bytes of dynamic shared memory per block.
    pub shared_bytes: u32,
}

impl LaunchShape {
    /// A one-dimensional grid of `blocks` blocks of `threads` threads, no dynamic shared memory.
    pub(crate) fn linear(blocks: u32, threads: u32) -> Self {
        LaunchShape {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            shared_bytes: 0,
        }
    }

    fn config(self) -> LaunchConfig {
        let [gx, gy, gz] = self.grid;
        let [bx, by, bz] = self.block;
        LaunchConfig {
            grid_dim: (gx, gy, gz),
            block_dim: (bx, by, bz),
            shared_mem_bytes: self.shared_bytes,
        }
    }
}

/// A kernel of an embedded module: `module` is the `cuda/<module>.cu` stem, `name` the
/// `extern "C"` symbol that Nsight shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub module: &'static str,
    pub name: &'static str,
}

pub(crate) mod tma;

/// Every kernel's typed id, generated by build.rs from `cuda/abi.h`: one module per
/// `cuda/<module>.cu`, one constant per kernel family (`ids::spmm::TILEDCSL`), indexed by the
/// family's choices in the order abi.h lists them.
pub(crate) mod ids {
    use super::Kernel;
    include!(concat!(env!("OUT_DIR"), "/kernel_ids.rs"));
}

/// A handle on one CUDA device and the stream that ops enqueue on.
///
/// Kernel modules are loaded once per CUDA context and shared by every handle on that
/// context, however it was made. Cloning is cheap. Ops enqueue work on [`Cuda::stream`] and
/// return without synchronising; read results back with the stream (cudarc's `clone_dtoh`),
/// which waits for them.
///
/// ```no_run
/// use tilefuse::backend::cuda::Cuda;
///
/// # fn main() -> tilefuse::Result<()> {
/// let cuda = Cuda::new(0)?;
/// println!("{}", cuda.info());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Cuda {
    device: Arc<DeviceState>,
    stream: Arc<CudaStream>,
}

struct DeviceState {
    ctx: Arc<CudaContext>,
    info: CudaDeviceInfo,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<Kernel, LoadedKernel>>,
    /// Blocks the device holds at once, by kernel, threads and dynamic shared memory.
    waves: Mutex<HashMap<(Kernel, u32, u32), usize>>,
}

/// A kernel loaded in a context, with what launch plans need to know of it.
#[derive(Clone)]
struct LoadedKernel {
    function: CudaFunction,
    /// Registers per thread, as the driver loaded the kernel for this device.
    registers: u32,
}

impl DeviceState {
    /// The state of `ctx`, shared with every live handle on the same context.
    fn for_context(ctx: Arc<CudaContext>) -> Result<Arc<DeviceState>> {
        static STATES: Mutex<Vec<Weak<DeviceState>>> = Mutex::new(Vec::new());
        let mut states = STATES.lock().unwrap_or_else(PoisonError::into_inner);
        states.retain(|state| state.strong_count() > 0);
        let mut existing = states.iter().filter_map(Weak::upgrade);
        if let Some(state) = existing.find(|s| s.ctx.cu_ctx() == ctx.cu_ctx()) {
            return Ok(state);
        }
        let state = Arc::new(DeviceState {
            info: device_info(&ctx)?,
            ctx,
            modules: Mutex::default(),
            functions: Mutex::default(),
            waves: Mutex::default(),
        });
        states.push(Arc::downgrade(&state));
        Ok(state)
    }
}

impl fmt::Debug for Cuda {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cuda")
            .field("device", &self.device.info)
            .finish_non_exhaustive()
    }
}

impl Cuda {
    /// Opens device `ordinal` (its primary context) with a new stream of its own.
    ///
    /// Returns [`Error::CudaUnavailable`] when this build has no kernels, when no NVIDIA
    /// driver can be loaded, when there is no such device, or when it is older than sm_80.
    pub fn new(ordinal: usize) -> Result<Self> {
        ensure_available()?;
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::CudaUnavailable {
                reason: format!("no CUDA device {ordinal}: the driver sees {count}"),
            });
        }
        let ctx = guard_panics("opening the CUDA context", || CudaContext::new(ordinal))?
            .during(|| format!("opening CUDA device {ordinal}"))?;
        let stream = ctx.new_stream().during(|| "creating a stream".into())?;
        Self::on_context(ctx, stream)
    }

    /// Uses a stream the caller already has (a framework's own), so ops run in order with the
    /// caller's work and on the caller's buffers, with no copy.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        ensure_available()?;
        Self::on_context(stream.context().clone(), stream)
    }

    /// The same device and loaded modules, enqueueing on another stream of the same context.
    pub fn with_stream(&self, stream: Arc<CudaStream>) -> Result<Self> {
        if stream.context().cu_ctx() != self.device.ctx.cu_ctx() {
            return Err(Error::DeviceMismatch {
                what: "stream",
                expected: self.describe(),
                got: format!("CUDA device {}", stream.context().ordinal()),
            });
        }
        Ok(Cuda {
            device: self.device.clone(),
            stream,
        })
    }

    fn on_context(ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Self> {
        let device = DeviceState::for_context(ctx)?;
        let (major, minor) = device.info.compute_capability;
        if major < MIN_COMPUTE_CAPABILITY.0 {
            return Err(Error::CudaUnavailable {
                reason: format!(
                    "{} is sm_{major}{minor}; the kernels need sm_{}{} or newer",
                    device.info.name, MIN_COMPUTE_CAPABILITY.0, MIN_COMPUTE_CAPABILITY.1
                ),
            });
        }
        if let Some((built, _)) = kernels::nvcc_release() {
            let (driver, driver_minor) = device.info.driver_cuda_version;
            if driver < built {
                return Err(Error::CudaUnavailable {
                    reason: format!(
                        "the NVIDIA driver supports CUDA {driver}.{driver_minor}, but the kernels \
                         were built with nvcc {built}.x and need a driver for CUDA {built}.0 or \
                         newer; update the driver or build with an older nvcc"
                    ),
                });
            }
        }
        Ok(Cuda { device, stream })
    }

    /// The CUDA context (the device's primary context unless the stream came from another).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.device.ctx
    }

    /// The stream ops enqueue on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Name, compute capability, SM count, L2 size and other device facts.
    pub fn info(&self) -> &CudaDeviceInfo {
        &self.device.info
    }

    /// Copies `data` into a new device buffer (enqueued on [`Cuda::stream`]).
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(data)
            .during(|| format!("uploading {} elements", data.len()))
    }

    /// Waits for the stream and copies `buffer` back to the host.
    pub fn download<T: DeviceRepr>(&self, buffer: &impl DevicePtr<T>) -> Result<Vec<T>> {
        self.check_device("buffer", buffer)?;
        self.stream
            .clone_dtoh(buffer)
            .during(|| format!("downloading {} elements", buffer.len()))
    }

    /// Blocks until everything enqueued on [`Cuda::stream`] has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .during(|| "synchronising the stream".into())
    }

    /// Loads (once per context) every embedded module, so the first op call does no loading.
    pub fn preload(&self) -> Result<()> {
        for module in kernels::modules() {
            self.module(module.name)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "CUDA device {} ({})",
            self.device.info.ordinal, self.device.info.name
        )
    }

    fn module(&self, name: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self
            .device
            .modules
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(module) = modules.get(name) {
            return Ok(module.clone());
        }
        let embedded = kernels::module(name).ok_or_else(|| Error::CudaUnavailable {
            reason: format!("kernel module `{name}` is not in this build (no cuda/{name}.cu)"),
        })?;
        // include_bytes! data is 1-byte aligned; the copy lands in a heap block, which the
        // system allocator aligns to 16 bytes, as cuModuleLoadData wants.
        let image = Ptx::from_binary(embedded.image.to_vec());
        let module = self
            .device
            .ctx
            .load_module(image)
            .during(|| format!("loading kernel module {name} ({})", embedded.targets))?;
        modules.insert(name, module.clone());
        Ok(module)
    }

    /// The loaded function for `kernel`, cached per context.
    pub(crate) fn function(&self, kernel: Kernel) -> Result<CudaFunction> {
        Ok(self.loaded(kernel)?.function)
    }

    /// The loaded function for `kernel`, allowed `shared_bytes` of dynamic shared memory (the
    /// driver asks for that above 48 KiB).
    fn function_with_shared(&self, kernel: Kernel, shared_bytes: u32) -> Result<CudaFunction> {
        let function = self.function(kernel)?;
        if shared_bytes > 48 * 1024 {
            function
                .set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared_bytes as i32,
                )
                .during(|| format!("raising the shared-memory limit of {}", kernel.name))?;
        }
        Ok(function)
    }

    /// Blocks of `kernel` (of `threads` threads and `shared_bytes` of dynamic shared memory)
    /// that the device holds at once: what the driver's occupancy calculator gives one SM,
    /// times the SMs; at least one. Asked once per context and configuration.
    pub(crate) fn device_wave(
        &self,
        kernel: Kernel,
        threads: u32,
        shared_bytes: u32,
    ) -> Result<usize> {
        let key = (kernel, threads, shared_bytes);
        let waves = || {
            self.device
                .waves
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if let Some(&wave) = waves().get(&key) {
            return Ok(wave);
        }
        let function = self.function_with_shared(kernel, shared_bytes)?;
        let per_sm = function
            .occupancy_max_active_blocks_per_multiprocessor(threads, shared_bytes as usize, None)
            .during(|| format!("asking the occupancy of {}", kernel.name))?;
        let wave = (per_sm as usize * self.info().sm_count as usize).max(1);
        waves().insert(key, wave);
        Ok(wave)
    }

    /// Registers per thread of `kernel`, as the driver loaded it for this device.
    pub(crate) fn registers(&self, kernel: Kernel) -> Result<u32> {
        Ok(self.loaded(kernel)?.registers)
    }

    /// `kernel`, loaded once per context.
    fn loaded(&self, kernel: Kernel) -> Result<LoadedKernel> {
        if let Some(loaded) = self.functions_lock().get(&kernel) {
            return Ok(loaded.clone());
        }
        let function = self
            .module(kernel.module)?
            .load_function(kernel.name)
            .during(|| format!("looking up kernel {}", kernel.name))?;
        let registers = function
            .num_regs()
            .during(|| format!("reading the registers of kernel {}", kernel.name))?;
        let loaded = LoadedKernel {
            function,
            registers: registers.max(0) as u32,
        };
        self.functions_lock().insert(kernel, loaded.clone());
        Ok(loaded)
    }

    fn functions_lock(&self) -> std::sync::MutexGuard<'_, HashMap<Kernel, LoadedKernel>> {
        self.device
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks that `buffer` lives in this handle's context.
    pub(crate) fn check_device<T>(
        &self,
        what: &'static str,
        buffer: &impl DeviceSlice<T>,
    ) -> Result<()> {
        let ctx = buffer.stream().context();
        if ctx.cu_ctx() == self.device.ctx.cu_ctx() {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                what,
                expected: self.describe(),
                got: format!("CUDA device {}", ctx.ordinal()),
            })
        }
    }

    /// A kernel's scratch memory of `len` values (u32 words, f32s), enqueued on this stream,
    /// with the values in `zeroed` set to zero and the rest left as they come. Only for memory
    /// that the kernel writes before it reads (look-back records, split-K partials, an output
    /// nobody reads) beside counters or flags it needs zero.
    pub(crate) fn scratch<T: DeviceRepr + cudarc::driver::ValidAsZeroBits + bytemuck::Pod>(
        &self,
        len: usize,
        zeroed: std::ops::Range<usize>,
    ) -> Result<CudaSlice<T>> {
        let during = || format!("allocating {len} values of kernel scratch memory");
        // SAFETY: T is plain old data, valid for any bits, and only kernels see this memory;
        // this function's contract (callers pass the ranges their kernel reads before writing
        // as `zeroed`) keeps them from reading what was never written.
        let mut scratch = unsafe { self.stream.alloc::<T>(len.max(1)) }.during(during)?;
        if !zeroed.is_empty() {
            let mut zeros = scratch.slice_mut(zeroed);
            self.stream.memset_zeros(&mut zeros).during(during)?;
        }
        Ok(scratch)
    }

    /// Collects device addresses for a kernel's parameter struct; see [`LaunchArgs`].
    pub(crate) fn args(&self) -> LaunchArgs<'_> {
        LaunchArgs {
            stream: &self.stream,
            guards: Vec::new(),
        }
    }

    /// Enqueues `kernel` on [`Cuda::stream`] with `params`, the kernel's one parameter struct,
    /// passed by value.
    ///
    /// # Safety
    ///
    /// `params` must be the parameter struct that `kernel` declares in `cuda/abi.h`, and every
    /// device address in it must come from `args` (so the memory stays alive and ordered
    /// until the kernel has run) and cover every element the kernel reads or writes for the
    /// sizes in `params` and `shape`. Each op establishes this by validating shapes and
    /// lengths before it builds `params`.
    pub(crate) unsafe fn launch<P: DeviceRepr>(
        &self,
        kernel: Kernel,
        shape: LaunchShape,
        params: &P,
        args: LaunchArgs<'_>,
    ) -> Result<()> {
        let config = shape.config();
        let function = self.function_with_shared(kernel, config.shared_mem_bytes)?;
        let mut builder = self.stream.launch_builder(&function);
        builder.arg(params);
        // SAFETY: this function's contract: `params` is the kernel's own parameter struct
        // (generated from the same header the kernel is compiled with, passed by value as its
        // only argument), and its addresses point to live, large enough memory of this context.
        unsafe { builder.launch(config) }.during(|| format!("launching {}", kernel.name))?;
        // Dropping the guards records the kernel's reads and writes on the buffers' events,
        // so cudarc orders later frees and other streams after it.
        drop(args);
        Ok(())
    }
}

/// Split scratch kept from launch to launch (split-K's and split-KV's): partial results that
/// a launch writes before it reads them, and counters that every launch leaves at zero. It
/// grows to the largest launch served and belongs to the device it was first used on.
#[derive(Debug, Default)]
pub(crate) struct SplitScratch {
    partials: Option<CudaSlice<u32>>,
    counters: Option<CudaSlice<u32>>,
}

impl SplitScratch {
    /// Device bytes held.
    pub(crate) fn bytes(&self) -> usize {
        [&self.partials, &self.counters]
            .into_iter()
            .flatten()
            .map(|words| words.len() * 4)
            .sum()
    }

    /// At least `partial_words` words of partials and `counter_words` zero counters, grown
    /// on `cuda`'s stream if needed (counters are zeroed when allocated).
    pub(crate) fn grow(
        &mut self,
        cuda: &Cuda,
        partial_words: usize,
        counter_words: usize,
    ) -> Result<(&mut CudaSlice<u32>, &mut CudaSlice<u32>)> {
        for slice in [&self.partials, &self.counters].into_iter().flatten() {
            cuda.check_device("workspace", slice)?;
        }
        let fits = |slice: &Option<CudaSlice<u32>>, words| {
            slice.as_ref().is_some_and(|s| s.len() >= words)
        };
        if !fits(&self.partials, partial_words) {
            self.partials = Some(cuda.scratch(partial_words, 0..0)?);
        }
        if !fits(&self.counters, counter_words) {
            self.counters = Some(cuda.scratch(counter_words, 0..counter_words)?);
        }
        match (&mut self.partials, &mut self.counters) {
            (Some(partials), Some(counters)) => Ok((partials, counters)),
            _ => unreachable!("both were allocated above"),
        }
    }
}

/// The device addresses of one launch, with cudarc's guards that order the buffers' other
/// uses (other streams, frees) after the kernel. Dropped by [`Cuda::launch`] after enqueueing.
pub(crate) struct LaunchArgs<'a> {
    stream: &'a CudaStream,
    guards: Vec<SyncOnDrop<'a>>,
}

impl<'a> LaunchArgs<'a> {
    /// The address of a buffer the kernel reads.
    pub(crate) fn read<T>(&mut self, buffer: &'a impl DevicePtr<T>) -> u64 {
        let (ptr, guard) = buffer.device_ptr(self.stream);
        self.guards.push(guard);
        ptr
    }

    /// The address of a buffer the kernel writes.
    pub(crate) fn write<T>(&mut self, buffer: &'a mut impl DevicePtrMut<T>) -> u64 {
        let (ptr, guard) = buffer.device_ptr_mut(self.stream);
        self.guards.push(guard);
        ptr
    }
}

/// Fails early, with the reason, when this build has no kernels or the machine no driver.
fn ensure_available() -> Result<()> {
    if let Some(reason) = kernels::unavailable_reason() {
        return Err(Error::CudaUnavailable {
            reason: reason.to_string(),
        });
    }
    if !driver_library_present() {
        return Err(Error::CudaUnavailable {
            reason: "no NVIDIA driver: libcuda could not be loaded".into(),
        });
    }
    Ok(())
}

/// Whether the driver library can be loaded. cudarc panics when it cannot, so look first.
fn driver_library_present() -> bool {
    CudaLibrary::Driver.present()
}

/// A CUDA library that cudarc loads when it is first used, and panics without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaLibrary {
    /// The driver: libcuda (nvcuda on Windows).
    Driver,
    /// cuBLAS.
    Blas,
    /// NVTX (libnvToolsExt), for named ranges under Nsight.
    Nvtx,
}

impl CudaLibrary {
    /// The names cudarc gives the library before its platform's prefix, suffix and version.
    fn stems(self) -> &'static [&'static str] {
        match self {
            CudaLibrary::Driver => &["cuda", "nvcuda"],
            CudaLibrary::Blas => &["cublas"],
            CudaLibrary::Nvtx => &["nvToolsExt"],
        }
    }

    /// Whether the library can be loaded under one of the names that cudarc, built for this
    /// CUDA version, tries (`libcublas.so.13`, `cublas64_13.dll`, ...), so that cudarc's own
    /// loading will find it.
    ///
    /// tilefuse looks for itself: cudarc's own `is_culib_present` exists only in its
    /// dynamic-loading mode, which candle's `dynamic-linking` switches off when both are in one
    /// build.
    pub fn present(self) -> bool {
        self.stems()
            .iter()
            .flat_map(|stem| library_names(stem))
            .any(|name| {
                // SAFETY: `name` is one of the names of a CUDA library (the driver, cuBLAS or
                // NVTX, the closed set above), which cudarc loads the same way a moment later;
                // loading runs its initialisers, no symbol is called here, and the handle is
                // dropped.
                unsafe { libloading::Library::new(&name) }.is_ok()
            })
    }
}

/// The file names cudarc tries for the library `stem`, for the CUDA version of its bindings.
fn library_names(stem: &str) -> Vec<String> {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let version = sys::CUDA_VERSION;
    let (major, minor) = (version / 1000, version % 1000 / 10);
    let windows = [
        String::new(),
        format!("_{major}"),
        format!("_{major}{minor}"),
        format!("_{major}{minor}_0"),
        format!("_{major}0_{minor}"),
        "_10".into(),
        "_11".into(),
        "_12".into(),
        format!("_{major}0_0"),
        "_9".into(),
    ];
    let unix = [
        major.to_string(),
        "12".into(),
        "11".into(),
        "10".into(),
        "9".into(),
        "1".into(),
    ];
    std::iter::once(format!("{DLL_PREFIX}{stem}{DLL_SUFFIX}"))
        .chain(
            windows
                .iter()
                .map(|w| format!("{DLL_PREFIX}{stem}64{w}{DLL_SUFFIX}")),
        )
        .chain(
            unix.iter()
                .map(|v| format!("{DLL_PREFIX}{stem}{DLL_SUFFIX}.{v}")),
        )
        .collect()
}

fn device_count() -> Result<usize> {
    match guard_panics("counting CUDA devices", CudaContext::device_count)? {
        Ok(n) if n > 0 => Ok(n as usize),
        Ok(_) => Err(Error::CudaUnavailable {
            reason: "the NVIDIA driver sees no CUDA device".into(),
        }),
        Err(e) => Err(Error::CudaUnavailable {
            reason: format!("the NVIDIA driver could not be initialised: {e}"),
        }),
    }
}

/// Runs a cudarc call that may panic (a symbol missing from an old driver) and turns the
/// panic into [`Error::CudaUnavailable`]. The panic hook still prints its message, and with
/// `panic = "abort"` nothing can be caught.
fn guard_panics<T>(during: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Error::CudaUnavailable {
            reason: format!("cudarc failed while {during}: {message}"),
        }
    })
}

fn device_info(ctx: &Arc<CudaContext>) -> Result<CudaDeviceInfo> {
    use sys::CUdevice_attribute as A;
    let attribute = |a: A| {
        ctx.attribute(a)
            .map(|v| v.max(0) as u64)
            .during(|| format!("reading device attribute {a:?}"))
    };
    let (major, minor) = ctx
        .compute_capability()
        .during(|| "reading the compute capability".into())?;
    let driver = driver_version()?;
    Ok(CudaDeviceInfo {
        ordinal: ctx.ordinal(),
        name: ctx.name().during(|| "reading the device name".into())?,
        compute_capability: (major as u32, minor as u32),
        sm_count: attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
        l2_bytes: attribute(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?,
        max_shared_per_block: attribute(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
        max_shared_per_sm: attribute(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?,
        max_threads_per_sm: attribute(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)?
            as u32,
        registers_per_sm: attribute(A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR)?
            as u32,
        total_memory: ctx
            .total_mem()
            .during(|| "reading the memory size".into())? as u64,
        driver_cuda_version: (driver / 1000, (driver % 1000) / 10),
    })
}

fn driver_version() -> Result<u32> {
    let mut version: std::ffi::c_int = 0;
    // SAFETY: cuDriverGetVersion writes one int through a valid pointer to a local; the
    // driver is loaded and initialised (a context exists when this runs).
    let status = unsafe { sys::cuDriverGetVersion(&mut version) };
    status
        .result()
        .during(|| "reading the driver version".into())?;
    Ok(version.max(0) as u32)
}

/// Lets the parameter structs of `cuda/abi.h` be passed to kernels by value.
macro_rules! kernel_params {
    ($($params:ty),* $(,)?) => {$(
        // SAFETY: bindgen generated the struct from cuda/abi.h as #[repr(C)] with only
        // fixed-width integer fields and compile-time layout assertions, so its bytes are
        // exactly the C struct the kernels declare as their parameter.
        unsafe impl DeviceRepr for $params {}
    )*};
}

kernel_params!(
    super::abi::TfSmokeMmaParams,
    super::abi::TfScanParams,
    super::abi::TfScanBackwardParams,
    super::abi::TfSpmmParams,
    super::abi::TfSpmmBitmapParams,
    super::abi::TfAttentionParams,
    super::abi::TfAttentionSm90aParams,
    super::abi::TfAttentionBackwardParams,
    super::abi::TfPeakMmaParams,
);
