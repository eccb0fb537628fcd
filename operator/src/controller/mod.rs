//! The reconciler: renders a CollabModel, applies its children with server-side apply, prunes
//! what it no longer renders, writes status through the status subresource, records Events, and
//! (finalizer) deletes the model's cloud context from Redis before the model goes.

pub mod apply;
mod context;
mod observe;
mod secrets;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::conditions::{self, ContextObserved, reason};
use crate::crd::{CollabModel, CollabModelStatus};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::plan::{ChildId, plan};
use crate::render::{Generated, MANAGED_BY, ModelRef, Redis, Settings, render};
pub use apply::FIELD_MANAGER;
pub use observe::observed;

/// Finalizer that deletes the model's cloud context from Redis before the model goes.
pub const FINALIZER: &str = "collm.dev/cloud-context";

/// How often a healthy model is looked at again without any change (drift of things not
/// watched, e.g. an external Redis going away).
const RESYNC: Duration = Duration::from_secs(300);
/// How soon an unreachable external Redis is probed again.
const REPROBE: Duration = Duration::from_secs(30);

/// What the reconciler needs besides the object.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Where the operator itself reaches Redis, whatever the spec says (an operator running
    /// outside the cluster cannot resolve in-cluster Service names).
    pub redis_url_override: Option<String>,
    pub redis_timeout: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        redis_url_override: Option<String>,
        redis_timeout: Duration,
    ) -> Self {
        Self {
            client,
            settings,
            recorder,
            metrics,
            redis_url_override,
            redis_timeout,
            failures: Mutex::default(),
        }
    }

    fn failures_of(&self, key: &str, bump: bool) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if bump {
            let n = failures.entry(key.to_string()).or_insert(0);
            *n += 1;
            *n
        } else {
            failures.remove(key);
            0
        }
    }

    async fn event(
        &self,
        model: &CollabModel,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            // The Events API caps notes at 1 kB.
            note: Some(truncate(note, 1000)),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &model.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not record an Event");
        }
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn key(model: &CollabModel) -> String {
    format!("{}/{}", model.namespace().unwrap_or_default(), model.name_any())
}

/// Exponential backoff for a model whose reconciles keep failing: 1 s, 2 s, 4 s, … 5 min.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let exponent = consecutive_failures.saturating_sub(1).min(9);
    Duration::from_secs(1u64 << exponent).min(Duration::from_secs(300))
}

/// Reconciles one CollabModel.
#[tracing::instrument(skip_all, fields(model = %key(&model)))]
pub async fn reconcile(model: Arc<CollabModel>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let namespace = model.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<CollabModel> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, model.clone(), |event| async {
        match event {
            Finalizer::Apply(model) => apply_model(&model, &ctx).await,
            Finalizer::Cleanup(model) => {
                delete_cluster_children(&model, &ctx).await?;
                context::cleanup(&model, &ctx).await
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed(), result.as_ref().err().map(Error::label));
    if result.is_ok() {
        ctx.failures_of(&key(&model), false);
    }
    result
}

/// Deletes what the model has outside its namespace (no owner reference can collect it).
async fn delete_cluster_children(model: &CollabModel, ctx: &Context) -> Result<()> {
    let Ok(at) = ModelRef::of(model) else { return Ok(()) };
    let name = crate::render::identity::token_review_binding_name(&at);
    if apply::delete_cluster_binding(&ctx.client, &name, at.uid()).await? {
        tracing::info!(binding = %name, "deleted the cloud's TokenReview binding");
    }
    Ok(())
}

/// Requeues a failed model with exponential backoff.
pub fn error_policy(model: Arc<CollabModel>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.failures_of(&key(&model), true);
    let delay = backoff(failures);
    tracing::warn!(model = %key(&model), %error, failures, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The model's pods (edge and cloud), for why they do not run and how their cloud link is.
/// A failure to list them only leaves those details out of the status.
async fn list_pods(ctx: &Context, at: &ModelRef) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &at.namespace);
    let selector =
        format!("app.kubernetes.io/instance={},app.kubernetes.io/managed-by={MANAGED_BY}", at.name);
    match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the model's pods");
            Vec::new()
        }
    }
}

/// What the controller generates before rendering: the managed Redis's password Secret.
async fn generated(model: &CollabModel, at: &ModelRef, ctx: &Context) -> Result<Generated> {
    let managed = model.spec.cloud.enabled
        && model
            .spec
            .context
            .as_ref()
            .and_then(|c| c.redis.as_ref())
            .is_some_and(|r| matches!(Redis::try_from(r), Ok(Redis::Managed)));
    let redis_password_hash =
        if managed { Some(secrets::ensure_redis_password(ctx, at).await?) } else { None };
    Ok(Generated { redis_password_hash })
}

async fn apply_model(model: &CollabModel, ctx: &Context) -> Result<Action> {
    let at = ModelRef::of(model)?;
    let generated = generated(model, &at, ctx).await?;
    let children = match render(model, &ctx.settings, &generated) {
        Ok(children) => children,
        Err(error @ Error::InvalidSpec(_)) => {
            // Retrying cannot help: the spec must change, which triggers a reconcile.
            ctx.event(model, EventType::Warning, "InvalidSpec", "Render", error.to_string()).await;
            let observed = observed(
                model,
                &at,
                &Default::default(),
                ContextObserved::NotNeeded,
                Some(error.to_string()),
                &[],
            );
            write_status(model, ctx, &observed).await?;
            return Ok(Action::await_change());
        }
        Err(error) => return Err(error),
    };
    let plan = plan(&at, children);
    let uid = model.uid().ok_or(Error::MissingMetadata("uid"))?;
    let applied = match apply::apply_plan(&ctx.client, &at.namespace, &plan).await {
        Ok(applied) => applied,
        Err(error) => {
            ctx.event(model, EventType::Warning, "ApplyFailed", "Apply", error.to_string()).await;
            let ids: Vec<ChildId> = plan.apply.iter().map(|c| c.id()).collect();
            let existing = apply::observe_existing(&ctx.client, &at.namespace, &ids).await;
            let context = context::observe(model, &existing, ctx).await;
            let pods = list_pods(ctx, &at).await;
            let observed = observed(model, &at, &existing, context, Some(error.to_string()), &pods);
            if let Err(status_error) = write_status(model, ctx, &observed).await {
                tracing::warn!(error = %status_error, "could not write the failure into status");
            }
            return Err(error);
        }
    };
    let pruned = apply::prune(&ctx.client, &at.namespace, &uid, &plan).await?;
    if !pruned.is_empty() {
        let names: Vec<String> = pruned.iter().map(ToString::to_string).collect();
        ctx.event(
            model,
            EventType::Normal,
            "Pruned",
            "Prune",
            format!("deleted {} (no longer in the spec)", names.join(", ")),
        )
        .await;
    }
    let generation_changed =
        model.status.as_ref().and_then(|s| s.observed_generation) != model.metadata.generation;
    if generation_changed {
        let names: Vec<String> = applied.children.iter().map(ToString::to_string).collect();
        let note = format!(
            "applied generation {}: {}",
            model.metadata.generation.unwrap_or(0),
            names.join(", ")
        );
        ctx.event(model, EventType::Normal, "Applied", "Apply", note).await;
    }
    let context = context::observe(model, &applied, ctx).await;
    let pods = list_pods(ctx, &at).await;
    let observed = observed(model, &at, &applied, context, None, &pods);
    let status = write_status(model, ctx, &observed).await?;
    announce_problems(model, ctx, &status).await;
    Ok(match context {
        ContextObserved::External { reachable: Some(true) } => Action::requeue(RESYNC),
        ContextObserved::External { .. } => Action::requeue(REPROBE),
        _ => Action::requeue(RESYNC),
    })
}

/// Reasons worth an Event when they appear or their message changes: what a user must act on.
const ANNOUNCED: [&str; 4] = [
    reason::BUNDLE_FETCH_FAILED,
    reason::EDGE_PODS_FAILING,
    reason::CLOUD_PODS_FAILING,
    reason::CLOUD_LINK_DOWN,
];

/// A Warning Event for every condition that newly carries a problem a user must act on (a
/// bundle that cannot be fetched names the URL and the mismatch).
async fn announce_problems(model: &CollabModel, ctx: &Context, status: &CollabModelStatus) {
    let before: &[Condition] =
        model.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    for condition in &status.conditions {
        if !ANNOUNCED.contains(&condition.reason.as_str()) || condition.type_ == conditions::READY {
            continue;
        }
        let unchanged = before.iter().any(|c| {
            c.type_ == condition.type_
                && c.reason == condition.reason
                && c.message == condition.message
        });
        if !unchanged {
            let note = format!("{}: {}", condition.type_, condition.message);
            ctx.event(model, EventType::Warning, &condition.reason, "Observe", note).await;
        }
    }
}

async fn write_status(
    model: &CollabModel,
    ctx: &Context,
    observed: &conditions::Observed,
) -> Result<CollabModelStatus> {
    let now = Time(Timestamp::now());
    let status =
        conditions::status(observed, model.status.as_ref(), model.metadata.generation, &now);
    if model.status.as_ref() == Some(&status) {
        return Ok(status);
    }
    let namespace = model.namespace().unwrap_or_default();
    let api: Api<CollabModel> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "apiVersion": CollabModel::api_version(&()),
        "kind": CollabModel::kind(&()),
        "status": status,
    });
    api.patch_status(
        &model.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("writing status"))?;
    Ok(status)
}

/// An API over every namespace, or over one.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The model a pod belongs to, from the labels every rendered pod carries.
fn model_of_pod(pod: Pod) -> Option<ObjectRef<CollabModel>> {
    let name = pod.metadata.labels.as_ref()?.get("app.kubernetes.io/instance")?.clone();
    let namespace = pod.metadata.namespace.clone()?;
    Some(ObjectRef::new(&name).within(&namespace))
}

/// Runs the controller until the returned future is dropped, over every namespace or only
/// `namespace`. Fails early when the CRD is not installed or not readable with the operator's
/// permissions.
pub async fn run(ctx: Arc<Context>, namespace: Option<&str>) -> Result<()> {
    let client = ctx.client.clone();
    let models = scoped::<CollabModel>(&client, namespace);
    models
        .list(&ListParams::default().limit(1))
        .await
        .map_err(Error::kube("listing CollabModels (is the CRD installed?)"))?;
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    Controller::new(models, watcher::Config::default().any_semantic())
        .owns(scoped::<ConfigMap>(&client, namespace), owned.clone())
        .owns(scoped::<ServiceAccount>(&client, namespace), owned.clone())
        .owns(scoped::<RoleBinding>(&client, namespace), owned.clone())
        .owns(scoped::<NetworkPolicy>(&client, namespace), owned.clone())
        // Pods are owned by ReplicaSets and DaemonSets, not by the model: map them back by their
        // instance label, so a failing fetch or a cloud link report reaches the status at once.
        .watches(scoped::<Pod>(&client, namespace), owned.clone(), model_of_pod)
        .owns(scoped::<DaemonSet>(&client, namespace), owned.clone())
        .owns(scoped::<Deployment>(&client, namespace), owned.clone())
        .owns(scoped::<Service>(&client, namespace), owned.clone())
        .owns(scoped::<HorizontalPodAutoscaler>(&client, namespace), owned.clone())
        .owns(scoped::<PodDisruptionBudget>(&client, namespace), owned.clone())
        .owns(scoped::<StatefulSet>(&client, namespace), owned)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(model = %object, "reconciled"),
                // Failed reconciles are logged by error_policy; anything else (a watch the API
                // server refuses, e.g. for lack of RBAC) must be visible.
                Err(e @ kube::runtime::controller::Error::ReconcilerFailed(..)) => {
                    tracing::debug!(error = %e, "reconcile failed")
                }
                Err(e) => tracing::warn!(error = %e, "controller"),
            }
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_and_stops_at_five_minutes() {
        let secs: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn long_event_notes_are_cut_on_a_character_boundary() {
        let note = "é".repeat(600);
        let cut = truncate(note, 1000);
        assert!(cut.len() <= 1000 && cut.chars().all(|c| c == 'é'));
    }
}
