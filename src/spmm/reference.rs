//! The specification: dense `y = x · wᵀ` in f64 from the decoded weight.

use super::format::{SpmmElement, TiledCsl};
use crate::error::{Error, Result};

/// `y [n, m] = x [n, k] · wᵀ` in f64, `x` row-major with `n = x.len() / k`.
pub fn reference<T: SpmmElement>(w: &TiledCsl<T>, x: &[T]) -> Result<Vec<f64>> {
    let (m, k) = (w.m(), w.k());
    let n = tokens(x.len(), k)?;
    let dense: Vec<f64> = w.decode().into_iter().map(SpmmElement::to_f64).collect();
    let x: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
    let mut y = vec![0.0; n * m];
    for (token, out) in y.chunks_exact_mut(m).enumerate() {
        let x_row = &x[token * k..(token + 1) * k];
        for (row, value) in out.iter_mut().enumerate() {
            *value = dense[row * k..(row + 1) * k]
                .iter()
                .zip(x_row)
                .map(|(w, x)| w * x)
                .sum();
        }
    }
    Ok(y)
}

/// The token count of an `x` of `len` elements with rows of `k`.
pub(crate) fn tokens(len: usize, k: usize) -> Result<usize> {
    if len == 0 || !len.is_multiple_of(k) {
        return Err(Error::invalid(
            "x",
            format!("[n, k] with n >= 1 and k = {k}"),
            format!("{len} elements"),
        ));
    }
    Ok(len / k)
}

/// The tokens of a launch, with `y` checked to hold `[n, m]`.
pub(crate) fn output_tokens(x_len: usize, y_len: usize, m: usize, k: usize) -> Result<usize> {
    let n = tokens(x_len, k)?;
    if y_len != n * m {
        return Err(Error::Length {
            what: "y",
            expected: n * m,
            got: y_len,
        });
    }
    Ok(n)
}
