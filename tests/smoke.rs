//! The plumbing test on every backend: c = a · bᵀ against the f64 reference.
// Built without a GPU backend, the per-backend bodies have nothing to run.
#![cfg_attr(
    not(all(feature = "cuda", feature = "wgpu")),
    allow(dead_code, unused_imports, unused_variables, unreachable_code)
)]

mod common;

use half::f16;
use tilefuse::Error;
use tilefuse::harness::{Backend, Backends};
use tilefuse::smoke::{MatmulShape, check};

on_backends!([cuda, wgpu] => [ragged_and_tiny_shapes, exact_tiles, long_k, rejects_wrong_lengths, every_registered_case_passes]);

fn ragged_and_tiny_shapes(backends: &Backends, backend: Backend) {
    check_shapes(
        backends,
        backend,
        &[
            (1, 1, 1),
            (1, 9, 17),
            (15, 7, 15),
            (17, 9, 33),
            (33, 65, 100),
            (300, 70, 520),
        ],
    );
}

fn exact_tiles(backends: &Backends, backend: Backend) {
    check_shapes(
        backends,
        backend,
        &[(16, 8, 16), (64, 64, 64), (128, 256, 512)],
    );
}

fn long_k(backends: &Backends, backend: Backend) {
    // 75 000 k tiles per invocation: more loop iterations than lavapipe lets one invocation
    // run (its 16-product loop is unrolled), so its WGSL takes them in several dispatches.
    check_shapes(backends, backend, &[(1, 2, 1_200_000), (17, 9, 100_000)]);
}

fn check_shapes(backends: &Backends, backend: Backend, shapes: &[(usize, usize, usize)]) {
    for &(m, n, k) in shapes {
        let shape = MatmulShape::new(m, n, k).unwrap();
        common::assert_seeded(&format!("{shape:?}"), |seed| {
            check(backends, backend, shape, seed)
        });
    }
}

fn every_registered_case_passes(backends: &Backends, backend: Backend) {
    common::assert_registered_cases("smoke", backends, backend);
}

fn rejects_wrong_lengths(backends: &Backends, backend: Backend) {
    let shape = MatmulShape::new(4, 4, 4).unwrap();
    let (a, b, c) = (
        &[f16::ZERO; 15][..],
        &[f16::ZERO; 16][..],
        &[0.0f32; 16][..],
    );
    let error = match backend {
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let cuda = backends.cuda().unwrap();
            let (a, b, mut c) = (
                cuda.upload(a).unwrap(),
                cuda.upload(b).unwrap(),
                cuda.upload(c).unwrap(),
            );
            tilefuse::smoke::cuda::matmul(cuda, &a, &b, &mut c, shape).unwrap_err()
        }
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            let gpu = backends.wgpu().unwrap();
            let (a, b, mut c) = (
                gpu.upload(a).unwrap(),
                gpu.upload(b).unwrap(),
                gpu.upload(c).unwrap(),
            );
            tilefuse::smoke::wgpu::matmul(gpu, &a, &b, &mut c, shape).unwrap_err()
        }
        _ => unreachable!("{backend} has no such test"),
    };
    assert!(
        matches!(
            error,
            Error::Length {
                what: "a",
                expected: 16,
                got: 15
            }
        ),
        "unexpected error: {error}"
    );
}

#[test]
fn shapes_are_validated() {
    assert!(matches!(
        MatmulShape::new(0, 1, 1),
        Err(Error::InvalidArgument { what: "m", .. })
    ));
    assert!(matches!(
        MatmulShape::new(1 << 16, 1, 1 << 16),
        Err(Error::InvalidArgument { what: "a", .. })
    ));
    assert!(matches!(
        MatmulShape::new(usize::MAX, 2, 2),
        Err(Error::InvalidArgument { what: "a", .. })
    ));
}

#[test]
fn reference_is_a_dot_product() {
    let shape = MatmulShape::new(2, 2, 2).unwrap();
    let a = [1.0, 2.0, 3.0, 4.0].map(f16::from_f32);
    let b = [1.0, 1.0, 0.5, -1.0].map(f16::from_f32);
    assert_eq!(
        tilefuse::smoke::reference(&a, &b, shape).unwrap(),
        vec![3.0, -1.5, 7.0, -2.5]
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn buffers_from_another_wgpu_device_are_rejected() {
    let Some(gpu) = common::wgpu() else {
        return;
    };
    let other = tilefuse::backend::wgpu::Wgpu::new().unwrap();
    let shape = MatmulShape::new(1, 1, 1).unwrap();
    let a = other.upload(&[f16::ONE]).unwrap();
    let b = gpu.upload(&[f16::ONE]).unwrap();
    let mut c = gpu.upload(&[0.0f32]).unwrap();
    let error = tilefuse::smoke::wgpu::matmul(gpu, &a, &b, &mut c, shape).unwrap_err();
    assert!(
        matches!(error, Error::DeviceMismatch { what: "a", .. }),
        "{error}"
    );
}

mod properties {
    use proptest::prelude::*;
    use tilefuse::smoke::MatmulShape;

    fn size() -> impl Strategy<Value = usize> {
        prop_oneof![0usize..4, 1usize..100_000, any::<usize>()]
    }

    proptest! {
        #[test]
        fn shape_validation_never_panics_and_bounds_what_it_accepts(m in size(), n in size(), k in size()) {
            if let Ok(shape) = MatmulShape::new(m, n, k) {
                for (rows, cols) in [(shape.m(), shape.k()), (shape.n(), shape.k()), (shape.m(), shape.n())] {
                    prop_assert!(rows >= 1 && cols >= 1);
                    prop_assert!(rows.checked_mul(cols).is_some_and(|len| len < 1 << 31));
                }
            } else {
                prop_assert!(m == 0 || n == 0 || k == 0 || m.saturating_mul(k) >= 1 << 31
                    || n.saturating_mul(k) >= 1 << 31 || m.saturating_mul(n) >= 1 << 31);
            }
        }
    }

    #[cfg(feature = "wgpu")]
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any buffer lengths: the op runs only when all three fit the shape, and otherwise
        /// says which one is wrong.
        #[test]
        fn wgpu_wrong_lengths_are_errors(la in 1usize..40, lb in 1usize..40, lc in 1usize..40) {
            let Some(gpu) = crate::common::wgpu() else { return Ok(()) };
            let shape = MatmulShape::new(4, 3, 5).unwrap();
            let a = gpu.upload(&vec![half::f16::ONE; la]).unwrap();
            let b = gpu.upload(&vec![half::f16::ONE; lb]).unwrap();
            let mut c = gpu.upload(&vec![f32::NAN; lc]).unwrap();
            let result = tilefuse::smoke::wgpu::matmul(gpu, &a, &b, &mut c, shape);
            if (la, lb, lc) == (20, 15, 12) {
                prop_assert!(result.is_ok());
                prop_assert_eq!(gpu.download(&c).unwrap(), vec![5.0; 12]);
            } else {
                let is_length_error = matches!(result, Err(tilefuse::Error::Length { .. }));
                prop_assert!(is_length_error, "{:?}", result);
            }
        }
    }
}

/// On a device whose storage bindings hold 64 KiB, a, b (80 KB) and c (160 KB) span several
/// windows and the product still matches the reference.
#[cfg(feature = "wgpu")]
#[test]
fn tensors_past_one_binding_run_in_windows() {
    let Some(backends) = common::capped_wgpu() else {
        return;
    };
    assert!(200 * 200 * 2 > common::CAPPED_BINDING as usize);
    check_shapes(backends, Backend::Wgpu, &[(200, 200, 200)]);
}
