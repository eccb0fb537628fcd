//! The cloud replicas an edge knows and its connections to them, and the choice of replica for
//! a session. Pure bookkeeping over any connection type, so it is tested with plain values.
//!
//! Two policies: an explicit endpoint list is a **failover** order (every session uses the first
//! replica that answers); a set found by discovery is **spread** over, each new session going to
//! its rendezvous choice among the replicas connected now. Either way a session stays on the
//! replica it started on while that replica is healthy (its KV cache is warm there), and moves
//! to its next choice when it is not (the new replica rebuilds from the shared context).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::rendezvous;

/// Where one replica is dialed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The replica's identity: its URL, or `address:port` for a discovered one.
    pub key: String,
    /// The URL dialed.
    pub url: String,
    /// For a discovered address: the Service URL whose host TLS checks and whose authority the
    /// requests carry (dialing the pod's address must look like calling the Service).
    pub origin: Option<String>,
}

impl Target {
    /// An endpoint dialed as it is written.
    pub fn endpoint(url: &str) -> Self {
        Self { key: url.to_string(), url: url.to_string(), origin: None }
    }

    /// A replica at `address` (`ip:port`), found by discovery behind the Service `origin`.
    pub fn discovered(address: &str, origin: &str) -> Self {
        let scheme = origin.split_once("://").map_or("http", |(s, _)| s);
        Self {
            key: address.to_string(),
            url: format!("{scheme}://{address}"),
            origin: Some(origin.to_string()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Failover,
    Spread,
}

/// What a connection must tell the pool.
pub trait Healthy {
    fn is_healthy(&self) -> bool;
}

/// When a replica that could not be dialed is tried again.
#[derive(Clone, Copy, Debug)]
struct Retry {
    at: Instant,
    backoff: Duration,
}

pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Pool<C> {
    policy: Policy,
    targets: Vec<Target>,
    conns: HashMap<String, Arc<C>>,
    retries: HashMap<String, Retry>,
}

impl<C: Healthy> Pool<C> {
    pub fn new(policy: Policy, targets: Vec<Target>) -> Self {
        Self { policy, targets, conns: HashMap::new(), retries: HashMap::new() }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Replaces the replica set (discovery found another one). Connections to replicas that
    /// left are dropped here (calls in flight keep theirs alive until they finish); returns
    /// whether anything changed.
    pub fn set_targets(&mut self, targets: Vec<Target>) -> bool {
        if targets == self.targets {
            return false;
        }
        self.conns.retain(|key, _| targets.iter().any(|t| &t.key == key));
        self.retries.retain(|key, _| targets.iter().any(|t| &t.key == key));
        self.targets = targets;
        true
    }

    /// Forgets connections that failed; returns how many.
    pub fn prune(&mut self) -> usize {
        let before = self.conns.len();
        self.conns.retain(|_, c| c.is_healthy());
        before - self.conns.len()
    }

    /// The healthy connections, in target order.
    pub fn healthy(&self) -> Vec<(&Target, &Arc<C>)> {
        self.targets
            .iter()
            .filter_map(|t| self.conns.get(&t.key).filter(|c| c.is_healthy()).map(|c| (t, c)))
            .collect()
    }

    /// Targets without a healthy connection.
    pub fn missing(&self) -> Vec<Target> {
        self.targets
            .iter()
            .filter(|t| !self.conns.get(&t.key).is_some_and(|c| c.is_healthy()))
            .cloned()
            .collect()
    }

    /// Missing targets whose next attempt is due at `now`.
    pub fn due(&self, now: Instant) -> Vec<Target> {
        self.missing()
            .into_iter()
            .filter(|t| self.retries.get(&t.key).is_none_or(|r| r.at <= now))
            .collect()
    }

    /// The earliest time a missing target is due, if any is missing.
    pub fn next_due(&self) -> Option<Instant> {
        let missing = self.missing();
        missing.iter().map(|t| self.retries.get(&t.key).map_or_else(Instant::now, |r| r.at)).min()
    }

    /// A dial of `key` succeeded: the connection joins the pool (unless the replica left
    /// meanwhile).
    pub fn connected(&mut self, key: &str, conn: Arc<C>) -> bool {
        if !self.targets.iter().any(|t| t.key == key) {
            return false;
        }
        self.retries.remove(key);
        self.conns.insert(key.to_string(), conn);
        true
    }

    /// A dial of `key` failed at `now`: retry later, backing off.
    pub fn dial_failed(&mut self, key: &str, now: Instant) {
        let backoff =
            self.retries.get(key).map_or(MIN_BACKOFF, |r| (r.backoff * 2).min(MAX_BACKOFF));
        self.retries.insert(key.to_string(), Retry { at: now + backoff, backoff });
    }

    /// Drops the connection of `key` if `is_it` says it is the one that failed.
    pub fn drop_if(&mut self, key: &str, is_it: impl Fn(&C) -> bool) -> bool {
        match self.conns.get(key) {
            Some(c) if is_it(c) => {
                self.conns.remove(key);
                true
            }
            _ => false,
        }
    }

    /// The connection a session uses: the replica it is pinned to while that is healthy,
    /// otherwise the policy's choice among the healthy ones (`session`: the session's key; none
    /// for calls that belong to no session). Returns the replica's key with it, to pin.
    pub fn choose(&self, session: Option<u64>, pinned: Option<&str>) -> Option<(String, Arc<C>)> {
        let healthy = self.healthy();
        if let Some(pin) = pinned
            && let Some((t, c)) = healthy.iter().find(|(t, _)| t.key == pin)
        {
            return Some((t.key.clone(), Arc::clone(c)));
        }
        let (target, conn) = match self.policy {
            Policy::Failover => healthy.first().copied()?,
            Policy::Spread => {
                let key = session.unwrap_or(0);
                let chosen = rendezvous::choose(key, healthy.iter().map(|(t, _)| t.key.as_str()))?;
                healthy.iter().find(|(t, _)| t.key == chosen).copied()?
            }
        };
        Some((target.key.clone(), Arc::clone(conn)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    struct Fake {
        name: &'static str,
        up: AtomicBool,
    }

    impl Healthy for Fake {
        fn is_healthy(&self) -> bool {
            self.up.load(Ordering::Relaxed)
        }
    }

    fn fake(name: &'static str) -> Arc<Fake> {
        Arc::new(Fake { name, up: AtomicBool::new(true) })
    }

    fn discovered(addrs: &[&str]) -> Vec<Target> {
        addrs.iter().map(|a| Target::discovered(a, "https://m-cloud.ns.svc:50051")).collect()
    }

    #[test]
    fn a_discovered_target_dials_the_address_and_keeps_the_service_as_origin() {
        let t = Target::discovered("10.1.2.3:50051", "https://m-cloud.ns.svc:50051");
        assert_eq!(t.url, "https://10.1.2.3:50051");
        assert_eq!(t.origin.as_deref(), Some("https://m-cloud.ns.svc:50051"));
        assert_eq!(Target::endpoint("http://a:1").origin, None);
    }

    #[test]
    fn failover_uses_the_first_healthy_endpoint_in_order() {
        let mut pool =
            Pool::new(Policy::Failover, vec![Target::endpoint("a"), Target::endpoint("b")]);
        let (a, b) = (fake("a"), fake("b"));
        pool.connected("b", b.clone());
        assert_eq!(pool.choose(Some(7), None).map(|(_, c)| c.name), Some("b"));
        pool.connected("a", a.clone());
        assert_eq!(pool.choose(Some(7), None).map(|(_, c)| c.name), Some("a"));
        a.up.store(false, Ordering::Relaxed);
        assert_eq!(pool.choose(None, None).map(|(_, c)| c.name), Some("b"));
        assert_eq!(pool.prune(), 1);
        assert_eq!(pool.missing(), vec![Target::endpoint("a")]);
    }

    #[test]
    fn spread_sessions_stay_pinned_and_move_only_when_their_replica_fails() {
        let mut pool = Pool::new(Policy::Spread, discovered(&["10.0.0.1:1", "10.0.0.2:1"]));
        let (one, two) = (fake("one"), fake("two"));
        pool.connected("10.0.0.1:1", one.clone());
        pool.connected("10.0.0.2:1", two.clone());
        let choices: Vec<&str> = (0..64u64)
            .map(|s| {
                pool.choose(Some(rendezvous::session_key(&s.to_string())), None)
                    .expect("one")
                    .1
                    .name
            })
            .collect();
        assert!(
            choices.contains(&"one") && choices.contains(&"two"),
            "sessions spread: {choices:?}"
        );

        // A third replica appears: a session pinned to its replica stays.
        assert!(pool.set_targets(discovered(&["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"])));
        pool.connected("10.0.0.3:1", fake("three"));
        assert_eq!(pool.choose(Some(1), Some("10.0.0.2:1")).map(|(_, c)| c.name), Some("two"));
        // Its replica fails: it moves, and never to the failed one.
        two.up.store(false, Ordering::Relaxed);
        let (moved_to, _) = pool.choose(Some(1), Some("10.0.0.2:1")).expect("another");
        assert_ne!(moved_to, "10.0.0.2:1");
    }

    #[test]
    fn replicas_that_leave_lose_their_connection_and_late_dials_are_ignored() {
        let mut pool = Pool::new(Policy::Spread, discovered(&["10.0.0.1:1", "10.0.0.2:1"]));
        pool.connected("10.0.0.1:1", fake("one"));
        pool.connected("10.0.0.2:1", fake("two"));
        assert!(pool.set_targets(discovered(&["10.0.0.1:1"])));
        assert_eq!(pool.healthy().len(), 1);
        assert!(!pool.connected("10.0.0.2:1", fake("late")), "a dial that finished after it left");
        assert!(!pool.set_targets(discovered(&["10.0.0.1:1"])), "no change");
    }

    #[test]
    fn failed_dials_back_off_and_a_success_resets_them() {
        let mut pool: Pool<Fake> = Pool::new(Policy::Spread, discovered(&["10.0.0.1:1"]));
        let now = Instant::now();
        assert_eq!(pool.due(now).len(), 1);
        pool.dial_failed("10.0.0.1:1", now);
        assert!(pool.due(now).is_empty());
        assert_eq!(pool.due(now + MIN_BACKOFF).len(), 1);
        pool.dial_failed("10.0.0.1:1", now);
        assert!(pool.due(now + MIN_BACKOFF).is_empty(), "the second wait is longer");
        for _ in 0..20 {
            pool.dial_failed("10.0.0.1:1", now);
        }
        assert_eq!(pool.due(now + MAX_BACKOFF).len(), 1, "capped");
        pool.connected("10.0.0.1:1", fake("one"));
        assert!(pool.due(now).is_empty() && pool.next_due().is_none());
    }
}
