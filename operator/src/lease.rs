//! Leader election decisions over a coordination.k8s.io/v1 Lease, as pure functions.
//!
//! Expiry is judged the way client-go does it: not by comparing the holder's `renewTime` with
//! this replica's clock (clocks of two machines disagree), but by how long this replica has seen
//! the same lease record without a renewal. A holder that stops renewing loses the lease one
//! lease duration after a candidate first saw its last renewal.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;

/// Timing of the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease is valid without renewal (`leaseDurationSeconds`).
    pub duration: Duration,
    /// A leader that could not renew for this long stops leading (must be < duration, so it
    /// stops before anybody else may take over).
    pub renew_deadline: Duration,
    /// How often a leader renews and a candidate retries.
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// Checks the ordering that makes two leaders impossible.
    pub fn new(
        duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, String> {
        if retry_period.is_zero() || renew_deadline <= retry_period {
            return Err("the renew deadline must be longer than the retry period".to_string());
        }
        if duration <= renew_deadline {
            return Err("the lease duration must be longer than the renew deadline".to_string());
        }
        if duration.as_secs() == 0 || duration.subsec_nanos() != 0 {
            return Err("the lease duration must be a whole number of seconds".to_string());
        }
        Ok(Self { duration, renew_deadline, retry_period })
    }
}

/// The parts of a lease record that tell whether it changed: a renewal changes `renew_time`,
/// a takeover changes the holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub renew_time: Option<Timestamp>,
    pub duration: Option<Duration>,
}

impl LeaseRecord {
    pub fn of(spec: Option<&LeaseSpec>) -> Self {
        let spec = spec.cloned().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.map(|t| t.0),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
        }
    }
}

/// What a replica does with the lease it sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease object yet: create it, holding it.
    Create,
    /// Nobody holds it, or its holder stopped renewing: take it.
    TakeOver,
    /// This replica holds it: renew.
    Renew,
    /// Somebody else holds a live lease: wait and look again.
    Follow { holder: String, expires_in: Duration },
}

/// `unchanged_for` is how long this replica has seen exactly this record (zero when it just
/// changed). A record's own `leaseDurationSeconds` wins over ours: the holder chose it.
pub fn decide(
    record: Option<&LeaseRecord>,
    me: &str,
    unchanged_for: Duration,
    timing: &LeaseTiming,
) -> Decision {
    let Some(record) = record else { return Decision::Create };
    let Some(holder) = &record.holder else { return Decision::TakeOver };
    if holder == me {
        return Decision::Renew;
    }
    let duration = record.duration.unwrap_or(timing.duration);
    if unchanged_for >= duration {
        Decision::TakeOver
    } else {
        Decision::Follow { holder: holder.clone(), expires_in: duration - unchanged_for }
    }
}

/// The lease spec written when `me` creates, takes over or renews the lease at `now`.
pub fn held_by(
    previous: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    timing: &LeaseTiming,
) -> LeaseSpec {
    let previous = previous.cloned().unwrap_or_default();
    let already_mine = previous.holder_identity.as_deref() == Some(me);
    let transitions = previous.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(timing.duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if already_mine { previous.acquire_time } else { Some(MicroTime(now)) },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if already_mine || previous.holder_identity.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..previous
    }
}

/// The lease spec a leader writes when it steps down: nobody holds it, so a candidate takes it
/// at its next retry instead of waiting a whole lease duration.
pub fn released(previous: &LeaseSpec, me: &str) -> Option<LeaseSpec> {
    (previous.holder_identity.as_deref() == Some(me)).then(|| LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        ..previous.clone()
    })
}

/// A leader that has not renewed for `since_last_renewal` stops leading.
pub fn leadership_lost(since_last_renewal: Duration, timing: &LeaseTiming) -> bool {
    since_last_renewal >= timing.renew_deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> LeaseTiming {
        LeaseTiming::new(Duration::from_secs(15), Duration::from_secs(10), Duration::from_secs(2))
            .expect("valid timing")
    }

    fn held(holder: &str) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.to_string()),
            renew_time: Some(Timestamp::from_second(1_760_000_000).expect("time")),
            duration: Some(Duration::from_secs(15)),
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_760_000_000 + second).expect("time")
    }

    #[test]
    fn a_missing_lease_is_created_and_an_empty_one_taken() {
        assert_eq!(decide(None, "a", Duration::ZERO, &timing()), Decision::Create);
        let empty = LeaseRecord::of(Some(&LeaseSpec::default()));
        assert_eq!(decide(Some(&empty), "a", Duration::ZERO, &timing()), Decision::TakeOver);
        let blank = LeaseSpec { holder_identity: Some(String::new()), ..LeaseSpec::default() };
        assert_eq!(
            decide(Some(&LeaseRecord::of(Some(&blank))), "a", Duration::ZERO, &timing()),
            Decision::TakeOver
        );
    }

    #[test]
    fn the_holder_renews_whatever_the_age_of_its_record() {
        assert_eq!(
            decide(Some(&held("a")), "a", Duration::from_secs(100), &timing()),
            Decision::Renew
        );
    }

    #[test]
    fn another_holder_is_followed_until_its_record_is_a_lease_duration_old() {
        let record = held("b");
        assert_eq!(
            decide(Some(&record), "a", Duration::from_secs(4), &timing()),
            Decision::Follow { holder: "b".into(), expires_in: Duration::from_secs(11) }
        );
        assert_eq!(
            decide(Some(&record), "a", Duration::from_secs(15), &timing()),
            Decision::TakeOver
        );
    }

    #[test]
    fn the_holders_own_lease_duration_wins_over_the_candidates() {
        let record = LeaseRecord { duration: Some(Duration::from_secs(60)), ..held("b") };
        assert!(matches!(
            decide(Some(&record), "a", Duration::from_secs(30), &timing()),
            Decision::Follow { .. }
        ));
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let first = held_by(None, "a", at(0), &timing());
        assert_eq!(first.holder_identity.as_deref(), Some("a"));
        assert_eq!(first.lease_duration_seconds, Some(15));
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.acquire_time, Some(MicroTime(at(0))));

        let renewed = held_by(Some(&first), "a", at(2), &timing());
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(2))));
        assert_eq!(renewed.lease_transitions, Some(0));

        let taken = held_by(Some(&renewed), "b", at(20), &timing());
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(taken.lease_transitions, Some(1));
    }

    #[test]
    fn only_the_holder_releases_and_a_released_lease_is_free() {
        let mine = held_by(None, "a", at(0), &timing());
        assert_eq!(released(&mine, "b"), None);
        let free = released(&mine, "a").expect("holder releases");
        assert_eq!(
            decide(Some(&LeaseRecord::of(Some(&free))), "b", Duration::ZERO, &timing()),
            Decision::TakeOver
        );
    }

    #[test]
    fn a_leader_steps_down_at_the_renew_deadline_before_the_lease_can_expire() {
        let t = timing();
        assert!(!leadership_lost(Duration::from_secs(9), &t));
        assert!(leadership_lost(Duration::from_secs(10), &t));
        assert!(t.renew_deadline < t.duration);
    }

    #[test]
    fn timings_that_allow_two_leaders_are_refused() {
        let s = Duration::from_secs;
        assert!(LeaseTiming::new(s(10), s(10), s(2)).is_err());
        assert!(LeaseTiming::new(s(15), s(2), s(2)).is_err());
        assert!(LeaseTiming::new(Duration::from_millis(15_500), s(10), s(2)).is_err());
    }
}
