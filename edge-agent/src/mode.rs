//! How an edge agent answers: alone, with the cloud (with or without the cloud context), or by
//! forwarding whole requests to a cloud running the full model (the baselines).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every token from the edge's deepest exit head.
    Standalone,
    /// Confident exit heads answer; the cloud, which holds the context's hidden states
    /// uploaded in the background, answers the rest.
    Collaborative,
    /// Baseline: the whole request runs on a cloud worker serving the full model (`full`, the
    /// name `collm generate` used for it, is accepted too).
    #[serde(alias = "full")]
    #[value(alias = "full")]
    Cloud,
    /// Baseline: collaboration without the cloud context — every cloud request ships the
    /// hidden states of the whole context.
    Naive,
    /// Lossless: the edge drafts runs of tokens on its deepest exit head, the cloud verifies
    /// each run in one pass and keeps the full model's tokens.
    Speculative,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Collaborative => "collaborative",
            Mode::Cloud => "cloud",
            Mode::Naive => "naive",
            Mode::Speculative => "speculative",
        }
    }

    /// Whether the edge partition runs (all but the cloud-only baseline).
    pub fn runs_edge(self) -> bool {
        self != Mode::Cloud
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "standalone" => Ok(Mode::Standalone),
            "collaborative" => Ok(Mode::Collaborative),
            // `full` is what `collm generate --mode` called the whole model before it took the
            // API's name.
            "cloud" | "full" => Ok(Mode::Cloud),
            "naive" => Ok(Mode::Naive),
            "speculative" => Ok(Mode::Speculative),
            other => Err(format!(
                "unknown mode {other:?} (expected standalone, collaborative, speculative, cloud or naive)"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
