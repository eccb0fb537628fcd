//! The two partition graphs. Edge: token ids → exit-head logits, the split hidden state and the
//! KV cache of layers `[0, s)`. Cloud: split hidden state → logits and the KV cache of `[s, N)`.

use collm_checkpoint::{Checkpoint, LlamaConfig};
use collm_onnx::{Dim, GraphBuilder, ModelProto, TensorProto, TensorType};

use super::layers::{
    GraphOptions, LayerInputs, Linear, OPSETS, Rope, decoder_layer, last_positions, rms_norm,
    rope_tables,
};
use super::names;
use crate::manifest::TensorSpec;

/// Inputs shared by both partitions; returns (position_ids, attention_bias, logits_count).
fn common_inputs(g: &mut GraphBuilder) -> (String, String, String) {
    let pos = g.input(names::POSITION_IDS, TensorType::I64, &[1i64.into(), "seq".into()]);
    let bias = g.input(
        names::ATTENTION_BIAS,
        TensorType::F32,
        &[1i64.into(), 1i64.into(), "seq".into(), "total".into()],
    );
    let count = g.input(names::LOGITS_COUNT, TensorType::I64, &[1i64.into()]);
    (pos, bias, count)
}

pub(super) fn kv_dims(cfg: &LlamaConfig, seq: &str) -> Vec<Dim> {
    vec![1i64.into(), cfg.num_kv_heads.into(), seq.into(), cfg.head_dim.into()]
}

/// Runs layers `[first, end)` over `x`, declaring their KV cache inputs and outputs.
fn layer_stack(
    g: &mut GraphBuilder,
    ckpt: &Checkpoint,
    range: std::ops::Range<usize>,
    mut x: String,
    io: &LayerInputs<'_>,
    opts: &GraphOptions,
    mut after_layer: impl FnMut(&mut GraphBuilder, usize, &str),
) -> String {
    let cfg = &ckpt.config;
    for i in range {
        g.input(&names::past_key(i), TensorType::F32, &kv_dims(cfg, "past"));
        g.input(&names::past_value(i), TensorType::F32, &kv_dims(cfg, "past"));
        x = decoder_layer(g, cfg, i, &ckpt.layers[i], &x, io, opts);
        g.output(
            &names::present_key(i),
            &names::present_key(i),
            TensorType::F32,
            &kv_dims(cfg, "total"),
        );
        g.output(
            &names::present_value(i),
            &names::present_value(i),
            TensorType::F32,
            &kv_dims(cfg, "total"),
        );
        after_layer(g, i + 1, &x);
    }
    x
}

pub(super) fn hidden_dims(cfg: &LlamaConfig, seq: &str) -> Vec<Dim> {
    vec![1i64.into(), seq.into(), cfg.hidden_size.into()]
}

fn logits_dims(cfg: &LlamaConfig) -> Vec<Dim> {
    vec![1i64.into(), "logits_count".into(), cfg.vocab_size.into()]
}

fn ones(g: &mut GraphBuilder, cfg: &LlamaConfig) -> String {
    g.initializer(TensorProto::f32(
        "norm.unit",
        &[cfg.hidden_size as i64],
        &vec![1.0; cfg.hidden_size],
    ))
}

/// Final RMSNorm + LM head, declared once per graph and applied by every head that needs it.
struct LmHead {
    norm: String,
    eps: f32,
    matrix: Linear,
}

impl LmHead {
    fn declare(g: &mut GraphBuilder, ckpt: &Checkpoint, opts: &GraphOptions) -> Self {
        let cfg = &ckpt.config;
        let norm = g.initializer(TensorProto::f32(
            "final_norm",
            &[cfg.hidden_size as i64],
            &ckpt.final_norm,
        ));
        Self { norm, eps: cfg.rms_eps, matrix: Linear::declare(g, &ckpt.lm_head, "lm_head", opts) }
    }

    fn apply(&self, g: &mut GraphBuilder, x: &str) -> String {
        let y = rms_norm(g, x, &self.norm, self.eps);
        self.matrix.apply(g, &y)
    }
}

/// Builds the edge partition: layers `[0, split)` with exit heads after each of `exits`.
pub fn edge_graph(
    ckpt: &Checkpoint,
    split: usize,
    exits: &[usize],
    opts: &GraphOptions,
) -> ModelProto {
    let cfg = &ckpt.config;
    let mut g = GraphBuilder::new("ce-collm-edge");
    let ids = g.input(names::INPUT_IDS, TensorType::I64, &[1i64.into(), "seq".into()]);
    let (pos, bias, count) = common_inputs(&mut g);
    let (cos, sin) = rope_tables(&mut g, cfg);
    let x = super::embedding::lookup(&mut g, &ckpt.embedding, &ids);
    let unit = ones(&mut g, cfg);
    let head = LmHead::declare(&mut g, ckpt, opts);
    let io = LayerInputs {
        rope: Rope { position_ids: &pos, cos: &cos, sin: &sin },
        attention_bias: &bias,
    };
    let h = layer_stack(&mut g, ckpt, 0..split, x, &io, opts, |g, depth, x| {
        if exits.contains(&depth) {
            exit_head(g, cfg, &head, depth, x, &count, &unit);
        }
    });
    g.output(&h, names::HIDDEN, TensorType::F32, &hidden_dims(cfg, "seq"));
    g.finish(OPSETS, &[])
}

/// An exit head: RMS-normalise, affine translator (identity until calibrated), final norm and
/// LM head. Also exposes the raw hidden state the head reads, for calibration.
fn exit_head(
    g: &mut GraphBuilder,
    cfg: &LlamaConfig,
    head: &LmHead,
    depth: usize,
    x: &str,
    count: &str,
    unit: &str,
) {
    let hs = cfg.hidden_size;
    g.set_scope(&format!("exit{depth}/"));
    g.output(x, &names::exit_state(depth), TensorType::F32, &hidden_dims(cfg, "seq"));
    let last = last_positions(g, x, count);
    let n = rms_norm(g, &last, unit, cfg.rms_eps);
    let mut identity = vec![0f32; hs * hs];
    for i in 0..hs {
        identity[i * hs + i] = 1.0;
    }
    let dims = [hs as i64, hs as i64];
    let w = g.initializer(TensorProto::f32(&names::translator_weight(depth), &dims, &identity));
    let b = g.initializer(TensorProto::f32(
        &names::translator_bias(depth),
        &[hs as i64],
        &vec![0.0; hs],
    ));
    let z = g.op("MatMul", &[&n, &w], vec![]);
    let z = g.op("Add", &[&z, &b], vec![]);
    let logits = head.apply(g, &z);
    g.output(&logits, &names::exit_logits(depth), TensorType::F32, &logits_dims(cfg));
    g.set_scope("");
}

/// Builds the cloud partition: layers `[split, N)`, final norm and LM head.
pub fn cloud_graph(ckpt: &Checkpoint, split: usize, opts: &GraphOptions) -> ModelProto {
    let cfg = &ckpt.config;
    let mut g = GraphBuilder::new("ce-collm-cloud");
    let x = g.input(names::HIDDEN, TensorType::F32, &hidden_dims(cfg, "seq"));
    let (pos, bias, count) = common_inputs(&mut g);
    let (cos, sin) = rope_tables(&mut g, cfg);
    let io = LayerInputs {
        rope: Rope { position_ids: &pos, cos: &cos, sin: &sin },
        attention_bias: &bias,
    };
    let h = layer_stack(&mut g, ckpt, split..cfg.num_layers, x, &io, opts, |_, _, _| {});
    let unit = ones(&mut g, cfg);
    let state = rms_norm(&mut g, &h, &unit, cfg.rms_eps);
    g.output(&state, names::FINAL_STATE, TensorType::F32, &hidden_dims(cfg, "seq"));
    let head = LmHead::declare(&mut g, ckpt, opts);
    let last = last_positions(&mut g, &h, &count);
    let logits = head.apply(&mut g, &last);
    g.output(&logits, names::LOGITS, TensorType::F32, &logits_dims(cfg));
    g.finish(OPSETS, &[])
}

/// The declared inputs and outputs of a built graph, for the manifest.
pub fn io_specs(model: &ModelProto) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let graph = model.graph.as_ref();
    let spec = |v: &collm_onnx::proto::ValueInfoProto| {
        let t = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        let dtype = match t.map(|t| t.elem_type) {
            Some(collm_onnx::proto::data_type::FLOAT) => "float32",
            Some(collm_onnx::proto::data_type::INT64) => "int64",
            _ => "other",
        };
        let shape = t
            .and_then(|t| t.shape.as_ref())
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(collm_onnx::proto::DimensionValue::DimValue(v)) => {
                            serde_json::json!(v)
                        }
                        Some(collm_onnx::proto::DimensionValue::DimParam(p)) => {
                            serde_json::json!(p)
                        }
                        None => serde_json::Value::Null,
                    })
                    .collect()
            })
            .unwrap_or_default();
        TensorSpec { name: v.name.clone(), dtype: dtype.to_string(), shape }
    };
    (
        graph.map(|g| g.input.iter().map(spec).collect()).unwrap_or_default(),
        graph.map(|g| g.output.iter().map(spec).collect()).unwrap_or_default(),
    )
}
