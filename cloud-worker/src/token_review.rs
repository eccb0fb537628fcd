//! Edges that authenticate with their own Kubernetes ServiceAccount token: the worker asks the
//! API server (TokenReview) whether a token is valid for the model's audience and whose it is,
//! and names the client after the edge node the token is bound to (`node/<name>`), so every edge
//! device is its own client: its own session quota, revocable alone.
//!
//! Reviews are cached by the token's hash (a minute when accepted, a few seconds when refused),
//! so a busy edge costs the API server one review a minute; a pod deleted (its token bound to it
//! dies with it) or a node revoked is refused within that minute.
//!
//! The gRPC handlers authenticate synchronously ([`crate::clients::Clients::authenticate`]); a
//! layer in front of the service ([`ReviewLayer`]) reviews any token not yet in the cache before
//! the call reaches them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use sha2::{Digest, Sha256};

use crate::clients::{ClientId, Clients};

/// The Kubernetes user info key naming the node a pod-bound token's pod runs on.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The key naming the pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// How long a review is trusted.
pub const ACCEPTED_FOR: Duration = Duration::from_secs(60);
pub const REFUSED_FOR: Duration = Duration::from_secs(5);
/// Most reviewed tokens kept (edges rotate tokens hourly; this is far above any fleet's need).
const MAX_CACHED: usize = 65_536;

/// What a token review accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewPolicy {
    /// The audience edge tokens must be issued for.
    pub audience: String,
    /// Kubernetes users whose tokens are edges of this model.
    pub users: Vec<String>,
}

/// The client a review names, or why the token is refused. Pure.
pub fn client_of(status: &TokenReviewStatus, policy: &ReviewPolicy) -> Result<ClientId, String> {
    if status.authenticated != Some(true) {
        let why = status.error.clone().filter(|e| !e.is_empty());
        return Err(why.unwrap_or_else(|| "the token is not valid".to_string()));
    }
    if let Some(audiences) = &status.audiences
        && !audiences.contains(&policy.audience)
    {
        return Err(format!("the token is not for the audience {}", policy.audience));
    }
    let user = status.user.as_ref().ok_or("the review names no user")?;
    let username = user.username.clone().unwrap_or_default();
    if !policy.users.contains(&username) {
        return Err(format!("{username} is not an edge of this model"));
    }
    let extra =
        |key: &str| user.extra.as_ref().and_then(|e| e.get(key)).and_then(|v| v.first()).cloned();
    Ok(match (extra(NODE_NAME_EXTRA), extra(POD_NAME_EXTRA)) {
        (Some(node), _) => ClientId::new(format!("node/{node}")),
        (None, Some(pod)) => ClientId::new(format!("pod/{pod}")),
        (None, None) => ClientId::new(username),
    })
}

struct Cached {
    verdict: Result<ClientId, String>,
    until: Instant,
}

/// Reviewed tokens by hash, shared by the review layer (which fills it) and the handlers (which
/// read it).
#[derive(Default)]
pub struct ReviewCache {
    entries: Mutex<HashMap<[u8; 32], Cached>>,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl ReviewCache {
    /// The cached verdict on `token`, if still fresh.
    pub fn get(&self, token: &str) -> Option<Result<ClientId, String>> {
        let entries = self.entries.lock().ok()?;
        let cached = entries.get(&key(token))?;
        (cached.until > Instant::now()).then(|| cached.verdict.clone())
    }

    pub fn insert(&self, token: &str, verdict: Result<ClientId, String>) {
        let ttl = if verdict.is_ok() { ACCEPTED_FOR } else { REFUSED_FOR };
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= MAX_CACHED {
            let now = Instant::now();
            entries.retain(|_, c| c.until > now);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(key(token), Cached { verdict, until: Instant::now() + ttl });
    }
}

/// Asks the API server about tokens.
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    policy: ReviewPolicy,
    cache: Arc<ReviewCache>,
    /// Static tokens are never sent for review.
    known: Clients,
}

impl TokenReviewer {
    /// A reviewer through the cluster this process runs in (its ServiceAccount) or, outside a
    /// cluster, KUBECONFIG's.
    pub async fn connect(
        policy: ReviewPolicy,
        cache: Arc<ReviewCache>,
        known: Clients,
    ) -> Result<Self, String> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("token review needs the Kubernetes API: {e}"))?;
        Ok(Self { client, policy, cache, known })
    }

    /// Reviews `token` unless it is a static one or a fresh verdict is cached; the verdict lands
    /// in the cache.
    pub async fn review(&self, token: &str) {
        if self.known.is_static(token) || self.cache.get(token).is_some() {
            return;
        }
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.policy.audience.clone()]),
            },
            ..TokenReview::default()
        };
        match api.create(&kube::api::PostParams::default(), &request).await {
            Ok(reviewed) => {
                let verdict = reviewed
                    .status
                    .as_ref()
                    .ok_or_else(|| "the API server returned no review".to_string())
                    .and_then(|s| client_of(s, &self.policy));
                if let Err(why) = &verdict {
                    tracing::info!(%why, "edge token refused");
                }
                self.cache.insert(token, verdict);
            }
            // Not cached: the next call asks again (the API server may be back by then).
            Err(e) => tracing::warn!(error = %e, "TokenReview failed"),
        }
    }
}

/// A tower layer that reviews each call's bearer token (when it is not a static one and not
/// cached) before the call reaches the service.
#[derive(Clone)]
pub struct ReviewLayer {
    reviewer: Option<TokenReviewer>,
}

impl ReviewLayer {
    pub fn new(reviewer: Option<TokenReviewer>) -> Self {
        Self { reviewer }
    }
}

impl<S> tower::Layer<S> for ReviewLayer {
    type Service = Reviewed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Reviewed { inner, reviewer: self.reviewer.clone() }
    }
}

#[derive(Clone)]
pub struct Reviewed<S> {
    inner: S,
    reviewer: Option<TokenReviewer>,
}

impl<S, B> tower::Service<http::Request<B>> for Reviewed<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let token = self.reviewer.as_ref().and_then(|_| bearer(&req));
        let reviewer = self.reviewer.clone();
        Box::pin(async move {
            if let (Some(reviewer), Some(token)) = (reviewer, token) {
                reviewer.review(&token).await;
            }
            inner.call(req).await
        })
    }
}

/// The bearer token of an HTTP request, if it carries one.
fn bearer<B>(req: &http::Request<B>) -> Option<String> {
    let value = req.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn policy() -> ReviewPolicy {
        ReviewPolicy {
            audience: "collm.dev/ns/m".into(),
            users: vec!["system:serviceaccount:ns:m-edge".into()],
        }
    }

    fn reviewed(user: &str, extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec!["collm.dev/ns/m".into()]),
            user: Some(UserInfo {
                username: Some(user.into()),
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..UserInfo::default()
            }),
            ..TokenReviewStatus::default()
        }
    }

    #[test]
    fn an_edge_token_names_its_node_then_its_pod() {
        let edge = "system:serviceaccount:ns:m-edge";
        let s = reviewed(edge, &[(NODE_NAME_EXTRA, "edge-1"), (POD_NAME_EXTRA, "m-edge-x")]);
        assert_eq!(client_of(&s, &policy()), Ok(ClientId::new("node/edge-1")));
        let s = reviewed(edge, &[(POD_NAME_EXTRA, "m-edge-x")]);
        assert_eq!(client_of(&s, &policy()), Ok(ClientId::new("pod/m-edge-x")));
    }

    #[test]
    fn invalid_foreign_or_misaddressed_tokens_are_refused_with_why() {
        let mut s = reviewed("system:serviceaccount:ns:m-edge", &[]);
        s.authenticated = Some(false);
        s.error = Some("token has expired".into());
        assert_eq!(client_of(&s, &policy()), Err("token has expired".into()));
        let s = reviewed("system:serviceaccount:ns:other", &[(NODE_NAME_EXTRA, "n")]);
        assert!(client_of(&s, &policy()).expect_err("other SA").contains("not an edge"));
        let mut s = reviewed("system:serviceaccount:ns:m-edge", &[]);
        s.audiences = Some(vec!["https://kubernetes.default.svc".into()]);
        assert!(client_of(&s, &policy()).expect_err("audience").contains("audience"));
    }

    #[test]
    fn verdicts_are_cached_by_token_and_refusals_expire_first() {
        let cache = ReviewCache::default();
        assert_eq!(cache.get("t"), None);
        cache.insert("t", Ok(ClientId::new("node/a")));
        cache.insert("u", Err("no".into()));
        assert_eq!(cache.get("t"), Some(Ok(ClientId::new("node/a"))));
        assert_eq!(cache.get("u"), Some(Err("no".into())));
        assert!(REFUSED_FOR < ACCEPTED_FOR);
    }
}
