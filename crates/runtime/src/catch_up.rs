//! Catch-up: how the cloud runs uploaded positions it has not processed yet before it answers
//! "which token follows position `after`?". Pure: which positions, which way.
//!
//! - `exact`: every position goes through the cloud layers; answers equal the full model's.
//! - `propagate`: a position whose next token the edge answered gets the cloud layers' keys and
//!   values from its split hidden state alone (see `collm_bundle::graph::cloud_kv_graph`), far
//!   cheaper than running the layers; the prompt, positions the cloud answered and the asked
//!   position still run exactly.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// A cloud's catch-up mode (the operator's `catchUp`, the worker's `catch_up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    #[default]
    Exact,
    Propagate,
}

impl std::str::FromStr for CatchUp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(Self::Exact),
            "propagate" => Ok(Self::Propagate),
            other => Err(format!("unknown catch-up mode {other:?} (expected exact or propagate)")),
        }
    }
}

impl std::fmt::Display for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Exact => "exact",
            Self::Propagate => "propagate",
        })
    }
}

/// Positions whose next token the edge answered without asking the cloud, as sorted, disjoint,
/// non-adjacent ranges, and (when the edge says it) the prompt's length. The edge sends both
/// with every next-token request, so any replica, even one rebuilding a session from position
/// 0, classifies every position the same way: the prompt's, the edge's, or one the cloud was
/// asked about (every position from the prompt's last on that the edge did not answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeAnswered {
    ranges: Vec<Range<u64>>,
    /// Positions of the prompt; `None` from an edge that does not send it.
    prompt_len: Option<u64>,
}

impl EdgeAnswered {
    /// Nothing answered yet in a generation whose prompt holds `prompt_len` positions.
    pub fn after_prompt(prompt_len: u64) -> Self {
        Self::default().with_prompt_len(prompt_len)
    }

    /// The same record, with the prompt's length (0: not known).
    pub fn with_prompt_len(mut self, prompt_len: u64) -> Self {
        self.prompt_len = (prompt_len > 0).then_some(prompt_len);
        self
    }

    /// Positions of the prompt (0: not known).
    pub fn prompt_len(&self) -> u64 {
        self.prompt_len.unwrap_or(0)
    }

    /// Whether the cloud was asked for the token after `position`: it is the prompt's last
    /// position or a later one, and the edge did not answer it. Always false when the prompt's
    /// length is not known.
    pub fn asked(&self, position: u64) -> bool {
        self.prompt_len.is_some_and(|n| position + 1 >= n) && !self.contains(position)
    }

    /// Where the piece of catch-up that ends at the asked position `after` begins: just after
    /// the previous position the cloud was asked about (0 if none). Every replica cuts a
    /// session's positions into these pieces and runs each in one pass (see [`plan`]), so the
    /// keys and values it computes do not depend on which replica ran them, or in which order
    /// the asks arrived. Without the prompt's length the pieces are not known: `after` itself,
    /// the least an answer must run.
    pub fn run_start(&self, after: u64) -> u64 {
        let Some(n) = self.prompt_len else { return after };
        (n.saturating_sub(1)..after).rev().find(|&p| self.asked(p)).map_or(0, |p| p + 1)
    }

    /// Records that the edge answered the token after `position`. Positions arrive in
    /// increasing order; one at or below the last recorded is ignored.
    pub fn push(&mut self, position: u64) {
        match self.ranges.last_mut() {
            Some(last) if position < last.end => {}
            Some(last) if position == last.end => last.end += 1,
            _ => self.ranges.push(position..position + 1),
        }
    }

    /// Forgets the positions from `position` on (they were rolled back).
    pub fn truncate(&mut self, position: u64) {
        self.ranges.retain(|r| r.start < position);
        if let Some(last) = self.ranges.last_mut() {
            last.end = last.end.min(position);
        }
    }

    pub fn contains(&self, position: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= position);
        self.ranges.get(i).is_some_and(|r| r.start <= position)
    }

    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The wire form: `[start₀, end₀, start₁, end₁, …]`.
    pub fn to_flat(&self) -> Vec<u64> {
        self.ranges.iter().flat_map(|r| [r.start, r.end]).collect()
    }

    /// Parses the wire form, refusing what a well-behaved edge never sends.
    pub fn from_flat(flat: &[u64]) -> Result<Self, String> {
        if !flat.len().is_multiple_of(2) {
            return Err(format!(
                "edge_answered holds [start, end) pairs but has {} values",
                flat.len()
            ));
        }
        let mut ranges: Vec<Range<u64>> = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let r = pair[0]..pair[1];
            if r.is_empty() {
                return Err(format!("edge_answered range {}..{} is empty", r.start, r.end));
            }
            if let Some(prev) = ranges.last()
                && r.start <= prev.end
            {
                return Err(format!(
                    "edge_answered ranges must increase and not touch: {}..{} after {}..{}",
                    r.start, r.end, prev.start, prev.end
                ));
            }
            ranges.push(r);
        }
        Ok(Self { ranges, prompt_len: None })
    }
}

/// How a run of positions is caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Through the cloud layers.
    Exact,
    /// K/V derived from the split hidden state.
    Propagated,
}

/// Consecutive positions caught up the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpRun {
    pub positions: Range<u64>,
    pub kind: RunKind,
}

/// Splits positions `from..=after` into runs, in order. The last `answered` positions (at
/// least the asked position `after`) are always exact: their logits are the answer.
///
/// A run also ends at every earlier position the cloud was asked about
/// ([`EdgeAnswered::asked`]): that is where the replica that answered the ask ended its pass.
/// A pass over several positions rounds differently from passes over fewer (with int8
/// activations, by up to a logit), so a replica rebuilding a session's cache from position 0
/// must cut it where the asks did to compute the very same keys and values.
pub fn plan(
    mode: CatchUp,
    from: u64,
    after: u64,
    answered: u64,
    edge: &EdgeAnswered,
) -> Vec<CatchUpRun> {
    let exact_from = (after + 1).saturating_sub(answered.max(1));
    let mut runs: Vec<CatchUpRun> = Vec::new();
    let mut cut = false;
    for p in from..=after {
        let kind = if mode == CatchUp::Propagate && p < exact_from && edge.contains(p) {
            RunKind::Propagated
        } else {
            RunKind::Exact
        };
        match runs.last_mut() {
            Some(run) if run.kind == kind && !cut => run.positions.end = p + 1,
            _ => runs.push(CatchUpRun { positions: p..p + 1, kind }),
        }
        cut = p < exact_from && edge.asked(p);
    }
    runs
}

/// Positions of each kind in `runs`: (exact, propagated).
pub fn counts(runs: &[CatchUpRun]) -> (u64, u64) {
    runs.iter().fold((0, 0), |(e, p), r| {
        let n = r.positions.end - r.positions.start;
        match r.kind {
            RunKind::Exact => (e + n, p),
            RunKind::Propagated => (e, p + n),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(positions: &[u64]) -> EdgeAnswered {
        let mut e = EdgeAnswered::default();
        for &p in positions {
            e.push(p);
        }
        e
    }

    #[test]
    fn edge_answers_merge_into_ranges_and_round_trip_the_wire() {
        let e = answered(&[3, 4, 5, 5, 2, 9, 11, 12]);
        assert_eq!(e.ranges(), &[3..6, 9..10, 11..13]);
        assert_eq!(EdgeAnswered::from_flat(&e.to_flat()), Ok(e.clone()));
        assert!(e.contains(3) && e.contains(5) && e.contains(12));
        assert!(!e.contains(2) && !e.contains(6) && !e.contains(10) && !e.contains(13));
        let mut rolled = e.clone();
        rolled.truncate(10);
        assert_eq!(rolled.ranges(), &[3..6, 9..10]);
        rolled.truncate(4);
        assert_eq!(rolled.ranges(), std::slice::from_ref(&(3..4)));
        rolled.push(7);
        assert_eq!(rolled.ranges(), &[3..4, 7..8]);
    }

    #[test]
    fn malformed_wire_ranges_are_refused() {
        for (flat, needle) in [
            (&[1, 2, 3][..], "pairs"),
            (&[4, 4], "empty"),
            (&[1, 5, 3, 8], "increase"),
            (&[1, 5, 5, 8], "touch"),
        ] {
            let err = EdgeAnswered::from_flat(flat).expect_err(needle);
            assert!(err.contains(needle), "{flat:?}: {err}");
        }
        assert_eq!(EdgeAnswered::from_flat(&[]), Ok(EdgeAnswered::default()));
    }

    #[test]
    fn asked_positions_and_where_their_pieces_start() {
        // Prompt 0..5; the edge answered after 6, 7 and 10; the cloud was asked after 4, 5, 8, 9.
        let mut e = EdgeAnswered::after_prompt(5);
        for p in [6, 7, 10] {
            e.push(p);
        }
        let asked: Vec<u64> = (0..12).filter(|&p| e.asked(p)).collect();
        assert_eq!(asked, vec![4, 5, 8, 9, 11]);
        let starts: Vec<u64> = [4, 5, 8, 9, 11].iter().map(|&a| e.run_start(a)).collect();
        assert_eq!(starts, vec![0, 5, 6, 9, 10]);
        // Without the prompt's length nothing counts as asked, and an answer runs its position.
        let old = EdgeAnswered::from_flat(&e.to_flat()).unwrap();
        assert!(!old.asked(8) && old.run_start(11) == 11);
        assert_eq!(old.with_prompt_len(5), e);
        // A rollback keeps the prompt.
        let mut rolled = e.clone();
        rolled.truncate(7);
        assert_eq!(rolled.prompt_len(), 5);
        assert!(rolled.asked(7), "taken back from the edge, asked again");
    }

    #[test]
    fn runs_end_where_the_asks_did_so_a_rebuild_repeats_them() {
        let mut e = EdgeAnswered::after_prompt(5);
        for p in [6, 7, 10] {
            e.push(p);
        }
        let exact = |r: std::ops::Range<u64>| CatchUpRun { positions: r, kind: RunKind::Exact };
        // Rebuilding from 0 up to the ask after 11: the pieces the asks after 4, 5, 8, 9 ran.
        let rebuilt = plan(CatchUp::Exact, 0, 11, 1, &e);
        assert_eq!(
            rebuilt,
            vec![exact(0..5), exact(5..6), exact(6..9), exact(9..10), exact(10..12)]
        );
        // The same pieces from any cache length the asks left behind.
        assert_eq!(plan(CatchUp::Exact, 6, 11, 1, &e), rebuilt[2..].to_vec());
        // A verified draft's positions stay one pass.
        assert_eq!(plan(CatchUp::Exact, 10, 11, 2, &e), vec![exact(10..12)]);
        let mut through = e.clone();
        through.push(11);
        assert_eq!(
            plan(CatchUp::Exact, 5, 11, 3, &through),
            vec![exact(5..6), exact(6..9), exact(9..12)]
        );
    }

    #[test]
    fn exact_mode_runs_everything_through_the_layers() {
        let runs = plan(CatchUp::Exact, 0, 9, 1, &answered(&[2, 3, 4, 7]));
        assert_eq!(runs, vec![CatchUpRun { positions: 0..10, kind: RunKind::Exact }]);
    }

    #[test]
    fn propagate_mode_propagates_edge_answers_but_never_the_asked_position() {
        // Prompt 0..4, the edge answered after 4, 5 and 7, the cloud after 6; asked: after 8.
        let runs = plan(CatchUp::Propagate, 4, 8, 1, &answered(&[4, 5, 7, 8]));
        let expect = [
            (4..6, RunKind::Propagated),
            (6..7, RunKind::Exact),
            (7..8, RunKind::Propagated),
            (8..9, RunKind::Exact),
        ];
        let expect: Vec<_> =
            expect.into_iter().map(|(positions, kind)| CatchUpRun { positions, kind }).collect();
        assert_eq!(runs, expect);
        assert_eq!(counts(&runs), (2, 3));
        // Rebuilding from 0 classifies the same positions the same way.
        let rebuilt = plan(CatchUp::Propagate, 0, 8, 1, &answered(&[4, 5, 7, 8]));
        assert_eq!(rebuilt[0], CatchUpRun { positions: 0..4, kind: RunKind::Exact });
        assert_eq!(&rebuilt[1..], &expect[..]);
        // Positions whose logits are asked for (a verified draft) always run exactly.
        let verified = plan(CatchUp::Propagate, 4, 8, 3, &answered(&[4, 5, 7, 8]));
        assert_eq!(verified[0], CatchUpRun { positions: 4..6, kind: RunKind::Propagated });
        assert_eq!(verified[1], CatchUpRun { positions: 6..9, kind: RunKind::Exact });
    }
}
