//! The cloud worker: the `CloudService` gRPC server over a [`context::ContextStore`] and the
//! cloud partition of a bundle. Clients are identified by their bearer token only.

pub mod clients;
pub mod config;
pub mod context;
pub mod engine;
mod error;
pub mod full;
pub mod infer;
pub mod metrics;
pub mod serve;
pub mod service;
pub mod tls;
pub mod token_review;

pub use error::{Error, Result};
