//! Secrets the operator generates for a model (today: the managed Redis's password). Each is
//! created once, owned by the model (deleted with it), and never rewritten: the operator may
//! `get` and `create` Secrets, nothing more, so it can neither list nor change anybody else's.
//! A generated Secret deleted by hand is generated again, and the pods that use it roll (their
//! template carries a hash of it).

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;

use super::Context;
use crate::error::{Error, Result};
use crate::render::ModelRef;
use crate::render::redis::{PASSWORD_KEY, password_hash, password_secret, password_secret_name};

/// Bytes of randomness in a generated password (hex-encoded: URL-safe as it is).
const PASSWORD_BYTES: usize = 24;

/// The managed Redis's password: the one in its Secret, or a new one in a Secret created now.
/// Returns its hash for the pod templates.
pub async fn ensure_redis_password(ctx: &Context, at: &ModelRef) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &at.namespace);
    let name = password_secret_name(at);
    let existing = api
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("reading Secret {}/{name}", at.namespace)))?;
    if let Some(password) = existing.as_ref().and_then(stored_password) {
        return Ok(password_hash(&password));
    }
    if existing.is_some() {
        // Someone else's Secret of that name, or ours emptied by hand: never overwrite it.
        return Err(Error::GeneratedSecret(format!(
            "Secret {}/{name} exists without a {PASSWORD_KEY} key: delete it so the operator can \
             generate the managed Redis's password",
            at.namespace
        )));
    }
    let password = generate_password()?;
    match api.create(&PostParams::default(), &password_secret(at, &password)).await {
        Ok(_) => Ok(password_hash(&password)),
        // Created meanwhile by another reconcile: use that one.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let found = api
                .get(&name)
                .await
                .map_err(Error::kube(format!("reading Secret {}/{name}", at.namespace)))?;
            stored_password(&found).map(|p| password_hash(&p)).ok_or_else(|| {
                Error::GeneratedSecret(format!(
                    "Secret {}/{name} has no {PASSWORD_KEY}",
                    at.namespace
                ))
            })
        }
        Err(e) => Err(Error::kube(format!("creating Secret {}/{name}", at.namespace))(e)),
    }
}

fn stored_password(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(PASSWORD_KEY)?;
    String::from_utf8(bytes.0.clone()).ok().filter(|p| !p.is_empty())
}

/// A password from the operating system's random source.
fn generate_password() -> Result<String> {
    let mut bytes = [0u8; PASSWORD_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::GeneratedSecret(format!("no randomness for a password: {e}")))?;
    Ok(hex::encode(bytes))
}
