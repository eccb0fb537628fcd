//! The affine map an exit head applies between its input norm and the final norm.

use serde::{Deserialize, Serialize};

use crate::gemm;
use crate::{Error, Result};

/// `z = n·W + b` with `weight` row-major `[in, out]` = `[hidden, hidden]` and `bias` `[hidden]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Translator {
    pub hidden: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Translator {
    /// The uncalibrated head: W = I, b = 0.
    pub fn identity(hidden: usize) -> Self {
        let mut weight = vec![0.0; hidden * hidden];
        for i in 0..hidden {
            weight[i * hidden + i] = 1.0;
        }
        Self { hidden, weight, bias: vec![0.0; hidden] }
    }

    /// Checks that the weight and bias lengths match `hidden`.
    pub fn validate(&self) -> Result<()> {
        let h = self.hidden;
        if h == 0 || self.weight.len() != h * h || self.bias.len() != h {
            return Err(Error::Shape(format!(
                "translator with hidden {h} has {} weights and {} biases (want {} and {h})",
                self.weight.len(),
                self.bias.len(),
                h * h
            )));
        }
        Ok(())
    }

    /// Applies the map to a batch of rows (`n` is `[rows, hidden]` row-major).
    ///
    /// # Panics
    /// If the translator is malformed (see [`Translator::validate`]) or `n.len()` is not a
    /// multiple of `hidden`.
    pub fn apply(&self, n: &[f32]) -> Vec<f32> {
        let mut z = vec![0.0; n.len()];
        self.apply_into(n, &mut z);
        z
    }

    pub(crate) fn apply_into(&self, n: &[f32], z: &mut [f32]) {
        let h = self.hidden;
        assert!(
            self.validate().is_ok() && n.len().is_multiple_of(h) && z.len() == n.len(),
            "translator shape mismatch"
        );
        let rows = n.len() / h;
        for row in z.chunks_exact_mut(h) {
            row.copy_from_slice(&self.bias);
        }
        gemm::matmul(
            rows,
            h,
            h,
            n,
            gemm::Layout::RowMajor,
            &self.weight,
            gemm::Layout::RowMajor,
            1.0,
            z,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_leaves_rows_unchanged_and_apply_adds_the_bias() {
        let n = [1.0, -2.0, 3.0, 0.5, 0.25, -0.125];
        assert_eq!(Translator::identity(3).apply(&n), n);
        let t = Translator { hidden: 2, weight: vec![1.0, 2.0, 3.0, 4.0], bias: vec![10.0, 20.0] };
        // [1, 1]·[[1, 2], [3, 4]] + [10, 20] = [14, 26]
        assert_eq!(t.apply(&[1.0, 1.0, 0.0, 1.0]), [14.0, 26.0, 13.0, 24.0]);
    }

    #[test]
    fn malformed_translators_are_refused() {
        let t = Translator { hidden: 2, weight: vec![1.0; 3], bias: vec![0.0; 2] };
        assert!(t.validate().is_err());
    }
}
