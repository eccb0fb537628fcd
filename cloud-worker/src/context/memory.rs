//! The cloud context in this process's memory: for a single worker and for tests. Sessions are
//! lost with the process; the Redis store is the one that survives a worker.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

use collm_protocol::{ProtocolError, SessionId, ValidUpload};

use super::{Appended, ContextStore, SessionInfo, StoreLimits, trim};
use crate::clients::ClientId;
use crate::{Error, Result};

struct StoredSession {
    segments: Vec<ValidUpload>,
    persisted: u64,
    hidden_size: u32,
    touched: Instant,
}

pub struct InMemoryStore {
    limits: StoreLimits,
    clients: Mutex<HashMap<ClientId, HashMap<SessionId, StoredSession>>>,
}

impl InMemoryStore {
    pub fn new(limits: StoreLimits) -> Self {
        Self { limits, clients: Mutex::new(HashMap::new()) }
    }

    /// Runs `f` on the client's live sessions (expired ones are dropped first).
    fn with_client<T>(
        &self,
        client: &ClientId,
        f: impl FnOnce(&mut HashMap<SessionId, StoredSession>) -> Result<T>,
    ) -> Result<T> {
        let mut clients =
            self.clients.lock().map_err(|_| Error::Internal("context store poisoned".into()))?;
        let sessions = clients.entry(client.clone()).or_default();
        let ttl = self.limits.ttl;
        sessions.retain(|_, s| s.touched.elapsed() < ttl);
        f(sessions)
    }
}

#[tonic::async_trait]
impl ContextStore for InMemoryStore {
    async fn append(&self, client: &ClientId, upload: ValidUpload) -> Result<Appended> {
        let limits = self.limits;
        self.with_client(client, |sessions| {
            if upload.end() > limits.positions_per_session {
                return Err(Error::TooManyPositions {
                    end: upload.end(),
                    max: limits.positions_per_session,
                });
            }
            if !sessions.contains_key(&upload.session) {
                // A first upload that does not start at 0 is a gap: nothing is created for it.
                if upload.start > 0 {
                    return Ok(Appended::MissingFrom(0));
                }
                if sessions.len() >= limits.sessions_per_client {
                    return Err(Error::TooManySessions {
                        held: sessions.len(),
                        max: limits.sessions_per_client,
                    });
                }
                let fresh = StoredSession {
                    segments: Vec::new(),
                    persisted: 0,
                    hidden_size: upload.hidden_size,
                    touched: Instant::now(),
                };
                sessions.insert(upload.session.clone(), fresh);
            }
            let s = sessions
                .get_mut(&upload.session)
                .ok_or_else(|| Error::Internal("session vanished".into()))?;
            s.touched = Instant::now();
            match upload.unstored(s.persisted) {
                Ok(Some(new)) => {
                    s.persisted = new.end();
                    s.segments.push(new);
                }
                Ok(None) => {}
                Err(ProtocolError::Gap { persisted, .. }) => {
                    return Ok(Appended::MissingFrom(persisted));
                }
                Err(e) => return Err(e.into()),
            }
            Ok(Appended::Persisted(s.persisted))
        })
    }

    async fn session(&self, client: &ClientId, session: &SessionId) -> Result<Option<SessionInfo>> {
        self.with_client(client, |sessions| {
            Ok(sessions.get_mut(session).map(|s| {
                s.touched = Instant::now();
                SessionInfo { persisted: s.persisted, hidden_size: s.hidden_size }
            }))
        })
    }

    async fn rows(
        &self,
        client: &ClientId,
        session: &SessionId,
        positions: Range<u64>,
    ) -> Result<Vec<ValidUpload>> {
        self.with_client(client, |sessions| {
            let s = sessions
                .get(session)
                .ok_or_else(|| Error::UnknownSession(session.as_str().to_owned()))?;
            if positions.end > s.persisted {
                return Err(ProtocolError::NotUploaded {
                    after: positions.end.saturating_sub(1),
                    persisted: s.persisted,
                }
                .into());
            }
            Ok(s.segments.iter().filter_map(|seg| trim(seg, &positions)).collect())
        })
    }

    async fn end(&self, client: &ClientId, session: &SessionId) -> Result<bool> {
        self.with_client(client, |sessions| Ok(sessions.remove(session).is_some()))
    }
}
