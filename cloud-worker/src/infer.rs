//! Computing with a session's stored rows: wait (bounded) until the rows a request needs are
//! stored on its branch, read what the session's cached keys and values lack, and run the
//! cloud layers over it. The engine's lock is held for the partition run only: never across
//! the store read, nor the picking of tokens from the logits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collm_protocol::{Branch, ProtocolError, SessionId, ValidUpload};
use collm_runtime::EdgeAnswered;
use tokio::sync::watch;

use crate::clients::ClientId;
use crate::context::{ContextStore, SessionInfo};
use crate::engine::{CloudEngine, Extended};
use crate::{Error, Result};

/// How long a request waits for its rows by default: ample for rows that were sent just
/// before it on the same link, short enough that a lost upload is retried soon.
pub const DEFAULT_ROW_WAIT: Duration = Duration::from_secs(2);

/// How often a waiting request looks at the store again when no local upload wakes it (rows
/// stored through another replica sharing the store).
const POLL: Duration = Duration::from_millis(25);

/// Rings whenever this worker stores rows, waking the requests waiting for them.
#[derive(Clone)]
pub struct RowsArrived {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for RowsArrived {
    fn default() -> Self {
        Self { tx: Arc::new(watch::channel(0).0) }
    }
}

impl RowsArrived {
    pub fn ring(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// The rows a request needs stored before it runs.
pub struct RowsNeeded<'a> {
    pub client: &'a ClientId,
    pub session: &'a SessionId,
    pub branch: &'a Branch,
    /// Every position below this one.
    pub end: u64,
    /// The request, as its errors name it ("a next-token request").
    pub what: &'static str,
}

/// Waits until the session holds every row `needed`, on its branch's epoch, at most `wait`.
/// A session on a newer epoch refuses the request at once (it comes from a rolled-back
/// branch); one that never gets there fails naming the first position it lacks.
pub async fn wait_for_rows<S: ContextStore>(
    store: &S,
    arrived: &RowsArrived,
    needed: RowsNeeded<'_>,
    wait: Duration,
) -> Result<SessionInfo> {
    let RowsNeeded { client, session, branch, end, what } = needed;
    let deadline = Instant::now() + wait;
    let mut wake = arrived.subscribe();
    loop {
        wake.mark_unchanged();
        let info = store.session(client, session).await?;
        if let Some(info) = info {
            if info.epoch > branch.epoch {
                return Err(ProtocolError::StaleEpoch {
                    what,
                    epoch: branch.epoch,
                    current: info.epoch,
                }
                .into());
            }
            if info.epoch == branch.epoch && info.persisted >= end {
                return Ok(info);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(match info {
                None => Error::UnknownSession(session.as_str().to_owned()),
                Some(i) => {
                    let persisted = if i.epoch == branch.epoch { i.persisted } else { 0 };
                    ProtocolError::NotUploaded { after: end.saturating_sub(1), persisted }.into()
                }
            });
        }
        let nap = POLL.min(deadline - now);
        let _ = tokio::time::timeout(nap, wake.changed()).await;
    }
}

/// One request's run of the cloud layers.
pub struct Run<'a> {
    pub client: &'a ClientId,
    pub session: &'a SessionId,
    pub branch: &'a Branch,
    /// The first position whose logits are needed.
    pub first: u64,
    /// One past the last position to run.
    pub end: u64,
    pub edge_answered: &'a EdgeAnswered,
    /// Whether the positions whose logits are asked may run in one batched pass (else one at
    /// a time, as the full model decodes them).
    pub batched: bool,
    /// Run from no later than this position, even where the cache holds more (a position
    /// judged again runs as it first ran: with the catch-up before it).
    pub from_at_most: Option<u64>,
}

/// Runs `f` on the engine on a blocking thread: the lock may be held by a partition run, which
/// must not stall the async executor.
pub async fn with_engine<T: Send + 'static>(
    engine: &Arc<Mutex<CloudEngine>>,
    f: impl FnOnce(&mut CloudEngine) -> Result<T> + Send + 'static,
) -> Result<T> {
    let engine = Arc::clone(engine);
    let waiting = crate::metrics::EngineWait::start();
    tokio::task::spawn_blocking(move || {
        let engine = engine.lock();
        drop(waiting);
        let mut engine = engine.map_err(|_| Error::Internal("engine poisoned".into()))?;
        f(&mut engine)
    })
    .await
    .map_err(|e| Error::Internal(format!("inference task failed: {e}")))?
}

/// Runs positions up to `run.end` on top of what the session's cache holds and returns the
/// logits of positions `run.first..run.end`, and how many sessions the engine caches now. The
/// rows are read before the engine is locked; should another request change the cache
/// meanwhile, they are read again.
pub async fn extend<S: ContextStore>(
    engine: &Arc<Mutex<CloudEngine>>,
    store: &S,
    run: Run<'_>,
) -> Result<(Extended, usize)> {
    let logits_count = (run.end - run.first) as usize;
    for _ in 0..3 {
        let (client, session, branch, first) =
            (run.client.clone(), run.session.clone(), run.branch.clone(), run.first);
        // A cache that already holds the asked position (asks overtook each other) is cut
        // back to where the ask's piece of catch-up begins, to run that piece as every replica
        // runs it.
        let from =
            with_engine(engine, move |e| Ok(e.usable_prefix(&client, &session, &branch, first)))
                .await?
                .min(run.edge_answered.run_start(first))
                .min(run.from_at_most.unwrap_or(u64::MAX));
        let segments = store.rows(run.client, run.session, run.branch.epoch, from..run.end).await?;
        let rows: Vec<f32> = segments.iter().flat_map(ValidUpload::decode).collect();
        let (client, session, branch, edge, batched) = (
            run.client.clone(),
            run.session.clone(),
            run.branch.clone(),
            run.edge_answered.clone(),
            run.batched,
        );
        let extended = with_engine(engine, move |e| {
            let extended =
                e.extend(&client, &session, &branch, from, &rows, &edge, logits_count, batched)?;
            Ok(extended.map(|x| (x, e.cached_sessions())))
        })
        .await?;
        if let Some(extended) = extended {
            return Ok(extended);
        }
    }
    Err(Error::Internal(format!(
        "the cached context of session {} kept changing while it was being extended; retry",
        run.session
    )))
}
