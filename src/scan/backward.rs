//! The scan's backward pass (the module docs of [`crate::scan`] state it): the f64 reference
//! and an independent CPU algorithm.

use std::fmt;

use num_complex::Complex64;

use super::reference::flatten;
use super::{
    BufferLengths, Case, Decay, Inputs, Layout, Scan, ScanElement, associative_scan, reference,
};
use crate::error::{Error, Result};
use crate::harness::{Comparison, Rng, Tolerance, compare};

/// The cotangents a backward pass starts from.
#[derive(Debug, Clone)]
pub struct Cotangents<T> {
    /// Of every state: laid out like `u` (zeros allowed).
    pub dh: Vec<T>,
    /// Of the final state, `[b, p]`, when the loss depends on it.
    pub dh_last: Option<Vec<T>>,
}

/// The cotangents of a scan's inputs in f64, complex values as interleaved `(re, im)` pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    /// Of `u`, laid out like `u`.
    pub du: Vec<f64>,
    /// Of `a`, laid out like `a` (`[p]` for a time-invariant `a`).
    pub da: Vec<f64>,
    /// Of `h0`, `[b, p]`, when the scan has one.
    pub dh0: Option<Vec<f64>>,
}

/// The backward pass step by step in f64: the executable specification.
///
/// ```
/// use tilefuse::scan::{Cotangents, Decay, Inputs, Layout, Scan, ScanShape, reference_backward};
///
/// // One channel, three steps, a reset at t = 1: the cotangent of h[2] reaches u[1] and u[2],
/// // and a through step 2 only.
/// let scan = Scan::<f32>::new(ScanShape::new(1, 3, 1)?, Layout::BatchMajor, Decay::TimeInvariant);
/// let inputs = Inputs { a: vec![0.5], u: vec![1.0, 2.0, 3.0], reset: vec![0, 1, 0], h0: Some(vec![4.0]) };
/// let cotangents = Cotangents { dh: vec![0.0, 0.0, 1.0], dh_last: None };
/// let grads = reference_backward(&scan, &inputs, &cotangents)?;
/// assert_eq!(grads.du, vec![0.0, 0.5, 1.0]);
/// assert_eq!(grads.da, vec![2.0]); // g[2]·h[1] = 1 · 2
/// assert_eq!(grads.dh0, Some(vec![0.0])); // g[0] = 0: the reset at t = 1 stops it
/// # Ok::<(), tilefuse::Error>(())
/// ```
pub fn reference_backward<T: ScanElement>(
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    cotangents: &Cotangents<T>,
) -> Result<Gradients> {
    check_cotangents(scan, inputs, cotangents)?;
    let forward = reference(
        scan,
        &inputs.a,
        &inputs.u,
        &inputs.reset,
        inputs.h0.as_deref(),
    )?;
    let h = complex::<T>(&forward.h);
    let (batch, time, channels) = (scan.shape.batch(), scan.shape.time(), scan.shape.channels());
    let mut g = vec![Complex64::default(); scan.states_len()];
    for b in 0..batch {
        for p in 0..channels {
            let mut carry = dh_last_at(cotangents, b, p, channels);
            for t in (0..time).rev() {
                let at = scan.at(b, t, p);
                carry = cotangents.dh[at].widen() + carry;
                g[at] = carry;
                carry = if inputs.reset[scan.reset_at(b, t)] != 0 {
                    Complex64::default()
                } else {
                    a_at(scan, &inputs.a, b, t, p) * carry
                };
            }
        }
    }
    Ok(gradients(scan, inputs, &g, &h))
}

/// The same function through an independent algorithm: `g` is the forward scan
/// ([`associative_scan`]) of the time-reversed problem (input `dh`, decay `a[t+1]`, reset
/// `reset[t+1]`, initial state `dh_last`), and `h` the forward's own associative scan.
/// Agrees with [`reference_backward`] up to f64 rounding.
pub fn associative_backward<T: ScanElement>(
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    cotangents: &Cotangents<T>,
) -> Result<Gradients> {
    check_cotangents(scan, inputs, cotangents)?;
    let forward = associative_scan(
        scan,
        &inputs.a,
        &inputs.u,
        &inputs.reset,
        inputs.h0.as_deref(),
    )?;
    let h = complex::<T>(&forward.h);
    let reversed = Scan::<T>::new(scan.shape, Layout::BatchMajor, Decay::TimeVarying);
    let (batch, time, channels) = (scan.shape.batch(), scan.shape.time(), scan.shape.channels());
    let mut a = vec![T::narrow(Complex64::new(1.0, 0.0)); reversed.states_len()];
    let mut u = vec![T::narrow(Complex64::default()); reversed.states_len()];
    let mut reset = vec![0u8; reversed.reset_len()];
    for b in 0..batch {
        for t in 0..time {
            let s = time - 1 - t;
            if t + 1 < time {
                reset[reversed.reset_at(b, s)] = inputs.reset[scan.reset_at(b, t + 1)];
            }
            for p in 0..channels {
                u[reversed.at(b, s, p)] = cotangents.dh[scan.at(b, t, p)];
                if t + 1 < time {
                    a[reversed.at(b, s, p)] = T::narrow(a_at(scan, &inputs.a, b, t + 1, p));
                }
            }
        }
    }
    let dh_last = cotangents
        .dh_last
        .clone()
        .unwrap_or_else(|| vec![T::narrow(Complex64::default()); scan.final_len()]);
    let reversed_g = complex::<T>(&associative_scan(&reversed, &a, &u, &reset, Some(&dh_last))?.h);
    let mut g = vec![Complex64::default(); scan.states_len()];
    for b in 0..batch {
        for t in 0..time {
            for p in 0..channels {
                g[scan.at(b, t, p)] = reversed_g[reversed.at(b, time - 1 - t, p)];
            }
        }
    }
    Ok(gradients(scan, inputs, &g, &h))
}

/// An error unless the cotangents fit `scan` (and the inputs do).
fn check_cotangents<T: ScanElement>(
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    cotangents: &Cotangents<T>,
) -> Result<()> {
    scan.check_lengths(BufferLengths {
        a: inputs.a.len(),
        u: inputs.u.len(),
        reset: inputs.reset.len(),
        h0: inputs.h0.as_ref().map(Vec::len),
        h: Some(cotangents.dh.len()),
        h_last: cotangents
            .dh_last
            .as_ref()
            .map_or(scan.final_len(), Vec::len),
    })
    .map_err(|e| match e {
        Error::Length {
            what: "h",
            expected,
            got,
        } => Error::Length {
            what: "dh",
            expected,
            got,
        },
        Error::Length {
            what: "h_last",
            expected,
            got,
        } => Error::Length {
            what: "dh_last",
            expected,
            got,
        },
        other => other,
    })
}

/// `a` at (b, t, p).
fn a_at<T: ScanElement>(scan: &Scan<T>, a: &[T], b: usize, t: usize, p: usize) -> Complex64 {
    match scan.decay {
        Decay::TimeInvariant => a[p].widen(),
        Decay::TimeVarying => a[scan.at(b, t, p)].widen(),
    }
}

/// `dh_last` at (b, p), or 0.
fn dh_last_at<T: ScanElement>(
    cotangents: &Cotangents<T>,
    b: usize,
    p: usize,
    channels: usize,
) -> Complex64 {
    cotangents
        .dh_last
        .as_ref()
        .map_or(Complex64::default(), |d| d[b * channels + p].widen())
}

/// du, da and dh0 from g (every step's cotangent) and the forward's states h.
fn gradients<T: ScanElement>(
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    g: &[Complex64],
    h: &[Complex64],
) -> Gradients {
    let (batch, time, channels) = (scan.shape.batch(), scan.shape.time(), scan.shape.channels());
    let mut da = vec![Complex64::default(); scan.a_len()];
    let mut dh0 = vec![Complex64::default(); scan.final_len()];
    for b in 0..batch {
        for p in 0..channels {
            let h0 = inputs
                .h0
                .as_ref()
                .map_or(Complex64::default(), |h0| h0[b * channels + p].widen());
            for t in 0..time {
                if inputs.reset[scan.reset_at(b, t)] != 0 {
                    continue;
                }
                let before = if t == 0 { h0 } else { h[scan.at(b, t - 1, p)] };
                let product = g[scan.at(b, t, p)] * before;
                match scan.decay {
                    Decay::TimeInvariant => da[p] += product,
                    Decay::TimeVarying => da[scan.at(b, t, p)] = product,
                }
            }
            if inputs.reset[scan.reset_at(b, 0)] == 0 {
                dh0[b * channels + p] = a_at(scan, &inputs.a, b, 0, p) * g[scan.at(b, 0, p)];
            }
        }
    }
    Gradients {
        du: flatten::<T>(g),
        da: flatten::<T>(&da),
        dh0: inputs.h0.is_some().then(|| flatten::<T>(&dh0)),
    }
}

/// `T::LANES` f64s each (as [`super::States`] holds them) as complex numbers.
fn complex<T: ScanElement>(values: &[f64]) -> Vec<Complex64> {
    match T::LANES {
        1 => values.iter().map(|&re| Complex64::new(re, 0.0)).collect(),
        _ => values
            .chunks_exact(2)
            .map(|pair| Complex64::new(pair[0], pair[1]))
            .collect(),
    }
}

/// One check configuration of the backward pass: a forward case, whether the loss has a
/// `dh_last`, and whether a device recomputes the states (else it is given the forward's h).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackwardCase {
    /// The forward problem (its `final_only` is ignored).
    pub forward: Case,
    /// Whether the cotangent of the final state is given.
    pub dh_last: bool,
    /// Whether the states are recomputed from `u` (a final-state-only forward).
    pub recompute: bool,
}

impl BackwardCase {
    /// `forward`'s backward with a `dh_last`, from the forward's states.
    pub fn new(forward: Case) -> BackwardCase {
        BackwardCase {
            forward,
            dh_last: true,
            recompute: false,
        }
    }
}

impl fmt::Display for BackwardCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let forward = Case {
            final_only: false,
            ..self.forward
        };
        write!(f, "backward {forward}")?;
        if self.dh_last {
            f.write_str(" dh_last")?;
        }
        if self.recompute {
            f.write_str(" recompute")?;
        }
        Ok(())
    }
}

/// Random cotangents of `scan`'s states, from `seed`: every state's, and the final state's
/// when asked.
pub fn random_cotangents<T: ScanElement>(
    scan: &Scan<T>,
    dh_last: bool,
    seed: u64,
) -> Cotangents<T> {
    let mut rng = Rng::new(seed);
    let mut value = || {
        T::narrow(Complex64::new(
            rng.uniform(-1.0, 1.0),
            rng.uniform(-1.0, 1.0),
        ))
    };
    Cotangents {
        dh: (0..scan.states_len()).map(|_| value()).collect(),
        dh_last: dh_last.then(|| (0..scan.final_len()).map(|_| value()).collect()),
    }
}

/// What a device's backward pass returns, as f32s (complex values interleaved).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceGradients {
    /// Of `u`.
    pub du: Vec<f32>,
    /// Of `a`.
    pub da: Vec<f32>,
    /// Of `h0`, when the case has one.
    pub dh0: Option<Vec<f32>>,
}

/// Checks a device's backward pass of `case` with inputs and cotangents from `seed`, run by
/// `runner`, against [`reference_backward`]: du and dh0 within the forward's bound (g
/// accumulates its roundings as h does), a time-varying da within twice it (a product of g
/// and h), and a time-invariant da, a sum over b and t whose terms may cancel, within twice
/// it relative to the sum of its terms' magnitudes.
pub(crate) fn check_backward_with<T: ScanElement>(
    case: &BackwardCase,
    seed: u64,
    runner: impl FnOnce(&Scan<T>, &Inputs<T>, &Cotangents<T>) -> Result<Option<DeviceGradients>>,
) -> Result<Option<Comparison>> {
    let scan = case.forward.scan::<T>()?;
    let inputs = Inputs::random(&case.forward, &scan, seed);
    let mut cotangents = random_cotangents(&scan, case.dh_last, seed ^ 0x6ad);
    super::check::round_to(case.forward.storage, &mut cotangents.dh);
    let want = reference_backward(&scan, &inputs, &cotangents)?;
    let Some(got) = runner(&scan, &inputs, &cotangents)? else {
        return Ok(None);
    };
    let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    let (mut da_got, mut da_want) = (wide(&got.da), want.da.clone());
    let bound = case.forward.tolerance();
    let twice = Tolerance {
        rel_l2: 2.0 * bound.rel_l2,
        element: 2.0 * bound.element,
    };
    if scan.decay == Decay::TimeInvariant {
        let magnitudes = da_term_magnitudes(&scan, &inputs, &cotangents)?;
        for (i, value) in da_got.iter_mut().chain(da_want.iter_mut()).enumerate() {
            let scale = magnitudes[(i % want.da.len()) / T::LANES];
            *value /= if scale > 0.0 { scale } else { 1.0 };
        }
        // Beside each part of da over its magnitudes, a 1 (the magnitudes over themselves) in
        // both: the comparison's norms and its per-element scale then measure the error
        // against the terms' magnitudes, not against a da whose terms cancelled.
        let ones = std::iter::repeat_n(1.0, want.da.len());
        da_got.extend(ones.clone());
        da_want.extend(ones);
    }
    let comparisons = [
        compare(&wide(&got.du), &want.du, bound),
        compare(&da_got, &da_want, twice),
        compare(
            &got.dh0.as_deref().map(wide).unwrap_or_default(),
            &want.dh0.clone().unwrap_or_default(),
            bound,
        ),
    ];
    if got.dh0.is_some() != want.dh0.is_some() {
        return Err(crate::Error::invalid(
            "dh0",
            format!(
                "dh0 {}",
                if want.dh0.is_some() {
                    "written"
                } else {
                    "absent"
                }
            ),
            "the other",
        ));
    }
    // The comparison that fails, or the one nearest its bounds.
    let margin = |c: &Comparison| {
        c.worst
            .map_or(0.0, |(_, ratio)| ratio)
            .max(c.rel_l2 / c.tolerance.rel_l2)
    };
    Ok(comparisons.into_iter().max_by(|a, b| {
        (!a.passed(), margin(a))
            .partial_cmp(&(!b.passed(), margin(b)))
            .unwrap_or(std::cmp::Ordering::Equal)
    }))
}

/// For a time-invariant `a`: per channel, the sum over b and t of |g[t]·h[t−1]| (the terms of
/// da), from the reference's g and states.
pub(crate) fn da_term_magnitudes<T: ScanElement>(
    scan: &Scan<T>,
    inputs: &Inputs<T>,
    cotangents: &Cotangents<T>,
) -> Result<Vec<f64>> {
    let reference_grads = reference_backward(scan, inputs, cotangents)?;
    let forward = reference(
        scan,
        &inputs.a,
        &inputs.u,
        &inputs.reset,
        inputs.h0.as_deref(),
    )?;
    let (h, g) = (complex::<T>(&forward.h), complex::<T>(&reference_grads.du));
    let (batch, time, channels) = (scan.shape.batch(), scan.shape.time(), scan.shape.channels());
    let mut sums = vec![0.0; channels];
    for b in 0..batch {
        for p in 0..channels {
            let h0 = inputs
                .h0
                .as_ref()
                .map_or(Complex64::default(), |h0| h0[b * channels + p].widen());
            for t in 0..time {
                if inputs.reset[scan.reset_at(b, t)] == 0 {
                    let before = if t == 0 { h0 } else { h[scan.at(b, t - 1, p)] };
                    sums[p] += (g[scan.at(b, t, p)] * before).norm();
                }
            }
        }
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::ResetPattern;

    /// A time-invariant da is checked relative to the sum of its terms' magnitudes, as
    /// `check_backward_with` states: where the terms cancel, an error far below that sum
    /// passes even when it is large against da itself, and one above it fails.
    #[test]
    fn a_time_invariant_da_is_bounded_by_its_terms_magnitudes() {
        let case = BackwardCase::new(Case {
            resets: ResetPattern::Never,
            ..Case::new(1, 3000, 1)
        });
        let seed = 7;
        let check = |error_over_magnitude: f64| {
            check_backward_with::<f32>(&case, seed, |scan, inputs, cotangents| {
                let want = reference_backward(scan, inputs, cotangents)?;
                let magnitude = da_term_magnitudes(scan, inputs, cotangents)?[0];
                // Cancelling terms: da far below the sum of their magnitudes.
                assert!(
                    want.da[0].abs() < 0.2 * magnitude,
                    "{} vs {magnitude}",
                    want.da[0]
                );
                let narrow = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
                Ok(Some(DeviceGradients {
                    du: narrow(&want.du),
                    da: vec![(want.da[0] + error_over_magnitude * magnitude) as f32],
                    dh0: want.dh0.as_deref().map(narrow),
                }))
            })
            .unwrap()
            .unwrap()
        };
        // f32 rounding of da alone is about 6e-8 of it.
        assert!(check(2e-6).passed(), "{}", check(2e-6));
        assert!(!check(1e-4).passed(), "{}", check(1e-4));
    }
}
