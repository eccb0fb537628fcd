//! Rendezvous (highest random weight) hashing: a session goes to the replica whose hash of
//! (session, replica) is highest. Every edge computes the same choice without coordination; a
//! replica that joins takes only the sessions it now wins (about 1/n of them), and a replica
//! that leaves hands each of its sessions to that session's second choice, so the others keep
//! theirs (and their warm KV caches). Pure.

/// A session's hash key.
pub fn session_key(session: &str) -> u64 {
    fnv1a(session.as_bytes())
}

/// The weight of `replica` for the session `key`.
pub fn weight(key: u64, replica: &str) -> u64 {
    mix(key ^ fnv1a(replica.as_bytes()).rotate_left(17))
}

/// The replica `key` goes to among `replicas`; ties (never in practice) go to the smaller name.
pub fn choose<'a, I>(key: u64, replicas: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    replicas.into_iter().max_by(|a, b| weight(key, a).cmp(&weight(key, b)).then_with(|| b.cmp(a)))
}

/// FNV-1a, 64 bits: stable across processes and Rust versions (unlike the std hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// splitmix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn replicas(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:50051")).collect()
    }

    fn assign(sessions: &[String], replicas: &[String]) -> HashMap<String, String> {
        sessions
            .iter()
            .map(|s| {
                let chosen = choose(session_key(s), replicas.iter().map(String::as_str));
                (s.clone(), chosen.expect("a replica").to_string())
            })
            .collect()
    }

    fn sessions(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("4f2a-{i:x}-{}", i * 7919)).collect()
    }

    #[test]
    fn sessions_spread_evenly_over_the_replicas() {
        let sessions = sessions(3000);
        let assigned = assign(&sessions, &replicas(3));
        let mut counts: HashMap<&String, usize> = HashMap::new();
        for replica in assigned.values() {
            *counts.entry(replica).or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        for (replica, n) in counts {
            assert!((850..=1150).contains(&n), "{replica} got {n} of 3000 sessions");
        }
    }

    #[test]
    fn a_new_replica_takes_only_the_sessions_it_wins() {
        let sessions = sessions(3000);
        let before = assign(&sessions, &replicas(2));
        let after = assign(&sessions, &replicas(3));
        let moved: Vec<&String> = sessions.iter().filter(|s| before[*s] != after[*s]).collect();
        assert!(
            moved.iter().all(|s| after[*s] == "10.0.0.3:50051"),
            "sessions only move to the new one"
        );
        assert!((800..=1200).contains(&moved.len()), "about a third move: {}", moved.len());
    }

    #[test]
    fn a_leaving_replica_hands_over_only_its_own_sessions() {
        let sessions = sessions(2000);
        let all = replicas(3);
        let before = assign(&sessions, &all);
        let remaining: Vec<String> =
            all.iter().filter(|r| *r != "10.0.0.2:50051").cloned().collect();
        let after = assign(&sessions, &remaining);
        for s in &sessions {
            if before[s] != "10.0.0.2:50051" {
                assert_eq!(before[s], after[s], "{s} kept its replica");
            }
        }
    }

    #[test]
    fn the_choice_is_stable_and_empty_sets_choose_nothing() {
        let key = session_key("abc");
        let r = replicas(4);
        let first = choose(key, r.iter().map(String::as_str));
        let reversed = choose(key, r.iter().rev().map(String::as_str));
        assert_eq!(first, reversed, "order of discovery does not matter");
        assert_eq!(session_key("abc"), 0xe71f_a219_0541_574b);
        assert_eq!(choose(key, std::iter::empty()), None);
    }
}
