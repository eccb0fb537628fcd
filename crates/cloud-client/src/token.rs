//! This edge's bearer token, attached to every call. A token read from a file is read again
//! every [`REREAD`]: a Kubernetes ServiceAccount token projected into the pod is rotated by the
//! kubelet before it expires, and the link must present the new one without reconnecting.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use collm_protocol::BearerToken;

use crate::{Error, Result};

/// How often a token file is read again. The kubelet renews a projected token at 80% of its
/// lifetime (at least ten minutes), so a minute is early enough.
pub const REREAD: Duration = Duration::from_secs(60);

/// The current token; cheap to clone (clones share it).
#[derive(Clone, Debug)]
pub struct EdgeToken {
    current: Arc<RwLock<BearerToken>>,
}

impl EdgeToken {
    pub fn new(token: &str) -> Result<Self> {
        Ok(Self { current: Arc::new(RwLock::new(BearerToken::new(token)?)) })
    }

    /// Keeps the token in step with `path` while any clone of it lives. Must be called inside a
    /// tokio runtime.
    pub fn follow(&self, path: PathBuf) {
        let weak = Arc::downgrade(&self.current);
        tokio::spawn(reread(weak, path));
    }

    fn replace(&self, token: BearerToken) {
        if let Ok(mut current) = self.current.write() {
            *current = token;
        }
    }
}

/// The token in a file, trimmed.
pub fn read_token(path: &Path) -> Result<BearerToken> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!("cannot read the token file {}: {e}", path.display()))
    })?;
    Ok(BearerToken::new(text.trim())?)
}

async fn reread(weak: Weak<RwLock<BearerToken>>, path: PathBuf) {
    loop {
        tokio::time::sleep(REREAD).await;
        let Some(current) = weak.upgrade() else { return };
        match read_token(&path) {
            Ok(token) => EdgeToken { current }.replace(token),
            // Keep the old one: a rotation is written atomically, a missing file is a mistake
            // the next read may not repeat.
            Err(e) => tracing::warn!(error = %e, "keeping the current token"),
        }
    }
}

impl tonic::service::Interceptor for EdgeToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let token = self
            .current
            .read()
            .map_err(|_| tonic::Status::internal("the edge token lock is poisoned"))?;
        token.insert_into(req.metadata_mut());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    fn sent(token: &mut EdgeToken) -> String {
        let req = token.call(tonic::Request::new(())).expect("intercepted");
        req.metadata().get("authorization").expect("header").to_str().expect("ascii").to_string()
    }

    #[test]
    fn every_clone_sends_the_current_token() {
        let mut token = EdgeToken::new("first").expect("valid");
        let mut clone = token.clone();
        assert_eq!(sent(&mut clone), "Bearer first");
        token.replace(BearerToken::new("second").expect("valid"));
        assert_eq!(sent(&mut clone), "Bearer second");
        assert_eq!(sent(&mut token), "Bearer second");
    }

    #[test]
    fn token_files_are_trimmed_and_bad_ones_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc.def\n").expect("write");
        let mut token = EdgeToken::new("x").expect("valid");
        token.replace(read_token(&path).expect("reads"));
        assert_eq!(sent(&mut token), "Bearer abc.def");
        std::fs::write(&path, "\n").expect("write");
        assert!(read_token(&path).is_err());
        assert!(read_token(&dir.path().join("absent")).is_err());
    }
}
