//! The wgpu backend: a handle on one adapter's device and queue, the pipeline cache, typed
//! storage buffers and staging readback.
//!
//! Every device call that can fail runs inside wgpu error scopes, so validation errors, out of
//! memory and shader compile errors come back as [`Error::Wgpu`] instead of wgpu's default
//! panic. Waits are bounded by [`WgpuOptions::timeout`], so nothing hangs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytemuck::Pod;

use crate::error::{Error, Result};

mod window;
pub(crate) use window::{Binding, Bindings, WINDOWS};

/// The wgpu this crate is built against, for callers who bring their own device or buffers.
pub use ::wgpu;

/// How to pick and drive the adapter. [`WgpuOptions::from_env`] reads the usual wgpu variables.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WgpuOptions {
    /// Pick the first adapter whose name contains this (case-insensitive), like wgpu's
    /// `WGPU_ADAPTER_NAME`; `None` takes the default high-performance adapter.
    pub adapter_name: Option<String>,
    /// Backends to consider (`WGPU_BACKEND`, e.g. `vulkan`); `None` means all that are built.
    pub backends: Option<wgpu::Backends>,
    /// The longest any wait for the device may take before it is reported as an error.
    pub timeout: Duration,
    /// Caps the largest storage binding the device is opened with
    /// (`max_storage_buffer_binding_size`), below what the adapter offers: a tensor larger
    /// than one binding is bound in several windows, and a small cap exercises that.
    pub max_binding_size: Option<u64>,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            adapter_name: None,
            backends: None,
            timeout: Duration::from_secs(600),
            max_binding_size: None,
        }
    }
}

impl WgpuOptions {
    /// Options from `WGPU_ADAPTER_NAME` and `WGPU_BACKEND`, with the default timeout.
    pub fn from_env() -> Self {
        WgpuOptions {
            adapter_name: std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|name| !name.is_empty()),
            backends: wgpu::Backends::from_env(),
            ..WgpuOptions::default()
        }
    }
}

/// Identifies a cached compute pipeline: shader, entry point and override constants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    constants: Vec<(String, u64)>,
}

/// Declares the uniform struct that a shader reads, as `#[repr(C)]` plain data, and (in tests)
/// its layout, which `Shader::assert_uniform` holds against the shader's struct of the same
/// name: the two are written in two languages, and a test keeps them one layout.
macro_rules! wgsl_uniform {
    (
        $(#[$meta:meta])*
        struct $name:ident {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct $name {
            $($(#[$field_meta])* $field: $ty,)*
        }

        #[cfg(test)]
        impl $name {
            /// Every field: name, byte offset, byte size and Rust type.
            const LAYOUT: &'static [$crate::backend::wgpu::UniformField] = &[$(
                $crate::backend::wgpu::UniformField {
                    name: stringify!($field),
                    offset: std::mem::offset_of!($name, $field),
                    size: size_of::<$ty>(),
                    rust_type: stringify!($ty),
                },
            )*];
        }
    };
}
pub(crate) use wgsl_uniform;

/// One field of a `wgsl_uniform!` struct.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct UniformField {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
    /// As written, e.g. `[[u32; 4]; 4]`.
    pub rust_type: &'static str,
}

/// A WGSL shader compiled into the crate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shader {
    /// The file name, e.g. `"smoke.wgsl"`; it labels the pipeline and error messages.
    pub name: &'static str,
    pub source: &'static str,
}

/// A handle on one wgpu device and queue, with the pipelines built on it.
///
/// Cloning is cheap and shares the device and the pipeline cache.
///
/// ```no_run
/// use tilefuse::backend::wgpu::Wgpu;
///
/// # fn main() -> tilefuse::Result<()> {
/// let gpu = Wgpu::new()?;
/// let x = gpu.upload(&[1.0f32, 2.0, 3.0])?;
/// assert_eq!(gpu.download(&x)?, vec![1.0, 2.0, 3.0]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Wgpu {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    adapter: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    timeout: Duration,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    placeholders: OnceLock<[wgpu::Buffer; 2]>,
    /// Ranges for the windows of a tensor past its end: read-only, writable.
    spares: OnceLock<[wgpu::Buffer; 2]>,
}

impl fmt::Debug for Wgpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wgpu")
            .field("adapter", &self.inner.adapter.name)
            .field("backend", &self.inner.adapter.backend)
            .finish_non_exhaustive()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Wgpu {
    /// Opens the adapter chosen by `WGPU_ADAPTER_NAME` / `WGPU_BACKEND`, or the default one.
    pub fn new() -> Result<Self> {
        Self::with_options(WgpuOptions::from_env())
    }

    /// Opens an adapter as `options` say, with every limit the adapter offers, and
    /// `SHADER_F16`, `SUBGROUP` and `TIMESTAMP_QUERY` where it has them.
    pub fn with_options(options: WgpuOptions) -> Result<Self> {
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if let Some(backends) = options.backends {
            descriptor.backends = backends;
        }
        let instance = wgpu::Instance::new(descriptor);
        let adapter =
            pollster::block_on(select_adapter(&instance, options.adapter_name.as_deref()))?;
        let wanted =
            wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
        let mut limits = adapter.limits();
        if let Some(cap) = options.max_binding_size {
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(cap);
        }
        let request = wgpu::DeviceDescriptor {
            label: Some("tilefuse"),
            required_features: adapter.features() & wanted,
            required_limits: limits,
            ..Default::default()
        };
        let info = adapter.get_info();
        let (device, queue) =
            pollster::block_on(adapter.request_device(&request)).map_err(|e| {
                Error::WgpuUnavailable {
                    reason: format!("adapter {} refused a device: {e}", info.name),
                }
            })?;
        // wgpu's default handler panics; every call of ours runs in error scopes, so anything
        // reaching this handler came from elsewhere and is only reported.
        device.on_uncaptured_error(Arc::new(|error| {
            eprintln!("tilefuse: uncaptured wgpu error: {error}");
        }));
        Ok(Self::assemble(info, device, queue, options.timeout))
    }

    /// Wraps a device and queue the caller already has (a framework's own), so buffers can be
    /// shared with no copy. The caller keeps its uncaptured-error handler.
    pub fn from_device(
        adapter: wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Self {
        Self::assemble(adapter, device, queue, WgpuOptions::default().timeout)
    }

    fn assemble(
        adapter: wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        timeout: Duration,
    ) -> Self {
        Wgpu {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                adapter,
                device,
                queue,
                timeout,
                pipelines: Mutex::default(),
                placeholders: OnceLock::new(),
                spares: OnceLock::new(),
            }),
        }
    }

    /// The adapter: name, backend, device type, driver.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.adapter
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Features granted to the device.
    pub fn features(&self) -> wgpu::Features {
        self.inner.device.features()
    }

    /// Limits granted to the device (all the adapter offers, unless from [`Wgpu::from_device`]).
    pub fn limits(&self) -> wgpu::Limits {
        self.inner.device.limits()
    }

    /// Whether shaders may use `f16` arithmetic (`SHADER_F16`).
    pub fn has_shader_f16(&self) -> bool {
        self.features().contains(wgpu::Features::SHADER_F16)
    }

    /// Whether shaders may use subgroup operations (`SUBGROUP`).
    pub fn has_subgroups(&self) -> bool {
        self.features().contains(wgpu::Features::SUBGROUP)
    }

    /// How many loop iterations one invocation may run in all before the driver cuts every
    /// loop of it short, where the driver has such a limit: llvmpipe (Mesa's lavapipe) shares
    /// one counter of 65535 iterations between all loops of an invocation, so kernels split
    /// long loops over several dispatches there. `None` elsewhere.
    pub fn loop_budget(&self) -> Option<u32> {
        let a = &self.inner.adapter;
        (a.name.contains("llvmpipe") || a.driver.contains("llvmpipe")).then_some(65_535)
    }

    /// Splits `0..items` (loop steps of one invocation, each costing up to `per_item` loop
    /// iterations, beside `fixed` more) into ranges that fit [`Wgpu::loop_budget`], one range
    /// per dispatch; one range for all where there is no budget. Never empty.
    pub(crate) fn loop_passes(
        &self,
        items: usize,
        per_item: usize,
        fixed: usize,
    ) -> Vec<std::ops::Range<usize>> {
        let per_pass = self.loop_budget().map_or(usize::MAX, |budget| {
            let room = (budget as usize).saturating_sub(fixed);
            (room / per_item.max(1)).max(1)
        });
        let passes = items.div_ceil(per_pass).max(1);
        (0..passes)
            .map(|pass| pass * per_pass..((pass + 1).saturating_mul(per_pass)).min(items))
            .collect()
    }

    /// Two distinct small storage buffers for bindings that a pipeline declares but a
    /// dispatch leaves unused (no shader touches them then), made once per device.
    pub(crate) fn placeholders(&self) -> Result<&[wgpu::Buffer; 2]> {
        if let Some(buffers) = self.inner.placeholders.get() {
            return Ok(buffers);
        }
        let buffers = [
            self.create_buffer(16, storage_usage())?,
            self.create_buffer(16, storage_usage())?,
        ];
        Ok(self.inner.placeholders.get_or_init(|| buffers))
    }

    /// The size in bytes of one window of a windowed tensor, as a power of two: the largest
    /// that one storage binding may hold (at most 2^31, at least the offset alignment).
    pub(crate) fn window_log2(&self) -> u32 {
        let limits = self.limits();
        let largest = limits.max_storage_buffer_binding_size.clamp(1, 1 << 31);
        let align = u64::from(limits.min_storage_buffer_offset_alignment).max(4);
        largest.ilog2().max(align.ilog2()).max(4) // a vec4 per element at least
    }

    /// The spare buffer for windows past a tensor's end (0 read-only, 1 writable) and the
    /// size of one of its ranges, made once per device.
    fn spare(&self, kind: usize) -> Result<(&wgpu::Buffer, u64)> {
        const SLOTS: u64 = 32;
        let slot = u64::from(self.limits().min_storage_buffer_offset_alignment).max(16);
        if let Some(buffers) = self.inner.spares.get() {
            return Ok((&buffers[kind], slot));
        }
        let buffers = [
            self.create_buffer(SLOTS * slot, storage_usage())?,
            self.create_buffer(SLOTS * slot, storage_usage())?,
        ];
        Ok((&self.inner.spares.get_or_init(|| buffers)[kind], slot))
    }

    /// A one-line description: adapter, backend, device type, and the features that matter.
    pub fn describe(&self) -> String {
        let a = &self.inner.adapter;
        let mut extras = Vec::new();
        if self.has_shader_f16() {
            extras.push("f16".to_string());
        }
        if self.has_subgroups() {
            extras.push(format!(
                "subgroups {}-{}",
                a.subgroup_min_size, a.subgroup_max_size
            ));
        }
        format!(
            "{} ({:?}, {:?}; {})",
            a.name,
            a.backend,
            a.device_type,
            extras.join(", ")
        )
    }

    /// Copies `data` into a new storage buffer.
    pub fn upload<T: Pod>(&self, data: &[T]) -> Result<GpuBuffer<T>> {
        let buffer = self.buffer_with(bytemuck::cast_slice(data), storage_usage(), 4)?;
        Ok(self.wrap(buffer, data.len()))
    }

    /// A new zero-filled storage buffer of `len` elements.
    pub fn zeros<T: Pod>(&self, len: usize) -> Result<GpuBuffer<T>> {
        let size = padded_len(len.saturating_mul(size_of::<T>()), 4);
        let buffer = self.create_buffer(size, storage_usage())?;
        Ok(self.wrap(buffer, len))
    }

    /// A new buffer holding `bytes`, zero-padded to a multiple of `align` bytes.
    fn buffer_with(
        &self,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
        align: u64,
    ) -> Result<wgpu::Buffer> {
        let size = padded_len(bytes.len(), align);
        let buffer = self.create_buffer(size, usage | wgpu::BufferUsages::COPY_DST)?;
        self.write_bytes(&buffer, bytes, align)?;
        Ok(buffer)
    }

    /// Queues a write of `bytes`, zero-padded to a multiple of `align`, at the buffer's start.
    fn write_bytes(&self, buffer: &wgpu::Buffer, bytes: &[u8], align: u64) -> Result<()> {
        let padded = padded_bytes(bytes, align);
        self.scoped(
            || format!("writing {} bytes", padded.len()),
            || self.inner.queue.write_buffer(buffer, 0, &padded),
        )
    }

    /// Creates a buffer; a size over the device limit or a failed allocation is an error.
    /// (wgpu's `create_buffer_init` panics when the allocation fails, so it is not used.)
    fn create_buffer(&self, size: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        let limit = self.inner.device.limits().max_buffer_size;
        Error::check_limit("buffer", "max_buffer_size", size, limit)?;
        self.scoped(
            || format!("allocating {size} bytes"),
            || {
                self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("tilefuse buffer"),
                    size,
                    usage,
                    mapped_at_creation: false,
                })
            },
        )
    }

    /// Overwrites `buffer` with `data`, which must have the buffer's length.
    pub fn write<T: Pod>(&self, buffer: &mut GpuBuffer<T>, data: &[T]) -> Result<()> {
        self.check_buffer("buffer", buffer)?;
        if data.len() != buffer.len {
            return Err(Error::Length {
                what: "data",
                expected: buffer.len,
                got: data.len(),
            });
        }
        self.write_bytes(&buffer.buffer, bytemuck::cast_slice(data), 4)
    }

    /// Waits for the queue and copies `buffer` back to the host.
    pub fn download<T: Pod>(&self, buffer: &GpuBuffer<T>) -> Result<Vec<T>> {
        self.check_buffer("buffer", buffer)?;
        let size = buffer.buffer.size();
        let staging = self.scoped(
            || format!("reading back {size} bytes"),
            || {
                let staging = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("tilefuse staging"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut encoder = self.encoder();
                encoder.copy_buffer_to_buffer(&buffer.buffer, 0, &staging, 0, size);
                self.inner.queue.submit([encoder.finish()]);
                staging
            },
        )?;
        let (sender, receiver) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send(result);
        });
        self.wait("reading back a buffer")?;
        let mapped = receiver
            .recv_timeout(self.inner.timeout)
            .map_err(|_| self.error("reading back a buffer", "the map callback never ran"))?;
        mapped.map_err(|e| self.error("mapping the staging buffer", e))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| self.error("reading the staging buffer", e))?;
        let used = buffer.len * size_of::<T>();
        let data = bytemuck::pod_collect_to_vec(&view[..used]);
        drop(view);
        staging.unmap();
        Ok(data)
    }

    /// Blocks until all submitted work has finished (bounded by the timeout).
    pub fn synchronize(&self) -> Result<()> {
        self.wait("waiting for the queue")
    }

    fn wait(&self, during: &str) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(self.inner.timeout),
            })
            .map(drop)
            .map_err(|e| self.error(during, e))
    }

    fn wrap<T>(&self, buffer: wgpu::Buffer, len: usize) -> GpuBuffer<T> {
        debug_assert!(buffer.size() >= (len * size_of::<T>()) as u64);
        GpuBuffer {
            buffer,
            len,
            owner: self.inner.id,
            _element: PhantomData,
        }
    }

    /// Checks that `buffer` was made by this handle.
    pub(crate) fn check_buffer<T>(&self, what: &'static str, buffer: &GpuBuffer<T>) -> Result<()> {
        if buffer.owner == self.inner.id {
            return Ok(());
        }
        Err(Error::DeviceMismatch {
            what,
            expected: format!(
                "wgpu device #{} ({})",
                self.inner.id, self.inner.adapter.name
            ),
            got: format!("wgpu device #{}", buffer.owner),
        })
    }

    /// The compute pipeline for `entry` of `shader`, built once per device and cached.
    pub(crate) fn pipeline(
        &self,
        shader: Shader,
        entry: &'static str,
        constants: &[(&str, f64)],
    ) -> Result<wgpu::ComputePipeline> {
        let key = PipelineKey {
            shader: shader.name,
            entry,
            constants: constants
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_bits()))
                .collect(),
        };
        let mut cache = self
            .inner
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(pipeline) = cache.get(&key) {
            return Ok(pipeline.clone());
        }
        let (source, windowed) = window::expand(shader.source, self.windows_for(shader))?;
        let window_log2 = f64::from(self.window_log2());
        let mut constants = constants.to_vec();
        if windowed {
            constants.push(("WINDOW_LOG2", window_log2));
        }
        let pipeline = self.scoped(
            || format!("building pipeline {}::{entry}", shader.name),
            || {
                let module = self
                    .inner
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name),
                        source: wgpu::ShaderSource::Wgsl(source),
                    });
                self.inner
                    .device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(shader.name),
                        layout: None,
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: &constants,
                            ..Default::default()
                        },
                        cache: None,
                    })
            },
        )?;
        cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Whether a storage binding of `bytes` is within the device's limit.
    pub(crate) fn check_binding_size(&self, bytes: u64) -> Result<()> {
        let limit = self.limits().max_storage_buffer_binding_size;
        Error::check_limit(
            "storage buffer",
            "max_storage_buffer_binding_size",
            bytes,
            limit,
        )
    }

    /// Encodes and submits one dispatch, without waiting for the GPU. Binding 0 is a uniform
    /// buffer holding `params` (omitted when `params` is empty); the storage bindings are
    /// `buffers`, whole buffers or windows of them ([`Bindings`]).
    pub(crate) fn dispatch_bound(
        &self,
        pipeline: &wgpu::ComputePipeline,
        params: &[u8],
        buffers: &[Binding<'_>],
        workgroups: [u32; 3],
    ) -> Result<()> {
        for binding in buffers {
            self.check_binding_size(binding.bytes())?;
        }
        let limit = self.limits().max_compute_workgroups_per_dimension;
        let largest = workgroups.into_iter().max().unwrap_or(0);
        Error::check_limit(
            "dispatch",
            "max_compute_workgroups_per_dimension",
            largest.into(),
            limit.into(),
        )?;
        // WGSL rounds uniform structs up to 16 bytes.
        let uniform = match params {
            [] => None,
            bytes => Some(self.buffer_with(bytes, wgpu::BufferUsages::UNIFORM, 16)?),
        };
        self.scoped(
            || format!("dispatching {workgroups:?} workgroups"),
            || {
                let entries: Vec<wgpu::BindGroupEntry> = uniform
                    .iter()
                    .map(|buffer| Binding::from((0, buffer)))
                    .chain(buffers.iter().copied())
                    .map(|bound| wgpu::BindGroupEntry {
                        binding: bound.binding,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: bound.buffer,
                            offset: bound.offset,
                            size: bound.size,
                        }),
                    })
                    .collect();
                let bind_group = self
                    .inner
                    .device
                    .create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &pipeline.get_bind_group_layout(0),
                        entries: &entries,
                    });
                let mut encoder = self.encoder();
                {
                    let mut pass =
                        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, &bind_group, &[]);
                    pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
                }
                self.inner.queue.submit([encoder.finish()]);
            },
        )
    }

    /// Submits a copy of `src` into `dst` and returns without waiting, like every op: the
    /// backend's copy bandwidth is the baseline that memory-bound kernels are measured against.
    pub fn copy_buffer<T: Pod>(&self, src: &GpuBuffer<T>, dst: &mut GpuBuffer<T>) -> Result<()> {
        self.check_buffer("src", src)?;
        self.check_buffer("dst", dst)?;
        if src.len != dst.len {
            return Err(Error::Length {
                what: "dst",
                expected: src.len,
                got: dst.len,
            });
        }
        self.scoped(
            || "copying a buffer".into(),
            || {
                let mut encoder = self.encoder();
                let size = src.buffer.size();
                encoder.copy_buffer_to_buffer(&src.buffer, 0, &dst.buffer, 0, size);
                self.inner.queue.submit([encoder.finish()]);
            },
        )
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.inner
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("tilefuse"),
            })
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes and returns the
    /// first error any of them caught.
    fn scoped<T>(&self, during: impl FnOnce() -> String, f: impl FnOnce() -> T) -> Result<T> {
        let device = &self.inner.device;
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(memory.pop()),
            pollster::block_on(internal.pop()),
        ];
        match errors.into_iter().flatten().next() {
            Some(error) => Err(self.error(&during(), error)),
            None => Ok(value),
        }
    }

    fn error(&self, during: &str, message: impl fmt::Display) -> Error {
        Error::Wgpu {
            during: format!("{during} on {}", self.inner.adapter.name),
            message: message.to_string(),
        }
    }
}

/// Chooses the adapter: by name when asked, else wgpu's default high-performance adapter.
async fn select_adapter(instance: &wgpu::Instance, name: Option<&str>) -> Result<wgpu::Adapter> {
    let Some(name) = name else {
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            ..Default::default()
        };
        return instance
            .request_adapter(&options)
            .await
            .map_err(|e| Error::WgpuUnavailable {
                reason: format!(
                    "no adapter found ({e}); on a machine without a GPU install Mesa's lavapipe \
                     (Debian: mesa-vulkan-drivers libvulkan1)"
                ),
            });
    };
    let wanted = name.to_lowercase();
    let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
    let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    adapters
        .into_iter()
        .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
        .ok_or_else(|| Error::WgpuUnavailable {
            reason: format!("no adapter named like {name:?}; found {names:?}"),
        })
}

fn storage_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

/// Buffer sizes are multiples of `align` (4, wgpu's copy alignment, or 16 for uniforms) and
/// at least `align`; sizes too large to round saturate, and then fail the device's limit.
fn padded_len(bytes: usize, align: u64) -> u64 {
    (bytes.max(1) as u64)
        .checked_next_multiple_of(align)
        .unwrap_or(u64::MAX)
}

fn padded_bytes(bytes: &[u8], align: u64) -> Cow<'_, [u8]> {
    let len = padded_len(bytes.len(), align) as usize;
    if len == bytes.len() {
        Cow::Borrowed(bytes)
    } else {
        let mut padded = bytes.to_vec();
        padded.resize(len, 0);
        Cow::Owned(padded)
    }
}

/// A storage buffer of `len` elements of `T` on one [`Wgpu`] device.
///
/// The allocation is padded to a multiple of 4 bytes; the padding is zero. Half-precision
/// buffers (`half::f16`, `half::bf16`) hold their bits, which shaders read as packed `u32`
/// pairs, so they work on adapters without `SHADER_F16` too.
pub struct GpuBuffer<T> {
    buffer: wgpu::Buffer,
    len: usize,
    owner: u64,
    _element: PhantomData<T>,
}

impl<T: Pod> GpuBuffer<T> {
    /// Wraps a buffer of `gpu`'s device that the caller made (a framework's own tensor), so
    /// ops read and write it in place. It needs `STORAGE`, `COPY_SRC` and `COPY_DST` usage
    /// and room for `len` elements.
    pub fn from_raw(gpu: &Wgpu, buffer: wgpu::Buffer, len: usize) -> Result<Self> {
        let needed = len.saturating_mul(size_of::<T>()) as u64;
        if buffer.size() < needed {
            return Err(Error::invalid(
                "buffer",
                format!("at least {needed} bytes for {len} elements"),
                format!("{} bytes", buffer.size()),
            ));
        }
        if !buffer.usage().contains(storage_usage()) {
            return Err(Error::invalid(
                "buffer",
                format!("usage {:?}", storage_usage()),
                format!("{:?}", buffer.usage()),
            ));
        }
        Ok(gpu.wrap(buffer, len))
    }
}

impl<T> GpuBuffer<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The underlying wgpu buffer (usage `STORAGE | COPY_SRC | COPY_DST`).
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl<T> fmt::Debug for GpuBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuBuffer")
            .field("element", &std::any::type_name::<T>())
            .field("len", &self.len)
            .field("device", &self.owner)
            .finish()
    }
}

#[cfg(test)]
impl Shader {
    /// Panics unless the shader's struct `name` has exactly `layout`'s fields, in order, at
    /// the same offsets, of the same sizes and scalar types, and `size` bytes in all.
    pub(crate) fn assert_uniform(&self, name: &str, layout: &[UniformField], size: usize) {
        use naga::{ScalarKind, TypeInner};
        let (source, _) = window::expand(self.source, WINDOWS).expect("windowed lines that expand");
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{}: {}", self.name, e.emit_to_string(&source)));
        let (members, span) = module
            .types
            .iter()
            .find_map(|(_, ty)| match &ty.inner {
                TypeInner::Struct { members, span } if ty.name.as_deref() == Some(name) => {
                    Some((members, *span))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{} has no struct {name}", self.name));
        // The scalar at the bottom of arrays and vectors.
        let scalar = |mut ty: naga::Handle<naga::Type>| loop {
            match module.types[ty].inner {
                TypeInner::Array { base, .. } => ty = base,
                TypeInner::Vector { scalar, .. } | TypeInner::Scalar(scalar) => {
                    break match (scalar.kind, scalar.width) {
                        (ScalarKind::Uint, 4) => "u32",
                        (ScalarKind::Sint, 4) => "i32",
                        (ScalarKind::Float, 4) => "f32",
                        _ => "another type",
                    };
                }
                _ => break "another type",
            }
        };
        let shader: Vec<(String, usize, usize, &str)> = members
            .iter()
            .map(|m| {
                let size = module.types[m.ty].inner.size(module.to_ctx()) as usize;
                let name = m.name.clone().unwrap_or_default();
                (name, m.offset as usize, size, scalar(m.ty))
            })
            .collect();
        let rust: Vec<(String, usize, usize, &str)> = layout
            .iter()
            .map(|f| {
                let mut words = f.rust_type.split(|c: char| !c.is_ascii_alphanumeric());
                let leaf = words.find(|w| w.starts_with(|c: char| c.is_ascii_alphabetic()));
                let leaf = leaf.unwrap_or_default();
                (f.name.to_string(), f.offset, f.size, leaf)
            })
            .collect();
        assert_eq!(
            rust, shader,
            "{}: struct {name} (name, offset, size, scalar) differs between Rust and WGSL",
            self.name
        );
        assert_eq!(size, span as usize, "{}: struct {name}'s size", self.name);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// These need an adapter (lavapipe in CI): without one they pass empty, unless
    /// `TILEFUSE_REQUIRE_WGPU=1` says an adapter must be there.
    /// One device for all of them, as every integration test binary does: on the H100 the
    /// test process once died while three tests created devices at the same time.
    pub(crate) fn gpu() -> Option<Wgpu> {
        static GPU: std::sync::OnceLock<std::result::Result<Wgpu, String>> =
            std::sync::OnceLock::new();
        match GPU.get_or_init(|| Wgpu::new().map_err(|e| e.to_string())) {
            Ok(gpu) => Some(gpu.clone()),
            Err(e) if std::env::var("TILEFUSE_REQUIRE_WGPU").is_ok_and(|v| v == "1") => {
                panic!("{e}")
            }
            Err(_) => None,
        }
    }

    /// The binding limit of [`capped_gpu`]: tensors of the unit tests' sizes span several
    /// windows there.
    pub(crate) const CAPPED_BINDING: u64 = 64 << 10;

    /// One device opened with its storage bindings capped at [`CAPPED_BINDING`] bytes.
    pub(crate) fn capped_gpu() -> Option<Wgpu> {
        static GPU: std::sync::OnceLock<Option<Wgpu>> = std::sync::OnceLock::new();
        let options = WgpuOptions {
            max_binding_size: Some(CAPPED_BINDING),
            ..WgpuOptions::from_env()
        };
        GPU.get_or_init(|| gpu().and(Wgpu::with_options(options).ok()))
            .clone()
    }

    #[test]
    fn a_shader_that_does_not_compile_is_an_error() {
        let Some(gpu) = gpu() else { return };
        let bad = Shader {
            name: "bad.wgsl",
            source: "@compute @workgroup_size(1) fn main( {",
        };
        let error = gpu.pipeline(bad, "main", &[]).unwrap_err();
        assert!(
            matches!(&error, Error::Wgpu { during, .. } if during.contains("bad.wgsl")),
            "{error}"
        );
    }

    #[test]
    fn dispatches_beyond_the_limits_are_errors() {
        let Some(gpu) = gpu() else { return };
        let shader = Shader {
            name: "fill.wgsl",
            source: "@group(0) @binding(0) var<storage, read_write> out: array<u32>;
                     @compute @workgroup_size(1) fn fill(@builtin(global_invocation_id) id: vec3<u32>) {
                         if (id.x < arrayLength(&out)) { out[id.x] = id.x + 1u; }
                     }",
        };
        let pipeline = gpu.pipeline(shader, "fill", &[]).unwrap();
        let out = gpu.zeros::<u32>(5).unwrap();
        let bound = [Binding::from((0, out.raw()))];
        gpu.dispatch_bound(&pipeline, &[], &bound, [5, 1, 1])
            .unwrap();
        assert_eq!(gpu.download(&out).unwrap(), vec![1, 2, 3, 4, 5]);
        let too_many = gpu.limits().max_compute_workgroups_per_dimension + 1;
        let error = gpu
            .dispatch_bound(&pipeline, &[], &bound, [too_many, 1, 1])
            .unwrap_err();
        assert!(matches!(error, Error::DeviceLimit { .. }), "{error}");
    }

    #[test]
    fn the_pipeline_cache_builds_once() {
        let Some(gpu) = gpu() else { return };
        let shader = Shader {
            name: "noop.wgsl",
            source: "@compute @workgroup_size(1) fn noop() {}",
        };
        gpu.pipeline(shader, "noop", &[]).unwrap();
        gpu.pipeline(shader, "noop", &[]).unwrap();
        let cached = gpu.inner.pipelines.lock().unwrap();
        assert_eq!(cached.keys().filter(|k| k.shader == "noop.wgsl").count(), 1);
    }

    #[test]
    fn padding_never_overflows() {
        assert_eq!(padded_len(0, 4), 4);
        assert_eq!(padded_len(5, 4), 8);
        assert_eq!(padded_len(17, 16), 32);
        assert_eq!(padded_len(usize::MAX, 4), u64::MAX);
        assert_eq!(padded_bytes(&[1, 2, 3], 4).as_ref(), &[1, 2, 3, 0]);
    }
}
