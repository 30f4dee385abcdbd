//! The specification: dense `y = x · wᵀ` in f64 from the decoded weight.

use super::bitmap::Bitmap;
use super::format::TiledCsl;
use crate::element::Float16;
use crate::error::{Error, Result};

/// A sparse weight format the reference multiplies: its sizes and its dense form.
pub trait SparseWeight<T> {
    /// Rows (outputs).
    fn rows(&self) -> usize;
    /// Columns (inputs).
    fn columns(&self) -> usize;
    /// The dense row-major `[rows, columns]` weight.
    fn dense(&self) -> Vec<T>;
}

macro_rules! sparse_weight {
    ($($format:ident),*) => {$(
        impl<T: Float16> SparseWeight<T> for $format<T> {
            fn rows(&self) -> usize {
                self.m()
            }
            fn columns(&self) -> usize {
                self.k()
            }
            fn dense(&self) -> Vec<T> {
                self.decode()
            }
        }
    )*};
}
sparse_weight!(TiledCsl, Bitmap);

/// `y [n, m] = x [n, k] · wᵀ` in f64, `x` row-major with `n = x.len() / k`, for a weight in
/// any format.
pub fn reference<T: Float16>(w: &impl SparseWeight<T>, x: &[T]) -> Result<Vec<f64>> {
    let (m, k) = (w.rows(), w.columns());
    let n = tokens(x.len(), k)?;
    let outputs = output_count(n, m)?;
    let dense: Vec<f64> = w.dense().into_iter().map(|v| v.to_f64()).collect();
    let x: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
    let mut y = vec![0.0; outputs];
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

/// The `n · m` elements of y, or an error where a usize cannot count them.
fn output_count(n: usize, m: usize) -> Result<usize> {
    n.checked_mul(m).ok_or_else(|| {
        Error::invalid(
            "y",
            "n x m outputs that a usize counts",
            format!("{n} x {m}"),
        )
    })
}

/// The tokens of a launch, with `y` checked to hold `[n, m]`.
pub(crate) fn output_tokens(x_len: usize, y_len: usize, m: usize, k: usize) -> Result<usize> {
    let n = tokens(x_len, k)?;
    let expected = output_count(n, m)?;
    if y_len != expected {
        return Err(Error::Length {
            what: "y",
            expected,
            got: y_len,
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An x so long that n · m overflows is an error, not a wrapped length.
    #[test]
    fn outputs_past_a_usize_are_an_error() {
        let error = output_tokens(usize::MAX, 0, 2, 1).unwrap_err();
        assert!(
            error.to_string().contains(&format!("{} x 2", usize::MAX)),
            "{error}"
        );
        assert_eq!(output_tokens(6, 4, 2, 3).unwrap(), 2);
    }
}
