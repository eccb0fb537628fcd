//! Where the cloud context lives in Redis. Pure: names only, no I/O.
//!
//! Every key starts with the configured prefix `P` (the operator uses `collm:<namespace>:<model>:`
//! and removes a model's context by deleting `P*`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P session:{C/S}:meta` | hash | `persisted`, `hidden_size`, `encoding`, `row_bytes` |
//! | `P session:{C/S}:rows` | string | rows `0..persisted` back to back, as uploaded |
//! | `P client:{C}:sessions` | sorted set | the client's sessions, scored by reservation time (ms) |
//! | `P clients` | set | every client that ever created a session (for the bytes gauge) |
//!
//! `C` is the authenticated client id (escaped, see [`escape_client`]) and `S` the session id.
//! Both keys of a session carry the hash tag `{C/S}`, so a Redis Cluster keeps a session on one
//! slot and one Lua script can update it atomically; sessions of one client spread over slots.
//! Session keys expire `ttl` after their last use. The per-client set has no TTL: it is pruned of
//! sessions whose keys are gone when the client reaches its quota.

/// Key names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    pub const DEFAULT_PREFIX: &'static str = "collm:local:";

    /// A non-empty prefix without braces (a brace would become the keys' hash tag).
    pub fn new(prefix: &str) -> Result<Self, String> {
        if prefix.is_empty() {
            return Err("the Redis key prefix is empty; use e.g. collm:<namespace>:<model>:".into());
        }
        if prefix.contains(['{', '}']) {
            return Err(format!(
                "the Redis key prefix {prefix:?} contains a brace; braces are reserved for hash tags"
            ));
        }
        Ok(Self { prefix: prefix.to_owned() })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn session_meta(&self, client: &str, session: &str) -> String {
        format!("{}session:{{{}/{session}}}:meta", self.prefix, escape_client(client))
    }

    pub fn session_rows(&self, client: &str, session: &str) -> String {
        format!("{}session:{{{}/{session}}}:rows", self.prefix, escape_client(client))
    }

    pub fn client_sessions(&self, client: &str) -> String {
        format!("{}client:{{{}}}:sessions", self.prefix, escape_client(client))
    }

    pub fn clients(&self) -> String {
        format!("{}clients", self.prefix)
    }
}

/// Client ids come from the tokens file and may hold any non-space character. Everything
/// outside `[A-Za-z0-9._-]` is written `%XX`, so an id can neither break a hash tag (`{`, `}`)
/// nor run into the session id (`/`), and two ids never share a key.
pub fn escape_client(client: &str) -> String {
    let mut out = String::with_capacity(client.len());
    for b in client.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Redis URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some(("", _)) => format!("{scheme}://***@{host}{tail}"),
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The slot-determining part of a key, as Redis Cluster computes it.
#[cfg(test)]
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_keys_share_one_hash_tag_under_the_prefix() {
        let keys = KeySpace::new("collm:ns:model:").expect("prefix");
        let meta = keys.session_meta("edge-a", "chat:1");
        let rows = keys.session_rows("edge-a", "chat:1");
        assert_eq!(meta, "collm:ns:model:session:{edge-a/chat:1}:meta");
        assert_eq!(hash_tag(&meta), hash_tag(&rows));
        assert_eq!(hash_tag(&meta), "edge-a/chat:1");
        for key in [meta, rows, keys.client_sessions("edge-a"), keys.clients()] {
            assert!(key.starts_with("collm:ns:model:"), "{key}");
        }
    }

    #[test]
    fn client_ids_cannot_break_the_tag_or_collide() {
        let keys = KeySpace::new("p:").expect("prefix");
        let sneaky = keys.session_meta("a}{b/c", "s");
        assert_eq!(hash_tag(&sneaky), "a%7D%7Bb%2Fc/s");
        assert_ne!(escape_client("a/b"), escape_client("a%2Fb"));
        assert_ne!(keys.session_rows("a/b", "c"), keys.session_rows("a", "b/c"));
    }

    #[test]
    fn prefixes_with_braces_or_nothing_are_refused() {
        assert!(KeySpace::new("").is_err());
        assert!(KeySpace::new("collm:{x}:").is_err());
        assert_eq!(KeySpace::new(KeySpace::DEFAULT_PREFIX).expect("ok").prefix(), "collm:local:");
    }

    #[test]
    fn urls_lose_their_password_only() {
        assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact_url("redis://:s3cret@host:1/2"), "redis://***@host:1/2");
        assert_eq!(redact_url("rediss://app:s3cret@host:1"), "rediss://app:***@host:1");
        assert_eq!(redact_url("redis://app@host"), "redis://app@host");
    }
}
