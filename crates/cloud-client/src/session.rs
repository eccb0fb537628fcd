//! One generation's conversation with the cloud. The session keeps every row it uploaded until
//! it ends: whatever the cloud does not hold when it is asked (a replica that never saw the
//! session, a flushed or unreachable context store, an expired session) is uploaded again, so
//! the answer is the one an uninterrupted cloud would give.
//!
//! Against a cloud with the `epochs` capability a request goes out at once, without waiting
//! for the acknowledgement of the rows it needs (the cloud waits for them): one round trip per
//! ask. Such a cloud also lets the session roll back: [`CloudSession::rollback`] takes back
//! the rows from a position on and starts a new epoch, which every later upload and request
//! carries, so nothing of the abandoned branch is ever read as current.

use std::sync::Arc;
use std::time::{Duration, Instant};

use collm_protocol::trace::TraceParent;
use collm_protocol::{Capabilities, Encoding, SessionId, pb};
use collm_runtime::sampling::{Pick, SamplingParams};
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
    /// The first position each rollback rewrote, in order; the session's epoch is their count.
    rollbacks: Vec<u64>,
}

/// The cloud's verdict on a draft.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Leading draft tokens the full model picks too.
    pub accepted: usize,
    /// The full model's token after them.
    pub pick: Pick,
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
            rollbacks: Vec::new(),
        }
    }

    /// The session's epoch: rollbacks so far.
    pub fn epoch(&self) -> u64 {
        self.rollbacks.len() as u64
    }

    /// What the connected cloud can do (`None` while no cloud is connected).
    pub fn capabilities(&self) -> Option<Capabilities> {
        self.link.connection().map(|c| c.capabilities)
    }

    /// Takes back every row from position `len` on: the edge decoded them on a guess or a
    /// draft the cloud rejected. When any of them was kept, the session moves to a new epoch
    /// (the cloud drops those rows when the next upload of that epoch arrives, and refuses
    /// requests of the old one). Only for a cloud with the `epochs` capability: an older one
    /// would read the rewritten rows as retransmissions of the old ones.
    pub fn rollback(&mut self, len: usize) -> Result<()> {
        if len >= self.rows() {
            return Ok(());
        }
        if self.capabilities().is_some_and(|c| !c.epochs) {
            return Err(Error::Config(
                "the cloud cannot take rows back (no `epochs` capability): do not speculate".into(),
            ));
        }
        self.kept.truncate(len * self.row_bytes());
        self.rollbacks.push(len as u64);
        Ok(())
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
        if !payload.len().is_multiple_of(row_bytes) || start > self.rows() {
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

    /// Sends a next-token request for the session's current epoch and returns its answer as a
    /// future of its own, so the edge can keep decoding (and uploading) while it is in flight.
    /// `None` when no cloud with the `epochs` capability is connected: ask with
    /// [`CloudSession::next_token`] then. The future does not retry: on an error, ask again
    /// with [`CloudSession::next_token`], which re-uploads and fails over.
    pub fn ask_ahead(
        &mut self,
        req: &NextTokenRequest,
        timeout: Duration,
    ) -> Result<Option<impl std::future::Future<Output = Result<CloudAnswer>> + Send + 'static>>
    {
        let Some(conn) = self.link.connection().filter(|c| c.capabilities.epochs) else {
            return Ok(None);
        };
        self.introduce(&conn)?;
        let mut request = tonic::Request::new(self.wire_request(req));
        if let Some(parent) = &self.trace {
            collm_protocol::trace::inject(request.metadata_mut(), parent);
        }
        let (mut client, link) = (conn.client.clone(), self.link.clone());
        Ok(Some(async move {
            let t = Instant::now();
            let reply = tokio::time::timeout(timeout, client.next_token(request))
                .await
                .map_err(|_| Error::Timeout(timeout))?
                .map_err(Error::from_answer)?;
            if let Ok(mut m) = link.latency().lock() {
                m.observe_answer(t.elapsed());
            }
            Ok(convert::answer(&reply.into_inner()))
        }))
    }

    fn wire_request(&self, req: &NextTokenRequest) -> pb::NextTokenRequest {
        let mut wire = collm_protocol::outgoing::next_token_request(
            &self.id,
            req.after as u64,
            convert::sampling(&req.params),
            req.u,
            req.top_k as u32,
        );
        wire.edge_answered = req.edge_answered.to_flat();
        wire.prompt_len = req.edge_answered.prompt_len();
        wire.adjustment = convert::adjustment(&req.adjustment, &req.seen);
        wire.epoch = self.epoch();
        wire.rollbacks = self.rollbacks.clone();
        wire
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
            conn.pipe.forget(&self.id);
            if self.sent_on.is_some() {
                end_on(&conn, &self.id).await;
            }
        }
    }

    /// Asks the cloud to check `draft`, the tokens the edge drafted for the positions after
    /// `after` (their rows uploaded), picking with `params` and the draws `u` (one per draft
    /// token and one more). Fails over like [`CloudSession::next_token`]; `timeout` bounds the
    /// whole call. Only for a cloud with the `verify` capability.
    pub async fn verify(
        &mut self,
        after: usize,
        draft: &[u32],
        u: &[f64],
        params: &SamplingParams,
        timeout: Duration,
    ) -> Result<Verdict> {
        let asked = async {
            let mut failures = 0;
            loop {
                let conn = match self.link.connection() {
                    Some(conn) => conn,
                    None => self.link.reconnect_now().await?,
                };
                if !conn.capabilities.verify || !conn.capabilities.epochs {
                    return Err(Error::Config(format!(
                        "the cloud at {} cannot verify drafts (no `verify` capability)",
                        conn.endpoint
                    )));
                }
                match self.verify_on(&conn, after, draft, u, params).await {
                    Err(e) if e.is_link_failure() => {
                        tracing::warn!(endpoint = %conn.endpoint, error = %e, "cloud failed, failing over");
                        self.link.mark_failed(&conn);
                        failures += 1;
                        if failures > self.link.config().endpoints.len() {
                            return Err(e);
                        }
                    }
                    other => return other,
                }
            }
        };
        tokio::time::timeout(timeout, asked).await.map_err(|_| Error::Timeout(timeout))?
    }

    async fn verify_on(
        &mut self,
        conn: &Arc<Connection>,
        after: usize,
        draft: &[u32],
        u: &[f64],
        params: &SamplingParams,
    ) -> Result<Verdict> {
        self.introduce(conn)?;
        let wire = pb::VerifyRequest {
            session_id: self.id.as_str().to_owned(),
            after: after as u64,
            draft: draft.to_vec(),
            u: u.to_vec(),
            sampling: Some(convert::sampling(params).to_wire()),
            epoch: self.epoch(),
            rollbacks: self.rollbacks.clone(),
        };
        let trace = self.trace.clone();
        let ask = |wire: pb::VerifyRequest| {
            let mut request = tonic::Request::new(wire);
            if let Some(parent) = &trace {
                collm_protocol::trace::inject(request.metadata_mut(), parent);
            }
            let mut client = conn.client.clone();
            async move { client.verify(request).await.map_err(Error::from_answer) }
        };
        let t = Instant::now();
        let reply = match ask(wire.clone()).await {
            Err(Error::Lost(_)) => {
                // As for a next-token request: upload everything again, ask once more.
                let end = after as u64 + draft.len() as u64 + 1;
                self.send(conn, &self.id.clone(), 0, self.rows())?;
                let timeout = self.link.config().ack_timeout;
                match conn.pipe.settle(&self.id, end, timeout).await? {
                    Coverage::Covered => ask(wire).await?,
                    Coverage::MissingFrom(from) => return Err(Error::Missing(from)),
                }
            }
            other => other?,
        }
        .into_inner();
        if let Ok(mut m) = self.link.latency().lock() {
            m.observe_answer(t.elapsed());
        }
        if reply.accepted as usize > draft.len() {
            return Err(Error::Refused(format!(
                "the cloud accepted {} of {} draft tokens",
                reply.accepted,
                draft.len()
            )));
        }
        Ok(Verdict {
            accepted: reply.accepted as usize,
            pick: Pick { token: reply.token, prob: reply.prob },
        })
    }

    /// On a connection this session has not used yet, sends the last kept row: the cloud
    /// skips it if it holds the session already (shared context), stores it if it holds
    /// everything before it, and otherwise says where its copy ends.
    fn introduce(&mut self, conn: &Connection) -> Result<()> {
        if self.sent_on != Some(conn.generation) {
            self.sent_on = Some(conn.generation);
            let rows = self.rows();
            if rows > 0 {
                self.send(conn, &self.id.clone(), rows - 1, rows)?;
            }
        }
        Ok(())
    }

    async fn ask_on(
        &mut self,
        conn: &Arc<Connection>,
        req: &NextTokenRequest,
    ) -> Result<CloudAnswer> {
        let id = self.id.clone();
        let end = req.after as u64 + 1;
        self.introduce(conn)?;
        if !conn.capabilities.epochs {
            // An older cloud refuses a request for rows it has not stored yet.
            self.ensure_uploaded(conn, &id, end).await?;
        }
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
        wire.prompt_len = req.edge_answered.prompt_len();
        wire.adjustment = convert::adjustment(&req.adjustment, &req.seen);
        if id == &self.id {
            wire.epoch = self.epoch();
            wire.rollbacks = self.rollbacks.clone();
        }
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

    /// The lowest position rewritten since the epoch this connection's cloud last
    /// acknowledged: rows below it are the same on the cloud's branch and the session's.
    fn rewrite_from(&self, conn: &Connection) -> u64 {
        let seen = conn.pipe.acks(&self.id).epoch as usize;
        self.rollbacks.get(seen..).and_then(|r| r.iter().copied().min()).unwrap_or(0)
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
            let mut chunk = collm_protocol::outgoing::upload_chunk(
                id,
                start as u64,
                (end - start) as u32,
                limits.hidden_size,
                self.encoding,
                bytes.to_vec().into(),
            );
            if id == &self.id {
                chunk.epoch = self.epoch();
                chunk.rewrite_from = self.rewrite_from(conn);
            }
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
