//! The CUDA kernels that build.rs compiled into this build, and what ptxas reported for them.
//!
//! This module exists with or without the `cuda` feature, so `tilefuse info` can always say
//! what was built and, if nothing was, why.

/// One fatbin embedded at build time: one per `cuda/*.cu` file.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedModule {
    /// The source file's stem: `cuda/smoke.cu` gives `"smoke"`.
    pub name: &'static str,
    /// What the fatbin holds, e.g. `"sm_80 sm_86 sm_89 sm_90 SASS + compute_80 PTX"`.
    pub targets: &'static str,
    /// The fatbin image, loaded with `cuModuleLoadData`.
    pub image: &'static [u8],
    /// nvcc's `-Xptxas -v` output for this file.
    pub ptxas_report: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Every embedded module, in file-name order; empty when no kernels were built.
pub fn modules() -> &'static [EmbeddedModule] {
    MODULES
}

/// The embedded module built from `cuda/<name>.cu`.
pub fn module(name: &str) -> Option<&'static EmbeddedModule> {
    MODULES.iter().find(|m| m.name == name)
}

/// nvcc's release line, when kernels were built.
pub fn nvcc_version() -> Option<&'static str> {
    NVCC_VERSION
}

/// nvcc's (major, minor) release, e.g. `(13, 0)`: the driver must support at least this
/// CUDA major version to load the fatbins.
pub fn nvcc_release() -> Option<(u32, u32)> {
    parse_release(NVCC_VERSION?)
}

/// `"Cuda compilation tools, release 13.0, V13.0.88"` gives `(13, 0)`.
fn parse_release(version: &str) -> Option<(u32, u32)> {
    let release = version.split("release ").nth(1)?;
    let (major, rest) = release.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((major.trim().parse().ok()?, minor.parse().ok()?))
}

/// The architectures of the regular fatbins, e.g. `"sm_80 sm_86 sm_89 sm_90 SASS + compute_80 PTX"`.
pub fn targets() -> &'static str {
    TARGETS
}

/// Why this build has no CUDA kernels, or `None` when it has them.
pub fn unavailable_reason() -> Option<&'static str> {
    UNAVAILABLE
}

/// One kernel's resource use on one architecture, as ptxas reported it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelResources {
    /// The kernel's (extern "C") name.
    pub kernel: String,
    /// The architecture, e.g. `"sm_90"`.
    pub arch: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of stack frame per thread (local memory).
    pub stack_frame_bytes: u32,
    /// Bytes of register spill stores.
    pub spill_store_bytes: u32,
    /// Bytes of register spill loads.
    pub spill_load_bytes: u32,
    /// Bytes of static shared memory.
    pub shared_bytes: u32,
}

impl KernelResources {
    /// Whether the kernel touches local memory (spills or a stack frame).
    pub fn uses_local_memory(&self) -> bool {
        self.stack_frame_bytes + self.spill_store_bytes + self.spill_load_bytes > 0
    }
}

impl EmbeddedModule {
    /// The per-kernel, per-architecture lines of the ptxas report, sorted by kernel and arch.
    pub fn resources(&self) -> Vec<KernelResources> {
        let mut entries = parse_ptxas_report(self.ptxas_report);
        entries.sort_by(|a, b| (&a.kernel, &a.arch).cmp(&(&b.kernel, &b.arch)));
        entries
    }
}

/// Parses nvcc's `-Xptxas -v` output into one entry per kernel and architecture.
pub fn parse_ptxas_report(report: &str) -> Vec<KernelResources> {
    let mut entries: Vec<KernelResources> = Vec::new();
    for line in report.lines() {
        if let Some((kernel, arch)) = entry_function(line) {
            entries.push(KernelResources {
                kernel,
                arch,
                ..Default::default()
            });
            continue;
        }
        let Some(entry) = entries.last_mut() else {
            continue;
        };
        if line.contains("bytes stack frame") {
            entry.stack_frame_bytes = number_before(line, "bytes stack frame");
            entry.spill_store_bytes = number_before(line, "bytes spill stores");
            entry.spill_load_bytes = number_before(line, "bytes spill loads");
        } else if line.contains("Used") && line.contains("registers") {
            entry.registers = number_before(line, "registers");
            entry.shared_bytes = number_before(line, "bytes smem");
        }
    }
    entries
}

/// `ptxas info : Compiling entry function 'NAME' for 'sm_90'` gives `(NAME, sm_90)`.
fn entry_function(line: &str) -> Option<(String, String)> {
    let rest = line.split("Compiling entry function '").nth(1)?;
    let (kernel, rest) = rest.split_once('\'')?;
    let arch = rest.split('\'').nth(1)?;
    Some((kernel.to_string(), arch.to_string()))
}

/// The integer just before `label` in a comma-separated ptxas line, 0 when absent.
fn number_before(line: &str, label: &str) -> u32 {
    line.split(',')
        .find(|part| part.contains(label))
        .and_then(|part| {
            part.split_whitespace()
                .rev()
                .nth(label.split_whitespace().count())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'tilefuse_smoke_mma_f16_f32' for 'sm_90'
ptxas info    : Function properties for tilefuse_smoke_mma_f16_f32
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 3072 bytes smem
ptxas info    : Compiling entry function 'hot' for 'sm_80'
ptxas info    : Function properties for hot
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 49152 bytes smem, 392 bytes cmem[0]
";

    #[test]
    fn parses_registers_spills_and_shared_memory() {
        let entries = parse_ptxas_report(REPORT);
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0],
            KernelResources {
                kernel: "tilefuse_smoke_mma_f16_f32".into(),
                arch: "sm_90".into(),
                registers: 32,
                shared_bytes: 3072,
                ..Default::default()
            }
        );
        assert!(!entries[0].uses_local_memory());
        let hot = &entries[1];
        assert_eq!((hot.arch.as_str(), hot.registers), ("sm_80", 255));
        assert_eq!(
            (
                hot.stack_frame_bytes,
                hot.spill_store_bytes,
                hot.spill_load_bytes
            ),
            (16, 8, 12)
        );
        assert_eq!(hot.shared_bytes, 49152);
        assert!(hot.uses_local_memory());
    }

    #[test]
    fn parses_the_nvcc_release() {
        assert_eq!(
            parse_release("Cuda compilation tools, release 13.0, V13.0.88"),
            Some((13, 0))
        );
        assert_eq!(parse_release("release 12.4, V12.4.131"), Some((12, 4)));
        assert_eq!(parse_release("nvcc"), None);
    }

    #[test]
    fn every_embedded_module_reports_its_kernels() {
        for module in modules() {
            assert!(
                !module.image.is_empty(),
                "{} has an empty fatbin",
                module.name
            );
            assert!(
                !module.resources().is_empty(),
                "{}: no kernels in the ptxas report",
                module.name
            );
        }
    }

    /// With kernels built, every `cuda/*.cu` file that this build compiles has its fatbin.
    #[cfg(tilefuse_cuda_kernels)]
    #[test]
    fn every_kernel_file_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/cuda");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "cu") {
                let stem = path.file_stem().unwrap().to_str().unwrap();
                // sm_90a-only files are skipped when TILEFUSE_CUDA_ARCHS leaves out 90.
                if stem.ends_with("_sm90a") && !targets().contains("sm_90") {
                    continue;
                }
                // Probe files are built with the `probes` feature alone.
                if stem.ends_with("_probe") && !cfg!(feature = "probes") {
                    continue;
                }
                assert!(module(stem).is_some(), "cuda/{stem}.cu is not embedded");
            }
        }
    }
}
