//! Tests of the CUDA kernels' logic without a GPU: the kernel sources (`cuda/*.cu`), unchanged,
//! compiled as C++ against `emulator/cuda.h` and run by the fiber scheduler of
//! `emulator/runtime.cpp`, on host memory. Test-only.
//!
//! What it checks: indexing, ldmatrix / mma.sync fragment maps (from the PTX ISA), cp.async
//! waits (a copy lands only when a wait covers it; until then its destination holds NaN),
//! mbarriers and the bulk and cp.async copies they track (a copy lands only when the phase
//! that covers it completes; a wait for the wrong phase reads NaN, and a phase that never
//! completes is reported as a hang),
//! barriers (a warp runs ahead of the others up to the next `__syncthreads`, in thread order,
//! reversed or shuffled, so a missing barrier shows as a wrong result), shared memory past
//! its end, the kernel's buffers (guarded, see [`Guarded`]), split-K (blocks may run last to
//! first), and flags between blocks (read as their newest or oldest value).
//!
//! What it cannot: speed; the hardware's rounding order; reads outside the guarded buffers
//! (they read host memory); fences and atomics between blocks, since blocks run one at a
//! time; ordering inside a warp (`__syncwarp`), since every collective is a full rendezvous;
//! and static `__shared__` variables, which keep the previous block's values.

use std::ffi::{CStr, c_char, c_void};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::backend::cuda::{Kernel, LaunchShape};
use crate::harness::{Comparison, Rng};

/// The kernels' C++ build for the emulator, loaded.
pub(crate) struct Emulator {
    library: libloading::Library,
}

/// The order in which a block's threads run between synchronisation points.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Order {
    Threads,
    Reverse,
    Shuffled(u64),
}

/// One launch's shape (`tf_emu::Launch` in emulator/cuda.h).
#[repr(C)]
pub(crate) struct Launch {
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    order: u32,
    seed: u64,
    blocks_reversed: u32,
    reserved: u32,
}

impl Launch {
    /// The launch `shape` (the op's own plan for it), whose threads run in `order`.
    pub(crate) fn new(shape: LaunchShape, order: Order) -> Self {
        let LaunchShape {
            grid,
            block,
            shared_bytes,
        } = shape;
        let (order, seed) = match order {
            Order::Threads => (0, 0),
            Order::Reverse => (1, 0),
            Order::Shuffled(seed) => (2, seed),
        };
        Launch {
            grid,
            block,
            shared_bytes,
            order,
            seed,
            blocks_reversed: 0,
            reserved: 0,
        }
    }

    /// Blocks run from the last to the first (by default in index order, x fastest, as a
    /// look-back across blocks needs).
    pub(crate) fn blocks_reversed(mut self) -> Self {
        self.blocks_reversed = 1;
        self
    }
}

type Entry<P> = unsafe extern "C" fn(
    kernel: *const c_void,
    params: *const P,
    launch: *const Launch,
) -> *const c_char;

impl Emulator {
    /// The emulator, compiled once per process; `None` (after a SKIPPED line) where there is
    /// no C++ compiler, unless `TILEFUSE_REQUIRE_EMULATOR=1`.
    pub(crate) fn get() -> Option<&'static Emulator> {
        static EMULATOR: OnceLock<Option<Emulator>> = OnceLock::new();
        EMULATOR
            .get_or_init(|| match build() {
                Ok(path) => {
                    // SAFETY: the library is ours, built just now from emulator/ and cuda/; its
                    // initialisers are the C++ runtime's.
                    let library = unsafe { libloading::Library::new(&path) }
                        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
                    Some(Emulator { library })
                }
                Err(why) if std::env::var("TILEFUSE_REQUIRE_EMULATOR").is_ok_and(|v| v == "1") => {
                    panic!("TILEFUSE_REQUIRE_EMULATOR=1 but {why}")
                }
                Err(why) => {
                    eprintln!("cuda emulator: SKIPPED: {why}");
                    None
                }
            })
            .as_ref()
    }

    /// Runs `kernel` with `params`.
    ///
    /// # Safety
    ///
    /// `P` is the kernel's parameter struct (`TfSpmmParams` for spmm, ...), and every address
    /// in `params` points to host memory that holds what the kernel's contract in `abi.h`
    /// asks for, alive until this returns.
    pub(crate) unsafe fn launch<P>(
        &self,
        kernel: Kernel,
        params: &P,
        launch: &Launch,
    ) -> Result<(), String> {
        // SAFETY: both symbols come from emulator/{module}.cpp: the entry is
        // TF_EMULATOR_ENTRY(module, P), so it takes a P, and the kernel is an extern "C"
        // function of that module taking a P by value (the caller names a kernel of `module`).
        unsafe {
            let entry = self
                .library
                .get::<Entry<P>>(format!("tf_emulate_{}\0", kernel.module).as_bytes())
                .map_err(|e| e.to_string())?;
            let function = self
                .library
                .get::<*const c_void>(format!("{}\0", kernel.name).as_bytes())
                .map_err(|e| e.to_string())?;
            let error = entry(*function, params, launch);
            if error.is_null() {
                Ok(())
            } else {
                Err(CStr::from_ptr(error).to_string_lossy().into_owned())
            }
        }
    }
}

/// Every file under `dir`, in its subfolders too (a kernel's headers may live in
/// `cuda/<op>/`).
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            collect_files(&path, files)?;
        } else if path.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

/// Compiles emulator/*.cpp (each includes one kernel source) into a shared library named by a
/// hash of every source it reads, unless it is already there.
fn build() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    for dir in ["emulator", "cuda"] {
        collect_files(&root.join(dir), &mut sources)?;
    }
    sources.sort();
    let mut hasher = DefaultHasher::new();
    for source in &sources {
        source.hash(&mut hasher);
        std::fs::read(source)
            .map_err(|e| e.to_string())?
            .hash(&mut hasher);
    }
    let out = Path::new(env!("OUT_DIR")).join(format!("emulator-{:016x}.so", hasher.finish()));
    if out.exists() {
        return Ok(out);
    }
    let units: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| {
            p.parent() == Some(&root.join("emulator")) && p.extension().is_some_and(|e| e == "cpp")
        })
        .collect();
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let tmp = out.with_extension(format!("{}.tmp", std::process::id()));
    let output = Command::new(&compiler)
        .args([
            "-std=c++17",
            "-O1",
            "-g",
            "-fPIC",
            "-shared",
            "-fno-strict-aliasing",
        ])
        .args([
            "-Wall",
            "-Wno-unknown-pragmas",
            "-Wno-sign-compare",
            "-Werror",
        ])
        .arg("-include")
        .arg(root.join("emulator/cuda.h"))
        .arg("-I")
        .arg(root.join("cuda"))
        .arg("-I")
        .arg(root.join("emulator/include"))
        .args(&units)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| format!("no C++ compiler ({compiler}: {e})"))?;
    if !output.status.success() {
        panic!(
            "the emulator build failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&tmp, &out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Checks one case on the emulator, where there is one: `check` runs it (through the op's
/// `check_with`) with a fresh seed, and the result must pass. `what` names the case; it is
/// printed with the seed first, so that a kernel that panics is named too.
pub(crate) fn assert_emulated(
    what: &str,
    check: impl FnOnce(&'static Emulator, u64) -> crate::error::Result<Option<Comparison>>,
) {
    let Some(emulator) = Emulator::get() else {
        return;
    };
    let seed = Rng::fresh_seed();
    let what = format!("{what}, seed {seed}");
    eprintln!("{what}");
    let comparison = check(emulator, seed)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .expect("the emulated path runs");
    assert!(comparison.passed(), "{what}: {comparison}");
}

/// A host buffer for an emulated kernel, with guard words on both sides that must still hold
/// their pattern after the launch (a write out of bounds), and NaN bits in the guards so that
/// a read out of bounds poisons the result.
pub(crate) struct Guarded<T: bytemuck::Pod> {
    words: Vec<u32>,
    len: usize,
    element: std::marker::PhantomData<T>,
}

const GUARD_WORDS: usize = 1024;
const GUARD: u32 = 0x7fc0_7fc0; // a NaN as f32, and each half a NaN as f16 and as bf16

impl<T: bytemuck::Pod> Guarded<T> {
    pub(crate) fn new(data: &[T]) -> Self {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let inner = bytes.len().div_ceil(16) * 4; // 16-byte aligned end, as cudaMalloc gives
        let mut words = vec![GUARD; 2 * GUARD_WORDS + inner];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words[GUARD_WORDS..GUARD_WORDS + inner])
            [..bytes.len()]
            .copy_from_slice(bytes);
        Guarded {
            words,
            len: data.len(),
            element: std::marker::PhantomData,
        }
    }

    /// The buffer's address as the kernel ABI takes it.
    pub(crate) fn address(&mut self) -> u64 {
        let address = self.words[GUARD_WORDS..].as_mut_ptr() as u64;
        assert_eq!(
            address % 16,
            0,
            "the allocator gave a buffer not 16-byte aligned"
        );
        address
    }

    /// The contents, after checking the guards.
    pub(crate) fn read(&self, what: &str) -> Result<Vec<T>, String> {
        let inner = self.words.len() - 2 * GUARD_WORDS;
        let intact = |words: &[u32]| words.iter().all(|&w| w == GUARD);
        if !intact(&self.words[..GUARD_WORDS]) || !intact(&self.words[GUARD_WORDS + inner..]) {
            return Err(format!("{what}: written out of bounds"));
        }
        let bytes: &[u8] = bytemuck::cast_slice(&self.words[GUARD_WORDS..GUARD_WORDS + inner]);
        Ok(bytemuck::cast_slice::<u8, T>(&bytes[..self.len * size_of::<T>()]).to_vec())
    }
}

/// The emulator's own model of mbarriers (emulator/mbarrier_model.cpp): copies land when the
/// phase completes and not before, and misuse is a wrong value or a reported error.
#[cfg(test)]
mod mbarrier_model {
    use super::*;

    #[repr(C)]
    struct Params {
        src: u64,
        out: u64,
        mode: u32,
        reserved: u32,
    }

    const KERNEL: Kernel = Kernel {
        module: "mbarrier_model",
        name: "tf_mbarrier_model",
    };
    const POISON: u32 = 0xffff_ffff;
    const DATA: u32 = 0x1234_5678;

    /// The two words thread 1 read, or the emulator's error.
    fn run(emulator: &Emulator, mode: u32, order: Order) -> Result<[u32; 2], String> {
        let mut src = Guarded::new(&[DATA; 4]);
        let mut out = Guarded::new(&[0u32; 2]);
        let params = Params {
            src: src.address(),
            out: out.address(),
            mode,
            reserved: 0,
        };
        let shape = LaunchShape {
            grid: [1, 1, 1],
            block: [2, 1, 1],
            shared_bytes: 32,
        };
        // SAFETY: the kernel reads 16 bytes at src and writes two words at out, both held by
        // the guarded buffers until the launch returns; Params is its parameter struct.
        unsafe { emulator.launch(KERNEL, &params, &Launch::new(shape, order))? };
        let out = out.read("out")?;
        Ok([out[0], out[1]])
    }

    #[test]
    fn copies_land_when_their_phase_completes() {
        let Some(emulator) = Emulator::get() else {
            return;
        };
        for order in [Order::Threads, Order::Reverse, Order::Shuffled(3)] {
            for (mode, what) in [(0, "bulk, read early"), (2, "cp.async, read early")] {
                let read = run(emulator, mode, order).unwrap_or_else(|e| panic!("{what}: {e}"));
                // Thread 1 may run after the phase completed (thread order, shuffled): then
                // the early read sees the data, and never anything but poison or the data.
                assert!(
                    read[0] == POISON || read[0] == DATA,
                    "{what}, {order:?}: {read:x?}"
                );
                assert_eq!(read[1], DATA, "{what}, {order:?}");
            }
            // A wait for the wrong parity returns at once while the phase before is the one
            // that completed (poison), and waits forever once it is the current one's turn.
            match run(emulator, 1, order) {
                Ok(read) => assert_eq!(read[0], POISON, "wrong parity, {order:?}"),
                Err(e) => assert!(e.contains("hang"), "wrong parity, {order:?}: {e}"),
            }
            // In reverse order thread 1 reads before thread 0 has even copied.
            if let Order::Reverse = order {
                for mode in [0, 1, 2] {
                    assert_eq!(
                        run(emulator, mode, order).unwrap()[0],
                        POISON,
                        "mode {mode}"
                    );
                }
            }
        }
    }

    #[test]
    fn misuse_is_reported() {
        let Some(emulator) = Emulator::get() else {
            return;
        };
        for (mode, expected) in [
            (3, "hang"),
            (4, "more arrivals"),
            (5, "hang"),
            (6, "overwritten"),
        ] {
            let error =
                run(emulator, mode, Order::Threads).expect_err(&format!("mode {mode} is reported"));
            assert!(error.contains(expected), "mode {mode}: {error}");
        }
    }
}

/// The emulator's own model of the sm_90a instructions (emulator/hopper_model.cpp): wgmma
/// reads the elements its descriptors name, in every layout the kernels use, TMA boxes land
/// swizzled where wgmma reads them, results wait for their group, and misuse is reported.
#[cfg(test)]
mod hopper_model {
    use super::*;
    use crate::backend::abi::TfTensorMap;
    use crate::backend::cuda::tma::{TensorMap, TmaElement, TmaSwizzle};
    use half::f16;

    #[repr(C)]
    struct Params {
        a_map: TfTensorMap,
        b_map: TfTensorMap,
        a: u64,
        out: u64,
        mode: u32,
        reserved: [u32; 13],
    }

    const KERNEL: Kernel = Kernel {
        module: "hopper_model",
        name: "tf_hopper_model",
    };

    /// What one mode wrote to out [64][64], or the emulator's error; A and B are [64][64] f16
    /// row-major.
    fn run(emulator: &Emulator, mode: u32, a: &[f16], b: &[f16]) -> Result<Vec<f32>, String> {
        let mut a = Guarded::new(a);
        let mut b = Guarded::new(b);
        let mut out = Guarded::new(&[0.0f32; 64 * 64]);
        let map = |address: u64| {
            let (dims, strides, boxes, swizzle) = if mode == 5 {
                // [k / 8][row][8]: the core matrices of the unswizzled layout.
                (
                    vec![8, 64, 8],
                    vec![128, 16],
                    vec![8, 64, 8],
                    TmaSwizzle::None,
                )
            } else {
                (vec![64, 64], vec![128], vec![64, 64], TmaSwizzle::B128)
            };
            let map = TensorMap {
                element: TmaElement::F16,
                address,
                dims,
                strides,
                boxes,
                swizzle,
            };
            map.emulated().expect("a valid map")
        };
        let params = Params {
            a_map: map(a.address()),
            b_map: map(b.address()),
            a: a.address(),
            out: out.address(),
            mode,
            reserved: [0; 13],
        };
        let shape = LaunchShape {
            grid: [1, 1, 1],
            block: [128, 1, 1],
            shared_bytes: 1024 + 2 * 8192,
        };
        // SAFETY: Params is the kernel's parameter struct; the maps describe the 64 x 64 f16
        // buffers a and b, which with out (64 x 64 f32) the guarded buffers hold until the
        // launch returns; the shared memory holds the barrier and both tiles.
        // In thread order warps 0 and 1 reach the named barrier first (mode 6).
        let order = if mode == 6 {
            Order::Threads
        } else {
            Order::Shuffled(7)
        };
        unsafe { emulator.launch(KERNEL, &params, &Launch::new(shape, order))? };
        out.read("out")
    }

    /// A·Bᵀ (`transposed`: A·B) in f64 from the f16 values.
    fn product(a: &[f16], b: &[f16], transposed: bool) -> Vec<f64> {
        let mut out = vec![0.0; 64 * 64];
        for (i, row) in out.chunks_mut(64).enumerate() {
            for (j, value) in row.iter_mut().enumerate() {
                *value = (0..64)
                    .map(|k| {
                        let b = if transposed {
                            b[k * 64 + j]
                        } else {
                            b[j * 64 + k]
                        };
                        a[i * 64 + k].to_f64() * b.to_f64()
                    })
                    .sum();
            }
        }
        out
    }

    /// The largest difference from `expected` relative to its largest magnitude.
    fn error(got: &[f32], expected: &[f64]) -> f64 {
        let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(expected)
            .fold(0.0f64, |m, (&g, &e)| m.max((f64::from(g) - e).abs()));
        if got.iter().any(|g| g.is_nan()) {
            f64::INFINITY
        } else {
            worst / scale
        }
    }

    #[test]
    fn wgmma_reads_what_its_descriptors_name() {
        let Some(emulator) = Emulator::get() else {
            return;
        };
        let seed = Rng::fresh_seed();
        let mut rng = Rng::new(seed);
        let a = rng.fill(64 * 64, -1.0, 1.0, f16::from_f64);
        let b = rng.fill(64 * 64, -1.0, 1.0, f16::from_f64);
        let a_bt = product(&a, &b, false);
        let a_b = product(&a, &b, true);
        for (mode, expected, what) in [
            (0, &a_bt, "K-major, 128-byte swizzle"),
            (1, &a_b, "A in registers, B N-major, 128-byte swizzle"),
            (5, &a_bt, "K-major core matrices, no swizzle"),
        ] {
            let out = run(emulator, mode, &a, &b).unwrap_or_else(|e| panic!("{what}: {e}"));
            let error = error(&out, expected);
            assert!(error < 1e-6, "{what} (seed {seed}): error {error:e}");
        }
        // B swizzled but described as unswizzled: other elements, another product.
        let out = run(emulator, 2, &a, &b).unwrap();
        assert!(
            error(&out, &a_bt) > 1e-2,
            "a wrong descriptor passed (seed {seed})"
        );
    }

    #[test]
    fn results_wait_for_their_group_and_misuse_is_reported() {
        let Some(emulator) = Emulator::get() else {
            return;
        };
        let values = vec![f16::ONE; 64 * 64];
        let early = run(emulator, 3, &values, &values).unwrap();
        assert!(
            early.iter().all(|v| v.is_nan()),
            "accumulators read before the wait"
        );
        let error = run(emulator, 4, &values, &values).expect_err("a wgmma without a fence");
        assert!(error.contains("wgmma.fence"), "{error}");
        let error = run(emulator, 7, &values, &values).expect_err("setmaxnreg 100");
        assert!(error.contains("24 to 256 by 8"), "{error}");
        // Warps 0 and 1 wait at the named barrier until warps 2 and 3 have written and arrived.
        let out = run(emulator, 6, &values, &values).unwrap();
        assert_eq!(out[0], 2.0);
    }
}
