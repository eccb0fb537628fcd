//! Closed-form start for an exit translator: ridge regression of f on [n, 1].

use crate::gemm::{self, Layout};
use crate::{Error, Result, Translator};

/// Rows per chunk when accumulating the normal equations, so memory stays bounded for any N.
const CHUNK_ROWS: usize = 2048;

/// Solves `min ||[n, 1]·[W; b] − f||² + ridge·||W − I||²` over all rows of `inputs` (n) and
/// `targets` (f), both `[rows, hidden]` row-major. The penalty pulls W towards the identity (the
/// uncalibrated head) and leaves b free; `ridge` is absolute, so scale it with the row count.
/// The normal equations are accumulated in f64 and solved by Cholesky.
pub fn fit_least_squares(
    inputs: &[f32],
    targets: &[f32],
    hidden: usize,
    ridge: f64,
) -> Result<Translator> {
    let h = hidden;
    if h == 0 || inputs.len() != targets.len() || !inputs.len().is_multiple_of(h) {
        return Err(Error::Shape(format!(
            "least squares: {} inputs and {} targets for hidden {h}",
            inputs.len(),
            targets.len()
        )));
    }
    if inputs.is_empty() {
        return Err(Error::Empty("training"));
    }
    if !(ridge >= 0.0 && ridge.is_finite()) {
        return Err(Error::Shape(format!(
            "least squares: ridge must be a finite value >= 0, got {ridge}"
        )));
    }
    let d = h + 1;
    let mut gram = vec![0.0f64; d * d]; // XᵀX
    let mut rhs = vec![0.0f64; d * h]; // Xᵀf
    let mut x = Vec::with_capacity(CHUNK_ROWS * d);
    let mut f = Vec::with_capacity(CHUNK_ROWS * h);
    for (n_chunk, f_chunk) in inputs.chunks(CHUNK_ROWS * h).zip(targets.chunks(CHUNK_ROWS * h)) {
        let rows = n_chunk.len() / h;
        x.clear();
        for row in n_chunk.chunks_exact(h) {
            x.extend(row.iter().map(|&v| f64::from(v)));
            x.push(1.0);
        }
        f.clear();
        f.extend(f_chunk.iter().map(|&v| f64::from(v)));
        gemm::matmul(d, rows, d, &x, Layout::Transposed, &x, Layout::RowMajor, 1.0, &mut gram);
        gemm::matmul(d, rows, h, &x, Layout::Transposed, &f, Layout::RowMajor, 1.0, &mut rhs);
    }
    for i in 0..h {
        gram[i * d + i] += ridge;
        rhs[i * h + i] += ridge;
    }
    cholesky_in_place(&mut gram, d)?;
    solve_cholesky(&gram, d, &mut rhs, h);
    let (w, b) = rhs.split_at(h * h);
    Ok(Translator {
        hidden: h,
        weight: w.iter().map(|&v| v as f32).collect(),
        bias: b.iter().map(|&v| v as f32).collect(),
    })
}

/// Overwrites the lower triangle of the symmetric `[d, d]` matrix `a` with L, where a = L·Lᵀ
/// (row by row, so each new row only reads rows already finished).
fn cholesky_in_place(a: &mut [f64], d: usize) -> Result<()> {
    for i in 0..d {
        let (done, rest) = a.split_at_mut(i * d);
        let row_i = &mut rest[..d];
        for j in 0..i {
            let row_j = &done[j * d..j * d + j + 1];
            let dot: f64 = row_i[..j].iter().zip(&row_j[..j]).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - dot) / row_j[j];
        }
        let original = row_i[i];
        let pivot = original - row_i[..i].iter().map(|v| v * v).sum::<f64>();
        // Relative tolerance: a pivot this small means the columns of [n, 1] are dependent.
        if pivot.partial_cmp(&(1e-12 * original.abs())) != Some(std::cmp::Ordering::Greater) {
            return Err(Error::NotPositiveDefinite { pivot: i });
        }
        row_i[i] = pivot.sqrt();
    }
    Ok(())
}

/// Solves (L·Lᵀ)·X = B in place for the row-major `[d, cols]` right-hand side `b`.
fn solve_cholesky(l: &[f64], d: usize, b: &mut [f64], cols: usize) {
    // L·Y = B, forward: row i of Y depends on rows k < i.
    for i in 0..d {
        let (above, rest) = b.split_at_mut(i * cols);
        let row_i = &mut rest[..cols];
        for k in 0..i {
            let l_ik = l[i * d + k];
            if l_ik != 0.0 {
                axpy(-l_ik, &above[k * cols..(k + 1) * cols], row_i);
            }
        }
        let inv = 1.0 / l[i * d + i];
        row_i.iter_mut().for_each(|v| *v *= inv);
    }
    // Lᵀ·X = Y, backward: row i of X depends on rows k > i through L[k][i].
    for i in (0..d).rev() {
        let (head, below) = b.split_at_mut((i + 1) * cols);
        let row_i = &mut head[i * cols..];
        for k in i + 1..d {
            let l_ki = l[k * d + i];
            if l_ki != 0.0 {
                axpy(-l_ki, &below[(k - i - 1) * cols..(k - i) * cols], row_i);
            }
        }
        let inv = 1.0 / l[i * d + i];
        row_i.iter_mut().for_each(|v| *v *= inv);
    }
}

fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn affine(n: &[f32], w: &[f32], b: &[f32], h: usize) -> Vec<f32> {
        Translator { hidden: h, weight: w.to_vec(), bias: b.to_vec() }.apply(n)
    }

    #[test]
    fn recovers_a_known_affine_map_from_noiseless_data() {
        let (h, rows) = (12, 300);
        let mut rng = SplitMix64::new(7);
        let w = rng.symmetric_vec(h * h, 0.5);
        let b = rng.symmetric_vec(h, 0.3);
        let n = rng.symmetric_vec(rows * h, 1.5);
        let f = affine(&n, &w, &b, h);
        let fit = fit_least_squares(&n, &f, h, 0.0).expect("fit");
        let worst_w = fit.weight.iter().zip(&w).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        let worst_b = fit.bias.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst_w < 1e-4 && worst_b < 1e-4, "weight error {worst_w}, bias error {worst_b}");
    }

    #[test]
    fn a_large_ridge_pulls_the_weight_to_identity_while_the_bias_stays_free() {
        let (h, rows) = (4, 50);
        let mut rng = SplitMix64::new(3);
        let n = rng.symmetric_vec(rows * h, 1.0);
        let w = rng.symmetric_vec(h * h, 1.0);
        let f = affine(&n, &w, &[2.0; 4], h);
        let fit = fit_least_squares(&n, &f, h, 1e9).expect("fit");
        let identity = Translator::identity(h);
        let worst =
            fit.weight.iter().zip(&identity.weight).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-3, "weight is {worst} away from identity");
        // With W = I the best bias is the mean residual f − n, which is 2 plus the mean of n·(W − I).
        let mean_residual: Vec<f32> = (0..h)
            .map(|j| (0..rows).map(|r| f[r * h + j] - n[r * h + j]).sum::<f32>() / rows as f32)
            .collect();
        for (got, want) in fit.bias.iter().zip(&mean_residual) {
            assert!((got - want).abs() < 1e-3, "bias {got} vs {want}");
        }
    }

    #[test]
    fn too_few_positions_without_ridge_is_an_error_and_ridge_fixes_it() {
        let h = 8;
        let mut rng = SplitMix64::new(1);
        let n = rng.symmetric_vec(3 * h, 1.0);
        let f = rng.symmetric_vec(3 * h, 1.0);
        assert!(matches!(
            fit_least_squares(&n, &f, h, 0.0),
            Err(Error::NotPositiveDefinite { .. })
        ));
        assert!(fit_least_squares(&n, &f, h, 1.0).is_ok());
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        assert!(matches!(fit_least_squares(&[0.0; 8], &[0.0; 6], 2, 0.0), Err(Error::Shape(_))));
        assert!(matches!(fit_least_squares(&[], &[], 2, 0.0), Err(Error::Empty(_))));
    }
}
