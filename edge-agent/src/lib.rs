//! The edge agent: serves an OpenAI-compatible API from the edge partition of a split model,
//! answering from its early-exit heads when confident and from the cloud otherwise.
//!
//! - [`engine`]: the edge partition, shared fairly by concurrent generations;
//! - [`generation`]: one generation's loop (uploads, exit decisions, cloud requests, fallbacks);
//!   decoding ahead of the cloud's answers (`pipelined`) and lossless speculation
//!   (`speculative`) against a cloud that can take rows back;
//! - [`decide`]: the pure per-token choice between exit head, cloud and latency fallback;
//! - [`api`]: the HTTP layer (request validation, responses, server-sent events);
//! - [`config`]: flags and the operator's `edge.json`;
//! - [`link_report`]: the cloud link as a condition on the agent's own pod.

pub mod api;
pub mod config;
pub mod decide;
pub mod engine;
pub mod generation;
pub mod link_report;
pub mod metrics;
pub mod mode;
mod picking;
mod pipelined;
mod speculative;
pub mod text_stream;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Startup(String),
    #[error(transparent)]
    Runtime(#[from] collm_runtime::Error),
    #[error(transparent)]
    Cloud(#[from] collm_cloud_client::Error),
    #[error(transparent)]
    Protocol(#[from] collm_protocol::ProtocolError),
    #[error("this edge agent has no cloud endpoint")]
    NoCloud,
    #[error("internal error: {0}")]
    Internal(String),
}
