//! The cloud layers and their local KV caches. A cache is only a cache: the rows it was built
//! from live in the context store, so a missing or evicted cache is rebuilt by catching up on
//! the stored rows again (the edge's record of which positions it answered comes with every
//! request, so `propagate` catch-up rebuilds the same cache).

use std::collections::HashMap;

use collm_protocol::{Branch, SessionId};
use collm_runtime::partition::KvCache;
use collm_runtime::{CatchUp, CloudLayers, EdgeAnswered};

use crate::Result;
use crate::clients::ClientId;

type SessionKey = (ClientId, SessionId);

struct CachedSession {
    cache: KvCache,
    /// The branch the cached keys and values were computed on.
    epoch: u64,
    last_used: u64,
}

/// The cloud layers (ONNX Runtime sessions run `&mut`, so callers serialise on a lock) and a
/// bounded LRU of per-session KV caches. The lock is meant to be held for one partition run
/// only: callers read the rows a run needs before they take it and pick tokens after.
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

/// What one extension of a session's cache computed, and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Extended {
    /// The first position run (the ones before it came from the cache).
    pub from: u64,
    /// Next-token logits of the last `logits_count` positions run, row-major.
    pub logits: Vec<f32>,
    pub cache: CacheUse,
    /// Positions run through the cloud layers (1 on a hit after one upload).
    pub computed: u64,
    /// Positions whose K/V were propagated instead (`propagate` catch-up).
    pub propagated: u64,
}

/// How the session's KV cache served a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// The cached KV was extended.
    Hit,
    /// No cache yet: the session's first answer on this worker.
    Built,
    /// The cache had been evicted or held nothing usable: recomputed from the stored rows
    /// (from position 0).
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

    pub fn vocab_size(&self) -> usize {
        self.layers.partition().shape.vocab_size
    }

    /// Positions of this session's cached keys and values that a request on `branch` needing
    /// the logits of position `after` (and maybe later ones) can build on: those computed on
    /// this branch (below every rollback since the cache's epoch), at most `after` (the asked
    /// position itself must run to give its logits).
    pub fn usable_prefix(
        &self,
        client: &ClientId,
        session: &SessionId,
        branch: &Branch,
        after: u64,
    ) -> u64 {
        let key = (client.clone(), session.clone());
        match self.caches.get(&key) {
            Some(c) if c.epoch <= branch.epoch => {
                let len = c.cache.len() as u64;
                let valid = branch.rewritten_since(c.epoch).map_or(len, |p| len.min(p));
                valid.min(after)
            }
            _ => 0,
        }
    }

    /// Runs `rows` (positions `from..`, decoded) on top of the session's first `from` cached
    /// positions, catching up as the catch-up mode says, and returns the logits of the last
    /// `logits_count` positions: all in one batched pass when `batched`, else the ones after
    /// the first of them one position at a time (exactly as decoding token by token computes
    /// them). `None` when the cache no longer holds `from` positions usable on `branch`
    /// (another request changed it since `usable_prefix`): read again.
    #[allow(clippy::too_many_arguments)]
    pub fn extend(
        &mut self,
        client: &ClientId,
        session: &SessionId,
        branch: &Branch,
        from: u64,
        rows: &[f32],
        edge_answered: &EdgeAnswered,
        logits_count: usize,
        batched: bool,
    ) -> Result<Option<Extended>> {
        let key = (client.clone(), session.clone());
        self.tick += 1;
        let cache_use = if from > 0 {
            let after = from + (rows.len() / self.hidden_size().max(1)) as u64;
            if self.usable_prefix(client, session, branch, after) < from {
                return Ok(None);
            }
            CacheUse::Hit
        } else {
            // A cache with nothing usable is dropped here; one evicted earlier is remembered
            // in `dropped`.
            let was_cached = self.caches.remove(&key).is_some();
            let was_dropped = self.dropped.remove(&key).is_some();
            let cache = self.layers.empty_cache()?;
            self.evict_for_one_more();
            let fresh = CachedSession { cache, epoch: branch.epoch, last_used: self.tick };
            self.caches.insert(key.clone(), fresh);
            if was_cached || was_dropped { CacheUse::Rebuilt } else { CacheUse::Built }
        };
        let entry = self
            .caches
            .get_mut(&key)
            .ok_or_else(|| crate::Error::Internal("cache vanished".into()))?;
        entry.last_used = self.tick;
        entry.cache.truncate(from as usize)?;
        entry.epoch = branch.epoch;
        let stepped = if batched {
            self.layers.step(&mut entry.cache, rows, edge_answered, logits_count)?
        } else {
            self.layers.step_one_by_one(&mut entry.cache, rows, edge_answered, logits_count)?
        };
        Ok(Some(Extended {
            from,
            logits: stepped.logits,
            cache: cache_use,
            computed: stepped.exact,
            propagated: stepped.propagated,
        }))
    }

    /// Forgets the session's cached positions from `len` on (a rejected draft), if the cache
    /// is still on branch `epoch`.
    pub fn truncate(
        &mut self,
        client: &ClientId,
        session: &SessionId,
        epoch: u64,
        len: u64,
    ) -> Result<()> {
        let key = (client.clone(), session.clone());
        if let Some(c) = self.caches.get_mut(&key)
            && c.epoch == epoch
        {
            c.cache.truncate(len as usize)?;
        }
        Ok(())
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
