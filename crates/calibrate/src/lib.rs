//! Calibration of early-exit heads, as pure computation over feature matrices the caller
//! extracted (no ONNX Runtime here).
//!
//! An exit head after layer L maps the RMS-normalised state `n` through a [`Translator`]
//! (`z = n·W + b`), re-normalises with the model's final-norm gain and projects through the LM
//! head. [`fit_least_squares`] gives a closed-form start, [`fit_kl`] fine-tunes it against the
//! full model's distribution, and [`tradeoff`] turns held-out predictions into exit thresholds.
//! [`sharegpt`] supplies the prompts the features come from.

mod adam;
pub mod chatterbot;
mod features;
mod gemm;
mod head;
mod kl;
mod least_squares;
pub mod quality;
mod rng;
pub mod sharegpt;
pub mod shortlist;
mod softmax;
pub mod tradeoff;
mod translator;

pub use chatterbot::chatterbot_prompts;
pub use features::Features;
pub use head::{HeadWeights, head_predictions, shortlist_predictions};
pub use kl::{KlEpoch, KlOptions, KlProgress, KlReport, fit_kl};
pub use least_squares::fit_least_squares;
pub use quality::{Answer, Likelihood, QualityTally, QualityTarget};
pub use sharegpt::{Conversation, ShareGptReader, StreamEnd, first_prompts};
pub use shortlist::{TokenCounts, coverage, select_shortlist};
pub use tradeoff::{
    AGREEMENT_TARGETS, AgreementThreshold, ExitPrediction, NEVER_EXIT, THETAS, TradeoffRow,
    agreement_thresholds, threshold_for_agreement, tradeoff_rows,
};
pub use translator::Translator;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("ShareGPT record {index} (byte {offset}) is not a valid record: {source}")]
    Record { index: usize, offset: u64, source: serde_json::Error },
    #[error("{path}: not a ChatterBot corpus file: {source}")]
    Yaml { path: PathBuf, source: serde_yaml::Error },
    #[error("ShareGPT file does not start with a JSON array ('[') at byte {offset}")]
    NotAnArray { offset: u64 },
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error(
        "the normal equations are not positive definite at pivot {pivot}: too few positions for the hidden size, or use ridge > 0"
    )]
    NotPositiveDefinite { pivot: usize },
    #[error("no {0} positions")]
    Empty(&'static str),
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
