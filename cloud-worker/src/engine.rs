//! The cloud layers and their local KV caches. A cache is only a cache: the rows it was built
//! from live in the context store, so a missing or evicted cache is rebuilt by catching up on
//! the stored rows again (the edge's record of which positions it answered comes with every
//! request, so `propagate` catch-up rebuilds the same cache).

use std::collections::HashMap;

use collm_protocol::SessionId;
use collm_runtime::partition::KvCache;
use collm_runtime::sampling::{self, Pick, SamplingParams};
use collm_runtime::{CatchUp, CloudLayers, EdgeAnswered};

use crate::Result;
use crate::clients::ClientId;

type SessionKey = (ClientId, SessionId);

struct CachedSession {
    cache: KvCache,
    last_used: u64,
}

/// The cloud layers (ONNX Runtime sessions run `&mut`, so callers serialise on a lock) and a
/// bounded LRU of per-session KV caches.
pub struct CloudEngine {
    layers: CloudLayers,
    caches: HashMap<SessionKey, CachedSession>,
    max_cached: usize,
    tick: u64,
    /// Sessions whose cache this engine dropped (LRU eviction) or found past the requested
    /// position, newest tick last; bounded, so that building their cache again counts as a
    /// rebuild rather than a first build.
    dropped: HashMap<SessionKey, u64>,
}

/// What the next-token step picked, and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudPick {
    pub pick: Pick,
    pub top_k: Vec<Pick>,
    pub cache: CacheUse,
    /// Positions run through the cloud layers for this answer (1 on a hit after one upload).
    pub computed: u64,
    /// Positions whose K/V were propagated instead (`propagate` catch-up).
    pub propagated: u64,
}

/// How the session's KV cache served a next-token step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// The cached KV was extended.
    Hit,
    /// No cache yet: the session's first answer on this worker.
    Built,
    /// The cache had been evicted or was past the requested position: recomputed from the
    /// stored rows (exact catch-up from position 0).
    Rebuilt,
}

/// How many dropped sessions the engine remembers, per cached session.
const DROPPED_MEMORY: usize = 4;

impl CloudEngine {
    pub fn new(layers: CloudLayers, max_cached: usize) -> Self {
        Self {
            layers,
            caches: HashMap::new(),
            max_cached: max_cached.max(1),
            tick: 0,
            dropped: HashMap::new(),
        }
    }

    /// Sessions whose KV cache is in memory now.
    pub fn cached_sessions(&self) -> usize {
        self.caches.len()
    }

    pub fn hidden_size(&self) -> usize {
        self.layers.partition().shape.hidden_size
    }

    pub fn max_context(&self) -> usize {
        self.layers.partition().shape.max_position
    }

    pub fn catch_up(&self) -> CatchUp {
        self.layers.catch_up()
    }

    /// Positions the cached KV of this session covers, if it can serve a request for the token
    /// after `after` (a cache already past `after` cannot: the session is recomputed from 0).
    pub fn usable_prefix(&self, client: &ClientId, session: &SessionId, after: u64) -> u64 {
        let key = (client.clone(), session.clone());
        match self.caches.get(&key) {
            Some(c) if (c.cache.len() as u64) <= after => c.cache.len() as u64,
            _ => 0,
        }
    }

    /// Catches up on `rows` (positions `from..=after`, decoded) on top of the session's cache
    /// and picks the next token exactly as the in-process cloud does.
    #[allow(clippy::too_many_arguments)]
    pub fn next_token(
        &mut self,
        client: &ClientId,
        session: &SessionId,
        from: u64,
        rows: &[f32],
        edge_answered: &EdgeAnswered,
        params: &SamplingParams,
        u: f64,
        top_k: usize,
    ) -> Result<CloudPick> {
        let key = (client.clone(), session.clone());
        self.tick += 1;
        let reuse = self.caches.get(&key).is_some_and(|c| c.cache.len() as u64 == from);
        let cache_use = if reuse {
            CacheUse::Hit
        } else {
            if from != 0 {
                return Err(crate::Error::Internal(format!(
                    "the cached context of session {session} moved while it was being extended; retry"
                )));
            }
            // A cache past the requested position is dropped here; one evicted earlier is
            // remembered in `dropped`.
            let was_cached = self.caches.remove(&key).is_some();
            let was_dropped = self.dropped.remove(&key).is_some();
            let cache = self.layers.empty_cache()?;
            self.evict_for_one_more();
            self.caches.insert(key.clone(), CachedSession { cache, last_used: self.tick });
            if was_cached || was_dropped { CacheUse::Rebuilt } else { CacheUse::Built }
        };
        let entry = self
            .caches
            .get_mut(&key)
            .ok_or_else(|| crate::Error::Internal("cache vanished".into()))?;
        entry.last_used = self.tick;
        let stepped = self.layers.step(&mut entry.cache, rows, edge_answered)?;
        let logits = stepped.logits;
        Ok(CloudPick {
            pick: sampling::sample(&logits, params, u),
            top_k: if top_k > 0 { sampling::top_k(&logits, top_k) } else { vec![] },
            cache: cache_use,
            computed: stepped.exact,
            propagated: stepped.propagated,
        })
    }

    pub fn forget(&mut self, client: &ClientId, session: &SessionId) {
        let key = (client.clone(), session.clone());
        self.caches.remove(&key);
        self.dropped.remove(&key);
    }

    fn evict_for_one_more(&mut self) {
        while self.caches.len() >= self.max_cached {
            let Some(oldest) =
                self.caches.iter().min_by_key(|(_, c)| c.last_used).map(|(k, _)| k.clone())
            else {
                return;
            };
            self.caches.remove(&oldest);
            self.remember_dropped(oldest);
        }
    }

    fn remember_dropped(&mut self, key: SessionKey) {
        let cap = self.max_cached * DROPPED_MEMORY;
        if self.dropped.len() >= cap
            && let Some(oldest) =
                self.dropped.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
        {
            self.dropped.remove(&oldest);
        }
        self.dropped.insert(key, self.tick);
    }
}
