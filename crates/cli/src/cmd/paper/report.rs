//! The paper comparison as Markdown: one table per link profile, then the targets
//! with what this run measured against each.

use collm_runtime::repetition::LoopDetector;

use super::RunInfo;
use super::figures::Row;

pub fn markdown(run: &RunInfo, rows: &[Row], detector: &LoopDetector) -> String {
    let mut md = format!(
        "# The paper's comparison, measured\n\n\
         Command: `{}`\n\n\
         Bundle `{}`; {}; greedy, at most {} new tokens, one request at a time through the edge \
         agent's OpenAI API. The edge agent runs on core {} and the cloud worker on core {} \
         (`taskset`, {}); the worker also serves the full model, so cloud-only requests run on the \
         cloud's core only. toxiproxy between them adds half the round-trip time each way; the \
         bandwidth-limited profile also caps each direction. CPU-seconds are each process's own \
         user + system time (/proc/PID/stat) over a mode's requests, divided by the requests. \
         Load average (1, 5, 15 min) before the run: {}, after: {}.\n\n\
         Quality is against the full model's greedy answers (the cloud-only answers of the first \
         profile): identical answers, the mean index of the first differing token over the answers \
         that differ, and answers that end in a loop (a period of at most {} tokens repeated over at \
         least max({} × period, {}) tokens).\n",
        run.command,
        run.bundle,
        run.prompts,
        run.max_tokens,
        run.cores.0,
        run.cores.1,
        run.runtime_env,
        run.load_before,
        run.load_after,
        detector.max_period,
        detector.min_repeats,
        detector.min_span,
    );
    let mut profiles: Vec<(u32, Option<u32>)> = vec![];
    for r in rows {
        if !profiles.contains(&(r.rtt_ms, r.bandwidth_kbit)) {
            profiles.push((r.rtt_ms, r.bandwidth_kbit));
        }
    }
    for (rtt, bw) in profiles {
        md.push_str(&match bw {
            Some(k) => format!("\n## RTT {rtt} ms, {k} kbit/s each way\n\n"),
            None => format!("\n## RTT {rtt} ms\n\n"),
        });
        md.push_str(
            "| mode | end-to-end p50 s | × cloud-only | first token p50 s | tokens/s | cloud CPU s/request | × cloud-only | edge CPU s/request | uploaded B/token | edge share | rollbacks/token | identical to full | first difference | loops |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in rows.iter().filter(|r| (r.rtt_ms, r.bandwidth_kbit) == (rtt, bw)) {
            md.push_str(&format!(
                "| {}{} | {:.2} | {} | {:.3} | {:.1} | {:.2} | {} | {:.2} | {:.0} | {:.0}% | {:.3} | {:.0}% | {} | {:.0}% |\n",
                r.mode,
                if r.failed > 0 { format!(" ({} of {} failed)", r.failed, r.requests) } else { String::new() },
                r.e2e_p50_s,
                times(r.e2e_vs_cloud),
                r.ttft_p50_s,
                r.tokens_per_s,
                r.cloud_cpu_s_per_request,
                times(r.cloud_cpu_vs_cloud),
                r.edge_cpu_s_per_request,
                r.upload_bytes_per_token,
                100.0 * r.edge_share,
                r.rollbacks_per_token,
                100.0 * r.identical_share,
                r.first_difference_mean.map_or("–".into(), |d| format!("{d:.1}")),
                100.0 * r.loop_share,
            ));
        }
    }
    md.push_str("\n## The issue's targets\n\n| measure | target | measured | reached |\n|---|---|---|---|\n");
    for t in targets(rows) {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            t.measure,
            t.target,
            t.measured,
            if t.reached { "yes" } else { "no" }
        ));
    }
    md.push_str(
        "| collaborative at its calibrated default θ: full-model NLL of its answers vs cloud-only's | ≤ 1.15× | not measured here: `collm bench quality` scores answers with the full model | – |\n",
    );
    md
}

fn times(x: f64) -> String {
    if x.is_nan() { "–".into() } else { format!("{x:.2}×") }
}

/// One target of the issue, checked against this run.
#[derive(Debug, PartialEq)]
pub struct Checked {
    pub measure: String,
    pub target: String,
    pub measured: String,
    pub reached: bool,
}

/// The targets that this run measures (those whose rows it has).
pub fn targets(rows: &[Row]) -> Vec<Checked> {
    let find = |mode: &str, rtt: u32| {
        rows.iter().find(|r| r.mode == mode && r.rtt_ms == rtt && r.bandwidth_kbit.is_none())
    };
    let mut out = vec![];
    for (rtt, limit) in [(0, 0.85), (20, 0.95), (60, 1.3)] {
        if let Some(r) = find("collaborative", rtt) {
            out.push(Checked {
                measure: format!("collaborative end-to-end time vs cloud-only, RTT {rtt} ms"),
                target: format!("≤ {limit}×"),
                measured: times(r.e2e_vs_cloud),
                reached: r.e2e_vs_cloud <= limit,
            });
        }
    }
    if let Some(r) = find("speculative", 20) {
        out.push(Checked {
            measure: "speculative (lossless) end-to-end time vs cloud-only, RTT 20 ms".into(),
            target: "≤ 1.0×".into(),
            measured: times(r.e2e_vs_cloud),
            reached: r.e2e_vs_cloud <= 1.0,
        });
    }
    let collab: Vec<&Row> = rows.iter().filter(|r| r.mode == "collaborative").collect();
    if !collab.is_empty() {
        let worst = collab.iter().map(|r| r.cloud_cpu_vs_cloud).fold(f64::NEG_INFINITY, f64::max);
        out.push(Checked {
            measure: "cloud CPU-seconds per request, collaborative vs cloud-only (every profile)"
                .into(),
            target: "≤ 0.30×".into(),
            measured: collab
                .iter()
                .map(|r| times(r.cloud_cpu_vs_cloud))
                .collect::<Vec<_>>()
                .join(" / "),
            reached: worst <= 0.30,
        });
    }
    if let (Some(n), Some(c)) = (find("naive", 20), find("collaborative", 20)) {
        let x = n.e2e_p50_s / c.e2e_p50_s;
        out.push(Checked {
            measure: "naive vs collaborative time, RTT 20 ms".into(),
            target: "≥ 3×".into(),
            measured: times(x),
            reached: x >= 3.0,
        });
    }
    let spec: Vec<&Row> = rows.iter().filter(|r| r.mode == "speculative").collect();
    if !spec.is_empty() {
        let least = spec.iter().map(|r| r.identical_share).fold(f64::INFINITY, f64::min);
        out.push(Checked {
            measure: "speculative greedy output identical to the full model's (every profile)"
                .into(),
            target: "100% of prompts".into(),
            measured: spec
                .iter()
                .map(|r| format!("{:.0}%", 100.0 * r.identical_share))
                .collect::<Vec<_>>()
                .join(" / "),
            reached: least >= 1.0,
        });
    }
    let pairs: Vec<(&Row, &Row)> = collab
        .iter()
        .filter_map(|c| {
            rows.iter()
                .find(|r| {
                    r.mode == "cloud"
                        && (r.rtt_ms, r.bandwidth_kbit) == (c.rtt_ms, c.bandwidth_kbit)
                })
                .map(|cloud| (*c, cloud))
        })
        .collect();
    if !pairs.is_empty() {
        out.push(Checked {
            measure: "collaborative at its calibrated default θ: answers that loop, vs cloud-only's (every profile)".into(),
            target: "no more".into(),
            measured: pairs
                .iter()
                .map(|(c, cloud)| format!("{:.0}% vs {:.0}%", 100.0 * c.loop_share, 100.0 * cloud.loop_share))
                .collect::<Vec<_>>()
                .join(" / "),
            reached: pairs.iter().all(|(c, cloud)| c.loop_share <= cloud.loop_share),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(mode: &str, rtt: u32, e2e_ratio: f64, cpu_ratio: f64, identical: f64, loops: f64) -> Row {
        Row {
            rtt_ms: rtt,
            bandwidth_kbit: None,
            mode: mode.into(),
            requests: 1,
            failed: 0,
            tokens: 1,
            e2e_p50_s: e2e_ratio,
            ttft_p50_s: 0.1,
            tokens_per_s: 1.0,
            cloud_cpu_s_per_request: cpu_ratio,
            edge_cpu_s_per_request: 0.0,
            upload_bytes_per_token: 0.0,
            edge_share: 0.0,
            rollbacks_per_token: 0.0,
            identical_share: identical,
            first_difference_mean: None,
            loop_share: loops,
            e2e_vs_cloud: e2e_ratio,
            cloud_cpu_vs_cloud: cpu_ratio,
        }
    }

    #[test]
    fn targets_are_judged_from_the_rows_of_this_run() {
        let rows = vec![
            r("cloud", 20, 1.0, 1.0, 1.0, 0.1),
            r("collaborative", 20, 0.9, 0.25, 0.5, 0.2),
            r("naive", 20, 3.6, 1.0, 0.5, 0.1),
            r("speculative", 20, 1.1, 0.5, 1.0, 0.1),
        ];
        let t = targets(&rows);
        let get = |needle: &str| t.iter().find(|c| c.measure.contains(needle)).expect(needle);
        assert!(get("collaborative end-to-end time vs cloud-only, RTT 20").reached);
        assert!(!get("speculative (lossless) end-to-end").reached);
        assert!(get("cloud CPU-seconds").reached);
        assert_eq!(get("naive vs collaborative").measured, "4.00×");
        assert!(get("naive vs collaborative").reached);
        assert!(get("identical to the full model").reached);
        assert!(!get("loop").reached, "collaborative loops more often than cloud-only");
        // No row at 0 or 60 ms: those targets are not claimed either way.
        assert!(
            t.iter().all(|c| !c.measure.contains("RTT 0 ms") && !c.measure.contains("RTT 60 ms"))
        );
    }
}
