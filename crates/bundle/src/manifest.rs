//! `manifest.json`: everything a runtime needs to know about a bundle without opening a graph.

use std::collections::BTreeMap;

use collm_checkpoint::{LlamaConfig, SpecialTokens};
use serde::{Deserialize, Serialize};

pub use crate::weight_report::WeightMapping;

/// Bumped whenever a reader of an older format would misread a newer bundle. Version 2 keeps
/// each partition's weights in a data file next to its graph (a version-1 reader would load
/// them without checking their checksum).
pub const FORMAT_VERSION: u32 = 2;
/// The versions this build reads: version-1 bundles (weights inside the graphs) still load.
pub const READABLE_FORMATS: std::ops::RangeInclusive<u32> = 1..=FORMAT_VERSION;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const EDGE_FILE: &str = "edge.onnx";
pub const CLOUD_FILE: &str = "cloud.onnx";
pub const CLOUD_KV_FILE: &str = "cloud_kv.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Where the weights came from (file name and quantization).
    pub source: String,
    pub architecture: String,
    pub config: LlamaConfig,
    /// The edge runs decoder layers `[0, split_layer)`, the cloud `[split_layer, num_layers)`.
    pub split_layer: usize,
    /// How the partitions store their weight matrices.
    pub weights: WeightFormat,
    pub edge: Partition,
    pub cloud: Partition,
    /// The cloud layers' K/V propagation graph (`propagate` catch-up); absent from bundles
    /// exported before it existed, which then only catch up exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_kv: Option<Partition>,
    /// Early-exit heads on the edge, shallowest first.
    pub exits: Vec<ExitHead>,
    pub tokenizer: TokenizerInfo,
    /// Encodings the edge may use for hidden states sent to the cloud.
    pub encodings: Vec<String>,
    /// The default operating point, chosen by calibration on free-running answers; absent
    /// from bundles calibrated before it existed (they default to 95% target agreement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_point: Option<CalibratedOperatingPoint>,
    /// SHA-256 (hex) of every other file in the bundle.
    pub files: BTreeMap<String, String>,
    /// How the source's tensor types were stored (absent from bundles exported before it was
    /// recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weight_mappings: Vec<WeightMapping>,
}

/// How weight matrices are stored in the partition graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// Dense float32 `MatMul`.
    F32,
    /// 8-bit blocks (`com.microsoft.MatMulNBits`, bits = 8).
    Q8,
    /// 4-bit blocks where the source has them (or requantized), 8-bit blocks kept as they are.
    Q4,
    /// Each matrix in the format of the source, without requantization (exact).
    Native,
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "q8" => Ok(Self::Q8),
            "q4" => Ok(Self::Q4),
            "native" => Ok(Self::Native),
            other => {
                Err(format!("unknown weight format {other:?} (expected f32, q8, q4 or native)"))
            }
        }
    }
}

/// One partition graph and the decoder layers it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partition {
    pub file: String,
    /// The partition's weights (ONNX external data) next to `file`; absent when the graph
    /// holds them (format 1, or a graph without large initializers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_file: Option<String>,
    pub first_layer: usize,
    pub end_layer: usize,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Name, element type and shape (numbers or symbolic names) of a graph input or output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitHead {
    /// Number of decoder layers below the head (the head reads the output of layer `layer - 1`).
    pub layer: usize,
    /// Absent until `collm calibrate` fitted the head's translator (identity until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<ExitCalibration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitCalibration {
    /// How the translator was fitted, e.g. `kl` or `least-squares`.
    pub method: String,
    pub train_positions: usize,
    pub heldout_positions: usize,
    /// Held-out top-1 agreement with the full model over all positions: the uncalibrated head
    /// (logit lens), the least-squares translator, and the stored one.
    pub agreement_logit_lens: f32,
    pub agreement_least_squares: f32,
    pub agreement: f32,
    /// Held-out trade-off: for each θ, the share of positions that exit and their agreement.
    pub tradeoff: Vec<TradeoffRow>,
    /// For each target agreement, the smallest θ reaching it on held-out data.
    pub thresholds: Vec<TargetThreshold>,
    /// Set when the head computes logits over a vocabulary shortlist only (the trade-off and
    /// thresholds above are the shortlist head's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortlist: Option<ShortlistInfo>,
}

/// A shortlist exit head: how many tokens it can answer, and how often the full model's own
/// token was one of them on held-out data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShortlistInfo {
    pub size: usize,
    pub heldout_coverage: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradeoffRow {
    pub theta: f32,
    pub exit_share: f32,
    pub agreement: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetThreshold {
    pub agreement: f32,
    pub theta: f32,
}

/// Teacher-forced agreement does not see free-running divergence (one early wrong token
/// changes the rest of an answer; a head confidently wrong in a repetitive state drags it into
/// a loop). So calibration generates answers on prompts held out from the head fit at target
/// agreements from the highest down, and keeps the lowest (the most edge tokens) whose answers
/// loop no more often than the full model's and stay within `max_nll_ratio` of its mean
/// negative log-likelihood per token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibratedOperatingPoint {
    pub target_agreement: f32,
    /// Whether the point was measured with the repetition guard on (the runtime then uses it).
    pub repetition_guard: bool,
    pub prompts: usize,
    pub new_tokens: usize,
    pub max_nll_ratio: f32,
    pub full_loop_share: f32,
    /// What each candidate target agreement measured, from the highest down to the first
    /// that did not keep quality.
    pub candidates: Vec<FreeRunningRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreeRunningRow {
    pub target_agreement: f32,
    pub edge_share: f32,
    pub identical_share: f32,
    pub loop_share: f32,
    pub nll_ratio: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub file: String,
    pub special_tokens: SpecialTokens,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
}

impl Manifest {
    pub fn exit(&self, layer: usize) -> Option<&ExitHead> {
        self.exits.iter().find(|e| e.layer == layer)
    }
}
