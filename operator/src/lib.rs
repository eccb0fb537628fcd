//! The CollabModel operator: the custom resource, pure rendering of its children, pure status
//! conditions and lease decisions, and the controller that does the I/O around them.
//!
//! Pure: `crd`, `render`, `plan`, `pods`, `conditions`, `lease`. I/O: `controller`, `leader`,
//! `cloud_context` (its pure parts are plain functions).

pub mod cloud_context;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod plan;
pub mod pods;
pub mod render;

pub use crd::{CollabModel, CollabModelSpec, CollabModelStatus};
pub use error::{Error, Result};

use kube::CustomResourceExt;

/// The CRD manifest as committed in `crds/collabmodel.yaml`.
pub fn crd_yaml() -> Result<String> {
    Ok(serde_yaml::to_string(&CollabModel::crd())?)
}
