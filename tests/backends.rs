//! The backend plumbing itself: handles, buffers, limits and errors, without any op.
// Built without a GPU backend, the per-backend bodies have nothing to run.
#![cfg_attr(
    not(all(feature = "cuda", feature = "wgpu")),
    allow(dead_code, unused_imports, unused_variables, unreachable_code)
)]

mod common;

use half::{bf16, f16};
use num_complex::Complex32;
use tilefuse::Error;

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_buffers_round_trip_every_element_type_and_odd_lengths() {
    let Some(gpu) = common::wgpu() else {
        return;
    };
    for len in [0usize, 1, 2, 3, 5, 1023] {
        let halves: Vec<f16> = (0..len).map(|i| f16::from_f32(i as f32 - 7.5)).collect();
        assert_eq!(gpu.download(&gpu.upload(&halves).unwrap()).unwrap(), halves);
        let brains: Vec<bf16> = (0..len).map(|i| bf16::from_f32(i as f32 * 0.25)).collect();
        assert_eq!(gpu.download(&gpu.upload(&brains).unwrap()).unwrap(), brains);
        let complex: Vec<Complex32> = (0..len)
            .map(|i| Complex32::new(i as f32, -(i as f32)))
            .collect();
        assert_eq!(
            gpu.download(&gpu.upload(&complex).unwrap()).unwrap(),
            complex
        );
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        assert_eq!(gpu.download(&gpu.upload(&bytes).unwrap()).unwrap(), bytes);
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_write_checks_length_and_overwrites() {
    let Some(gpu) = common::wgpu() else {
        return;
    };
    let mut buffer = gpu.zeros::<f32>(3).unwrap();
    assert_eq!(gpu.download(&buffer).unwrap(), vec![0.0; 3]);
    gpu.write(&mut buffer, &[1.0, 2.0, 3.0]).unwrap();
    assert_eq!(gpu.download(&buffer).unwrap(), vec![1.0, 2.0, 3.0]);
    let error = gpu.write(&mut buffer, &[1.0]).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Length {
                expected: 3,
                got: 1,
                ..
            }
        ),
        "{error}"
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_allocations_beyond_the_device_limit_are_errors() {
    let Some(gpu) = common::wgpu() else {
        return;
    };
    let too_many = (gpu.limits().max_buffer_size / 4 + 1) as usize;
    let error = gpu.zeros::<f32>(too_many).unwrap_err();
    assert!(
        matches!(
            error,
            Error::DeviceLimit {
                limit_name: "max_buffer_size",
                ..
            }
        ),
        "{error}"
    );
    let error = gpu.zeros::<f32>(usize::MAX).unwrap_err();
    assert!(matches!(error, Error::DeviceLimit { .. }), "{error}");
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_copy_checks_lengths_and_devices() {
    let Some(gpu) = common::wgpu() else {
        return;
    };
    let src = gpu.upload(&[1u32, 2, 3]).unwrap();
    let mut short = gpu.zeros::<u32>(2).unwrap();
    assert!(matches!(
        gpu.copy_buffer(&src, &mut short),
        Err(Error::Length { .. })
    ));
    let other = tilefuse::backend::wgpu::Wgpu::new().unwrap();
    let mut foreign = other.zeros::<u32>(3).unwrap();
    assert!(matches!(
        gpu.copy_buffer(&src, &mut foreign),
        Err(Error::DeviceMismatch { what: "dst", .. })
    ));
    assert!(matches!(
        other.download(&src),
        Err(Error::DeviceMismatch { .. })
    ));
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_adapter_selection_by_name() {
    use tilefuse::backend::wgpu::{Wgpu, WgpuOptions};
    let Some(gpu) = common::wgpu() else {
        return;
    };
    let name = gpu.adapter_info().name.clone();
    let mut options = WgpuOptions::from_env();
    options.adapter_name = Some(name.to_uppercase());
    assert_eq!(
        Wgpu::with_options(options.clone())
            .unwrap()
            .adapter_info()
            .name,
        name
    );
    options.adapter_name = Some("no such adapter anywhere".into());
    let error = Wgpu::with_options(options).unwrap_err();
    assert!(matches!(error, Error::WgpuUnavailable { .. }), "{error}");
    assert!(
        error.to_string().contains(&name),
        "the error lists the adapters: {error}"
    );
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_device_facts_and_bad_ordinals() {
    use tilefuse::backend::cuda::Cuda;
    let Some(cuda) = common::cuda() else {
        return;
    };
    let info = cuda.info();
    assert!(
        info.sm_count > 0 && info.l2_bytes > 0 && info.total_memory > 0,
        "{info:?}"
    );
    assert!(
        info.compute_capability >= (8, 0),
        "kernels need sm_80+: {info:?}"
    );
    cuda.preload().unwrap();
    let error = Cuda::new(4096).unwrap_err();
    assert!(matches!(error, Error::CudaUnavailable { .. }), "{error}");
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_handles_share_one_context_and_accept_a_callers_stream() {
    use tilefuse::backend::cuda::Cuda;
    let Some(cuda) = common::cuda() else {
        return;
    };
    let stream = cuda.context().new_stream().unwrap();
    let mine = Cuda::from_stream(stream.clone()).unwrap();
    assert!(std::sync::Arc::ptr_eq(mine.stream(), &stream));
    assert_eq!(mine.info(), cuda.info());
    let shape = tilefuse::smoke::MatmulShape::new(16, 8, 16).unwrap();
    let a = stream.clone_htod(&[f16::ONE; 256]).unwrap();
    let b = stream.clone_htod(&[f16::ONE; 128]).unwrap();
    let mut c = stream.alloc_zeros::<f32>(128).unwrap();
    tilefuse::smoke::cuda::matmul(&mine, &a, &b, &mut c, shape).unwrap();
    assert_eq!(stream.clone_dtoh(&c).unwrap(), vec![16.0; 128]);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_wraps_a_callers_buffer() {
    use tilefuse::backend::wgpu::GpuBuffer;
    let Some(gpu) = common::wgpu() else {
        return;
    };
    let raw = |size, usage| {
        gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let all =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let mut wrapped = GpuBuffer::<f32>::from_raw(gpu, raw(16, all), 4).unwrap();
    gpu.write(&mut wrapped, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(gpu.download(&wrapped).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    let small = GpuBuffer::<f32>::from_raw(gpu, raw(12, all), 4).unwrap_err();
    assert!(
        matches!(small, Error::InvalidArgument { what: "buffer", .. }),
        "{small}"
    );
    let uniform =
        GpuBuffer::<f32>::from_raw(gpu, raw(16, wgpu::BufferUsages::UNIFORM), 4).unwrap_err();
    assert!(
        matches!(uniform, Error::InvalidArgument { what: "buffer", .. }),
        "{uniform}"
    );
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_peak_kernel_sums_its_products_exactly() {
    let Some(backends) = common::available(tilefuse::harness::Backend::Cuda) else {
        return;
    };
    common::assert_registered_cases("peak", backends, tilefuse::harness::Backend::Cuda);
}
