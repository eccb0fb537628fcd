//! The paper comparison's figures for one mode on one link profile, from the requests' own
//! outcomes and the processes' CPU accounting. Pure: no I/O, unit-tested.

use collm_calibrate::quality::common_prefix;
use collm_runtime::repetition::LoopDetector;
use serde::Serialize;

use crate::cmd::load::percentile;

/// What one answered request contributes.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub e2e_s: f64,
    pub ttft_s: Option<f64>,
    /// The answer's tokens, as streamed.
    pub ids: Vec<u32>,
    pub edge_tokens: u64,
    pub uploaded_bytes: u64,
    pub rollbacks: u64,
}

/// One row of the comparison: a mode on a link profile. Field names are the JSON's.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub rtt_ms: u32,
    /// The link's bandwidth limit (kbit/s each way), when the profile has one.
    pub bandwidth_kbit: Option<u32>,
    pub mode: String,
    pub requests: usize,
    pub failed: usize,
    pub tokens: u64,
    pub e2e_p50_s: f64,
    pub ttft_p50_s: f64,
    /// Tokens over the time the mode's requests took, one after the other.
    pub tokens_per_s: f64,
    pub cloud_cpu_s_per_request: f64,
    pub edge_cpu_s_per_request: f64,
    pub upload_bytes_per_token: f64,
    pub edge_share: f64,
    pub rollbacks_per_token: f64,
    /// Answers token-for-token the full model's (the cloud-only answers of the first profile).
    pub identical_share: f64,
    /// Mean index of the first token that differs, over the answers that differ.
    pub first_difference_mean: Option<f64>,
    pub loop_share: f64,
    /// Ratios to cloud-only on the same profile, in the same run.
    pub e2e_vs_cloud: f64,
    pub cloud_cpu_vs_cloud: f64,
}

/// CPU-seconds the edge agent and the cloud worker spent on a mode's requests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSeconds {
    pub edge: f64,
    pub cloud: f64,
}

/// The row of `mode` on a profile; ratios are filled by [`with_ratios`].
pub fn row(
    (rtt_ms, bandwidth_kbit): (u32, Option<u32>),
    mode: &str,
    answers: &[Answer],
    failed: usize,
    cpu: CpuSeconds,
    reference: &[Vec<u32>],
    detector: &LoopDetector,
) -> Row {
    let n = answers.len();
    let mut e2e: Vec<f64> = answers.iter().map(|a| a.e2e_s).collect();
    e2e.sort_by(f64::total_cmp);
    let mut ttft: Vec<f64> = answers.iter().filter_map(|a| a.ttft_s).collect();
    ttft.sort_by(f64::total_cmp);
    let tokens: u64 = answers.iter().map(|a| a.ids.len() as u64).sum();
    let time: f64 = e2e.iter().sum();
    let per_token = |x: u64| if tokens > 0 { x as f64 / tokens as f64 } else { 0.0 };
    let per_answer = |x: usize| if n > 0 { x as f64 / n as f64 } else { 0.0 };
    let requests = n + failed;
    let per_request = |s: f64| if requests > 0 { s / requests as f64 } else { 0.0 };
    let differences: Vec<usize> = answers
        .iter()
        .zip(reference)
        .filter(|(a, r)| a.ids != **r)
        .map(|(a, r)| common_prefix(&a.ids, r))
        .collect();
    let compared = n.min(reference.len());
    Row {
        rtt_ms,
        bandwidth_kbit,
        mode: mode.to_owned(),
        requests,
        failed,
        tokens,
        e2e_p50_s: percentile(&e2e, 50.0),
        ttft_p50_s: percentile(&ttft, 50.0),
        tokens_per_s: if time > 0.0 { tokens as f64 / time } else { 0.0 },
        cloud_cpu_s_per_request: per_request(cpu.cloud),
        edge_cpu_s_per_request: per_request(cpu.edge),
        upload_bytes_per_token: per_token(answers.iter().map(|a| a.uploaded_bytes).sum()),
        edge_share: per_token(answers.iter().map(|a| a.edge_tokens).sum()),
        rollbacks_per_token: per_token(answers.iter().map(|a| a.rollbacks).sum()),
        identical_share: if compared > 0 {
            (compared - differences.len()) as f64 / compared as f64
        } else {
            0.0
        },
        first_difference_mean: (!differences.is_empty())
            .then(|| differences.iter().sum::<usize>() as f64 / differences.len() as f64),
        loop_share: per_answer(answers.iter().filter(|a| detector.find(&a.ids).is_some()).count()),
        e2e_vs_cloud: f64::NAN,
        cloud_cpu_vs_cloud: f64::NAN,
    }
}

/// Fills every row's ratios to the cloud-only row of its own profile.
pub fn with_ratios(rows: &mut [Row]) {
    let clouds: Vec<Row> = rows.iter().filter(|r| r.mode == "cloud").cloned().collect();
    for r in rows.iter_mut() {
        let Some(c) =
            clouds.iter().find(|c| (c.rtt_ms, c.bandwidth_kbit) == (r.rtt_ms, r.bandwidth_kbit))
        else {
            continue;
        };
        r.e2e_vs_cloud = ratio(r.e2e_p50_s, c.e2e_p50_s);
        r.cloud_cpu_vs_cloud = ratio(r.cloud_cpu_s_per_request, c.cloud_cpu_s_per_request);
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e2e: f64, ids: &[u32], edge: u64) -> Answer {
        Answer {
            e2e_s: e2e,
            ttft_s: Some(e2e / 10.0),
            ids: ids.to_vec(),
            edge_tokens: edge,
            uploaded_bytes: 100 * ids.len() as u64,
            rollbacks: 1,
        }
    }

    #[test]
    fn a_row_counts_identical_answers_first_differences_and_loops() {
        let reference = vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]];
        let looping: Vec<u32> = [9, 10, 11, 12].repeat(5);
        let answers = vec![answer(2.0, &[1, 2, 3, 4], 2), answer(4.0, &looping, 20)];
        let cpu = CpuSeconds { edge: 3.0, cloud: 1.5 };
        let r = row(
            (20, None),
            "collaborative",
            &answers,
            1,
            cpu,
            &reference,
            &LoopDetector::default(),
        );
        assert_eq!((r.requests, r.failed, r.tokens), (3, 1, 24));
        assert_eq!(r.identical_share, 0.5);
        assert_eq!(r.first_difference_mean, Some(0.0));
        assert_eq!(r.loop_share, 0.5);
        assert_eq!(r.edge_share, 22.0 / 24.0);
        assert_eq!(r.upload_bytes_per_token, 100.0);
        assert_eq!(r.rollbacks_per_token, 2.0 / 24.0);
        assert_eq!(r.tokens_per_s, 24.0 / 6.0);
        // CPU is spread over every request sent, failed ones too.
        assert_eq!((r.cloud_cpu_s_per_request, r.edge_cpu_s_per_request), (0.5, 1.0));
    }

    #[test]
    fn ratios_are_to_cloud_only_on_the_same_profile() {
        let reference = vec![vec![1]];
        let d = LoopDetector::default();
        let mk = |profile, mode: &str, e2e, cloud_cpu| {
            row(
                profile,
                mode,
                &[answer(e2e, &[1], 0)],
                0,
                CpuSeconds { edge: 0.0, cloud: cloud_cpu },
                &reference,
                &d,
            )
        };
        let mut rows = vec![
            mk((0, None), "cloud", 2.0, 1.0),
            mk((0, None), "collaborative", 1.0, 0.25),
            mk((20, Some(1000)), "cloud", 4.0, 2.0),
            mk((20, Some(1000)), "collaborative", 6.0, 1.0),
            mk((60, None), "standalone", 1.0, 0.0),
        ];
        with_ratios(&mut rows);
        assert_eq!((rows[0].e2e_vs_cloud, rows[0].cloud_cpu_vs_cloud), (1.0, 1.0));
        assert_eq!((rows[1].e2e_vs_cloud, rows[1].cloud_cpu_vs_cloud), (0.5, 0.25));
        assert_eq!((rows[3].e2e_vs_cloud, rows[3].cloud_cpu_vs_cloud), (1.5, 0.5));
        // No cloud-only row on that profile: no ratio.
        assert!(rows[4].e2e_vs_cloud.is_nan());
    }
}
