#!/usr/bin/env python3
"""Reference fixtures for SmolLM2-135M-Instruct Q4_1 from llama.cpp (llama-cpp-python).

For each case: llama.cpp's prompt token ids, its greedy continuation (up to 48 new tokens,
stopping at <|im_end|>), and its teacher-forced top-1 prediction at every position of
prompt + continuation (one batched logits_all pass), which measures how self-consistent
llama.cpp's batched and one-token-at-a-time paths are.

Run with the reference venv (tools/reference/setup-venv):
    $COLLM_CACHE/ref-venv/bin/python tools/reference/make_fixtures.py
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("COLLM_CACHE", os.path.expanduser("~/.cache/ce-collm"))
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW_TOKENS = 48

CASES = [
    ("raw_text", "The capital of France is"),
    (
        "chatml_user",
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "chatml_system_user",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    ("digits", "In 2024, 17 * 23 = 391. Then 1234567890 + 9876543210 ="),
    (
        "code",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n",
    ),
    ("non_ascii", "Grüße aus Köln — 東京 and naïve café façade: "),
    ("whitespace_runs", "a  b   c\t\td\n\n\n    e      f\n  \n"),
    ("story", "Once upon a time, in a small village by the mountains, there lived"),
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(model, logits_all):
    return Llama(
        model_path=model,
        n_ctx=2048,
        n_threads=2,
        n_threads_batch=2,
        seed=0,
        logits_all=logits_all,
        verbose=False,
    )


def greedy(llm, prompt_ids, eos_id):
    out = []
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                            repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if tok == eos_id or len(out) >= MAX_NEW_TOKENS:
            break
    return out


def teacher_forced_top1(llm, ids):
    llm.reset()
    llm.eval(ids)
    scores = np.asarray(llm.scores[: len(ids), :])
    top2 = np.sort(np.partition(scores, -2, axis=1)[:, -2:], axis=1)
    margin = top2[:, 1] - top2[:, 0]
    return [int(t) for t in scores.argmax(axis=1)], [round(float(m), 4) for m in margin]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(CACHE, "models", MODEL_NAME))
    ap.add_argument("--out", default=os.path.join(HERE, "fixtures", "smollm2_llamacpp.json"))
    ap.add_argument("--no-teacher-forced", action="store_true")
    args = ap.parse_args()

    if not os.path.isfile(args.model):
        sys.exit(f"make_fixtures: model not found: {args.model} (run tools/fetch-artifacts)")

    llm = load(args.model, logits_all=False)
    meta = dict(llm.metadata)
    add_bos_meta = meta.get("tokenizer.ggml.add_bos_token")
    eos_id = int(llm.token_eos())
    bos_id = int(llm.token_bos())
    assert eos_id == 2, f"unexpected eos id {eos_id}"

    cases = []
    for name, text in CASES:
        prompt_ids = [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)]
        cont = greedy(llm, prompt_ids, eos_id)
        cases.append({
            "name": name,
            "text": text,
            "prompt_ids": prompt_ids,
            "continuation_ids": cont,
            "continuation_text": llm.detokenize(cont).decode("utf-8", errors="replace"),
        })
        print(f"{name}: {len(prompt_ids)} prompt tokens, {len(cont)} new", file=sys.stderr)
    del llm

    agree_total = 0
    compare_total = 0
    if not args.no_teacher_forced:
        tf = load(args.model, logits_all=True)
        for case in cases:
            p, c = case["prompt_ids"], case["continuation_ids"]
            top1, margin = teacher_forced_top1(tf, p + c)
            case["teacher_forced_top1"] = top1
            case["teacher_forced_margin"] = margin
            # top1[i] predicts token i+1; continuation token j sits at position len(p)+j.
            agree = sum(int(top1[len(p) - 1 + j] == c[j]) for j in range(len(c)))
            case["teacher_forced_agreement"] = [agree, len(c)]
            agree_total += agree
            compare_total += len(c)
            print(f"{case['name']}: teacher-forced top-1 agrees on {agree}/{len(c)}", file=sys.stderr)
        del tf

    doc = {
        "model": MODEL_NAME,
        "model_sha256": sha256_file(args.model),
        "generator": f"llama-cpp-python {llama_cpp.__version__}",
        "settings": {
            "n_ctx": 2048,
            "n_threads": 2,
            "seed": 0,
            "tokenize": "llm.tokenize(text.encode(), add_bos=False, special=True)",
            "decode": "greedy (temp 0, top_k 1, repeat_penalty 1.0), one token per step",
            "max_new_tokens": MAX_NEW_TOKENS,
            "stop": "eos <|im_end|> (included in continuation_ids) or max_new_tokens",
            "teacher_forced_top1": "argmax of logits at every position of prompt_ids + "
                                   "continuation_ids from one batched logits_all eval; "
                                   "entry i predicts token i+1",
            "teacher_forced_margin": "top-1 minus top-2 logit at each of those positions; "
                                     "every disagreement with the greedy continuation "
                                     "is a near-tie (llama.cpp's batched and single-token "
                                     "kernels differ slightly)",
        },
        "gguf_add_bos_token": add_bos_meta,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "teacher_forced_agreement": [agree_total, compare_total],
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, args.out)
    if compare_total:
        print(f"self-agreement {agree_total}/{compare_total} "
              f"= {agree_total / compare_total:.4f}", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
