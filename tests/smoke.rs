//! The plumbing test on every backend: c = a · bᵀ against the f64 reference.

mod common;

use half::f16;
use tilefuse::Error;
use tilefuse::harness::{Backend, Backends};
use tilefuse::smoke::{MatmulShape, check};

on_backends!([cuda, wgpu] => [ragged_and_tiny_shapes, exact_tiles, rejects_wrong_lengths, every_registered_case_passes]);

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

fn check_shapes(backends: &Backends, backend: Backend, shapes: &[(usize, usize, usize)]) {
    for &(m, n, k) in shapes {
        let seed = common::seed();
        let shape = MatmulShape::new(m, n, k).unwrap();
        common::assert_passes(
            check(backends, backend, shape, seed),
            &format!("{shape:?}"),
            seed,
        );
    }
}

fn every_registered_case_passes(backends: &Backends, backend: Backend) {
    let entry = tilefuse::harness::op("smoke").expect("smoke is registered");
    for case in (entry.check_cases)() {
        common::assert_passes(case.run(backends, backend), &case.name, 0x5eed);
    }
}

fn rejects_wrong_lengths(backends: &Backends, backend: Backend) {
    let shape = MatmulShape::new(4, 4, 4).unwrap();
    let (a, b) = (vec![f16::ZERO; 15], vec![f16::ZERO; 16]);
    let c = vec![0.0f32; 16];
    let error = match backend {
        Backend::Cuda => {
            let cuda = backends.cuda().unwrap();
            let s = cuda.stream();
            let (a, b, mut c) = (
                s.clone_htod(&a).unwrap(),
                s.clone_htod(&b).unwrap(),
                s.clone_htod(&c).unwrap(),
            );
            tilefuse::smoke::cuda::matmul(cuda, &a, &b, &mut c, shape).unwrap_err()
        }
        Backend::Wgpu => {
            let gpu = backends.wgpu().unwrap();
            let (a, b, mut c) = (
                gpu.upload(&a).unwrap(),
                gpu.upload(&b).unwrap(),
                gpu.upload(&c).unwrap(),
            );
            tilefuse::smoke::wgpu::matmul(gpu, &a, &b, &mut c, shape).unwrap_err()
        }
        Backend::Cpu => unreachable!(),
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

#[test]
fn buffers_from_another_wgpu_device_are_rejected() {
    let Some(backends) = common::available(Backend::Wgpu) else {
        return;
    };
    let gpu = backends.wgpu().unwrap();
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
