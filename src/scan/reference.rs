//! The specification (the sequential recurrence in f64) and an independent CPU algorithm (an
//! associative scan with popjaxrl's reset operator) that must agree with it.

use num_complex::Complex64;

use super::{BufferLengths, Decay, Scan, ScanElement};
use crate::error::Result;

/// Every state and the final state, in f64: `h` in the layout of `u`, `h_last [b, p]`;
/// complex values as interleaved `(re, im)` pairs, so they compare with a device buffer's f32s.
#[derive(Debug, Clone, PartialEq)]
pub struct States {
    /// All states.
    pub h: Vec<f64>,
    /// The state after the last step.
    pub h_last: Vec<f64>,
}

/// The recurrence step by step in f64: the executable specification.
pub fn reference<T: ScanElement>(
    scan: &Scan<T>,
    a: &[T],
    u: &[T],
    reset: &[u8],
    h0: Option<&[T]>,
) -> Result<States> {
    per_channel(scan, a, u, reset, h0, |h0, steps| {
        let mut h = h0;
        steps
            .map(|(a, u, reset)| {
                h = if reset { u } else { a * h + u };
                h
            })
            .collect()
    })
}

/// The same function as a parallel-prefix computation on the CPU: Hillis–Steele over the
/// triples `(A, b, c)` with popjaxrl's `binary_operator_reset`, the carried state prepended as
/// `(1, h0, 0)`. Agrees with [`reference()`] up to f64 rounding.
pub fn associative_scan<T: ScanElement>(
    scan: &Scan<T>,
    a: &[T],
    u: &[T],
    reset: &[u8],
    h0: Option<&[T]>,
) -> Result<States> {
    per_channel(scan, a, u, reset, h0, |h0, steps| {
        let one = Complex64::new(1.0, 0.0);
        let mut items: Vec<Triple> = std::iter::once((one, h0, 0.0))
            .chain(steps.map(|(a, u, reset)| (a, u, if reset { 1.0 } else { 0.0 })))
            .collect();
        let mut offset = 1;
        while offset < items.len() {
            let previous = items.clone();
            for (j, item) in items.iter_mut().enumerate().skip(offset) {
                *item = binary_operator_reset(previous[j - offset], *item);
            }
            offset *= 2;
        }
        items.into_iter().skip(1).map(|(_, b, _)| b).collect()
    })
}

type Triple = (Complex64, Complex64, f64);

/// popjaxrl's combine: `q_i` then `q_j`, where `c = 1` marks a reset inside `q_j`.
fn binary_operator_reset((a_i, b_i, c_i): Triple, (a_j, b_j, c_j): Triple) -> Triple {
    (
        (a_j * a_i) * (1.0 - c_j) + a_j * c_j,
        (a_j * b_i + b_j) * (1.0 - c_j) + b_j * c_j,
        c_i * (1.0 - c_j) + c_j,
    )
}

/// Validates the inputs, runs `states(h0, steps)` for each (b, p) over its `(a, u, reset)`
/// steps, and lays the results out like `u`.
fn per_channel<T: ScanElement>(
    scan: &Scan<T>,
    a: &[T],
    u: &[T],
    reset: &[u8],
    h0: Option<&[T]>,
    states: impl Fn(Complex64, &mut dyn Iterator<Item = (Complex64, Complex64, bool)>) -> Vec<Complex64>,
) -> Result<States> {
    scan.check_lengths(BufferLengths {
        a: a.len(),
        u: u.len(),
        reset: reset.len(),
        h0: h0.map(<[T]>::len),
        h: None,
        h_last: scan.final_len(),
    })?;
    let (batch, time, channels) = (scan.shape.batch(), scan.shape.time(), scan.shape.channels());
    let mut h = vec![Complex64::default(); scan.states_len()];
    let mut h_last = vec![Complex64::default(); scan.final_len()];
    for b in 0..batch {
        for p in 0..channels {
            let start = h0.map_or(Complex64::default(), |h0| h0[b * channels + p].widen());
            let a_at = |t: usize| match scan.decay {
                Decay::TimeInvariant => a[p].widen(),
                Decay::TimeVarying => a[scan.at(b, t, p)].widen(),
            };
            let mut steps = (0..time).map(|t| {
                (
                    a_at(t),
                    u[scan.at(b, t, p)].widen(),
                    reset[scan.reset_at(b, t)] != 0,
                )
            });
            let row = states(start, &mut steps);
            for (t, value) in row.into_iter().enumerate() {
                h[scan.at(b, t, p)] = value;
            }
            h_last[b * channels + p] = h[scan.at(b, time - 1, p)];
        }
    }
    Ok(States {
        h: flatten::<T>(&h),
        h_last: flatten::<T>(&h_last),
    })
}

/// Complex values as `T::LANES` f64s each.
pub(super) fn flatten<T: ScanElement>(values: &[Complex64]) -> Vec<f64> {
    match T::LANES {
        1 => values.iter().map(|v| v.re).collect(),
        _ => values.iter().flat_map(|v| [v.re, v.im]).collect(),
    }
}
