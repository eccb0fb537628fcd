//! Leader election over a coordination.k8s.io/v1 Lease: only the holder runs the controller.
//! The decisions are in [`crate::lease`]; this module does the API calls and the timing.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::lease::{
    Decision, LeaseRecord, LeaseTiming, decide, held_by, leadership_lost, released,
};
use crate::metrics::Metrics;

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    metrics: Arc<Metrics>,
    /// The record last seen and when it was first seen, to judge expiry by our own clock.
    seen: Option<(LeaseRecord, Instant)>,
}

/// Why a leader stopped leading.
enum Stepped {
    Lost,
    Shutdown,
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            metrics,
            seen: None,
        }
    }

    /// Holds the lease (or not) after one look: creates, takes over or renews it as
    /// [`decide`] says. A write that loses a race (409) means somebody else holds it.
    #[tracing::instrument(skip(self), fields(lease = %self.name, identity = %self.identity))]
    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let current =
            self.api.get_opt(&self.name).await.map_err(Error::kube("reading the leader Lease"))?;
        let record = current.as_ref().map(|l| LeaseRecord::of(l.spec.as_ref()));
        let unchanged_for = match (&self.seen, &record) {
            (Some((seen, since)), Some(record)) if seen == record => since.elapsed(),
            (_, Some(record)) => {
                self.seen = Some((record.clone(), Instant::now()));
                std::time::Duration::ZERO
            }
            (_, None) => std::time::Duration::ZERO,
        };
        let now = Timestamp::now();
        let result = match (
            decide(record.as_ref(), &self.identity, unchanged_for, &self.timing),
            current,
        ) {
            (Decision::Follow { holder, expires_in }, _) => {
                tracing::debug!(%holder, ?expires_in, "following");
                return Ok(false);
            }
            (Decision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                    spec: Some(held_by(None, &self.identity, now, &self.timing)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (decision, Some(mut lease)) => {
                if decision == Decision::TakeOver {
                    tracing::info!(previous = ?lease.spec.as_ref().and_then(|s| s.holder_identity.clone()), "taking over the lease");
                }
                // replace() carries resourceVersion: if anybody wrote in between, we get 409.
                lease.spec = Some(held_by(lease.spec.as_ref(), &self.identity, now, &self.timing));
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(lease) => {
                self.seen = Some((LeaseRecord::of(lease.spec.as_ref()), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Error::kube("writing the leader Lease")(e)),
        }
    }

    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let Some(spec) = lease.spec.as_ref().and_then(|s| released(s, &self.identity)) else {
            return;
        };
        lease.spec = Some(spec);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!("released the leader lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the leader lease"),
        }
    }

    /// Waits until this replica holds the lease; false when shutdown came first.
    async fn acquire(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut logged_follow = false;
        loop {
            match tokio::time::timeout(self.timing.retry_period, self.try_acquire_or_renew()).await
            {
                Ok(Ok(true)) => return true,
                Ok(Ok(false)) => {
                    if !logged_follow {
                        tracing::info!(lease = %self.name, "another replica leads; waiting");
                        logged_follow = true;
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election"),
                Err(_) => tracing::warn!("leader election: the API server did not answer in time"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry_period) => {}
                _ = shutdown.changed() => return false,
            }
        }
    }

    /// Renews every retry period; returns when leadership is lost.
    async fn keep_renewing(&mut self) {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            match tokio::time::timeout(self.timing.retry_period, self.try_acquire_or_renew()).await
            {
                Ok(Ok(true)) => last_renewal = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::warn!("another replica holds the lease now");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader lease"),
                Err(_) => tracing::warn!(
                    "renewing the leader lease: the API server did not answer in time"
                ),
            }
            if leadership_lost(last_renewal.elapsed(), &self.timing) {
                tracing::warn!("could not renew the leader lease before the renew deadline");
                return;
            }
        }
    }

    /// Runs `lead` while this replica holds the lease, stopping it when the lease is lost and
    /// competing again; returns on shutdown (releasing the lease) or if `lead` returns.
    pub async fn run<F, Fut>(mut self, mut shutdown: watch::Receiver<bool>, mut lead: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            if !self.acquire(&mut shutdown).await {
                return;
            }
            tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
            self.metrics.leader.set(1);
            let stepped = tokio::select! {
                _ = lead() => Stepped::Shutdown,
                _ = self.keep_renewing() => Stepped::Lost,
                _ = shutdown.changed() => Stepped::Shutdown,
            };
            self.metrics.leader.set(0);
            match stepped {
                Stepped::Lost => tracing::warn!("lost leadership; stopped reconciling"),
                Stepped::Shutdown => {
                    self.release().await;
                    return;
                }
            }
        }
    }
}
