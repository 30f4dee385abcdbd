//! Comparing an output against the f64 reference.
//!
//! Two bounds must hold: the relative L2 error `‖out − ref‖ / ‖ref‖`, and a per-element bound
//! `|out_i − ref_i| ≤ element · (|ref_i| + rms(ref))`, so one bad element cannot hide in a
//! large norm. NaN or infinity where the reference is finite never passes; where the
//! reference is not finite (an `lse` of −inf, NaN from non-finite inputs) the output must be
//! the same: the same infinity, or NaN.

use std::fmt;

/// Error bounds for one comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Bound on `‖out − ref‖₂ / ‖ref‖₂`.
    pub rel_l2: f64,
    /// Per-element bound, relative to `|ref_i| + rms(ref)`.
    pub element: f64,
}

impl Tolerance {
    /// f32 arithmetic on exactly representable inputs.
    pub const F32: Tolerance = Tolerance {
        rel_l2: 1e-5,
        element: 1e-5,
    };
    /// f16 operands or outputs.
    pub const F16: Tolerance = Tolerance {
        rel_l2: 2e-3,
        element: 2e-3,
    };
    /// bf16 operands or outputs.
    pub const BF16: Tolerance = Tolerance {
        rel_l2: 1e-2,
        element: 1e-2,
    };
}

/// The outcome of [`compare`].
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Number of elements compared.
    pub len: usize,
    /// `‖out − ref‖₂ / ‖ref‖₂` (0 when both are zero, infinite when only `ref` is).
    pub rel_l2: f64,
    /// Largest `|out_i − ref_i|` over finite elements.
    pub max_abs: f64,
    /// The element with the largest error relative to its bound, and that ratio (≤ 1 passes).
    pub worst: Option<(usize, f64)>,
    /// Elements that are NaN or infinite where the reference is not, or differ from a
    /// non-finite reference (another infinity, or not NaN where it is NaN).
    pub non_finite: usize,
    /// The bounds applied.
    pub tolerance: Tolerance,
}

impl Comparison {
    /// Whether every bound holds.
    pub fn passed(&self) -> bool {
        self.non_finite == 0
            && self.rel_l2 <= self.tolerance.rel_l2
            && self.worst.is_none_or(|(_, ratio)| ratio <= 1.0)
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rel_l2 {:.2e} (bound {:.0e}), max_abs {:.2e}",
            self.rel_l2, self.tolerance.rel_l2, self.max_abs
        )?;
        if let Some((index, ratio)) = self.worst {
            write!(f, ", worst element {index} at {ratio:.2}x its bound")?;
        }
        if self.non_finite > 0 {
            write!(f, ", {} non-finite", self.non_finite)?;
        }
        Ok(())
    }
}

/// An output element that can be widened to f64 for comparison.
pub trait AsF64: Copy {
    /// The value as f64.
    fn as_f64(self) -> f64;
}

impl AsF64 for f64 {
    fn as_f64(self) -> f64 {
        self
    }
}
impl AsF64 for f32 {
    fn as_f64(self) -> f64 {
        self.into()
    }
}
impl AsF64 for half::f16 {
    fn as_f64(self) -> f64 {
        self.into()
    }
}
impl AsF64 for half::bf16 {
    fn as_f64(self) -> f64 {
        self.into()
    }
}

/// Compares `out` with `reference` under `tolerance`. A length mismatch fails every element.
pub fn compare<T: AsF64>(out: &[T], reference: &[f64], tolerance: Tolerance) -> Comparison {
    let finite_ref = reference.iter().filter(|r| r.is_finite());
    let (count, sum_sq) = finite_ref.fold((0usize, 0.0f64), |(n, s), r| (n + 1, s + r * r));
    let rms = if count == 0 {
        0.0
    } else {
        (sum_sq / count as f64).sqrt()
    };
    let mut comparison = Comparison {
        len: reference.len(),
        rel_l2: 0.0,
        max_abs: 0.0,
        worst: None,
        non_finite: reference.len().abs_diff(out.len()),
        tolerance,
    };
    let mut diff_sq = 0.0;
    for (index, (o, &r)) in out.iter().zip(reference).enumerate() {
        let o = o.as_f64();
        if !r.is_finite() || !o.is_finite() {
            let same = o == r || (o.is_nan() && r.is_nan());
            comparison.non_finite += usize::from(!same);
            continue;
        }
        let err = (o - r).abs();
        diff_sq += err * err;
        comparison.max_abs = comparison.max_abs.max(err);
        let bound = tolerance.element * (r.abs() + rms);
        let ratio = if bound > 0.0 {
            err / bound
        } else if err == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        if comparison.worst.is_none_or(|(_, worst)| ratio > worst) {
            comparison.worst = Some((index, ratio));
        }
    }
    comparison.rel_l2 = if diff_sq == 0.0 {
        0.0
    } else if sum_sq == 0.0 {
        f64::INFINITY
    } else {
        (diff_sq / sum_sq).sqrt()
    };
    comparison
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_outputs_pass() {
        let r = [1.0, -2.0, 0.0, f64::NEG_INFINITY];
        let out = [1.0f32, -2.0, 0.0, f32::NEG_INFINITY];
        let c = compare(&out, &r, Tolerance::F32);
        assert!(c.passed(), "{c}");
        assert_eq!(c.rel_l2, 0.0);
    }

    #[test]
    fn nan_passes_only_where_the_reference_is_nan() {
        let c = compare(&[1.0f32, f32::NAN], &[1.0, 0.0], Tolerance::BF16);
        assert!(!c.passed());
        assert_eq!(c.non_finite, 1);
        let r = [1.0, f64::NAN, 2.0];
        assert!(compare(&[1.0f32, f32::NAN, 2.0], &r, Tolerance::F32).passed());
        for wrong in [0.0, f32::INFINITY] {
            let c = compare(&[1.0f32, wrong, 2.0], &r, Tolerance::F32);
            assert_eq!(c.non_finite, 1, "{wrong}");
        }
    }

    #[test]
    fn a_single_bad_element_fails_the_element_bound() {
        let reference: Vec<f64> = (0..10_000).map(|i| (i as f64).sin()).collect();
        let mut out: Vec<f64> = reference.clone();
        out[77] += 0.05; // far below the L2 bound over 10k elements
        let c = compare(&out, &reference, Tolerance::F16);
        assert!(c.rel_l2 < Tolerance::F16.rel_l2);
        assert!(!c.passed());
        assert_eq!(c.worst.unwrap().0, 77);
    }

    #[test]
    fn zero_reference_needs_exact_zeros() {
        assert!(compare(&[0.0f32; 4], &[0.0; 4], Tolerance::F32).passed());
        assert!(!compare(&[0.0f32, 1e-30, 0.0, 0.0], &[0.0; 4], Tolerance::F32).passed());
    }

    #[test]
    fn length_mismatch_fails() {
        assert!(!compare(&[1.0f32], &[1.0, 2.0], Tolerance::F32).passed());
    }

    #[test]
    fn wrong_infinity_fails() {
        assert!(!compare(&[f32::INFINITY], &[f64::NEG_INFINITY], Tolerance::F32).passed());
        assert!(!compare(&[0.0f32], &[f64::NEG_INFINITY], Tolerance::F32).passed());
    }
}
