//! The CollabModel operator: the custom resource, pure rendering of its children and pure
//! status conditions. Nothing here talks to a cluster; the controller does the I/O.

pub mod conditions;
pub mod crd;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod render;

pub use crd::{CollabModel, CollabModelSpec, CollabModelStatus};
pub use error::{Error, Result};

use kube::CustomResourceExt;

/// The CRD manifest as committed in `crds/collabmodel.yaml`.
pub fn crd_yaml() -> Result<String> {
    Ok(serde_yaml::to_string(&CollabModel::crd())?)
}
