//! The cloud context in this process's memory: for a single worker and for tests. Sessions are
//! lost with the process; the Redis store is the one that survives a worker.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

use collm_protocol::{Encoding, ProtocolError, SessionId, ValidUpload};

use super::{Appended, ContextStore, SessionInfo, StoreLimits, check_read, trim};
use crate::clients::ClientId;
use crate::{Error, Result};

struct StoredSession {
    segments: Vec<ValidUpload>,
    persisted: u64,
    epoch: u64,
    hidden_size: u32,
    encoding: Encoding,
    touched: Instant,
}

impl StoredSession {
    /// Drops the rows from position `from` on.
    fn truncate(&mut self, from: u64) {
        if from >= self.persisted {
            return;
        }
        self.segments.retain(|seg| seg.start < from);
        if let Some(last) = self.segments.last_mut()
            && last.end() > from
        {
            let rows = from - last.start;
            let row_bytes = last.encoding.row_bytes(last.hidden_size as usize);
            last.payload = last.payload.slice(..rows as usize * row_bytes);
            last.rows = rows as u32;
        }
        self.persisted = from;
    }
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
                    epoch: upload.epoch,
                    hidden_size: upload.hidden_size,
                    encoding: upload.encoding,
                    touched: Instant::now(),
                };
                sessions.insert(upload.session.clone(), fresh);
            }
            let s = sessions
                .get_mut(&upload.session)
                .ok_or_else(|| Error::Internal("session vanished".into()))?;
            s.touched = Instant::now();
            if (s.encoding, s.hidden_size) != (upload.encoding, upload.hidden_size) {
                return Err(Error::SessionLayout {
                    session: upload.session.to_string(),
                    stored: format!("{} rows of {}", s.encoding.as_str(), s.hidden_size),
                    got: format!("{} rows of {}", upload.encoding.as_str(), upload.hidden_size),
                });
            }
            if upload.epoch < s.epoch {
                return Err(ProtocolError::StaleEpoch {
                    what: "an upload",
                    epoch: upload.epoch,
                    current: s.epoch,
                }
                .into());
            }
            if upload.epoch > s.epoch {
                s.truncate(upload.rewrite_from);
                s.epoch = upload.epoch;
            }
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
                SessionInfo {
                    persisted: s.persisted,
                    hidden_size: s.hidden_size,
                    encoding: s.encoding,
                    epoch: s.epoch,
                }
            }))
        })
    }

    async fn rows(
        &self,
        client: &ClientId,
        session: &SessionId,
        epoch: u64,
        positions: Range<u64>,
    ) -> Result<Vec<ValidUpload>> {
        self.with_client(client, |sessions| {
            let s = sessions
                .get_mut(session)
                .ok_or_else(|| Error::UnknownSession(session.as_str().to_owned()))?;
            // Reading is use: a session the cloud keeps reading must not expire under it.
            s.touched = Instant::now();
            check_read(epoch, s.epoch, s.persisted, &positions)?;
            Ok(s.segments.iter().filter_map(|seg| trim(seg, &positions)).collect())
        })
    }

    async fn end(&self, client: &ClientId, session: &SessionId) -> Result<bool> {
        self.with_client(client, |sessions| Ok(sessions.remove(session).is_some()))
    }

    async fn context_bytes(&self) -> Result<u64> {
        let clients =
            self.clients.lock().map_err(|_| Error::Internal("context store poisoned".into()))?;
        let ttl = self.limits.ttl;
        Ok(clients
            .values()
            .flat_map(HashMap::values)
            .filter(|s| s.touched.elapsed() < ttl)
            .flat_map(|s| &s.segments)
            .map(|seg| seg.payload.len() as u64)
            .sum())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use collm_protocol::outgoing::encode_upload;
    use collm_protocol::{Encoding, Limits};

    use super::*;

    const H: u32 = 4;

    fn client(name: &str) -> ClientId {
        ClientId::new(name)
    }

    fn upload(session: &str, start: u64, rows: u32) -> ValidUpload {
        let s = SessionId::parse(session).expect("session");
        let values: Vec<f32> = (0..rows * H).map(|i| (start as f32) + i as f32 / 8.0).collect();
        ValidUpload::parse(encode_upload(&s, start, H, Encoding::F16, &values), &Limits::new(H, 64))
            .expect("valid")
    }

    fn store(limits: StoreLimits) -> InMemoryStore {
        InMemoryStore::new(limits)
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn appends_are_contiguous_retransmissions_harmless_and_gaps_reported() {
        block(async {
            let st = store(StoreLimits::new(64));
            let a = client("a");
            assert_eq!(st.append(&a, upload("s", 0, 3)).await.ok(), Some(Appended::Persisted(3)));
            // Overlapping retransmission: only the new row is stored.
            assert_eq!(st.append(&a, upload("s", 2, 2)).await.ok(), Some(Appended::Persisted(4)));
            assert_eq!(st.append(&a, upload("s", 6, 1)).await.ok(), Some(Appended::MissingFrom(4)));
            // A session that would start with a gap is not created.
            assert_eq!(st.append(&a, upload("t", 1, 1)).await.ok(), Some(Appended::MissingFrom(0)));
            assert!(
                st.session(&a, &SessionId::parse("t").expect("id")).await.expect("ok").is_none()
            );

            let s = SessionId::parse("s").expect("id");
            let rows = st.rows(&a, &s, 0, 1..4).await.expect("stored");
            let whole: Vec<f32> = rows.iter().flat_map(ValidUpload::decode).collect();
            let direct: Vec<f32> = [upload("s", 0, 3), upload("s", 2, 2)]
                .iter()
                .flat_map(ValidUpload::decode)
                .collect();
            // Positions 1, 2 from the first upload, 3 from the second (its row 1).
            let expected: Vec<f32> = direct[H as usize..3 * H as usize]
                .iter()
                .chain(&direct[(3 + 1) * H as usize..(3 + 2) * H as usize])
                .copied()
                .collect();
            assert_eq!(whole, expected);
            assert!(matches!(
                st.rows(&a, &s, 0, 2..5).await,
                Err(Error::Protocol(ProtocolError::NotUploaded { after: 4, persisted: 4 }))
            ));
        });
    }

    #[test]
    fn sessions_belong_to_their_client() {
        block(async {
            let st = store(StoreLimits::new(64));
            let (a, b) = (client("a"), client("b"));
            let s = SessionId::parse("s").expect("id");
            st.append(&a, upload("s", 0, 2)).await.expect("stored");
            assert!(st.session(&b, &s).await.expect("ok").is_none());
            assert!(matches!(st.rows(&b, &s, 0, 0..1).await, Err(Error::UnknownSession(_))));
            assert!(!st.end(&b, &s).await.expect("ok"));
            assert_eq!(st.session(&a, &s).await.expect("ok").map(|i| i.persisted), Some(2));
            assert!(st.end(&a, &s).await.expect("ok"));
        });
    }

    #[test]
    fn quotas_refuse_with_their_limits_and_idle_sessions_expire() {
        block(async {
            let limits = StoreLimits {
                positions_per_session: 4,
                sessions_per_client: 2,
                ttl: Duration::from_secs(1),
            };
            let st = store(limits);
            let a = client("a");
            st.append(&a, upload("s1", 0, 4)).await.expect("fits");
            let err = st.append(&a, upload("s1", 4, 1)).await.expect_err("5 positions");
            assert!(matches!(err, Error::TooManyPositions { end: 5, max: 4 }), "{err}");
            st.append(&a, upload("s2", 0, 1)).await.expect("second session");
            let err = st.append(&a, upload("s3", 0, 1)).await.expect_err("third session");
            assert!(matches!(err, Error::TooManySessions { held: 2, max: 2 }), "{err}");
            assert!(err.to_string().contains("quota"));
            // Another client has its own quota.
            st.append(&client("b"), upload("s3", 0, 1)).await.expect("b's first session");

            std::thread::sleep(Duration::from_millis(1200));
            let s1 = SessionId::parse("s1").expect("id");
            assert!(st.session(&a, &s1).await.expect("ok").is_none(), "expired");
            st.append(&a, upload("s3", 0, 1)).await.expect("quota freed by expiry");
        });
    }
}
