//! The per-position data one exit head is calibrated on.

use crate::{Error, Result};

/// Row-major `[rows, hidden]` matrices: `input` holds n = RMSNorm(h_L) (unit gain) and `target`
/// holds f = RMSNorm(h_N) without the final-norm gain, for the same positions in the same order.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    hidden: usize,
    input: Vec<f32>,
    target: Vec<f32>,
}

impl Features {
    pub fn new(hidden: usize, input: Vec<f32>, target: Vec<f32>) -> Result<Self> {
        if hidden == 0 {
            return Err(Error::Shape("features need hidden > 0".into()));
        }
        if input.len() != target.len() || !input.len().is_multiple_of(hidden) {
            return Err(Error::Shape(format!(
                "features: input has {} floats and target {}; both must be the same multiple of hidden {hidden}",
                input.len(),
                target.len()
            )));
        }
        if let Some(i) = input.iter().chain(&target).position(|x| !x.is_finite()) {
            return Err(Error::Shape(format!("features: value {i} is not finite")));
        }
        Ok(Self { hidden, input, target })
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    pub fn rows(&self) -> usize {
        self.input.len() / self.hidden
    }

    pub fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    pub fn input(&self) -> &[f32] {
        &self.input
    }

    pub fn target(&self) -> &[f32] {
        &self.target
    }

    /// Copies the given rows, in that order, into contiguous `(input, target)` buffers.
    pub(crate) fn gather(&self, rows: &[usize], input: &mut Vec<f32>, target: &mut Vec<f32>) {
        let h = self.hidden;
        input.clear();
        target.clear();
        for &r in rows {
            input.extend_from_slice(&self.input[r * h..(r + 1) * h]);
            target.extend_from_slice(&self.target[r * h..(r + 1) * h]);
        }
    }
}
