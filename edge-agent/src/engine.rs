//! The edge half of the model, shared by every request of the agent: one edge partition run
//! at a time (ONNX Runtime already uses every core for one run), granted in arrival order so
//! that concurrent generations advance token by token, fairly.

use std::path::Path;
use std::sync::Arc;

use collm_bundle::{Bundle, Manifest, Parts};
use collm_runtime::decoder::{EdgeDecoder, EdgeStep};
use collm_runtime::partition::{Partition, PartitionShape};
use collm_runtime::text::TextCodec;
use collm_runtime::{ExitPolicy, OperatingPoint};
use prometheus_client::metrics::gauge::Gauge;
use sha2::Digest;

use crate::{Error, Result};

pub struct EdgeEngine {
    partition: Arc<tokio::sync::Mutex<Partition>>,
    /// Decode steps waiting for the partition: the agent's queue depth (a metric).
    pub waiting: Gauge,
    pub text: TextCodec,
    pub manifest: Manifest,
    /// Exit layers, shallowest first.
    pub exits: Vec<usize>,
    /// The deployment's exit policy (a request may bring its own threshold).
    pub policy: ExitPolicy,
    /// SHA-256 of the bundle manifest, compared with the cloud's before collaborating.
    pub model_id: String,
    pub hidden_size: usize,
    pub context: usize,
    pub vocab_size: usize,
}

impl EdgeEngine {
    /// Loads and verifies the edge half of the bundle in `dir`.
    pub fn load(dir: &Path, threshold: Option<f32>, target: Option<f32>) -> Result<Self> {
        let bundle = Bundle::open(dir, Parts::Edge).map_err(collm_runtime::Error::from)?;
        let m = bundle.manifest.clone();
        let text = TextCodec::load(&bundle.path(&m.tokenizer.file), &m.tokenizer)?;
        let shape = PartitionShape::new(&m.config, m.edge.first_layer..m.edge.end_layer);
        let partition = Partition::load(&bundle.path(&m.edge.file), shape)?;
        let manifest_bytes = std::fs::read(dir.join("manifest.json"))
            .map_err(|e| Error::Startup(format!("cannot read the bundle manifest: {e}")))?;
        let policy = ExitPolicy::new(&m, OperatingPoint::resolve(&m, threshold, target))?;
        let exits: Vec<usize> = m.exits.iter().map(|e| e.layer).collect();
        if exits.is_empty() {
            return Err(Error::Startup("the bundle has no exit head".into()));
        }
        Ok(Self {
            hidden_size: partition.shape.hidden_size,
            context: partition.shape.max_position,
            vocab_size: partition.shape.vocab_size,
            partition: Arc::new(tokio::sync::Mutex::new(partition)),
            waiting: Gauge::default(),
            text,
            exits,
            policy,
            model_id: hex::encode(sha2::Sha256::digest(&manifest_bytes)),
            manifest: m,
        })
    }

    pub fn deepest_exit(&self) -> usize {
        self.exits.last().copied().unwrap_or_default()
    }

    /// A policy for a request that names its own threshold.
    pub fn policy_for(&self, threshold: Option<f32>) -> Result<ExitPolicy> {
        match threshold {
            None => Ok(self.policy.clone()),
            Some(t) => Ok(ExitPolicy::new(&self.manifest, OperatingPoint::Threshold(t))?),
        }
    }

    pub async fn decoder(&self, prompt: &[u32], seed: u64) -> Result<EdgeDecoder> {
        let partition = self.partition.lock().await;
        Ok(EdgeDecoder::new(&partition, &self.exits, prompt, seed, true)?)
    }

    /// Runs one step of `decoder` on a blocking thread once the partition is free.
    pub async fn step(&self, mut decoder: EdgeDecoder) -> Result<(EdgeDecoder, EdgeStep)> {
        self.waiting.inc();
        let partition = self.partition.clone().lock_owned().await;
        self.waiting.dec();
        let mut partition = partition;
        let (decoder, step) = tokio::task::spawn_blocking(move || {
            let step = decoder.step(&mut partition);
            (decoder, step)
        })
        .await
        .map_err(|e| Error::Internal(format!("edge step task: {e}")))?;
        Ok((decoder, step?))
    }
}
