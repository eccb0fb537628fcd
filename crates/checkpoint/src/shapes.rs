//! Shape checks shared by the loaders, with errors that name the tensor.

use crate::error::{Error, Result};
use crate::model::Weight;

pub fn check_matrix(name: &str, w: &Weight, rows: usize, cols: usize) -> Result<()> {
    if (w.rows(), w.cols()) != (rows, cols) {
        return Err(Error::tensor(
            name,
            format!(
                "shape [{}, {}] does not match the config, expected [{rows}, {cols}]",
                w.rows(),
                w.cols()
            ),
        ));
    }
    Ok(())
}

pub fn check_vector(name: &str, v: &[f32], len: usize) -> Result<()> {
    if v.len() != len {
        return Err(Error::tensor(
            name,
            format!("{} values do not match the config, expected {len}", v.len()),
        ));
    }
    Ok(())
}
