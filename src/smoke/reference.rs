use half::f16;

use super::MatmulShape;
use crate::error::Result;

/// `c = a · bᵀ` in f64: the specification the kernels are tested against.
pub fn reference(a: &[f16], b: &[f16], shape: MatmulShape) -> Result<Vec<f64>> {
    let (m, n, k) = (shape.m(), shape.n(), shape.k());
    shape.check_lengths(a.len(), b.len(), m * n)?;
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        let row = &a[i * k..(i + 1) * k];
        for j in 0..n {
            let col = &b[j * k..(j + 1) * k];
            c[i * n + j] = row
                .iter()
                .zip(col)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum();
        }
    }
    Ok(c)
}
