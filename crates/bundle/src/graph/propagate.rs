//! The cloud's K/V propagation graph, for `propagate` catch-up: for positions whose next token
//! the edge answered, every cloud layer's keys and values are derived from the split hidden
//! state (that layer's RMSNorm, K/V projections and rotary) instead of running the layers. The
//! first cloud layer's K/V come out exact (they only read its input); deeper layers' are the
//! approximation, as in CALM's state propagation for early-exited tokens.
//!
//! Inputs and outputs follow the cloud partition's names (`hidden`, `position_ids`,
//! `past_key.{l}` … `present_value.{l}`), so the cloud's KV cache extends with either graph.

use collm_checkpoint::Checkpoint;
use collm_onnx::{Attr, GraphBuilder, ModelProto, TensorType};

use super::layers::{
    GraphOptions, OPSETS, Rope, add_bias, attention_norm, linear_group, rope_tables,
};
use super::names;
use super::partition::{hidden_dims, kv_dims};

/// Builds the propagation graph for the cloud layers `[split, N)`.
pub fn cloud_kv_graph(ckpt: &Checkpoint, split: usize, opts: &GraphOptions) -> ModelProto {
    let cfg = &ckpt.config;
    let mut g = GraphBuilder::new("ce-collm-cloud-kv");
    let x = g.input(names::HIDDEN, TensorType::F32, &hidden_dims(cfg, "seq"));
    let pos = g.input(names::POSITION_IDS, TensorType::I64, &[1i64.into(), "seq".into()]);
    let (cos, sin) = rope_tables(&mut g, cfg);
    let rope = Rope { position_ids: &pos, cos: &cos, sin: &sin };
    // `[1, seq, kv_heads · head_dim]` → `[1, kv_heads, seq, head_dim]`, the cache layout.
    let heads_first = g.const_i64(&[0, 0, cfg.num_kv_heads as i64, cfg.head_dim as i64]);
    for i in split..cfg.num_layers {
        let w = &ckpt.layers[i];
        g.set_scope(&format!("layer{i}/"));
        let p = format!("layers.{i}");
        let h = attention_norm(&mut g, cfg, i, w, &x);
        let kv = linear_group(
            &mut g,
            &h,
            &[(&w.wk, format!("{p}.wk")), (&w.wv, format!("{p}.wv"))],
            opts,
        );
        let bias = w.qkv_bias.as_ref();
        let k = add_bias(&mut g, &kv[0], bias.map(|b| b.k.as_slice()), &format!("{p}.bk"));
        let v = add_bias(&mut g, &kv[1], bias.map(|b| b.v.as_slice()), &format!("{p}.bv"));
        let k = super::layers::rotary(&mut g, cfg, &rope, &k, cfg.num_kv_heads);
        for (value, past, present) in [
            (k, names::past_key(i), names::present_key(i)),
            (v, names::past_value(i), names::present_value(i)),
        ] {
            g.input(&past, TensorType::F32, &kv_dims(cfg, "past"));
            let split_heads = g.op("Reshape", &[&value, &heads_first], vec![]);
            let new =
                g.op("Transpose", &[&split_heads], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
            let all = g.op("Concat", &[&past, &new], vec![("axis", Attr::Int(2))]);
            g.output(&all, &present, TensorType::F32, &kv_dims(cfg, "total"));
        }
    }
    g.set_scope("");
    g.finish(OPSETS, &[])
}
