//! The building blocks of a Llama decoder in ONNX: linear layers over dense or block-quantized
//! weights, RMSNorm, rotary attention with a KV cache, the SwiGLU MLP.

use collm_checkpoint::{LayerWeights, LlamaConfig, Weight};
use collm_onnx::{Attr, GraphBuilder, TensorProto};

use super::{names, q4_1};

/// Opset of the standard domain: 23 brings RMSNormalization, RotaryEmbedding and Attention.
pub const ONNX_OPSET: i64 = 23;
/// `com.microsoft` contrib ops (MatMulNBits).
pub const MS_DOMAIN: &str = "com.microsoft";
/// ONNX Runtime's block-quantized matmul, in [`MS_DOMAIN`].
pub const NBITS_OP: &str = "MatMulNBits";
/// The operator sets every partition graph imports.
pub const OPSETS: &[(&str, i64)] = &[("", ONNX_OPSET), (MS_DOMAIN, 1), (q4_1::DOMAIN, 1)];

/// Options that shape the emitted graph but not its function.
#[derive(Debug, Clone, Copy)]
pub struct GraphOptions {
    /// MatMulNBits `accuracy_level`: 0 = float compute, 4 = int8 activations (faster; what
    /// llama.cpp does for quantized weights).
    pub nbits_accuracy_level: i64,
    /// Run GGUF Q4_1 weights through our own `ce_collm.Q4_1MatMul` over llama.cpp's blocks
    /// (see [`super::q4_1`]) instead of `MatMulNBits` plus a block-offset correction.
    pub q4_1_kernel: bool,
}

impl Default for GraphOptions {
    fn default() -> Self {
        Self { nbits_accuracy_level: 4, q4_1_kernel: true }
    }
}

/// Whether `model` multiplies int8-quantized activations anywhere (`MatMulNBits` at accuracy
/// level 4, or our Q4_1 operator). Such a graph rounds each activation to a step of its
/// block's largest value, so differences at the level of float rounding upstream (a batched
/// attention against a one-position one) can move a product by a whole step: its batched
/// passes do not round like its one-position passes, they compute something else.
pub fn int8_activations(model: &collm_onnx::ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|g| {
        g.node.iter().any(|n| {
            (n.domain == q4_1::DOMAIN && n.op_type == q4_1::OP)
                || (n.op_type == NBITS_OP
                    && n.attribute
                        .iter()
                        .any(|a| a.name == "accuracy_level" && a.i == q4_1::INT8_ACCURACY_LEVEL))
        })
    })
}

/// A weight matrix declared as initializers, ready to be applied any number of times.
pub struct Linear {
    op: &'static str,
    inputs: Vec<String>,
    attrs: Vec<(&'static str, i64)>,
    /// For blocks with float zero points: `[n_blocks, out]` per-block offsets, applied to the
    /// block sums of the input (see [`Linear::declare`]).
    offsets: Option<(String, usize, usize)>,
}

impl Linear {
    /// Declares `w` (`[out, in]`) under `name`: dense weights as a transposed `[in, out]`
    /// MatMul operand, block weights in MatMulNBits layout (no repacking needed).
    ///
    /// MatMulNBits is only fast with integer zero points, so blocks with float zero points
    /// (GGUF Q4_1: `d·q + m`) are split exactly into the symmetric kernel plus a correction:
    /// `(q − z)·s = (q − z₀)·s + (z₀ − z)·s`, where the second term, constant per block, is
    /// applied as `blocksum(x) @ offsetsᵀ` — a matmul `block` times smaller than the weight.
    pub fn declare(g: &mut GraphBuilder, w: &Weight, name: &str, opts: &GraphOptions) -> Self {
        match (w, q4_1::kernel_blocks(w, opts)) {
            (Weight::Dense { rows, cols, data }, _) => {
                let mut t = vec![0f32; rows * cols];
                for r in 0..*rows {
                    for c in 0..*cols {
                        t[c * rows + r] = data[r * cols + c];
                    }
                }
                let init = g.initializer(TensorProto::f32(name, &[*cols as i64, *rows as i64], &t));
                Self { op: "MatMul", inputs: vec![init], attrs: vec![], offsets: None }
            }
            (Weight::Blocks { rows, cols, .. }, Some(blocks)) => {
                Self::q4_1(g, name, *rows, *cols, &blocks)
            }
            (Weight::Blocks { rows, cols, bits, block, packed, scales, zero_points }, None) => {
                let n_blocks = cols.div_ceil(*block);
                let blob = block * *bits as usize / 8;
                let inputs = vec![
                    g.initializer(TensorProto::u8(
                        &format!("{name}.qweight"),
                        &[*rows as i64, n_blocks as i64, blob as i64],
                        packed,
                    )),
                    g.initializer(TensorProto::f32(
                        &format!("{name}.scales"),
                        &[(*rows * n_blocks) as i64],
                        scales,
                    )),
                ];
                let offsets = zero_points.as_ref().map(|zp| {
                    let default_zp = (1u32 << (bits - 1)) as f32;
                    let mut t = vec![0f32; n_blocks * rows];
                    for r in 0..*rows {
                        for b in 0..n_blocks {
                            let i = r * n_blocks + b;
                            t[b * rows + r] = (default_zp - zp[i]) * scales[i];
                        }
                    }
                    let init = g.initializer(TensorProto::f32(
                        &format!("{name}.block_offsets"),
                        &[n_blocks as i64, *rows as i64],
                        &t,
                    ));
                    (init, n_blocks, *block)
                });
                Self {
                    op: NBITS_OP,
                    inputs,
                    attrs: vec![
                        ("K", *cols as i64),
                        ("N", *rows as i64),
                        ("bits", *bits as i64),
                        ("block_size", *block as i64),
                        ("accuracy_level", opts.nbits_accuracy_level),
                    ],
                    offsets,
                }
            }
        }
    }

    /// Our operator over llama.cpp's Q4_1 blocks, packed by [`q4_1::pack`].
    fn q4_1(g: &mut GraphBuilder, name: &str, rows: usize, cols: usize, blocks: &[u8]) -> Self {
        let row_bytes = cols / q4_1::BLOCK * q4_1::BLOCK_BYTES;
        let init = g.initializer(TensorProto::u8(
            &format!("{name}.q4_1"),
            &[rows as i64, row_bytes as i64],
            blocks,
        ));
        Self {
            op: q4_1::OP,
            inputs: vec![init],
            attrs: vec![("K", cols as i64), ("N", rows as i64)],
            offsets: None,
        }
    }

    /// Emits `x @ W^T` for `x` of shape `[1, seq, in]`.
    pub fn apply(&self, g: &mut GraphBuilder, x: &str) -> String {
        let y = self.project(g, x);
        match self.correction(g, x) {
            None => y,
            Some(c) => g.op("Add", &[&y, &c], vec![]),
        }
    }

    /// The kernel's product, without the block-offset correction.
    fn project(&self, g: &mut GraphBuilder, x: &str) -> String {
        let mut inputs = vec![x];
        inputs.extend(self.inputs.iter().map(String::as_str));
        let attrs = self.attrs.iter().map(|(n, v)| (*n, Attr::Int(*v))).collect();
        let domain = match self.op {
            NBITS_OP => MS_DOMAIN,
            q4_1::OP => q4_1::DOMAIN,
            _ => "",
        };
        g.op_multi(self.op, domain, &inputs, 1, attrs).into_iter().next().unwrap_or_default()
    }

    /// `blocksum(x) @ offsetsᵀ` for blocks with float zero points (see [`Linear::declare`]).
    fn correction(&self, g: &mut GraphBuilder, x: &str) -> Option<String> {
        let (offsets, n_blocks, block) = self.offsets.as_ref()?;
        let shape = g.const_i64(&[0, 0, *n_blocks as i64, *block as i64]);
        let blocks = g.op("Reshape", &[x, &shape], vec![]);
        let axes = g.const_i64(&[-1]);
        let sums = g.op("ReduceSum", &[&blocks, &axes], vec![("keepdims", Attr::Int(0))]);
        Some(g.op("MatMul", &[&sums, offsets], vec![]))
    }

    /// Emits `residual + x @ W^T`. With a block-offset correction `c` the three terms are one
    /// `Sum(y, c, residual)` node, which adds in input order: `(y + c) + residual`, the same
    /// floats as `residual + (y + c)` from two `Add` nodes, one node fewer.
    pub fn apply_onto(&self, g: &mut GraphBuilder, x: &str, residual: &str) -> String {
        let y = self.project(g, x);
        match self.correction(g, x) {
            None => g.op("Add", &[residual, &y], vec![]),
            Some(c) => g.op("Sum", &[&y, &c, residual], vec![]),
        }
    }
}

/// Declares `w` and applies it once.
pub fn linear(
    g: &mut GraphBuilder,
    x: &str,
    w: &Weight,
    name: &str,
    opts: &GraphOptions,
) -> String {
    Linear::declare(g, w, name, opts).apply(g, x)
}

/// Stacks weights that read the same input (Q, K, V; gate, up) into one matrix, so one kernel
/// call replaces several; the caller splits the output. `None` when formats differ.
pub fn fuse_rows(parts: &[&Weight]) -> Option<Weight> {
    let cols = parts.first()?.cols();
    if parts.iter().any(|w| w.cols() != cols) {
        return None;
    }
    match parts[0] {
        Weight::Dense { .. } => {
            let mut data = Vec::new();
            for w in parts {
                match w {
                    Weight::Dense { data: d, .. } => data.extend_from_slice(d),
                    Weight::Blocks { .. } => return None,
                }
            }
            Some(Weight::Dense { rows: parts.iter().map(|w| w.rows()).sum(), cols, data })
        }
        Weight::Blocks { bits, block, .. } => {
            let (bits, block) = (*bits, *block);
            let any_zp =
                parts.iter().any(|w| matches!(w, Weight::Blocks { zero_points: Some(_), .. }));
            let default_zp = (1u32 << (bits - 1)) as f32;
            let (mut packed, mut scales, mut zps) = (Vec::new(), Vec::new(), Vec::new());
            for w in parts {
                let Weight::Blocks {
                    bits: b, block: k, packed: p, scales: s, zero_points: z, ..
                } = w
                else {
                    return None;
                };
                if *b != bits || *k != block {
                    return None;
                }
                packed.extend_from_slice(p);
                scales.extend_from_slice(s);
                match z {
                    Some(z) => zps.extend_from_slice(z),
                    None => zps.extend(std::iter::repeat_n(default_zp, s.len())),
                }
            }
            Some(Weight::Blocks {
                rows: parts.iter().map(|w| w.rows()).sum(),
                cols,
                bits,
                block,
                packed,
                scales,
                zero_points: any_zp.then_some(zps),
            })
        }
    }
}

/// `x @ [W1; W2; ...]^T` split back into one output per weight (fused when the formats allow).
pub fn linear_group(
    g: &mut GraphBuilder,
    x: &str,
    parts: &[(&Weight, String)],
    opts: &GraphOptions,
) -> Vec<String> {
    let weights: Vec<&Weight> = parts.iter().map(|(w, _)| *w).collect();
    match fuse_rows(&weights) {
        Some(fused) => {
            let names: Vec<&str> = parts.iter().map(|(_, n)| n.as_str()).collect();
            let y = linear(g, x, &fused, &names.join("+"), opts);
            let sizes: Vec<i64> = weights.iter().map(|w| w.rows() as i64).collect();
            let split = g.const_i64(&sizes);
            g.op_multi("Split", "", &[&y, &split], parts.len(), vec![("axis", Attr::Int(-1))])
        }
        None => parts.iter().map(|(w, n)| linear(g, x, w, n, opts)).collect(),
    }
}

pub fn rms_norm(g: &mut GraphBuilder, x: &str, scale: &str, eps: f32) -> String {
    g.op(
        "RMSNormalization",
        &[x, scale],
        vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
    )
}

/// Rotary tables `[max_position, head_dim / 2]` shared by every layer of a partition; rope
/// scaling divides each frequency by its divisor.
pub fn rope_tables(g: &mut GraphBuilder, cfg: &LlamaConfig) -> (String, String) {
    let half = cfg.head_dim / 2;
    let mut cos = Vec::with_capacity(cfg.max_position * half);
    let mut sin = Vec::with_capacity(cfg.max_position * half);
    let divisor = |i: usize| cfg.rope_freq_divisors.get(i).map_or(1.0, |&d| f64::from(d));
    for pos in 0..cfg.max_position {
        for i in 0..half {
            let inv_freq =
                (cfg.rope_theta as f64).powf(-(2.0 * i as f64) / cfg.head_dim as f64) / divisor(i);
            let angle = pos as f64 * inv_freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let dims = [cfg.max_position as i64, half as i64];
    (
        g.initializer(TensorProto::f32("rope.cos", &dims, &cos)),
        g.initializer(TensorProto::f32("rope.sin", &dims, &sin)),
    )
}

/// Rotary position inputs: the tables and each position's index.
pub struct Rope<'a> {
    pub position_ids: &'a str,
    pub cos: &'a str,
    pub sin: &'a str,
}

/// Values every decoder layer of a partition reads.
pub struct LayerInputs<'a> {
    pub rope: Rope<'a>,
    pub attention_bias: &'a str,
}

/// Rotates `t` (`[1, seq, heads · head_dim]`) by its positions.
pub fn rotary(
    g: &mut GraphBuilder,
    cfg: &LlamaConfig,
    rope: &Rope<'_>,
    t: &str,
    heads: usize,
) -> String {
    g.op(
        "RotaryEmbedding",
        &[t, rope.cos, rope.sin, rope.position_ids],
        vec![
            ("interleaved", Attr::Int(cfg.rope_interleaved as i64)),
            ("num_heads", Attr::Int(heads as i64)),
        ],
    )
}

/// Adds `bias` (when the architecture has one) to the projection `x`.
pub fn add_bias(g: &mut GraphBuilder, x: &str, bias: Option<&[f32]>, name: &str) -> String {
    match bias {
        None => x.to_string(),
        Some(b) => {
            let b = g.initializer(TensorProto::f32(name, &[b.len() as i64], b));
            g.op("Add", &[x, &b], vec![])
        }
    }
}

/// Layer `index`'s RMSNorm before attention, applied to `x` (what its Q, K and V read).
pub fn attention_norm(
    g: &mut GraphBuilder,
    cfg: &LlamaConfig,
    index: usize,
    w: &LayerWeights,
    x: &str,
) -> String {
    let gain = g.initializer(TensorProto::f32(
        &format!("layers.{index}.attn_norm"),
        &[cfg.hidden_size as i64],
        &w.attn_norm,
    ));
    rms_norm(g, x, &gain, cfg.rms_eps)
}

/// One pre-norm decoder layer; returns the new residual stream. Declares the layer's KV cache
/// as graph inputs/outputs under [`names::past_key`] etc.
pub fn decoder_layer(
    g: &mut GraphBuilder,
    cfg: &LlamaConfig,
    index: usize,
    w: &LayerWeights,
    x: &str,
    io: &LayerInputs<'_>,
    opts: &GraphOptions,
) -> String {
    g.set_scope(&format!("layer{index}/"));
    let p = format!("layers.{index}");
    let h = attention_norm(g, cfg, index, w, x);
    let qkv = linear_group(
        g,
        &h,
        &[(&w.wq, format!("{p}.wq")), (&w.wk, format!("{p}.wk")), (&w.wv, format!("{p}.wv"))],
        opts,
    );
    let bias = w.qkv_bias.as_ref();
    let q = add_bias(g, &qkv[0], bias.map(|b| b.q.as_slice()), &format!("{p}.bq"));
    let k = add_bias(g, &qkv[1], bias.map(|b| b.k.as_slice()), &format!("{p}.bk"));
    let v = &add_bias(g, &qkv[2], bias.map(|b| b.v.as_slice()), &format!("{p}.bv"));
    let q = rotary(g, cfg, &io.rope, &q, cfg.num_heads);
    let k = rotary(g, cfg, &io.rope, &k, cfg.num_kv_heads);
    let attn = g.fresh_name("attention");
    let (past_k, past_v) = (names::past_key(index), names::past_value(index));
    let (present_k, present_v) = (names::present_key(index), names::present_value(index));
    g.node(
        "Attention",
        "",
        &[&q, &k, v, io.attention_bias, &past_k, &past_v],
        &[&attn, &present_k, &present_v],
        vec![
            ("q_num_heads", Attr::Int(cfg.num_heads as i64)),
            ("kv_num_heads", Attr::Int(cfg.num_kv_heads as i64)),
            ("scale", Attr::Float(1.0 / (cfg.head_dim as f32).sqrt())),
        ],
    );
    let x = Linear::declare(g, &w.wo, &format!("{p}.wo"), opts).apply_onto(g, &attn, x);

    let ffn_norm = g.initializer(TensorProto::f32(
        &format!("{p}.ffn_norm"),
        &[cfg.hidden_size as i64],
        &w.ffn_norm,
    ));
    let h = rms_norm(g, &x, &ffn_norm, cfg.rms_eps);
    let gate_up = linear_group(
        g,
        &h,
        &[(&w.w_gate, format!("{p}.w_gate")), (&w.w_up, format!("{p}.w_up"))],
        opts,
    );
    let (gate, up) = (&gate_up[0], &gate_up[1]);
    let sig = g.op("Sigmoid", &[gate], vec![]);
    let act = g.op("Mul", &[gate, &sig], vec![]);
    let act = g.op("Mul", &[&act, up], vec![]);
    let out = Linear::declare(g, &w.w_down, &format!("{p}.w_down"), opts).apply_onto(g, &act, &x);
    g.set_scope("");
    out
}

/// Keeps the trailing `count` positions of `[1, seq, hidden]` (count is a `[1]` int64 tensor;
/// 0 keeps none, which skips a head's work entirely when its logits are not needed).
pub fn last_positions(g: &mut GraphBuilder, x: &str, count: &str) -> String {
    let seq = g.op("Shape", &[x], vec![("start", Attr::Int(1)), ("end", Attr::Int(2))]);
    let start = g.op("Sub", &[&seq, count], vec![]);
    let end = g.const_i64(&[i64::MAX]);
    let axis = g.const_i64(&[1]);
    g.op("Slice", &[x, &start, &end, &axis], vec![])
}
