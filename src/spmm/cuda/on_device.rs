//! The benchmark's probe and variant kernels ([`Variant`]) on CUDA device 0, where there is one
//! (`TILEFUSE_REQUIRE_CUDA_DEVICE=1`, as in the GPU bundle, makes its absence a failure): their
//! rows in the benchmark mean something only if the variants compute y and the probes stay in
//! bounds. The emulator checks the same kernels' logic on every machine.

use std::io::Write;

use half::f16;

use super::{DeviceTiledCsl, SpmmWorkspace, Variant, spmm_variant};
use crate::backend::cuda::Cuda;
use crate::error::Result;
use crate::harness::Rng;
use crate::spmm::TiledCsl;
use crate::spmm::check::{Case, Pattern, check_with, nan_bits, weight};

/// Device 0, or `None` (after saying why) where there is none.
fn device() -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(cuda) => Some(cuda),
        Err(e) if std::env::var("TILEFUSE_REQUIRE_CUDA_DEVICE").is_ok_and(|v| v == "1") => {
            panic!("TILEFUSE_REQUIRE_CUDA_DEVICE=1 but: {e}")
        }
        Err(e) => {
            // Past the test harness's capture, so that plain `cargo test` shows it.
            let _ = writeln!(std::io::stderr(), "spmm variants on cuda: SKIPPED: {e}");
            None
        }
    }
}

/// `variant` on `w` and `x`, y poisoned with NaN first.
fn run(
    cuda: &Cuda,
    w: &TiledCsl<f16>,
    x: &[f16],
    variant: Variant,
    workspace: &mut SpmmWorkspace,
) -> Result<Vec<f16>> {
    let device_w = DeviceTiledCsl::upload(cuda, w)?;
    let n = x.len() / w.k();
    let x = cuda.upload(x)?;
    let mut y = cuda.upload(&vec![nan_bits::<f16>(); n * w.m()])?;
    spmm_variant(cuda, &device_w, &x, &mut y, workspace, variant)?;
    cuda.download(&y)
}

#[test]
fn variants_on_the_device() {
    let Some(cuda) = device() else {
        return;
    };
    let mut workspace = SpmmWorkspace::new();
    // With split-K (m = 1000, k = 3000 on any large GPU) and without (4 k tiles).
    for (m, k) in [(1000, 3000), (4100, 256)] {
        for (sparsity, pattern) in [
            (0.0, Pattern::Uniform),
            (0.8, Pattern::DenseAndEmptyTiles),
            (0.8, Pattern::MagnitudePerRow),
            (0.99, Pattern::Uniform),
        ] {
            let case = Case {
                pattern,
                ..Case::new(m, k, 13, sparsity)
            };
            for variant in Variant::ALL {
                let seed = Rng::fresh_seed();
                let what = format!("{case}, {variant:?}, seed {seed}");
                let mut runner = |w: &TiledCsl<f16>, x: &[f16]| {
                    run(&cuda, w, x, variant, &mut workspace)
                        .unwrap_or_else(|e| panic!("{what}: {e}"))
                };
                if variant.is_probe() {
                    let w = weight::<f16>(&case, seed).unwrap();
                    let y = runner(&w, &vec![f16::ONE; case.n * k]);
                    assert!(y.iter().all(|v| v.to_bits() == 0), "{what}: y != 0");
                } else {
                    let comparison =
                        check_with::<f16, f16>(&case, seed, |w, x| Ok(Some(runner(w, x))))
                            .unwrap_or_else(|e| panic!("{what}: {e}"))
                            .expect("the variant ran");
                    assert!(comparison.passed(), "{what}: {comparison}");
                }
            }
        }
    }
}
