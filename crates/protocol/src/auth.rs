//! Client identity travels as `authorization: Bearer <token>` metadata, never in a message.

use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::{ProtocolError, Result};

pub const AUTHORIZATION: &str = "authorization";

/// A bearer token ready to be attached to requests. Its `Debug` output hides the secret.
#[derive(Clone)]
pub struct BearerToken(AsciiMetadataValue);

impl BearerToken {
    /// Refuses tokens that cannot travel in an HTTP/2 header (empty, whitespace, non-ASCII).
    pub fn new(token: &str) -> Result<Self> {
        if token.is_empty() {
            return Err(ProtocolError::MalformedCredentials("the bearer token is empty".into()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ProtocolError::MalformedCredentials(
                "the bearer token must be printable ASCII without spaces".into(),
            ));
        }
        let mut value = AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| ProtocolError::MalformedCredentials(e.to_string()))?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// Sets the `authorization` entry, replacing any earlier one.
    pub fn insert_into(&self, metadata: &mut MetadataMap) {
        metadata.insert(AUTHORIZATION, self.0.clone());
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Attaches the token to every call of a client: `CloudServiceClient::with_interceptor(ch, token)`.
impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.insert_into(req.metadata_mut());
        Ok(req)
    }
}

/// The token a request carries. The scheme is matched case-insensitively (RFC 7235).
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str> {
    let value = metadata.get(AUTHORIZATION).ok_or(ProtocolError::MissingCredentials)?;
    let value = value.to_str().map_err(|_| {
        ProtocolError::MalformedCredentials("authorization is not printable ASCII".into())
    })?;
    let (scheme, token) = value.split_once(' ').ok_or_else(|| {
        ProtocolError::MalformedCredentials("expected `Bearer <token>` in authorization".into())
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ProtocolError::MalformedCredentials(format!(
            "unsupported authorization scheme {scheme:?} (expected Bearer)"
        )));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ProtocolError::MalformedCredentials("the bearer token is empty".into()));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_through_metadata_and_is_not_printed() {
        let token = BearerToken::new("edge-a.s3cr3t").expect("valid token");
        let mut md = MetadataMap::new();
        token.insert_into(&mut md);
        assert_eq!(bearer_token(&md), Ok("edge-a.s3cr3t"));
        assert!(!format!("{token:?}").contains("s3cr3t"));
    }

    #[test]
    fn missing_or_malformed_credentials_are_unauthenticated() {
        let md = MetadataMap::new();
        assert_eq!(bearer_token(&md), Err(ProtocolError::MissingCredentials));
        for raw in ["Basic dXNlcjpwdw==", "Bearer", "Bearer   ", "token-without-scheme"] {
            let mut md = MetadataMap::new();
            md.insert(AUTHORIZATION, raw.parse().expect("ascii"));
            let err = bearer_token(&md).expect_err(raw);
            assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unauthenticated, "{raw}");
        }
        let mut md = MetadataMap::new();
        md.insert(AUTHORIZATION, "bearer abc".parse().expect("ascii"));
        assert_eq!(bearer_token(&md), Ok("abc"));
        assert!(BearerToken::new("").is_err());
        assert!(BearerToken::new("two words").is_err());
    }
}
