#!/usr/bin/env python3
"""llama.cpp decode speed on SmolLM2-135M-Instruct Q4_1 (the reference to beat).

Loads the GGUF with llama-cpp-python (n_threads 2), evaluates a fixed prompt, then decodes
--new-tokens tokens greedily one at a time (ignoring eos so every run is the same length).
Decode tokens/s counts only the single-token steps (prompt eval is timed separately) and is
the median of --runs runs after one warm-up. Prints one JSON line on stdout, with llama.cpp's
own report of the CPU features its kernels use (`llama_print_system_info`).

--n-batch 1 evaluates the prompt one token per batch: on some AVX-512/AMX machines llama.cpp
crashes in llama_decode on batches of more than one token, and `collm bench decode` retries
with it when the default run dies.

    $COLLM_CACHE/ref-venv/bin/python tools/reference/bench_decode.py [--new-tokens 128]
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama

CACHE = os.environ.get("COLLM_CACHE", os.path.expanduser("~/.cache/ce-collm"))
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nExplain in a few paragraphs how a bicycle stays upright "
    "while it is moving, and why it falls over when it stops.<|im_end|>\n<|im_start|>assistant\n"
)


def one_run(llm, prompt_ids, new_tokens, n_vocab):
    llm.reset()
    ctx = llm._ctx.ctx
    t0 = time.perf_counter()
    llm.eval(prompt_ids)
    t1 = time.perf_counter()
    llama_cpp.llama_perf_context_reset(ctx)
    out = []
    for _ in range(new_tokens):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        tok = int(logits.argmax())
        out.append(tok)
        llm.eval([tok])
    t2 = time.perf_counter()
    perf = llama_cpp.llama_perf_context(ctx)
    internal = perf.n_eval / (perf.t_eval_ms / 1000) if perf.t_eval_ms > 0 else None
    return t1 - t0, t2 - t1, out, internal


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(CACHE, "models", MODEL_NAME))
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-batch", type=int, default=512,
                    help="prompt tokens per llama_decode call (1 = one at a time)")
    args = ap.parse_args()
    if not os.path.isfile(args.model):
        sys.exit(f"bench_decode: model not found: {args.model} (run tools/fetch-artifacts)")

    llm = Llama(model_path=args.model, n_ctx=2048, n_threads=args.threads,
                n_threads_batch=args.threads, n_batch=args.n_batch, n_ubatch=args.n_batch,
                seed=0, logits_all=False, verbose=False)
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    n_vocab = llm.n_vocab()
    prompt_ids = llm.tokenize(PROMPT.encode("utf-8"), add_bos=False, special=True)

    one_run(llm, prompt_ids, min(16, args.new_tokens), n_vocab)  # warm-up
    decode_rates, prompt_rates, outputs, internal_rates = [], [], [], []
    for _ in range(args.runs):
        t_prompt, t_decode, out, internal = one_run(llm, prompt_ids, args.new_tokens, n_vocab)
        if internal is not None:
            internal_rates.append(internal)
        decode_rates.append(args.new_tokens / t_decode)
        prompt_rates.append(len(prompt_ids) / t_prompt)
        outputs.append(out)
        print(f"run: prompt {len(prompt_ids) / t_prompt:.1f} tok/s, "
              f"decode {args.new_tokens / t_decode:.1f} tok/s", file=sys.stderr)

    result = {
        "engine": "llama.cpp",
        "decode_tokens_per_s": round(statistics.median(decode_rates), 2),
        "prompt_tokens": len(prompt_ids),
        "new_tokens": args.new_tokens,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "prompt_eval_tokens_per_s": round(statistics.median(prompt_rates), 2),
        "decode_runs_tokens_per_s": [round(r, 2) for r in decode_rates],
        # llama.cpp's own eval timer over the same steps (excludes Python and argmax)
        "llama_internal_decode_tokens_per_s":
            round(statistics.median(internal_rates), 2) if internal_rates else None,
        "threads": args.threads,
        "deterministic": all(o == outputs[0] for o in outputs),
        "model": MODEL_NAME,
        "generator": f"llama-cpp-python {llama_cpp.__version__}",
        "n_batch": args.n_batch,
        # which CPU features llama.cpp's kernels were built for and found (AVX2, AVX512, AMX...)
        "system_info": system_info,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
