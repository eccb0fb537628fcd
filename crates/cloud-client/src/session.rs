//! One generation's conversation with the cloud. The session keeps every row it uploaded until
//! it ends: whatever the cloud does not hold when it is asked (a replica that never saw the
//! session, a flushed or unreachable context store, an expired session) is uploaded again, so
//! the answer is the one an uninterrupted cloud would give.

use std::sync::Arc;
use std::time::{Duration, Instant};

use collm_protocol::trace::TraceParent;
use collm_protocol::{Encoding, SessionId, pb};
use collm_runtime::transport::{CloudAnswer, NextTokenRequest};

use crate::link::{CloudLink, Connection};
use crate::uploads::Coverage;
use crate::{Error, Result, convert};

pub struct CloudSession {
    link: CloudLink,
    id: SessionId,
    encoding: Encoding,
    /// Every uploaded row, contiguous from position 0.
    kept: Vec<u8>,
    /// Generation of the connection the rows were last sent on.
    sent_on: Option<u64>,
    /// Payload bytes put on the wire (re-uploads included).
    uploaded_bytes: u64,
    /// Requests answered so far (names the throwaway sessions of `ask_naive`).
    asked: u64,
    /// Trace context sent with every request, so cloud spans join the edge's trace.
    trace: Option<TraceParent>,
}

impl CloudSession {
    /// A session named `id` on the wire (unique per edge: the cloud scopes it to the client).
    /// It keeps to one cloud replica while that replica is healthy.
    pub fn new(link: CloudLink, id: SessionId, encoding: Encoding) -> Self {
        Self {
            link: link.for_session(id.as_str()),
            id,
            encoding,
            kept: Vec::new(),
            sent_on: None,
            uploaded_bytes: 0,
            asked: 0,
            trace: None,
        }
    }

    /// The trace the session's cloud requests belong to.
    pub fn set_trace(&mut self, parent: Option<TraceParent>) {
        self.trace = parent;
    }

    pub fn id(&self) -> &SessionId {
        &self.id
    }

    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded_bytes
    }

    fn row_bytes(&self) -> usize {
        self.encoding.row_bytes(self.link.config().hidden_size)
    }

    /// Positions kept.
    pub fn rows(&self) -> usize {
        self.kept.len() / self.row_bytes().max(1)
    }

    /// Keeps rows `start..` (whole rows of the session's encoding) without sending them: the
    /// naive baseline ships them with each request instead.
    pub fn keep(&mut self, start: usize, payload: &[u8]) -> Result<()> {
        let row_bytes = self.row_bytes();
        if payload.len() % row_bytes != 0 || start > self.rows() {
            return Err(Error::Config(format!(
                "rows must be whole and contiguous: {} bytes at position {start} after {} rows",
                payload.len(),
                self.rows()
            )));
        }
        self.kept.truncate(start * row_bytes);
        self.kept.extend_from_slice(payload);
        Ok(())
    }

    /// Keeps rows `start..` and queues them for the cloud when one is connected. Never waits
    /// for the network.
    pub fn upload(&mut self, start: usize, payload: &[u8]) -> Result<()> {
        self.keep(start, payload)?;
        let row_bytes = self.row_bytes();
        let Some(conn) = self.link.connection() else { return Ok(()) };
        let end = start + payload.len() / row_bytes;
        let from = match self.sent_on {
            Some(generation) if generation == conn.generation => start,
            // First contact: everything kept (rows kept while no cloud was reachable too).
            None => 0,
            // Another replica since the last upload: lead with the row before the new ones.
            // The cloud skips it if it holds the session already (shared context), and
            // otherwise says where its copy ends; the next request re-uploads from there.
            Some(_) => start.saturating_sub(1),
        };
        self.sent_on = Some(conn.generation);
        self.send(&conn, &self.id.clone(), from, end)
    }

    /// Expected time until the cloud answers now; `None` while no cloud is connected, unless
    /// the link lost its connection a moment ago and is failing over (asking then reconnects).
    pub fn estimate(&self) -> Option<Duration> {
        let pending = match self.link.connection() {
            Some(conn) => conn.pipe.pending_bytes(),
            None if self.link.failing_over() => 0,
            None => return None,
        };
        self.link.latency().lock().ok().map(|m| m.estimate(pending))
    }

    /// Asks the cloud for the token after `req.after`, failing over to the other endpoints
    /// when the current one fails. `timeout` bounds the whole call.
    pub async fn next_token(
        &mut self,
        req: NextTokenRequest,
        timeout: Duration,
    ) -> Result<CloudAnswer> {
        let asked = async {
            let mut failures = 0;
            loop {
                let conn = match self.link.connection() {
                    Some(conn) => conn,
                    None => self.link.reconnect_now().await?,
                };
                match self.ask_on(&conn, &req).await {
                    Err(e) if e.is_link_failure() => {
                        tracing::warn!(endpoint = %conn.endpoint, error = %e, "cloud failed, failing over");
                        self.link.mark_failed(&conn);
                        failures += 1;
                        if failures > self.link.replicas() {
                            return Err(e);
                        }
                    }
                    other => return other,
                }
            }
        };
        tokio::time::timeout(timeout, asked).await.map_err(|_| Error::Timeout(timeout))?
    }

    /// The baseline without a context manager: every request ships the whole context to a
    /// throwaway cloud session, then forgets it.
    pub async fn ask_naive(
        &mut self,
        req: NextTokenRequest,
        timeout: Duration,
    ) -> Result<CloudAnswer> {
        self.asked += 1;
        let id = SessionId::parse(&format!("{}.n{}", self.id.as_str(), self.asked))?;
        let asked = async {
            let conn = match self.link.connection() {
                Some(conn) => conn,
                None => self.link.reconnect_now().await?,
            };
            let end = req.after as u64 + 1;
            self.send(&conn, &id, 0, end as usize)?;
            let ack_timeout = self.link.config().ack_timeout;
            if let Coverage::MissingFrom(from) = conn.pipe.settle(&id, end, ack_timeout).await? {
                return Err(Error::Missing(from));
            }
            let answer = self.request(&conn, &id, &req).await;
            end_on(&conn, &id).await;
            answer
        };
        tokio::time::timeout(timeout, asked).await.map_err(|_| Error::Timeout(timeout))?
    }

    /// Tells the cloud the session is over (best effort: an unreachable cloud forgets it when
    /// its TTL expires).
    pub async fn end(self) {
        if let Some(conn) = self.link.connection() {
            if self.sent_on.is_some() {
                end_on(&conn, &self.id).await;
            }
        }
    }

    async fn ask_on(
        &mut self,
        conn: &Arc<Connection>,
        req: &NextTokenRequest,
    ) -> Result<CloudAnswer> {
        let id = self.id.clone();
        let end = req.after as u64 + 1;
        if self.sent_on != Some(conn.generation) {
            // A replica this session has not talked to: send the last kept row. The cloud
            // skips it if it holds the session already (shared context), stores it if it
            // holds everything before it, and otherwise says where its copy ends.
            self.sent_on = Some(conn.generation);
            let rows = self.rows();
            if rows > 0 {
                self.send(conn, &id, rows - 1, rows)?;
            }
        }
        self.ensure_uploaded(conn, &id, end).await?;
        match self.request(conn, &id, req).await {
            // The cloud lost the session or part of it since it acknowledged the rows
            // (expiry, eviction, a flushed store): upload everything again, ask once more.
            Err(Error::Lost(_)) => {
                self.send(conn, &id, 0, self.rows())?;
                let timeout = self.link.config().ack_timeout;
                match conn.pipe.settle(&id, end, timeout).await? {
                    Coverage::Covered => self.request(conn, &id, req).await,
                    Coverage::MissingFrom(from) => Err(Error::Missing(from)),
                }
            }
            other => other,
        }
    }

    /// Makes sure the cloud holds every position of the session below `end`, re-uploading
    /// what it reports missing.
    async fn ensure_uploaded(&mut self, conn: &Connection, id: &SessionId, end: u64) -> Result<()> {
        let timeout = self.link.config().ack_timeout;
        match conn.pipe.wait_for(id, end, timeout).await? {
            Coverage::Covered => Ok(()),
            Coverage::MissingFrom(from) => {
                self.send(conn, id, from as usize, self.rows())?;
                match conn.pipe.settle(id, end, timeout).await? {
                    Coverage::Covered => Ok(()),
                    Coverage::MissingFrom(from) => Err(Error::Missing(from)),
                }
            }
        }
    }

    async fn request(
        &self,
        conn: &Connection,
        id: &SessionId,
        req: &NextTokenRequest,
    ) -> Result<CloudAnswer> {
        let mut wire = collm_protocol::outgoing::next_token_request(
            id,
            req.after as u64,
            convert::sampling(&req.params),
            req.u,
            req.top_k as u32,
        );
        wire.edge_answered = req.edge_answered.to_flat();
        let t = Instant::now();
        let mut request = tonic::Request::new(wire);
        if let Some(parent) = &self.trace {
            collm_protocol::trace::inject(request.metadata_mut(), parent);
        }
        let reply = conn.client.clone().next_token(request).await.map_err(Error::from_answer)?;
        if let Ok(mut m) = self.link.latency().lock() {
            m.observe_answer(t.elapsed());
        }
        Ok(convert::answer(&reply.into_inner()))
    }

    /// Queues kept rows `from..to` in chunks the cloud accepts.
    fn send(&mut self, conn: &Connection, id: &SessionId, from: usize, to: usize) -> Result<()> {
        let limits = &conn.limits;
        let row_bytes = self.row_bytes();
        let per_chunk = (limits.rows_per_chunk(self.encoding) as usize).max(1);
        let to = to.min(self.rows());
        let mut start = from;
        while start < to {
            let end = (start + per_chunk).min(to);
            let bytes = &self.kept[start * row_bytes..end * row_bytes];
            let chunk = collm_protocol::outgoing::upload_chunk(
                id,
                start as u64,
                (end - start) as u32,
                limits.hidden_size,
                self.encoding,
                bytes.to_vec().into(),
            );
            conn.pipe.send(chunk)?;
            self.uploaded_bytes += bytes.len() as u64;
            start = end;
        }
        Ok(())
    }
}

async fn end_on(conn: &Connection, id: &SessionId) {
    let req = pb::EndSessionRequest { session_id: id.as_str().to_owned() };
    let _ =
        tokio::time::timeout(Duration::from_secs(2), conn.client.clone().end_session(req)).await;
}
