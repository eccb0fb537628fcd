//! Who may call: a tokens file with one `client-id token` per line (blank lines and `#`
//! comments allowed). A request's client is the one its bearer token names, never a field.

use std::collections::HashMap;
use std::path::Path;

use tonic::metadata::MetadataMap;

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

/// Token -> client.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    by_token: HashMap<String, ClientId>,
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
        Ok(Self { by_token })
    }

    /// The client whose bearer token the request carries.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<ClientId> {
        let token = collm_protocol::bearer_token(metadata)?;
        self.by_token.get(token).cloned().ok_or(Error::UnknownToken)
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
}
