//! The in-memory checkpoint every exporter works from: a resolved Llama configuration plus
//! weights, independent of the file format they came from.

/// Hyper-parameters of a Llama-family decoder, resolved from GGUF metadata or `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// Longest context the model was trained for.
    pub max_position: usize,
    /// GGUF stores Q/K rows permuted for interleaved (GPT-J style) rotary; Hugging Face
    /// checkpoints use the rotate-half layout. The exporter picks the matching rotary variant.
    pub rope_interleaved: bool,
    /// Divisors of the rotary frequencies, one per frequency (`head_dim / 2`): linear rope
    /// scaling repeats one factor, Llama 3.1's `rope_freqs` gives one each. Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rope_freq_divisors: Vec<f32>,
    pub tied_embeddings: bool,
}

/// A weight matrix of shape `[rows, cols]` = `[out_features, in_features]` (row-major, each row
/// holds one output feature's `cols` input weights), either dense or in 4/8-bit blocks along
/// `cols`.
///
/// Block layout is the one ONNX Runtime's `com.microsoft.MatMulNBits` takes, so the exporter
/// copies bytes without repacking:
/// - `bits = 4`: each block of `block` values is `block / 2` bytes; byte `j` holds value `2j` in
///   its low nibble and value `2j + 1` in its high nibble; values are unsigned `0..=15`.
/// - `bits = 8`: each block is `block` bytes, unsigned `0..=255`.
/// - value = `(q - zero_point) * scale`, one scale (and zero point) per block, blocks of row 0
///   first; `zero_points = None` means the default `2^(bits-1)` (8 or 128).
#[derive(Debug, Clone, PartialEq)]
pub enum Weight {
    Dense {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    Blocks {
        rows: usize,
        cols: usize,
        bits: u8,
        block: usize,
        packed: Vec<u8>,
        scales: Vec<f32>,
        zero_points: Option<Vec<f32>>,
    },
}

/// One decoder layer's weights. Norm weights are plain vectors of `hidden_size`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub wo: Weight,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Weight,
    pub w_up: Weight,
    pub w_down: Weight,
    /// Biases added after the Q, K and V projections (Qwen2); Llama has none.
    pub qkv_bias: Option<QkvBias>,
}

/// `q` has `num_heads · head_dim` values, `k` and `v` `num_kv_heads · head_dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct QkvBias {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// Where a matrix came from: its name and type in the source file and its size there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTensor {
    pub name: String,
    /// llama.cpp's type name (`Q4_K`) or the safetensors dtype (`BF16`).
    pub ty: String,
    pub bytes: u64,
}

/// Token ids with a special role, as the tokenizer metadata declares them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Every token the tokenizer treats as special/control (matched whole in raw prompts).
    pub special: Vec<(u32, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub config: LlamaConfig,
    /// `[vocab_size, hidden_size]`.
    pub embedding: Weight,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `[vocab_size, hidden_size]`; equal to `embedding` when the embeddings are tied.
    pub lm_head: Weight,
    /// A complete Hugging Face `tokenizer.json` document.
    pub tokenizer_json: String,
    pub special_tokens: SpecialTokens,
    /// Jinja chat template, when the checkpoint ships one.
    pub chat_template: Option<String>,
    /// Human-readable origin, e.g. `gguf:SmolLM2-135M-Instruct.Q4_1.gguf (Q4_1)`.
    pub source: String,
    /// The source file's tensor behind each matrix, by [`Checkpoint::matrices`] key (empty for
    /// checkpoints built in memory).
    pub sources: std::collections::BTreeMap<String, SourceTensor>,
}

impl Checkpoint {
    /// Every weight matrix under the name the partition graphs give it (`embedding`,
    /// `layers.{i}.wq` … `layers.{i}.w_down`, `lm_head`).
    pub fn matrices(&self) -> Vec<(String, &Weight)> {
        let mut out = vec![("embedding".to_string(), &self.embedding)];
        for (i, l) in self.layers.iter().enumerate() {
            for (role, w) in l.matrices() {
                out.push((format!("layers.{i}.{role}"), w));
            }
        }
        out.push(("lm_head".to_string(), &self.lm_head));
        out
    }
}

impl LayerWeights {
    /// The layer's matrices with their role names, in graph order.
    pub fn matrices(&self) -> [(&'static str, &Weight); 7] {
        [
            ("wq", &self.wq),
            ("wk", &self.wk),
            ("wv", &self.wv),
            ("wo", &self.wo),
            ("w_gate", &self.w_gate),
            ("w_up", &self.w_up),
            ("w_down", &self.w_down),
        ]
    }

    pub fn matrices_mut(&mut self) -> [&mut Weight; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.w_gate,
            &mut self.w_up,
            &mut self.w_down,
        ]
    }
}
