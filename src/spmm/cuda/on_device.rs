//! The benchmark's probe and variant kernels ([`Variant`]) on CUDA device 0, where there is one
//! (`TILEFUSE_REQUIRE_CUDA_DEVICE=1`, as in the GPU bundle, makes its absence a failure): their
//! rows in the benchmark mean something only if the variants compute y and the probes stay in
//! bounds. The emulator checks the same kernels' logic on every machine.

use std::io::Write;
use std::sync::OnceLock;

use half::f16;

use super::{BitmapProbe, DeviceTiledCsl, SpmmWorkspace, Variant, spmm_variant};
use crate::backend::cuda::Cuda;
use crate::error::Result;
use crate::harness::{Backends, Rng};
use crate::spmm::TiledCsl;
use crate::spmm::check::{Case, Pattern, check_with, nan_bits, weight};

/// The backends of this test binary, whose CUDA device (device 0, unless `TILEFUSE_BACKENDS`
/// leaves CUDA out) the test uses where there is one; otherwise it says why and passes.
fn device() -> Option<&'static Cuda> {
    static BACKENDS: OnceLock<Backends> = OnceLock::new();
    match BACKENDS.get_or_init(Backends::detect).cuda() {
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

/// The token counts a variant runs with here: a probe has a kernel of 16 tokens per block
/// only, the register variants one of 8, 16, 32 and 64 (70: two blocks of 64).
fn token_counts(variant: Variant) -> &'static [usize] {
    if variant.is_probe() {
        &[13]
    } else {
        &[5, 13, 29, 64, 70]
    }
}

#[test]
fn variants_on_the_device() {
    let Some(cuda) = device() else {
        return;
    };
    let mut workspace = SpmmWorkspace::new();
    // With split-K (m = 1000, k = 3000, 13 tokens on any GPU of 16 SMs or more) and without
    // (4 k tiles).
    for (m, k, split_k) in [(1000, 3000, cuda.info().sm_count >= 16), (4100, 256, false)] {
        for (sparsity, pattern) in [
            (0.0, Pattern::Uniform),
            (0.8, Pattern::DenseAndEmptyTiles),
            (0.8, Pattern::MagnitudePerRow),
            (0.99, Pattern::Uniform),
        ] {
            let case = |n| Case {
                pattern,
                ..Case::new(m, k, n, sparsity)
            };
            let w = DeviceTiledCsl::upload(cuda, &weight::<f16>(&case(13), 1).unwrap()).unwrap();
            let splits = w.launch::<f16>(cuda, 13, None).unwrap().plan.splits;
            assert!(splits > 1 || !split_k, "{}: {splits} split", case(13));
            // The probes where this build has them (the `probes` feature, as in the bundle).
            let probes = crate::backend::kernels::module("spmm_probe").is_some();
            for variant in Variant::ALL.into_iter().filter(|v| probes || !v.is_probe()) {
                for &n in token_counts(variant) {
                    let case = case(n);
                    let seed = Rng::fresh_seed();
                    let what = format!("{case}, {variant:?}, seed {seed}");
                    let mut runner = |w: &TiledCsl<f16>, x: &[f16]| {
                        run(cuda, w, x, variant, &mut workspace)
                            .unwrap_or_else(|e| panic!("{what}: {e}"))
                    };
                    if variant.is_probe() {
                        let w = weight::<f16>(&case, seed).unwrap();
                        let y = runner(&w, &vec![f16::ONE; n * k]);
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
}

/// The bitmap kernel's probes stay in bounds and write y = 0 on the device, with split-K and
/// without, where this build has them (the `probes` feature, as in the bundle).
#[test]
fn bitmap_probes_on_the_device() {
    let Some(cuda) = device() else {
        return;
    };
    if crate::backend::kernels::module("spmm_bitmap_probe").is_none() {
        return;
    }
    let mut workspace = SpmmWorkspace::new();
    for (m, k) in [(1000, 3000), (4100, 256)] {
        let case = Case {
            pattern: Pattern::DenseAndEmptyTiles,
            ..Case::new(m, k, 13, 0.8)
        };
        let seed = Rng::fresh_seed();
        let w = crate::spmm::Bitmap::from_tiled_csl(&weight::<f16>(&case, seed).unwrap()).unwrap();
        let w = super::DeviceBitmap::upload(cuda, &w).unwrap();
        let x = cuda.upload(&vec![f16::ONE; case.n * k]).unwrap();
        for probe in BitmapProbe::ALL {
            let what = format!("{case}, {probe:?}, seed {seed}");
            let mut y = cuda.upload(&vec![nan_bits::<f16>(); case.n * m]).unwrap();
            super::spmm_bitmap_probe(cuda, &w, &x, &mut y, &mut workspace, probe)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let y = cuda.download(&y).unwrap();
            assert!(y.iter().all(|v| v.to_bits() == 0), "{what}: y != 0");
        }
    }
}
