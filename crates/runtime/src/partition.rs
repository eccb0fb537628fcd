//! A partition graph loaded into ONNX Runtime, with its per-session KV cache.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

use collm_bundle::data_file_name;
use collm_bundle::graph::names;
use collm_checkpoint::LlamaConfig;
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::{DynValue, Tensor, TensorRef};

use crate::mask::causal_bias;
use crate::ort_env::environment;
use crate::{Error, Result};

/// The keys and values of every layer of a partition for one sequence, plus its length.
pub struct KvCache {
    layers: Vec<(DynValue, DynValue)>,
    len: usize,
}

impl KvCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on (a rolled-back draft or guess), keeping the keys
    /// and values of positions `0..len` as they were. Truncating to the current length or
    /// beyond changes nothing.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len {
            return Ok(());
        }
        for (k, v) in &mut self.layers {
            *k = truncated(k, len)?;
            *v = truncated(v, len)?;
        }
        self.len = len;
        Ok(())
    }
}

/// The first `len` positions of a `[1, heads, positions, head_dim]` cache tensor, copied.
fn truncated(value: &DynValue, len: usize) -> Result<DynValue> {
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(ort_err("cache tensor"))?;
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let [batch, heads, positions, head_dim] = dims[..] else {
        return Err(Error::Runtime(format!("cache tensor of shape {dims:?}")));
    };
    let keep = len.min(positions);
    let mut out = Vec::with_capacity(batch * heads * keep * head_dim);
    for block in data.chunks_exact((positions * head_dim).max(1)).take(batch * heads) {
        out.extend_from_slice(&block[..keep * head_dim]);
    }
    let tensor = Tensor::<f32>::from_array((
        vec![batch as i64, heads as i64, keep as i64, head_dim as i64],
        out,
    ))
    .map_err(ort_err("truncated cache"))?;
    Ok(tensor.into_dyn())
}

/// Which decoder layers a partition runs and the shapes it exchanges.
#[derive(Debug, Clone)]
pub struct PartitionShape {
    pub layers: Range<usize>,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position: usize,
}

impl PartitionShape {
    pub fn new(cfg: &LlamaConfig, layers: Range<usize>) -> Self {
        Self {
            layers,
            hidden_size: cfg.hidden_size,
            vocab_size: cfg.vocab_size,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            max_position: cfg.max_position,
        }
    }
}

/// The first input of a partition: token ids (edge) or split hidden states (cloud).
pub enum PartitionInput<'a> {
    Tokens(&'a [u32]),
    Hidden(&'a [f32]),
}

/// Named outputs of one run, copied out of ONNX Runtime.
pub struct RunOutputs {
    values: Vec<(String, Vec<f32>)>,
}

impl RunOutputs {
    /// An output's values (row-major), if the partition produced it.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    pub fn take(&mut self, name: &str) -> Option<Vec<f32>> {
        let i = self.values.iter().position(|(n, _)| n == name)?;
        Some(self.values.swap_remove(i).1)
    }
}

pub struct Partition {
    session: Session,
    pub shape: PartitionShape,
    /// Whether the graph reads an attention bias and a logits count (the K/V propagation
    /// graph has neither attention nor heads).
    takes_bias: bool,
    takes_count: bool,
    /// Whether the graph multiplies int8-quantized activations (see
    /// [`collm_bundle::graph::int8_activations`]).
    int8_activations: bool,
}

/// Session options of every partition: initializers are allocated outside the memory arena
/// (else the arena keeps the memory their loading used), then `COLLM_ORT_CONFIG`
/// (`key=value,key=value`, ONNX Runtime's session configuration keys) for experiments.
fn session_config() -> Vec<(String, String)> {
    let mut entries =
        vec![("session.use_device_allocator_for_initializers".to_string(), "1".to_string())];
    if let Ok(extra) = std::env::var("COLLM_ORT_CONFIG") {
        entries.extend(extra.split(',').filter_map(|kv| {
            kv.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        }));
    }
    entries
}

/// With `COLLM_ORT_PROFILE=DIR`, every partition records ONNX Runtime's per-node timings into
/// `DIR/<graph file stem>_<timestamp>.json` (written when the partition is dropped); see
/// `tools/profile/summarize.py`.
fn profile_prefix(graph: &Path) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("COLLM_ORT_PROFILE")?;
    let stem = graph.file_stem().map_or("partition".into(), |s| s.to_string_lossy());
    Some(Path::new(&dir).join(stem.as_ref()))
}

fn ort_err(context: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::Runtime(format!("{context}: {e}"))
}

impl Partition {
    pub fn load(path: &Path, shape: PartitionShape) -> Result<Self> {
        // Read before the session exists, so an old bundle whose weights sit inside the graph
        // file does not hold them twice; a current graph file is kilobytes.
        let int8_activations = {
            let graph = std::fs::read(path)
                .map_err(|e| Error::Runtime(format!("cannot read {}: {e}", path.display())))?;
            collm_bundle::onnx::decode(&graph)
                .map(|m| collm_bundle::graph::int8_activations(&m))
                .map_err(|e| Error::Runtime(format!("cannot decode {}: {e}", path.display())))?
        };
        let env = environment()?;
        let mut builder = Session::builder(env)
            .map_err(ort_err("session builder"))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| Error::Runtime(format!("optimization level: {e}")))?
            .with_operators(crate::kernels::domain().map_err(ort_err("our operators"))?)
            .map_err(|e| Error::Runtime(format!("registering our operators: {e}")))?;
        for (key, value) in session_config() {
            builder = builder
                .with_config_entry(&key, &value)
                .map_err(|e| Error::Runtime(format!("session option {key}={value}: {e}")))?;
        }
        if let Some(prefix) = profile_prefix(path) {
            builder = builder
                .with_profiling(&prefix)
                .map_err(|e| Error::Runtime(format!("profiling to {}: {e}", prefix.display())))?;
        }
        let session =
            crate::kernels::one_at_a_time(|| builder.commit_from_file(path)).map_err(|e| {
                Error::Runtime(format!("cannot load partition {}: {e}", path.display()))
            })?;
        crate::memory::release_freed_heap();
        if let Some(name) = path.file_name() {
            let data = path.with_file_name(data_file_name(&name.to_string_lossy()));
            let released = crate::memory::release_mapped_file(&data);
            tracing::debug!(file = %data.display(), released, "weight file pages released");
        }
        let takes = |name: &str| session.inputs().iter().any(|i| i.name() == name);
        let (takes_bias, takes_count) = (takes(names::ATTENTION_BIAS), takes(names::LOGITS_COUNT));
        Ok(Self { session, shape, takes_bias, takes_count, int8_activations })
    }

    /// Whether the graph multiplies int8-quantized activations: its batched passes then
    /// compute something else than its one-position passes, not a rounding of them.
    pub fn int8_activations(&self) -> bool {
        self.int8_activations
    }

    pub fn empty_cache(&self) -> Result<KvCache> {
        let s = &self.shape;
        let dims = vec![1i64, s.num_kv_heads as i64, 0, s.head_dim as i64];
        let mut layers = Vec::with_capacity(s.layers.len());
        for _ in s.layers.clone() {
            let k = Tensor::<f32>::from_array((dims.clone(), Vec::<f32>::new()))
                .map_err(ort_err("empty cache"))?;
            let v = Tensor::<f32>::from_array((dims.clone(), Vec::<f32>::new()))
                .map_err(ort_err("empty cache"))?;
            layers.push((k.into_dyn(), v.into_dyn()));
        }
        Ok(KvCache { layers, len: 0 })
    }

    /// Runs the partition over `input` (positions `cache.len()..`), extends the cache, and
    /// returns the requested outputs. `logits_count` trailing positions get logits (0: none,
    /// which skips the heads' work).
    pub fn run(
        &mut self,
        cache: &mut KvCache,
        input: PartitionInput<'_>,
        logits_count: usize,
        wanted: &[&str],
    ) -> Result<RunOutputs> {
        let s = &self.shape;
        let seq = match input {
            PartitionInput::Tokens(ids) => ids.len(),
            PartitionInput::Hidden(h) => h.len() / s.hidden_size,
        };
        if seq == 0 {
            return Err(Error::Invalid("a partition run needs at least one position".into()));
        }
        let past = cache.len;
        if past + seq > s.max_position {
            return Err(Error::ContextFull { needed: past + seq, context: s.max_position });
        }
        let logits_count = logits_count.min(seq);
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(6 + 2 * s.layers.len());
        let t = |e| Error::Runtime(format!("input tensor: {e}"));
        match input {
            PartitionInput::Tokens(ids) => {
                let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
                inputs.push((
                    names::INPUT_IDS.into(),
                    Tensor::from_array((vec![1i64, seq as i64], ids)).map_err(t)?.into(),
                ));
            }
            PartitionInput::Hidden(h) => {
                if h.len() != seq * s.hidden_size {
                    return Err(Error::Invalid(format!(
                        "hidden states must be rows of {}",
                        s.hidden_size
                    )));
                }
                inputs.push((
                    names::HIDDEN.into(),
                    // A view: prefill hidden states can be large and need no copy.
                    TensorRef::from_array_view((vec![1i64, seq as i64, s.hidden_size as i64], h))
                        .map_err(t)?
                        .into(),
                ));
            }
        }
        let positions: Vec<i64> = (past as i64..(past + seq) as i64).collect();
        inputs.push((
            names::POSITION_IDS.into(),
            Tensor::from_array((vec![1i64, seq as i64], positions)).map_err(t)?.into(),
        ));
        if self.takes_bias {
            inputs.push((
                names::ATTENTION_BIAS.into(),
                Tensor::from_array((
                    vec![1i64, 1, seq as i64, (past + seq) as i64],
                    causal_bias(past, seq),
                ))
                .map_err(t)?
                .into(),
            ));
        }
        if self.takes_count {
            inputs.push((
                names::LOGITS_COUNT.into(),
                Tensor::from_array((vec![1i64], vec![logits_count as i64])).map_err(t)?.into(),
            ));
        }
        for (i, layer) in s.layers.clone().enumerate() {
            let (k, v) = &cache.layers[i];
            inputs.push((names::past_key(layer).into(), k.view().into()));
            inputs.push((names::past_value(layer).into(), v.view().into()));
        }
        let layers = s.layers.clone();
        let mut outputs = self.session.run(inputs).map_err(ort_err("partition run"))?;
        let mut values = Vec::with_capacity(wanted.len());
        for name in wanted {
            let value = outputs
                .get(*name)
                .ok_or_else(|| Error::Runtime(format!("partition has no output {name}")))?;
            let (_, data) = value.try_extract_tensor::<f32>().map_err(ort_err("output"))?;
            values.push((name.to_string(), data.to_vec()));
        }
        for (i, layer) in layers.enumerate() {
            let k = outputs
                .remove(names::present_key(layer))
                .ok_or_else(|| Error::Runtime("missing present key".into()))?;
            let v = outputs
                .remove(names::present_value(layer))
                .ok_or_else(|| Error::Runtime("missing present value".into()))?;
            cache.layers[i] = (k, v);
        }
        cache.len = past + seq;
        Ok(RunOutputs { values })
    }
}
