//! The API key, as vLLM's and llama.cpp's servers take one: every `/v1` request must carry
//! `Authorization: Bearer <key>`; a missing or wrong key is 401 with OpenAI's error body.
//! Health, readiness and metrics stay open (probes and scrapers carry no key).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The key, kept as its SHA-256 digest: comparing digests in constant time tells nothing of
/// the key's length or of where a guess went wrong.
#[derive(Clone)]
pub struct ApiKey([u8; 32]);

impl ApiKey {
    pub fn new(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Whether `authorization` (the header's value) presents this key.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = authorization.and_then(bearer) else { return false };
        let digest: [u8; 32] = Sha256::digest(token).into();
        self.0.ct_eq(&digest).into()
    }
}

/// The token of a `Bearer` credential (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| token.trim_ascii())
}

/// Middleware on the API routes: refuses a request without the key.
pub async fn require_key(State(key): State<Arc<ApiKey>>, req: Request, next: Next) -> Response {
    let presented = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if key.admits(presented) {
        return next.run(req).await;
    }
    let why = if presented.is_none() {
        "no API key: send `Authorization: Bearer <key>`"
    } else {
        "incorrect API key provided"
    };
    ApiError::Unauthorized(why).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bearer_of_the_key_is_admitted() {
        let key = ApiKey::new("s3cret");
        assert!(key.admits(Some(b"Bearer s3cret")));
        assert!(key.admits(Some(b"bearer  s3cret ")));
        assert!(!key.admits(Some(b"Bearer s3cret2")));
        assert!(!key.admits(Some(b"Bearer ")));
        assert!(!key.admits(Some(b"Basic s3cret")));
        assert!(!key.admits(Some(b"s3cret")));
        assert!(!key.admits(None));
    }
}
