//! How often and how long to wait between download attempts. Pure.

use std::time::Duration;

/// Exponential backoff between attempts: `first`, doubled each time, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub attempts: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// Five attempts over about 15 s: enough to ride out a server restarting or a brief network
    /// outage; beyond that the pod's own restart backoff (the init container exits) takes over.
    fn default() -> Self {
        Self { attempts: 5, first: Duration::from_secs(1), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (1-based); `None` when no attempt is left.
    pub fn wait_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        let doubled = self.first.saturating_mul(1u32 << (attempt - 1).min(16));
        Some(doubled.min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_stop_after_the_last_attempt() {
        let b = Backoff { attempts: 6, first: Duration::from_secs(1), max: Duration::from_secs(5) };
        let waits: Vec<_> = (1..=6).map(|n| b.wait_after(n).map(|d| d.as_secs())).collect();
        assert_eq!(waits, [Some(1), Some(2), Some(4), Some(5), Some(5), None]);
        let once = Backoff { attempts: 1, ..b };
        assert_eq!(once.wait_after(1), None);
    }
}
