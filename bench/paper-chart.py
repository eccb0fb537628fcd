"""The paper comparison's chart from `collm bench paper --json`: end-to-end time (p50) against
the added round-trip time per mode, and cloud CPU-seconds per request per mode.

Usage: python bench/paper-chart.py PAPER.json OUT.png  (matplotlib from tools/plot-venv)
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODES = ["cloud", "naive", "standalone", "collaborative", "speculative"]
LABELS = {"cloud": "cloud-only"}


def main(src, out):
    doc = json.load(open(src))
    runs = doc["runs"]
    modes = [m for m in MODES if any(r["mode"] == m for r in runs)]
    unlimited = sorted({r["rtt_ms"] for r in runs if r["bandwidth_kbit"] is None})
    limited = sorted({(r["rtt_ms"], r["bandwidth_kbit"]) for r in runs if r["bandwidth_kbit"]})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for m in modes:
        rows = {r["rtt_ms"]: r for r in runs if r["mode"] == m and r["bandwidth_kbit"] is None}
        xs = [x for x in unlimited if x in rows]
        (line,) = left.plot(xs, [rows[x]["e2e_p50_s"] for x in xs], marker="o", label=LABELS.get(m, m))
        for rtt, kbit in limited:
            lim = [r for r in runs if r["mode"] == m and r["rtt_ms"] == rtt and r["bandwidth_kbit"] == kbit]
            if lim:
                left.scatter([rtt], [lim[0]["e2e_p50_s"]], marker="x", s=70, color=line.get_color())
    left.set_xlabel("added round-trip time (ms)")
    left.set_ylabel("end-to-end time per request, p50 (s)")
    title = "time vs RTT"
    if limited:
        title += "; x: %s kbit/s limit" % ", ".join(str(k) for _, k in limited)
    left.set_title(title)
    left.set_xticks(unlimited)
    left.grid(alpha=0.3)
    left.legend()
    profiles = [(x, None) for x in unlimited] + limited
    width = 0.8 / max(len(profiles), 1)
    for i, (rtt, kbit) in enumerate(profiles):
        ys = []
        for m in modes:
            r = [r for r in runs if r["mode"] == m and r["rtt_ms"] == rtt and r["bandwidth_kbit"] == kbit]
            ys.append(r[0]["cloud_cpu_s_per_request"] if r else 0.0)
        label = "%d ms" % rtt + (", %d kbit/s" % kbit if kbit else "")
        right.bar([j + i * width for j in range(len(modes))], ys, width, label=label)
    right.set_xticks([j + width * (len(profiles) - 1) / 2 for j in range(len(modes))])
    right.set_xticklabels([LABELS.get(m, m) for m in modes])
    right.set_ylabel("cloud CPU-seconds per request")
    right.set_title("cloud compute per mode")
    right.grid(axis="y", alpha=0.3)
    right.legend(title="RTT")
    fig.suptitle(
        "SmolLM2-135M, %d prompts, %d new tokens; edge and cloud on one core each"
        % (doc["prompt_count"], doc["max_tokens"])
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
