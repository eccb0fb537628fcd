//! Who answers the next token: an exit head, the cloud, or (when the cloud is too slow or
//! unreachable) the deepest exit head anyway. Pure: the generation loop feeds it the heads'
//! confidences and what the link looks like.

use std::time::Duration;

use crate::mode::Mode;

/// What the cloud link looks like to one session now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CloudView {
    /// No cloud is reachable (or this deployment has none).
    Unreachable,
    /// Connected; expected time to an answer.
    Connected { estimate: Duration },
}

/// Why the edge answered a token the cloud should have answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The expected cloud latency exceeds the per-token budget.
    TooSlow,
    /// No cloud answered.
    Unreachable,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Choice {
    /// The exit head at this layer answers.
    Exit(usize),
    /// Ask the cloud, waiting at most this long.
    AskCloud { timeout: Duration },
    /// The deepest exit head answers in the cloud's place.
    Fallback(Fallback),
}

/// Longest wait for a cloud answer when no latency budget is configured: long enough for a
/// failover to another replica and a re-upload of the context.
pub const UNBUDGETED_TIMEOUT: Duration = Duration::from_secs(30);

/// Shortest wait granted to a budgeted cloud request, so jitter does not turn every slightly
/// late answer into a fallback.
const MIN_BUDGETED_TIMEOUT: Duration = Duration::from_millis(100);

/// `confident`: the exit head the exit policy picked at this position, if any.
pub fn choose(
    mode: Mode,
    confident: Option<usize>,
    deepest: usize,
    cloud: CloudView,
    budget: Option<Duration>,
) -> Choice {
    if mode == Mode::Standalone {
        return Choice::Exit(deepest);
    }
    // A speculative generation's tokens are all the full model's: no head answers alone.
    if let Some(layer) = confident.filter(|_| mode != Mode::Speculative) {
        return Choice::Exit(layer);
    }
    match (cloud, budget) {
        (CloudView::Unreachable, _) => Choice::Fallback(Fallback::Unreachable),
        (CloudView::Connected { estimate }, Some(budget)) if estimate > budget => {
            Choice::Fallback(Fallback::TooSlow)
        }
        (CloudView::Connected { .. }, Some(budget)) => {
            Choice::AskCloud { timeout: (budget * 2).max(MIN_BUDGETED_TIMEOUT) }
        }
        (CloudView::Connected { .. }, None) => Choice::AskCloud { timeout: UNBUDGETED_TIMEOUT },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: CloudView = CloudView::Connected { estimate: Duration::from_millis(20) };
    const SLOW: CloudView = CloudView::Connected { estimate: Duration::from_millis(900) };
    const BUDGET: Option<Duration> = Some(Duration::from_millis(200));

    #[test]
    fn a_confident_head_answers_whatever_the_cloud_looks_like() {
        for cloud in [FAST, SLOW, CloudView::Unreachable] {
            assert_eq!(choose(Mode::Collaborative, Some(2), 4, cloud, BUDGET), Choice::Exit(2));
        }
    }

    #[test]
    fn an_unsure_head_asks_a_fast_cloud_within_the_budget() {
        assert_eq!(
            choose(Mode::Collaborative, None, 2, FAST, BUDGET),
            Choice::AskCloud { timeout: Duration::from_millis(400) }
        );
        assert_eq!(
            choose(Mode::Collaborative, None, 2, SLOW, None),
            Choice::AskCloud { timeout: UNBUDGETED_TIMEOUT }
        );
    }

    #[test]
    fn a_slow_or_missing_cloud_is_replaced_by_the_deepest_head() {
        assert_eq!(
            choose(Mode::Collaborative, None, 2, SLOW, BUDGET),
            Choice::Fallback(Fallback::TooSlow)
        );
        assert_eq!(
            choose(Mode::Naive, None, 2, CloudView::Unreachable, None),
            Choice::Fallback(Fallback::Unreachable)
        );
    }

    #[test]
    fn a_speculative_generation_asks_even_when_a_head_is_sure() {
        assert_eq!(
            choose(Mode::Speculative, Some(2), 2, FAST, None),
            Choice::AskCloud { timeout: UNBUDGETED_TIMEOUT }
        );
    }

    #[test]
    fn standalone_never_asks() {
        assert_eq!(choose(Mode::Standalone, None, 2, FAST, None), Choice::Exit(2));
    }
}
