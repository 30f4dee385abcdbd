//! The scan on every backend against the f64 reference (the CPU backend checks the
//! associative scan with popjaxrl's operator).
// Built without a GPU backend, the per-backend bodies have nothing to run.
#![cfg_attr(
    not(all(feature = "cuda", feature = "wgpu")),
    allow(dead_code, unused_imports, unused_variables, unreachable_code)
)]

mod common;

use num_complex::Complex32;
use proptest::prelude::*;
use tilefuse::Error;
use tilefuse::harness::{Backend, Backends, Rng, Tolerance, compare};
use tilefuse::scan::{
    Case, Decay, Inputs, Layout, ResetPattern, Scan, ScanShape, Storage, associative_scan, check,
    reference, run,
};

on_backends!([cpu, cuda, wgpu] => [
    lengths_of_time,
    reset_patterns,
    decays_layouts_and_h0,
    wide_and_ragged_channels,
    long_memory_stays_within_its_bound,
    final_only_mode,
    sixteen_bit_states,
    every_registered_case_passes,
]);
/// Properties of the GPU kernels alone.
mod gpu {
    use super::*;
    on_backends!([cuda, wgpu] => [
        final_state_is_the_last_row_bit_for_bit,
        runs_are_bitwise_deterministic,
        rejects_wrong_lengths,
        millions_of_steps,
    ]);
}

fn millions_of_steps(backends: &Backends, backend: Backend) {
    // More chunks than one dispatch may hold (65535 · 128 steps), and than lavapipe's loop
    // budget lets one invocation carry across.
    assert_case(backends, backend, Case::new(1, 9_000_000, 1));
}

fn assert_case(backends: &Backends, backend: Backend, case: Case) {
    common::assert_seeded(&case.to_string(), |seed| {
        check(backends, backend, &case, seed)
    });
}

/// u and h in f16 and bf16 (complex as pairs) with an f32 carry: within one rounding of each
/// stored value of the reference on the same inputs, with an odd count of 16-bit values (a
/// last word half used), long memory, both decays and layouts, every state or the last.
fn sixteen_bit_states(backends: &Backends, backend: Backend) {
    for (i, storage) in [Storage::F16, Storage::Bf16].into_iter().enumerate() {
        let cases = [
            Case {
                storage,
                resets: ResetPattern::ChunkBoundaries,
                ..Case::new(3, 1031, 37)
            },
            Case {
                storage,
                complex: true,
                decay: Decay::TimeVarying,
                layout: Layout::TimeMajor,
                ..Case::new(2, 700, 33)
            },
            Case {
                storage,
                complex: i == 0,
                a_magnitude: (0.999, 0.9999),
                resets: ResetPattern::Never,
                ..Case::new(1, 20_000, 5)
            },
            Case {
                storage,
                final_only: true,
                h0: false,
                ..Case::new(2, 3000, 64)
            },
            Case {
                storage,
                resets: ResetPattern::EveryStep,
                ..Case::new(1, 1, 1)
            },
        ];
        for case in cases {
            assert_case(backends, backend, case);
        }
    }
}

fn lengths_of_time(backends: &Backends, backend: Backend) {
    for (i, (time, channels)) in [
        (1, 33),
        (2, 33),
        (31, 40),
        (1000, 33),
        (4097, 33),
        (65536, 5),
    ]
    .into_iter()
    .enumerate()
    {
        let complex = i % 2 == 1;
        assert_case(
            backends,
            backend,
            Case {
                complex,
                ..Case::new(2, time, channels)
            },
        );
        assert_case(
            backends,
            backend,
            Case {
                complex: !complex,
                ..Case::new(1, time, channels)
            },
        );
    }
}

fn reset_patterns(backends: &Backends, backend: Backend) {
    for resets in [
        ResetPattern::Never,
        ResetPattern::EveryStep,
        ResetPattern::AtStart,
        ResetPattern::ChunkBoundaries,
        ResetPattern::Random(0.01),
        ResetPattern::Random(0.2),
    ] {
        for complex in [false, true] {
            let case = Case {
                complex,
                resets,
                ..Case::new(3, 1031, 37)
            };
            assert_case(backends, backend, case);
        }
    }
}

fn decays_layouts_and_h0(backends: &Backends, backend: Backend) {
    for decay in [Decay::TimeInvariant, Decay::TimeVarying] {
        for layout in [Layout::BatchMajor, Layout::TimeMajor] {
            for h0 in [false, true] {
                for complex in [false, true] {
                    let case = Case {
                        complex,
                        decay,
                        layout,
                        h0,
                        ..Case::new(3, 517, 45)
                    };
                    assert_case(backends, backend, case);
                }
            }
        }
    }
}

fn wide_and_ragged_channels(backends: &Backends, backend: Backend) {
    for (batch, channels) in [(1, 1), (5, 31), (2, 32), (2, 33), (1, 1000)] {
        let case = Case {
            complex: true,
            decay: Decay::TimeVarying,
            ..Case::new(batch, 300, channels)
        };
        assert_case(backends, backend, case);
    }
}

/// With |a| near 1 and no resets, the error stays within [`Case::tolerance`], which depends
/// on the memory 1 / (1 − |a|), not on t.
fn long_memory_stays_within_its_bound(backends: &Backends, backend: Backend) {
    for (time, magnitude) in [(65536, (0.999, 0.9999)), (20_000, (0.99999, 1.0))] {
        for complex in [false, true] {
            let case = Case {
                complex,
                resets: ResetPattern::Never,
                a_magnitude: magnitude,
                ..Case::new(1, time, 7)
            };
            assert_case(backends, backend, case);
        }
    }
}

fn final_only_mode(backends: &Backends, backend: Backend) {
    for resets in [
        ResetPattern::Never,
        ResetPattern::Random(0.01),
        ResetPattern::EveryStep,
    ] {
        for complex in [false, true] {
            let case = Case {
                complex,
                resets,
                final_only: true,
                ..Case::new(3, 3000, 40)
            };
            assert_case(backends, backend, case);
        }
    }
}

fn final_state_is_the_last_row_bit_for_bit(backends: &Backends, backend: Backend) {
    let seed = common::seed();
    let case = Case {
        complex: true,
        layout: Layout::TimeMajor,
        ..Case::new(3, 5000, 40)
    };
    let scan = case.scan::<Complex32>().unwrap();
    let inputs = Inputs::random(&case, &scan, seed);
    let full = run::<_, f32>(backends, backend, &scan, &inputs, false)
        .unwrap()
        .unwrap();
    let last = run::<_, f32>(backends, backend, &scan, &inputs, true)
        .unwrap()
        .unwrap();
    assert!(last.h.is_none());
    assert_eq!(
        bits(&full.h_last),
        bits(&last.h_last),
        "seed {seed}: final-only differs"
    );
    let h = full.h.unwrap();
    let last_row: Vec<f32> = (0..case.batch)
        .flat_map(|b| (0..case.channels).map(move |p| (b, p)))
        .flat_map(|(b, p)| {
            let i = scan.index(b, case.time - 1, p).unwrap();
            [h[2 * i], h[2 * i + 1]]
        })
        .collect();
    assert_eq!(
        bits(&last_row),
        bits(&full.h_last),
        "seed {seed}: h_last is not h[:, t-1]"
    );
}

fn runs_are_bitwise_deterministic(backends: &Backends, backend: Backend) {
    let seed = common::seed();
    // Many chunks per row, so the look-back meets predecessors in different states.
    let case = Case {
        complex: true,
        decay: Decay::TimeVarying,
        ..Case::new(2, 65536, 64)
    };
    let scan = case.scan::<Complex32>().unwrap();
    let inputs = Inputs::random(&case, &scan, seed);
    let first = run::<_, f32>(backends, backend, &scan, &inputs, false)
        .unwrap()
        .unwrap();
    for _ in 0..3 {
        let again = run::<_, f32>(backends, backend, &scan, &inputs, false)
            .unwrap()
            .unwrap();
        assert_eq!(
            bits(first.h.as_ref().unwrap()),
            bits(again.h.as_ref().unwrap()),
            "seed {seed}"
        );
        assert_eq!(bits(&first.h_last), bits(&again.h_last), "seed {seed}");
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn rejects_wrong_lengths(backends: &Backends, backend: Backend) {
    let scan = Scan::<f32>::new(
        ScanShape::new(2, 8, 3).unwrap(),
        Layout::BatchMajor,
        Decay::TimeInvariant,
    );
    let (a, u, reset, h_last) = (
        vec![0.5f32; 3],
        vec![0.0f32; 47],
        vec![0u8; 16],
        vec![0.0f32; 6],
    );
    let h = [0.0f32; 48];
    let error = match backend {
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            use tilefuse::scan::cuda::{ScanInputs, scan as cuda_scan};
            let cuda = backends.cuda().unwrap();
            let (a, u, reset) = (
                cuda.upload(&a).unwrap(),
                cuda.upload(&u).unwrap(),
                cuda.upload(&reset).unwrap(),
            );
            let (mut h, mut h_last) = (cuda.upload(&h).unwrap(), cuda.upload(&h_last).unwrap());
            let inputs = ScanInputs {
                a: &a,
                u: &u,
                reset: &reset,
                h0: None,
            };
            // A complex scan over an odd number of f32s is no whole number of elements.
            let complex = scan_as_complex(&scan);
            let odd = tilefuse::scan::cuda::scan(cuda, &complex, inputs, &mut h, &mut h_last)
                .unwrap_err();
            assert!(
                matches!(odd, Error::InvalidArgument { what: "a", .. }),
                "{odd}"
            );
            cuda_scan(cuda, &scan, inputs, &mut h, &mut h_last).unwrap_err()
        }
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            use tilefuse::scan::wgpu::{ScanInputs, scan as wgpu_scan};
            let gpu = backends.wgpu().unwrap();
            let (a, u, reset) = (
                gpu.upload(&a).unwrap(),
                gpu.upload(&u).unwrap(),
                gpu.upload(&reset).unwrap(),
            );
            let (mut h, mut h_last) = (gpu.upload(&h).unwrap(), gpu.upload(&h_last).unwrap());
            let inputs = ScanInputs {
                a: &a,
                u: &u,
                reset: &reset,
                h0: None,
            };
            wgpu_scan(gpu, &scan, inputs, &mut h, &mut h_last).unwrap_err()
        }
        _ => unreachable!("{backend} has no such test"),
    };
    assert!(
        matches!(
            error,
            Error::Length {
                what: "u",
                expected: 48,
                got: 47
            }
        ),
        "unexpected error: {error}"
    );
}

fn scan_as_complex(scan: &Scan<f32>) -> Scan<Complex32> {
    Scan::new(scan.shape, scan.layout, scan.decay)
}

fn every_registered_case_passes(backends: &Backends, backend: Backend) {
    common::assert_registered_cases("scan", backends, backend);
}

#[test]
fn reference_follows_the_recurrence() {
    let scan = Scan::<f32>::new(
        ScanShape::new(1, 5, 1).unwrap(),
        Layout::BatchMajor,
        Decay::TimeVarying,
    );
    let a = [0.5, 2.0, 3.0, 0.5, 0.5];
    let u = [1.0, 1.0, 4.0, 2.0, 1.0];
    // A reset at t = 0 discards h0 and keeps u[0]; another at t = 2.
    let reset = [1, 0, 1, 0, 0];
    let states = reference(&scan, &a, &u, &reset, Some(&[100.0])).unwrap();
    assert_eq!(states.h, vec![1.0, 3.0, 4.0, 4.0, 3.0]);
    assert_eq!(states.h_last, vec![3.0]);
    let no_reset = reference(&scan, &a, &u, &[0; 5], Some(&[2.0])).unwrap();
    assert_eq!(no_reset.h, vec![2.0, 5.0, 19.0, 11.5, 6.75]);
}

#[test]
fn associative_scan_agrees_with_the_reference() {
    let mut rng = Rng::new(common::seed());
    for trial in 0..40 {
        let seed = rng.next_u64();
        let resets = [
            ResetPattern::AtStart,
            ResetPattern::Random(0.3),
            ResetPattern::Never,
            ResetPattern::EveryStep,
        ];
        let case = Case {
            complex: trial % 2 == 0,
            h0: trial % 3 != 0,
            decay: if trial % 5 < 2 {
                Decay::TimeVarying
            } else {
                Decay::TimeInvariant
            },
            layout: if trial % 7 < 3 {
                Layout::TimeMajor
            } else {
                Layout::BatchMajor
            },
            resets: resets[trial % 4],
            ..Case::new(1 + trial % 3, 1 + (seed % 300) as usize, 1 + trial % 5)
        };
        let result = if case.complex {
            agree::<Complex32>(&case, seed)
        } else {
            agree::<f32>(&case, seed)
        };
        assert!(result.passed(), "{case} (seed {seed}): {result}");
    }
}

fn agree<T: tilefuse::scan::ScanElement>(case: &Case, seed: u64) -> tilefuse::harness::Comparison {
    let scan = case.scan::<T>().unwrap();
    let inputs = Inputs::random(case, &scan, seed);
    let h0 = inputs.h0.as_deref();
    let sequential = reference(&scan, &inputs.a, &inputs.u, &inputs.reset, h0).unwrap();
    let parallel = associative_scan(&scan, &inputs.a, &inputs.u, &inputs.reset, h0).unwrap();
    let tight = Tolerance {
        rel_l2: 1e-12,
        element: 1e-12,
    };
    compare(
        &[parallel.h, parallel.h_last].concat(),
        &[sequential.h, sequential.h_last].concat(),
        tight,
    )
}

#[test]
fn shapes_are_validated() {
    assert!(matches!(
        ScanShape::new(0, 1, 1),
        Err(Error::InvalidArgument { what: "batch", .. })
    ));
    assert!(matches!(
        ScanShape::new(1, 0, 1),
        Err(Error::InvalidArgument { what: "time", .. })
    ));
    assert!(matches!(
        ScanShape::new(1, 1, 0),
        Err(Error::InvalidArgument {
            what: "channels",
            ..
        })
    ));
    assert!(matches!(
        ScanShape::new(1, (1 << 30) + 1, 1),
        Err(Error::InvalidArgument { what: "time", .. })
    ));
    assert!(matches!(
        ScanShape::new(usize::MAX / 2, 2, 2),
        Err(Error::InvalidArgument { what: "shape", .. })
    ));
    let scan = Scan::<f32>::new(
        ScanShape::new(2, 3, 4).unwrap(),
        Layout::TimeMajor,
        Decay::TimeInvariant,
    );
    let error = reference(&scan, &[0.0; 4], &[0.0; 24], &[0; 6], Some(&[0.0; 7])).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Length {
                what: "h0",
                expected: 8,
                got: 7
            }
        ),
        "{error}"
    );
    let error = reference(&scan, &[0.0; 24], &[0.0; 24], &[0; 6], None).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Length {
                what: "a",
                expected: 4,
                got: 24
            }
        ),
        "{error}"
    );
}

#[test]
fn layouts_place_elements() {
    let shape = ScanShape::new(2, 3, 4).unwrap();
    let batch_major = Scan::<f32>::new(shape, Layout::BatchMajor, Decay::TimeInvariant);
    let time_major = Scan::<f32>::new(shape, Layout::TimeMajor, Decay::TimeInvariant);
    assert_eq!(batch_major.index(1, 2, 3), Some(12 + 8 + 3));
    assert_eq!(time_major.index(1, 2, 3), Some(4 + 16 + 3));
    assert_eq!(batch_major.reset_index(1, 2), Some(5));
    assert_eq!(time_major.reset_index(1, 2), Some(5));
    assert_eq!(time_major.reset_index(0, 1), Some(2));
    assert_eq!(batch_major.index(2, 0, 0), None);
    assert_eq!(time_major.reset_index(0, 3), None);
}

proptest! {
    /// Any sizes and indices: a shape is an error or addressable, and an index is none
    /// outside it and inside the buffer within it; nothing overflows or panics.
    #[test]
    fn shapes_and_indices_take_any_values(
        (b, t, p) in (common::any_size(), common::any_size(), common::any_size()),
        (ib, it, ip) in (common::any_size(), common::any_size(), common::any_size()),
    ) {
        let Ok(shape) = ScanShape::new(b, t, p) else { return Ok(()) };
        for layout in [Layout::BatchMajor, Layout::TimeMajor] {
            let scan = Scan::<Complex32>::new(shape, layout, Decay::TimeVarying);
            let inside = ib < b && it < t && ip < p;
            prop_assert_eq!(scan.index(ib, it, ip).is_some(), inside);
            prop_assert_eq!(scan.reset_index(ib, it).is_some(), ib < b && it < t);
            let index = scan.index(ib % b, it % t, ip % p).unwrap();
            prop_assert!(index < scan.states_len());
            prop_assert!(scan.reset_index(ib % b, it % t).unwrap() < scan.reset_len());
        }
    }
}

/// On a device whose storage bindings hold 64 KiB, a, u and h of 192 KB span three windows
/// and the scan still matches the reference; a tensor past four windows is a DeviceLimit
/// error, not a panic or a wrong result.
#[cfg(feature = "wgpu")]
#[test]
fn tensors_past_one_binding_run_in_windows() {
    let Some(backends) = common::capped_wgpu() else {
        return;
    };
    let windowed = Case {
        complex: true,
        decay: Decay::TimeVarying,
        ..Case::new(2, 1000, 12)
    };
    assert!(2 * 1000 * 12 * 8 > common::CAPPED_BINDING as usize);
    assert_case(backends, Backend::Wgpu, windowed);
    // 16-bit states: their f32 copies span windows, and so do the packed ones.
    let packed = Case {
        storage: Storage::Bf16,
        ..Case::new(2, 2000, 12)
    };
    assert!(2 * 2000 * 12 * 2 > common::CAPPED_BINDING as usize);
    assert_case(backends, Backend::Wgpu, packed);
    let too_large = Case {
        complex: true,
        ..Case::new(2, 2000, 40)
    };
    let error = check(backends, Backend::Wgpu, &too_large, 1).unwrap_err();
    assert!(matches!(error, Error::DeviceLimit { .. }), "{error}");
}
