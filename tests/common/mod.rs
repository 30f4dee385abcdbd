//! Shared by every integration test: one set of backends per test binary, skip-or-fail
//! logic, and the macro that runs one test body on each backend.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use tilefuse::harness::{Backend, Backends, Comparison, Rng};

/// The backends of this test binary, opened once.
pub fn backends() -> &'static Backends {
    static BACKENDS: OnceLock<Backends> = OnceLock::new();
    BACKENDS.get_or_init(Backends::detect)
}

/// The backends if `backend` can run here. Otherwise says why (once per binary) and returns
/// `None`, or panics when the environment requires that backend:
/// `TILEFUSE_REQUIRE_WGPU=1` (CI, with lavapipe) and `TILEFUSE_REQUIRE_CUDA_DEVICE=1`
/// (the GPU bundle).
pub fn available(backend: Backend) -> Option<&'static Backends> {
    let backends = backends();
    let status = backends.status(backend);
    announce(backend, &status);
    match status {
        Ok(_) => Some(backends),
        Err(why) if required(backend) => {
            panic!("{backend} is required here but unavailable: {why}")
        }
        Err(_) => None,
    }
}

/// The wgpu handle, when wgpu can run here (see [`available`]).
#[cfg(feature = "wgpu")]
pub fn wgpu() -> Option<&'static tilefuse::backend::wgpu::Wgpu> {
    available(Backend::Wgpu).map(|b| b.wgpu().expect("available"))
}

/// The CUDA handle, when CUDA can run here (see [`available`]).
#[cfg(feature = "cuda")]
pub fn cuda() -> Option<&'static tilefuse::backend::cuda::Cuda> {
    available(Backend::Cuda).map(|b| b.cuda().expect("available"))
}

fn required(backend: Backend) -> bool {
    let var = match backend {
        Backend::Cpu => return true,
        Backend::Cuda => "TILEFUSE_REQUIRE_CUDA_DEVICE",
        Backend::Wgpu => "TILEFUSE_REQUIRE_WGPU",
    };
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// One line per backend and test binary, written past the test harness's capture so that it
/// shows in plain `cargo test` output.
fn announce(backend: Backend, status: &Result<String, String>) {
    static SEEN: Mutex<Vec<Backend>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(&backend) {
        return;
    }
    seen.push(backend);
    let binary = std::env::args().next().unwrap_or_default();
    let binary = binary
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .split('-')
        .next()
        .unwrap_or_default();
    let line = match status {
        Ok(device) => format!("[{binary}] {backend}: runs on {device}"),
        Err(why) => format!("[{binary}] {backend}: SKIPPED: {why}"),
    };
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A fresh seed (or `TILEFUSE_SEED`), to print with any failure.
pub fn seed() -> u64 {
    Rng::fresh_seed()
}

/// Asserts that a check ran and passed, naming the seed and case on failure.
pub fn assert_passes(result: tilefuse::Result<Option<Comparison>>, case: &str, seed: u64) {
    match result {
        Ok(Some(c)) => assert!(
            c.passed(),
            "{case} (seed {seed}, TILEFUSE_SEED={seed} replays it): {c}"
        ),
        Ok(None) => panic!("{case}: this backend has no implementation"),
        Err(e) => panic!("{case} (seed {seed}): {e}"),
    }
}

/// Runs `check` with a fresh seed and asserts that it ran and passed.
pub fn assert_seeded(case: &str, check: impl FnOnce(u64) -> tilefuse::Result<Option<Comparison>>) {
    let seed = seed();
    assert_passes(check(seed), case, seed);
}

/// Every check case `op` registers (what `tilefuse check` runs) passes on `backend`.
pub fn assert_registered_cases(op: &str, backends: &Backends, backend: Backend) {
    let entry = tilefuse::harness::op(op).unwrap_or_else(|| panic!("{op} is not registered"));
    for case in (entry.check_cases)() {
        assert_passes(case.run(backends, backend), &case.name, 0x5eed);
    }
}

/// `on_backends!([cuda, wgpu] => [test_a, test_b]);` makes `cuda::test_a`, `wgpu::test_a`, ...
/// Each calls `test_a(&Backends, Backend)` when that backend can run (see [`available`]).
#[macro_export]
macro_rules! on_backends {
    ([$($backend:ident),+] => $tests:tt) => {
        $( $crate::on_backends!(@gate $backend => $tests); )+
    };
    // A backend compiled out of this build gets no tests (its feature is off).
    (@gate cpu => $tests:tt) => { $crate::on_backends!(@one cpu => $tests); };
    (@gate cuda => $tests:tt) => { #[cfg(feature = "cuda")] $crate::on_backends!(@one cuda => $tests); };
    (@gate wgpu => $tests:tt) => { #[cfg(feature = "wgpu")] $crate::on_backends!(@one wgpu => $tests); };
    (@one $backend:ident => [$($test:ident),+ $(,)?]) => {
        mod $backend {
            $(
                #[test]
                fn $test() {
                    let backend = $crate::on_backends!(@variant $backend);
                    if let Some(backends) = $crate::common::available(backend) {
                        super::$test(backends, backend);
                    }
                }
            )+
        }
    };
    (@variant cpu) => { tilefuse::harness::Backend::Cpu };
    (@variant cuda) => { tilefuse::harness::Backend::Cuda };
    (@variant wgpu) => { tilefuse::harness::Backend::Wgpu };
}

/// Any size for property tests: zero, small, a power of two, or anything up to usize::MAX.
pub fn any_size() -> impl proptest::strategy::Strategy<Value = usize> {
    use proptest::prelude::*;
    prop_oneof![
        0usize..300,
        (0u32..64).prop_map(|s| 1usize << s),
        any::<usize>()
    ]
}

/// The storage-binding limit of [`capped_wgpu`]'s device.
#[cfg(feature = "wgpu")]
pub const CAPPED_BINDING: u64 = 64 << 10;

/// A wgpu device opened with its storage bindings capped at [`CAPPED_BINDING`] bytes, so that
/// tensors of a few hundred KiB span several windows; `None` where wgpu cannot run (as
/// [`available`] decides).
#[cfg(feature = "wgpu")]
pub fn capped_wgpu() -> Option<&'static Backends> {
    use tilefuse::backend::wgpu::{Wgpu, WgpuOptions};
    static CAPPED: OnceLock<Option<Backends>> = OnceLock::new();
    available(Backend::Wgpu)?;
    let open = || {
        let mut options = WgpuOptions::from_env();
        options.max_binding_size = Some(CAPPED_BINDING);
        Wgpu::with_options(options).map(Backends::with_wgpu)
    };
    CAPPED
        .get_or_init(|| Some(open().expect("a device with capped bindings")))
        .as_ref()
}

/// A random `[m, k]` f16 weight in [-2, 2) whose elements are zero with probability
/// `sparsity`.
pub fn random_sparse(m: usize, k: usize, sparsity: f64, seed: u64) -> Vec<half::f16> {
    let mut rng = Rng::new(seed);
    (0..m * k)
        .map(|_| {
            if rng.unit() < sparsity {
                half::f16::ZERO
            } else {
                half::f16::from_f64(rng.uniform(-2.0, 2.0))
            }
        })
        .collect()
}
