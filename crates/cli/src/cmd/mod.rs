pub mod bench;
pub mod bundle;
pub mod calibrate;
pub mod calibration_data;
pub mod catch_up;
pub mod chat;
pub mod export;
pub mod free_running;
pub mod generate;
pub mod load;
pub mod machine;
pub mod operating_point;
pub mod paper;
pub mod prompts;
pub mod quality;
pub mod score;
pub mod tiny;
pub mod up;

/// `path` as a results page may print it: under the artifact cache it is written
/// `$COLLM_CACHE/...`, so a recorded command names nothing only this machine has.
pub fn portable_path(path: &std::path::Path) -> String {
    let cache = std::env::var_os("COLLM_CACHE").map(std::path::PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/ce-collm"))
    });
    match cache.and_then(|c| path.strip_prefix(c).ok().map(std::path::Path::to_path_buf)) {
        Some(rest) => format!("$COLLM_CACHE/{}", rest.display()),
        None => path.display().to_string(),
    }
}

/// The modes an edge agent's API takes in a request's `mode` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiMode {
    /// Every token from the edge's exit heads
    Standalone,
    /// Confident exit heads answer, the cloud the rest
    Collaborative,
    /// Lossless: the edge drafts, the cloud verifies
    Speculative,
    /// The whole model on a cloud worker (`full` is accepted as an alias)
    #[value(alias = "full")]
    Cloud,
    /// Baseline: every cloud request ships the whole context
    Naive,
}

impl ApiMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Collaborative => "collaborative",
            Self::Speculative => "speculative",
            Self::Cloud => "cloud",
            Self::Naive => "naive",
        }
    }
}
