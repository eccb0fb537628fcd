//! Who may call: a tokens file with one `client-id token` per line (blank lines and `#`
//! comments allowed), and/or edges' ServiceAccount tokens reviewed by the Kubernetes API (see
//! [`crate::token_review`]). A request's client is the one its bearer token names, never a
//! field. Revoked clients are refused whatever token they present.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use tonic::metadata::MetadataMap;

use crate::token_review::ReviewCache;
use crate::{Error, Result};

/// The authenticated identity of an edge; every session is scoped to one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

impl ClientId {
    /// A client by name; requests only ever get one through [`Clients::authenticate`].
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Token -> client. Cheap to clone (the review layer holds a copy).
#[derive(Clone, Default)]
pub struct Clients {
    by_token: Arc<HashMap<String, ClientId>>,
    /// Verdicts on reviewed ServiceAccount tokens, when edges authenticate that way.
    reviewed: Option<Arc<ReviewCache>>,
    revoked: Arc<HashSet<String>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("static_tokens", &self.by_token.len())
            .field("token_review", &self.reviewed.is_some())
            .field("revoked", &self.revoked)
            .finish()
    }
}

impl Clients {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read tokens file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("tokens file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_token = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(id), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!("line {}: expected `client-id token`", n + 1));
            };
            if by_token.insert(token.to_owned(), ClientId(id.to_owned())).is_some() {
                return Err(format!(
                    "line {}: this token is already given to another client",
                    n + 1
                ));
            }
        }
        if by_token.is_empty() {
            return Err("no clients: add lines `client-id token`".into());
        }
        Ok(Self { by_token: Arc::new(by_token), ..Self::default() })
    }

    /// Clients known only by review (no static tokens).
    pub fn reviewed(cache: Arc<ReviewCache>) -> Self {
        Self { reviewed: Some(cache), ..Self::default() }
    }

    /// Also accepts the tokens the review cache accepted.
    pub fn with_reviews(mut self, cache: Arc<ReviewCache>) -> Self {
        self.reviewed = Some(cache);
        self
    }

    /// Refuses these clients whatever token they present.
    pub fn revoking(mut self, revoked: impl IntoIterator<Item = String>) -> Self {
        self.revoked = Arc::new(revoked.into_iter().collect());
        self
    }

    /// Whether `token` is one of the static tokens (never sent for review).
    pub fn is_static(&self, token: &str) -> bool {
        self.by_token.contains_key(token)
    }

    /// The client whose bearer token the request carries.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<ClientId> {
        let token = collm_protocol::bearer_token(metadata)?;
        let client = match self.by_token.get(token) {
            Some(client) => client.clone(),
            None => match self.reviewed.as_ref().and_then(|cache| cache.get(token)) {
                Some(Ok(client)) => client,
                Some(Err(why)) => return Err(Error::TokenRefused(why)),
                None => return Err(Error::UnknownToken),
            },
        };
        if self.revoked.contains(client.as_str()) {
            return Err(Error::Revoked(client.as_str().to_owned()));
        }
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_clients_and_unknown_tokens_are_refused() {
        let clients = Clients::parse("# edges\nedge-a tok-a\n\nedge-b tok-b\n").expect("parses");
        let mut md = MetadataMap::new();
        collm_protocol::BearerToken::new("tok-b").expect("token").insert_into(&mut md);
        assert_eq!(clients.authenticate(&md).expect("known").as_str(), "edge-b");
        collm_protocol::BearerToken::new("tok-c").expect("token").insert_into(&mut md);
        assert!(matches!(clients.authenticate(&md), Err(Error::UnknownToken)));
        assert!(Clients::parse("edge-a\n").is_err());
        assert!(Clients::parse("a t\nb t\n").is_err());
        assert!(Clients::parse("# nothing\n").is_err());
    }

    #[test]
    fn reviewed_tokens_are_clients_too_and_revoked_clients_are_refused() {
        let cache = Arc::new(ReviewCache::default());
        cache.insert("sa-token-1", Ok(ClientId::new("node/edge-1")));
        cache.insert("sa-token-2", Ok(ClientId::new("node/edge-2")));
        cache.insert("bad", Err("token has expired".into()));
        let clients = Clients::parse("edge-a tok-a\n")
            .expect("parses")
            .with_reviews(cache)
            .revoking(["node/edge-2".to_string()]);
        let as_token = |t: &str| {
            let mut md = MetadataMap::new();
            collm_protocol::BearerToken::new(t).expect("token").insert_into(&mut md);
            clients.authenticate(&md)
        };
        assert_eq!(as_token("tok-a").expect("static").as_str(), "edge-a");
        assert_eq!(as_token("sa-token-1").expect("reviewed").as_str(), "node/edge-1");
        assert!(matches!(as_token("sa-token-2"), Err(Error::Revoked(c)) if c == "node/edge-2"));
        assert!(matches!(as_token("bad"), Err(Error::TokenRefused(w)) if w.contains("expired")));
        assert!(matches!(as_token("never-seen"), Err(Error::UnknownToken)));
        assert!(clients.is_static("tok-a") && !clients.is_static("sa-token-1"));
    }
}
