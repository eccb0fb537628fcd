//! The tiny random model through both writers and both loaders.

#![allow(clippy::unwrap_used)]

use std::str::FromStr;

use collm_checkpoint::tiny::{self, TinySpec};
use collm_checkpoint::{Checkpoint, Error, Weight, to_interleaved_rope};
use collm_gguf::{GgmlType, GgufFile, GgufWriter, Value};

fn load_both(spec: &TinySpec, ty: GgmlType) -> (Checkpoint, Checkpoint, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    tiny::write_gguf(&gguf, spec, 7, ty).unwrap();
    tiny::write_hf(&dir.path().join("hf"), spec, 7).unwrap();
    let g = Checkpoint::from_gguf(&gguf).unwrap();
    let h = Checkpoint::from_hf_dir(&dir.path().join("hf")).unwrap();
    (g, h, dir)
}

fn max_err(a: &Weight, b: &Weight) -> f32 {
    a.to_dense().iter().zip(b.to_dense()).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn f32_gguf_and_hf_directory_load_to_the_same_model() {
    let spec = TinySpec::default();
    let (g, h, _dir) = load_both(&spec, GgmlType::F32);
    assert!(g.config.rope_interleaved && !h.config.rope_interleaved);
    let mut gc = g.config.clone();
    gc.rope_interleaved = false;
    assert_eq!(gc, h.config);
    assert_eq!(h.config.num_layers, 4);
    assert_eq!(h.config.head_dim, 16);
    assert!(h.config.vocab_size > 259 && h.config.vocab_size <= 359);

    assert_eq!(g.embedding, h.embedding);
    assert_eq!(g.lm_head, h.lm_head);
    assert_eq!(g.final_norm, h.final_norm);
    for (lg, lh) in g.layers.iter().zip(&h.layers) {
        assert_eq!(lg.wv, lh.wv);
        assert_eq!(lg.wo, lh.wo);
        assert_eq!((&lg.w_gate, &lg.w_up, &lg.w_down), (&lh.w_gate, &lh.w_up, &lh.w_down));
        assert_eq!((&lg.attn_norm, &lg.ffn_norm), (&lh.attn_norm, &lh.ffn_norm));
        assert_ne!(lg.wq, lh.wq, "GGUF Q rows must be permuted");
        assert_eq!(lg.wq, to_interleaved_rope(&lh.wq, 4));
        assert_eq!(lg.wk, to_interleaved_rope(&lh.wk, 2));
    }
    assert_eq!(g.tokenizer_json, h.tokenizer_json);
    assert_eq!(g.special_tokens, h.special_tokens);
    assert_eq!(g.special_tokens.bos, Some(1));
    assert_eq!(g.special_tokens.eos, Some(2));
    assert_eq!(g.special_tokens.special.len(), 3);
    assert_eq!(g.chat_template, h.chat_template);
    assert_eq!(g.chat_template.as_deref(), Some(tiny::CHAT_TEMPLATE));
}

#[test]
fn quantized_gguf_layers_stay_close_to_the_float_weights() {
    let spec = TinySpec { num_layers: 1, ..TinySpec::default() };
    for (ty, bits, tol) in
        [(GgmlType::Q8_0, 8, 0.004), (GgmlType::Q4_0, 4, 0.06), (GgmlType::Q4_1, 4, 0.04)]
    {
        let (g, h, _dir) = load_both(&spec, ty);
        let l = &g.layers[0];
        assert!(matches!(l.w_up, Weight::Blocks { bits: b, .. } if b == bits), "{ty:?}");
        assert!(matches!(g.embedding, Weight::Blocks { bits: 8, .. }));
        assert!(max_err(&l.w_up, &h.layers[0].w_up) < tol, "{ty:?}");
        assert!(max_err(&l.wk, &to_interleaved_rope(&h.layers[0].wk, 2)) < tol, "{ty:?}");
        assert!(max_err(&g.lm_head, &h.lm_head) < tol, "{ty:?}");
    }
    let (g, h, _dir) = load_both(&spec, GgmlType::F16);
    assert!(max_err(&g.layers[0].w_down, &h.layers[0].w_down) < 1e-3);
}

#[test]
fn tied_embeddings_omit_the_output_matrix() {
    let spec = TinySpec { num_layers: 1, tied_embeddings: true, ..TinySpec::default() };
    let (g, h, dir) = load_both(&spec, GgmlType::F32);
    assert!(g.config.tied_embeddings && h.config.tied_embeddings);
    assert_eq!(g.lm_head, g.embedding);
    assert_eq!(h.lm_head, h.embedding);
    assert!(
        GgufFile::open(dir.path().join("tiny.gguf")).unwrap().tensor("output.weight").is_none()
    );
}

#[test]
fn same_seed_same_model_other_seed_other_model() {
    let spec = TinySpec { num_layers: 1, ..TinySpec::default() };
    let a = tiny::checkpoint(&spec, 1).unwrap();
    assert_eq!(a, tiny::checkpoint(&spec, 1).unwrap());
    assert_ne!(a.layers[0].wq, tiny::checkpoint(&spec, 2).unwrap().layers[0].wq);
}

#[test]
fn tiny_tokenizer_merges_common_words_and_keeps_chat_tokens_whole() {
    let ck = tiny::checkpoint(&TinySpec::default(), 0).unwrap();
    let tok = tokenizers::Tokenizer::from_str(&ck.tokenizer_json).unwrap();
    let text = "the answer is in the world";
    let enc = tok.encode(text, false).unwrap();
    assert!(enc.len() < text.len() / 2, "{:?}", enc.get_tokens());
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    let digits = tok.encode("x 42", false).unwrap();
    assert_eq!(digits.get_tokens(), ["x", "Ġ", "4", "2"]);
    let chat = tok.encode("<|im_start|>user\nhé<|im_end|>", false).unwrap();
    assert_eq!(chat.get_ids()[0], 1);
    assert_eq!(*chat.get_ids().last().unwrap(), 2);
    assert_eq!(tok.decode(chat.get_ids(), false).unwrap(), "<|im_start|>user\nhé<|im_end|>");
}

#[test]
fn foreign_architecture_and_missing_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let spec = TinySpec { num_layers: 1, ..TinySpec::default() };
    tiny::write_gguf(&path, &spec, 3, GgmlType::F32).unwrap();
    let src = GgufFile::open(&path).unwrap();

    let rewrite = |arch: &str, skip: &str| {
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata().entries() {
            w.set(k.clone(), v.clone());
        }
        w.set("general.architecture", Value::String(arch.into()));
        for t in src.tensors().iter().filter(|t| t.name != skip) {
            w.add_raw_tensor(&t.name, &t.dims, t.ty, src.tensor_bytes(t).unwrap().to_vec())
                .unwrap();
        }
        let out = dir.path().join(format!("{arch}-{skip}.gguf"));
        w.write(&out).unwrap();
        Checkpoint::from_gguf(&out).unwrap_err()
    };
    let e = rewrite("gpt2", "");
    assert_eq!(e.to_string(), "unsupported architecture \"gpt2\" (supported: llama, qwen2)");
    let e = rewrite("llama", "blk.0.ffn_up.weight");
    assert_eq!(e.to_string(), "checkpoint has no tensor named blk.0.ffn_up.weight");
    assert!(matches!(e, Error::MissingTensor(_)));

    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = Checkpoint::from_gguf(&cut).unwrap_err().to_string();
    assert!(e.starts_with("truncated GGUF file: tensor output.weight needs bytes"), "{e}");
}

#[test]
fn qwen2_gguf_and_hf_directory_load_to_the_same_model_with_biases() {
    let spec = TinySpec { num_layers: 2, qkv_bias: true, ..TinySpec::default() };
    let (g, h, dir) = load_both(&spec, GgmlType::F32);
    let file = GgufFile::open(dir.path().join("tiny.gguf")).unwrap();
    assert_eq!(file.metadata().get_str("general.architecture").unwrap(), "qwen2");
    // Qwen2 GGUFs keep Hugging Face's rotate-half rows: nothing is permuted.
    assert!(!g.config.rope_interleaved);
    assert_eq!(g.config, h.config);
    for (lg, lh) in g.layers.iter().zip(&h.layers) {
        assert_eq!(lg, lh);
        let b = lg.qkv_bias.as_ref().expect("qwen2 layers have Q/K/V biases");
        assert_eq!((b.q.len(), b.k.len(), b.v.len()), (64, 32, 32));
    }
    assert_eq!(g.sources["layers.1.wq"].name, "blk.1.attn_q.weight");
    assert_eq!(h.sources["layers.1.wq"].name, "model.layers.1.self_attn.q_proj.weight");
}

#[test]
fn k_quant_layers_load_as_blocks_close_to_the_float_weights() {
    // Rows of 256 (hidden) and 512 (FFN) are whole super-blocks, as in real models.
    let spec = TinySpec {
        num_layers: 1,
        hidden_size: 256,
        intermediate_size: 512,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        ..TinySpec::default()
    };
    for (ty, bits, block, tol) in [
        (GgmlType::Q4_K, 4, 32, 0.05),
        (GgmlType::Q5_K, 8, 32, 0.025),
        (GgmlType::Q6_K, 8, 16, 0.015),
        (GgmlType::BF16, 0, 0, 2e-3),
    ] {
        let (g, h, _dir) = load_both(&spec, ty);
        let l = &g.layers[0];
        match &l.w_down {
            Weight::Blocks { bits: b, block: k, .. } => assert_eq!((*b, *k), (bits, block), "{ty}"),
            Weight::Dense { .. } => assert_eq!(ty, GgmlType::BF16),
        }
        assert!(max_err(&l.w_down, &h.layers[0].w_down) < tol, "{ty}");
        assert!(max_err(&l.wq, &to_interleaved_rope(&h.layers[0].wq, 4)) < tol, "{ty}");
        assert_eq!(g.sources["layers.0.w_down"].ty, ty.name());
        assert_eq!(g.sources["embedding"].ty, if bits == 0 { "F32" } else { "Q8_0" });
    }
}

#[test]
fn rows_that_are_not_whole_super_blocks_fall_back_as_llama_cpp_does() {
    // The default tiny model has rows of 64 and 128: every K-quant falls back.
    let spec = TinySpec { num_layers: 1, ..TinySpec::default() };
    for (ty, fallback) in [
        (GgmlType::Q4_K, "Q5_0"),
        (GgmlType::Q5_K, "Q5_1"),
        (GgmlType::Q6_K, "Q8_0"),
        (GgmlType::Q3_K, "Q4_0"),
    ] {
        let (g, h, _dir) = load_both(&spec, ty);
        assert_eq!(g.sources["layers.0.w_up"].ty, fallback, "{ty}");
        assert!(max_err(&g.layers[0].w_up, &h.layers[0].w_up) < 0.03, "{ty}");
    }
}

#[test]
fn tensors_the_graph_cannot_use_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let spec = TinySpec { num_layers: 1, ..TinySpec::default() };
    tiny::write_gguf(&path, &spec, 3, GgmlType::F32).unwrap();
    let src = GgufFile::open(&path).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata().entries() {
        w.set(k.clone(), v.clone());
    }
    for t in src.tensors() {
        w.add_raw_tensor(&t.name, &t.dims, t.ty, src.tensor_bytes(t).unwrap().to_vec()).unwrap();
    }
    w.add_tensor("blk.0.attn_output.bias", &[64], GgmlType::F32, &[0.0; 64]).unwrap();
    let out = dir.path().join("extra.gguf");
    w.write(&out).unwrap();
    let e = Checkpoint::from_gguf(&out).unwrap_err().to_string();
    assert_eq!(
        e,
        "tensor blk.0.attn_output.bias: the llama graph has no place for this tensor (a variant of the architecture that is not supported)"
    );
}

#[test]
fn damaged_safetensors_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec { num_layers: 1, ..TinySpec::default() };
    tiny::write_hf(dir.path(), &spec, 3).unwrap();
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 10]).unwrap();
    let e = Checkpoint::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: malformed safetensors file:", st.display())), "{e}");
}

#[test]
fn hf_shape_mismatch_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec { num_layers: 1, ..TinySpec::default() };
    tiny::write_hf(dir.path(), &spec, 3).unwrap();
    let cfg_path = dir.path().join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        cfg.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96"),
    )
    .unwrap();
    let e = Checkpoint::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(e.starts_with("tensor model.layers.0.mlp.gate_proj.weight: shape [128, 64]"), "{e}");
}
