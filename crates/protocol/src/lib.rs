//! The edge <-> cloud wire protocol: the gRPC service generated from
//! `proto/collm/v1/cloud.proto`, wire messages parsed into validated types, the one mapping from
//! protocol errors to `tonic::Status`, and the metadata both sides exchange (bearer token, W3C
//! trace context). Pure apart from the generated transport stubs: no model, no store.

pub mod adjustment;
pub mod auth;
pub mod codec;
mod error;
pub mod generate;
pub mod outgoing;
pub mod replies;
mod session;
pub mod trace;
mod valid;

/// Code generated from `proto/collm/v1/cloud.proto` (package `collm.v1`).
pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("collm.v1");
}

pub use adjustment::Adjustment;
pub use auth::{BearerToken, bearer_token};
pub use codec::Encoding;
pub use error::{ChecksumKind, ProtocolError, Result};
pub use generate::{ModelLimits, ValidGenerate};
pub use pb::cloud_service_client::CloudServiceClient;
pub use pb::cloud_service_server::{CloudService, CloudServiceServer};
pub use session::{MAX_SESSION_ID_LEN, SessionId};
pub use trace::TraceParent;
pub use valid::{
    Branch, Capabilities, Limits, Sampling, ValidNextToken, ValidUpload, ValidVerify,
    check_contiguous, check_uploaded,
};
