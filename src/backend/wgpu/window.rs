//! Tensors larger than one storage binding: a shader declares such an array with a
//! `//#windowed` line, which [`expand`] turns into [`WINDOWS`] bindings and an accessor that
//! picks the binding by index; [`Bindings::windowed`] binds the buffer's consecutive windows
//! there. A window is the largest power of two of bytes the device lets one binding hold, so
//! the accessor divides with a shift, and a tensor may span `WINDOWS` of them. A device with
//! too few storage bindings per shader stage for that gets one binding per array instead
//! ([`windows_for`]).
//!
//! ```text
//! //#windowed @binding(1, 21, 22, 23) var<storage, read> q: array<u32>;
//! ```
//!
//! declares `q_0` .. `q_3` at those bindings and `fn q_at(i: u32) -> u32` (with
//! `read_write`, also `fn q_set(i: u32, value: u32)`), and the pipeline gets the override
//! constant `WINDOW_LOG2`, the window's size in bytes as a power of two.

use std::borrow::Cow;
use std::num::NonZeroU64;

use super::{Shader, Wgpu};
use crate::error::{Error, Result};

/// Bindings one windowed tensor is spread over, where the device has enough.
pub(crate) const WINDOWS: usize = 4;

/// How many bindings each windowed array of `source` gets on a device that allows
/// `max_storage` storage bindings per shader stage: [`WINDOWS`] if all of the shader's
/// storage arrays fit then, else 1.
pub(crate) fn windows_for(source: &str, max_storage: u32) -> usize {
    let lines = || source.lines().map(str::trim_start);
    let windowed = lines().filter(|l| l.starts_with(MARKER)).count();
    let others = lines()
        .filter(|l| !l.starts_with("//") && l.contains("var<storage"))
        .count();
    if windowed * WINDOWS + others <= max_storage as usize {
        WINDOWS
    } else {
        1
    }
}

/// The marker that starts a windowed declaration.
const MARKER: &str = "//#windowed ";

/// One storage binding of a dispatch: a whole buffer, or a range of one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding<'a> {
    /// The `@binding` number.
    pub binding: u32,
    pub buffer: &'a wgpu::Buffer,
    /// Where the range starts, in bytes.
    pub offset: u64,
    /// The range's length; none for the rest of the buffer.
    pub size: Option<NonZeroU64>,
}

impl<'a> From<(u32, &'a wgpu::Buffer)> for Binding<'a> {
    fn from((binding, buffer): (u32, &'a wgpu::Buffer)) -> Self {
        Binding {
            binding,
            buffer,
            offset: 0,
            size: None,
        }
    }
}

impl Binding<'_> {
    /// The bytes this binding exposes.
    pub fn bytes(&self) -> u64 {
        self.size
            .map_or(self.buffer.size() - self.offset, NonZeroU64::get)
    }
}

/// The storage bindings of one dispatch of a shader, built tensor by tensor.
pub(crate) struct Bindings<'a> {
    gpu: &'a Wgpu,
    /// Bindings per windowed array of the shader on this device.
    windows: usize,
    list: Vec<Binding<'a>>,
    /// Spare slots handed out so far, read-only and writable.
    spares: [u64; 2],
}

impl<'a> Bindings<'a> {
    pub fn new(gpu: &'a Wgpu, shader: Shader) -> Self {
        Bindings {
            gpu,
            windows: gpu.windows_for(shader),
            list: Vec::new(),
            spares: [0, 0],
        }
    }

    /// `buffer` whole at `binding`.
    pub fn whole(mut self, binding: u32, buffer: &'a wgpu::Buffer) -> Self {
        self.list.push((binding, buffer).into());
        self
    }

    /// `buffer` in consecutive windows at `bindings` (a `//#windowed` array; only the first
    /// where the shader has one binding per array); windows past its end get a spare range
    /// of their own, so that no two writable bindings overlap. An error if the buffer needs
    /// more windows than the shader has.
    pub fn windowed(
        mut self,
        bindings: [u32; WINDOWS],
        buffer: &'a wgpu::Buffer,
        writable: bool,
    ) -> Result<Self> {
        let window = 1u64 << self.gpu.window_log2();
        let size = buffer.size();
        self.gpu.check_windowed_size(size, self.windows)?;
        for (w, binding) in bindings.into_iter().take(self.windows).enumerate() {
            let offset = w as u64 * window;
            let bound = if offset < size {
                Binding {
                    binding,
                    buffer,
                    offset,
                    size: NonZeroU64::new(window.min(size - offset)),
                }
            } else {
                self.spare(binding, writable)?
            };
            self.list.push(bound);
        }
        Ok(self)
    }

    /// A range of a spare buffer that no other binding of the dispatch uses.
    fn spare(&mut self, binding: u32, writable: bool) -> Result<Binding<'a>> {
        let (buffer, slot) = self.gpu.spare(usize::from(writable))?;
        let used = &mut self.spares[usize::from(writable)];
        let offset = *used * slot;
        let slots = buffer.size() / slot;
        Error::check_limit(
            "spare windows of one dispatch",
            "spare slots",
            *used + 1,
            slots,
        )?;
        *used += 1;
        Ok(Binding {
            binding,
            buffer,
            offset,
            size: NonZeroU64::new(slot),
        })
    }

    pub fn list(&self) -> &[Binding<'a>] {
        &self.list
    }
}

impl Wgpu {
    /// Whether a windowed tensor of `bytes` fits `windows` bindings.
    pub(crate) fn check_windowed_size(&self, bytes: u64, windows: usize) -> Result<()> {
        let limit = (1u64 << self.window_log2()) * windows as u64;
        Error::check_limit(
            "storage buffer",
            "its windows of max_storage_buffer_binding_size",
            bytes,
            limit,
        )
    }

    /// Bindings per windowed array of `shader` on this device ([`windows_for`]).
    pub(crate) fn windows_for(&self, shader: Shader) -> usize {
        windows_for(
            shader.source,
            self.limits().max_storage_buffers_per_shader_stage,
        )
    }
}

/// `source` with every `//#windowed` line expanded to `windows` bindings (unchanged if it has
/// none), and whether it had any (then its pipelines need `WINDOW_LOG2`).
pub(crate) fn expand(source: &str, windows: usize) -> Result<(Cow<'_, str>, bool)> {
    if !source.contains(MARKER) {
        return Ok((Cow::Borrowed(source), false));
    }
    let mut out = String::from("override WINDOW_LOG2: u32;\n");
    for line in source.lines() {
        match line.trim_start().strip_prefix(MARKER) {
            Some(declaration) => out.push_str(&windowed(declaration, windows)?),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    Ok((Cow::Owned(out), true))
}

/// The first `windows` bindings and the accessors of one `@binding(b0, b1, ..)
/// var<storage, ACCESS> NAME: array<TYPE>;` declaration.
fn windowed(declaration: &str, windows: usize) -> Result<String> {
    let bad = || {
        Error::invalid(
            "a //#windowed line",
            "@binding(four numbers) var<storage, read or read_write> name: array<type>;",
            declaration,
        )
    };
    let rest = declaration.strip_prefix("@binding(").ok_or_else(bad)?;
    let (numbers, rest) = rest.split_once(')').ok_or_else(bad)?;
    let bindings: Vec<&str> = numbers.split(',').map(str::trim).collect();
    let (var, rest) = rest.trim().split_once(' ').ok_or_else(bad)?;
    let writable = match var {
        "var<storage," => {
            let (access, _) = rest.split_once('>').ok_or_else(bad)?;
            match access.trim() {
                "read" => false,
                "read_write" => true,
                _ => return Err(bad()),
            }
        }
        _ => return Err(bad()),
    };
    let (_, rest) = rest.split_once('>').ok_or_else(bad)?;
    let (name, ty) = rest.split_once(':').ok_or_else(bad)?;
    let name = name.trim();
    let element = ty
        .trim()
        .strip_prefix("array<")
        .and_then(|t| t.strip_suffix(">;"))
        .ok_or_else(bad)?;
    let width_log2 = match element {
        "u32" | "f32" | "i32" => 2,
        "vec2<u32>" | "vec2<f32>" => 3,
        "vec4<u32>" | "vec4<f32>" => 4,
        _ => return Err(bad()),
    };
    if bindings.len() != WINDOWS || name.is_empty() {
        return Err(bad());
    }
    let access = if writable { "read_write" } else { "read" };
    let mut out = String::new();
    for (w, binding) in bindings.iter().take(windows).enumerate() {
        out += &format!(
            "@group(0) @binding({binding}) var<storage, {access}> {name}_{w}: array<{element}>;\n"
        );
    }
    // The window of element i and the index within it.
    let split = format!(
        "let shift = WINDOW_LOG2 - {width_log2}u;\n    let j = i & ((1u << shift) - 1u);\n    \
         switch i >> shift {{\n"
    );
    let cases = |body: &dyn Fn(usize) -> String| {
        (0..windows)
            .map(|w| {
                let label = if w + 1 == windows {
                    "default".to_string()
                } else {
                    format!("case {w}u")
                };
                format!("        {label}: {{ {} }}\n", body(w))
            })
            .collect::<String>()
    };
    out += &format!(
        "fn {name}_at(i: u32) -> {element} {{\n    {split}{}    }}\n}}\n",
        cases(&|w| format!("return {name}_{w}[j];"))
    );
    if writable {
        out += &format!(
            "fn {name}_set(i: u32, value: {element}) {{\n    {split}{}    }}\n}}\n",
            cases(&|w| format!("{name}_{w}[j] = value;"))
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_windowed_array_expands_to_bindings_and_accessors() {
        let source = "//#windowed @binding(1, 21, 22, 23) var<storage, read_write> o: array<u32>;\n\
                      @compute @workgroup_size(1) fn main() { o_set(5u, o_at(4u)); }";
        let (text, windowed) = expand(source, WINDOWS).unwrap();
        assert!(windowed);
        for declared in [
            "override WINDOW_LOG2: u32;",
            "@group(0) @binding(1) var<storage, read_write> o_0: array<u32>;",
            "@group(0) @binding(23) var<storage, read_write> o_3: array<u32>;",
            "fn o_at(i: u32) -> u32",
            "fn o_set(i: u32, value: u32)",
        ] {
            assert!(text.contains(declared), "{declared} in\n{text}");
        }
        naga::front::wgsl::parse_str(&text)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&text)));
        assert!(matches!(
            expand("fn main() {}", WINDOWS).unwrap(),
            (Cow::Borrowed(_), false)
        ));
    }

    #[test]
    fn malformed_windowed_lines_are_errors() {
        for line in [
            "//#windowed @binding(1, 2, 3) var<storage, read> q: array<u32>;",
            "//#windowed @binding(1, 2, 3, 4) var<uniform> q: array<u32>;",
            "//#windowed @binding(1, 2, 3, 4) var<storage, read> q: array<f16>;",
            "//#windowed var<storage, read> q: array<u32>;",
        ] {
            assert!(expand(line, WINDOWS).is_err(), "{line}");
        }
    }

    /// On lavapipe (32 storage bindings per stage) every op's arrays get four windows; on
    /// WebGPU's default of 8, one.
    #[test]
    fn every_shader_fits_four_windows_in_32_storage_bindings() {
        for source in [
            include_str!("../../../wgsl/smoke.wgsl"),
            include_str!("../../../wgsl/spmm.wgsl"),
            include_str!("../../../wgsl/spmm_bitmap.wgsl"),
            include_str!("../../../wgsl/scan.wgsl"),
            include_str!("../../../wgsl/scan_backward.wgsl"),
            include_str!("../../../wgsl/attention.wgsl"),
        ] {
            assert_eq!(windows_for(source, 32), WINDOWS);
            assert_eq!(windows_for(source, 8), 1);
        }
        // Two windowed arrays and nothing else: four windows each even at WebGPU's default.
        let convert = include_str!("../../../wgsl/scan_convert.wgsl");
        assert_eq!(windows_for(convert, 8), WINDOWS);
    }
}
