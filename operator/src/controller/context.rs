//! The cloud context as the controller sees it: probing an external Redis for ContextReady,
//! and the finalizer's cleanup of the model's keys.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::Context;
use super::apply::Applied;
use crate::cloud_context::{self, CleanupSource, ContextLocation, redacted};
use crate::conditions::ContextObserved;
use crate::crd::{CollabModel, SecretKeyRef};
use crate::error::{Error, Result};
use crate::render::{Component, ModelRef};

fn at_redis_name(model: &CollabModel) -> String {
    ModelRef::of(model).map_or_else(
        |_| format!("{}-redis", model.name_any()),
        |at| at.child_name(Component::Redis),
    )
}

/// The Redis URL in a Secret of the model's namespace.
async fn secret_url(ctx: &Context, namespace: &str, secret: &SecretKeyRef) -> Result<String> {
    let problem = |problem: String| Error::RedisSecret {
        name: secret.name.clone(),
        key: secret.key.clone(),
        problem,
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let found = api
        .get_opt(&secret.name)
        .await
        .map_err(|e| problem(format!("cannot be read: {e}")))?
        .ok_or_else(|| Error::RedisSecretMissing(secret.name.clone()))?;
    let bytes = found
        .data
        .as_ref()
        .and_then(|d| d.get(&secret.key))
        .ok_or_else(|| problem("has no such key".to_string()))?;
    String::from_utf8(bytes.0.clone())
        .map(|s| s.trim().to_string())
        .map_err(|_| problem("is not UTF-8 text".to_string()))
}

/// ContextReady's input: the managed Redis's readiness, or whether an external Redis answers.
pub async fn observe(model: &CollabModel, workloads: &Applied, ctx: &Context) -> ContextObserved {
    let location = match ContextLocation::of(model) {
        Ok(location) => location,
        Err(_) => return ContextObserved::NotNeeded,
    };
    let namespace = model.namespace().unwrap_or_default();
    let url = match location {
        // With no Redis configured the render refuses a local cloud, so only edge-only models
        // get here.
        ContextLocation::Nowhere => return ContextObserved::NotNeeded,
        ContextLocation::Managed { .. } => {
            return ContextObserved::from_managed(workloads.redis.as_ref());
        }
        ContextLocation::Url(url) => url,
        ContextLocation::Secret(secret) => match secret_url(ctx, &namespace, &secret).await {
            Ok(url) => url,
            Err(e) => {
                tracing::info!(error = %e, "cannot probe Redis");
                return ContextObserved::External { reachable: Some(false) };
            }
        },
    };
    let url = ctx.redis_url_override.clone().unwrap_or(url);
    let reachable = cloud_context::ping(&url, ctx.redis_timeout).await;
    if let Err(e) = &reachable {
        tracing::info!(error = %e, "Redis does not answer");
    }
    ContextObserved::External { reachable: Some(reachable.is_ok()) }
}

/// The finalizer: delete every key under the model's prefix before the model goes. When Redis
/// cannot be reached the error goes back to the controller, which retries with backoff; the
/// model stays (with a Warning Event) until the keys are gone.
#[tracing::instrument(skip_all, fields(model = %model.name_any()))]
pub async fn cleanup(model: &CollabModel, ctx: &Context) -> Result<Action> {
    let prefix = cloud_context::key_prefix(model)?;
    let namespace = model.namespace().unwrap_or_default();
    let location = match ContextLocation::of(model) {
        Ok(location) => location,
        Err(e) => {
            // The schema makes this impossible; say so rather than blocking deletion forever.
            let note = format!(
                "cannot tell where the cloud context is ({e}); keys under {prefix} may remain"
            );
            ctx.event(model, EventType::Warning, "ContextLeft", "DeleteContext", note).await;
            return Ok(Action::await_change());
        }
    };
    let url = match cloud_context::cleanup_source(location, ctx.redis_url_override.as_deref()) {
        CleanupSource::Nothing => return Ok(Action::await_change()),
        CleanupSource::Url(url) => url,
        CleanupSource::ManagedIfRunning(secret) => {
            let name = at_redis_name(model);
            let sts = Api::<StatefulSet>::namespaced(ctx.client.clone(), &namespace)
                .get_opt(&name)
                .await
                .map_err(Error::kube("reading the managed Redis"))?;
            if ContextObserved::from_managed(sts.as_ref())
                == (ContextObserved::Managed { ready: false })
            {
                let note =
                    "the managed Redis has no ready replica and keeps no data: nothing to delete";
                ctx.event(
                    model,
                    EventType::Normal,
                    "ContextDeleted",
                    "DeleteContext",
                    note.to_string(),
                )
                .await;
                return Ok(Action::await_change());
            }
            match secret_url(ctx, &namespace, &secret).await {
                Ok(url) => url,
                Err(e) => {
                    let note = format!(
                        "{e}: cannot reach the managed Redis, keys under {prefix} remain until it stops"
                    );
                    ctx.event(model, EventType::Warning, "ContextLeft", "DeleteContext", note)
                        .await;
                    return Ok(Action::await_change());
                }
            }
        }
        CleanupSource::Secret(secret) => match secret_url(ctx, &namespace, &secret).await {
            Ok(url) => url,
            Err(e @ Error::RedisSecretMissing(_)) => {
                // Typical of a namespace being deleted: the Secret went first. Without the URL
                // the keys cannot be found; say which ones remain instead of blocking forever.
                let note = format!(
                    "{e}: cannot reach Redis, keys under {prefix} remain (they expire with their TTL)"
                );
                ctx.event(model, EventType::Warning, "ContextLeft", "DeleteContext", note).await;
                return Ok(Action::await_change());
            }
            Err(e) => {
                let note = e.to_string();
                ctx.event(model, EventType::Warning, "ContextCleanupFailed", "DeleteContext", note)
                    .await;
                return Err(e);
            }
        },
    };
    match cloud_context::delete_prefix(&url, &prefix, ctx.redis_timeout).await {
        Ok(deleted) => {
            ctx.metrics.context_keys_deleted.inc_by(deleted);
            let note = format!("deleted {deleted} keys under {prefix} from {}", redacted(&url));
            ctx.event(model, EventType::Normal, "ContextDeleted", "DeleteContext", note).await;
            Ok(Action::await_change())
        }
        Err(e) => {
            let note = format!(
                "{e}; the model stays until its keys under {prefix} are deleted (retrying)"
            );
            ctx.event(model, EventType::Warning, "ContextCleanupFailed", "DeleteContext", note)
                .await;
            Err(e)
        }
    }
}
