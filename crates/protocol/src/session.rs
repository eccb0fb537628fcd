//! Session ids: chosen by the edge, scoped by the cloud to the authenticated client.

use crate::{ProtocolError, Result};

/// Longest accepted session id, in bytes.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// A session id that is safe to embed in a storage key: 1 to 128 characters from
/// `[A-Za-z0-9._:-]`. Braces are excluded on purpose, so an id can never break the hash tag a
/// Redis Cluster key uses to keep one session on one slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    pub fn parse(raw: &str) -> Result<Self> {
        if raw.is_empty() {
            return Err(ProtocolError::InvalidSessionId("session_id is empty".into()));
        }
        if raw.len() > MAX_SESSION_ID_LEN {
            return Err(ProtocolError::InvalidSessionId(format!(
                "session_id is {} bytes long, the limit is {MAX_SESSION_ID_LEN}",
                raw.len()
            )));
        }
        if let Some(c) =
            raw.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(ProtocolError::InvalidSessionId(format!(
                "session_id contains {c:?}; use only letters, digits, '.', '_', ':' and '-'"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SessionId {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_parse_and_unsafe_ones_are_refused() {
        for ok in ["a", "chat-42", "0e5f:7.session_1", &"x".repeat(MAX_SESSION_ID_LEN)] {
            assert_eq!(SessionId::parse(ok).expect(ok).as_str(), ok);
        }
        for bad in ["", "{tag}", "a b", "sess/1", "é", &"x".repeat(MAX_SESSION_ID_LEN + 1)] {
            let err = SessionId::parse(bad).expect_err(bad);
            assert!(matches!(err, ProtocolError::InvalidSessionId(_)), "{bad}: {err}");
        }
    }
}
