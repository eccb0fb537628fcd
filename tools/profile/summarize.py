#!/usr/bin/env python3
"""Where a decode step's time goes, from ONNX Runtime's profile of a partition.

Record a profile with `COLLM_ORT_PROFILE=DIR collm generate ...` (every partition writes
DIR/<graph>_<time>.json when it is dropped), then:

    python3 tools/profile/summarize.py DIR/edge_*.json DIR/cloud_*.json

Runs whose first node reads more than one position (prefill) are left out; for the
single-position runs (decode steps) it prints, per operator type, the mean kernel time per
step, the number of nodes, and the share of the step; and the step's wall time inside
ONNX Runtime (`model_run`) against the sum of its kernels (the rest is the executor's
per-node overhead between kernels). Standard library only.
"""

import argparse
import collections
import json
import sys


def steps(events):
    """Groups kernel events by the model_run that contains them."""
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    nodes = sorted((e for e in events if e.get("cat") == "Node"), key=lambda e: e["ts"])
    out, i = [], 0
    for run in runs:
        end = run["ts"] + run["dur"]
        kernels = []
        while i < len(nodes) and nodes[i]["ts"] < end:
            if nodes[i]["ts"] >= run["ts"]:
                kernels.append(nodes[i])
            i += 1
        out.append((run, kernels))
    return out


def positions(kernels):
    """Positions a run processed: the sequence length of its first activation input."""
    for k in kernels:
        for shape in k.get("args", {}).get("input_type_shape", []):
            for dims in shape.values():
                if len(dims) == 3 and dims[0] == 1:
                    return dims[1]
    return None


def summarize(path):
    with open(path) as f:
        events = json.load(f)
    decode = [(r, k) for r, k in steps(events) if positions(k) == 1]
    if not decode:
        return f"{path}: no single-position runs\n"
    n = len(decode)
    per_op = collections.defaultdict(float)
    count = collections.Counter()
    for _, kernels in decode:
        for k in kernels:
            per_op[k["args"].get("op_name", "?")] += k["dur"]
    for k in decode[0][1]:
        count[k["args"].get("op_name", "?")] += 1
    wall = sum(r["dur"] for r, _ in decode) / n
    kernel_sum = sum(per_op.values()) / n
    lines = [f"{path}: {n} decode steps, {len(decode[0][1])} nodes per step",
             f"  model_run {wall:.0f} µs per step, kernels {kernel_sum:.0f} µs, "
             f"between kernels {wall - kernel_sum:.0f} µs ({(wall - kernel_sum) / wall:.0%})",
             "  | operator | nodes | µs per step | share of kernels |",
             "  |---|---:|---:|---:|"]
    for op, total in sorted(per_op.items(), key=lambda kv: -kv[1]):
        lines.append(f"  | {op} | {count[op]} | {total / n:.0f} | {total / n / kernel_sum:.1%} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", nargs="+")
    args = ap.parse_args()
    for p in args.profiles:
        sys.stdout.write(summarize(p))


if __name__ == "__main__":
    main()
