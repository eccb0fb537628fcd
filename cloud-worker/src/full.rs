//! The cloud-only baseline: the whole model (edge and cloud partitions) on one worker, decoding
//! with the same loop as the split model in one process (`collm generate --mode full`), so the
//! same seed gives the same tokens. ONNX Runtime sessions run `&mut`: generations take turns.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::Mutex;

use collm_protocol::{ModelLimits, ValidGenerate};
use collm_runtime::adjust::LogitAdjustment;
use collm_runtime::generate::{GenerateOptions, Generation, Mode, generate};
use collm_runtime::sampling::Pick;
use collm_runtime::transport::{
    CloudAnswer, CloudTransport, InProcessCloud, NextTokenRequest, SessionId, Upload, UploadAck,
    Verdict, VerifyRequest,
};
use collm_runtime::{CatchUp, Encoding, ExitPolicy, SamplingParams, SplitModel};

use crate::{Error, Result};

/// The loaded model; one generation runs at a time.
pub struct FullModel {
    loaded: Mutex<Loaded>,
    limits: ModelLimits,
    /// The model's end-of-turn tokens, used when a request names none.
    stop_ids: Vec<u32>,
}

struct Loaded {
    model: SplitModel,
    cloud: InProcessCloud,
    exits: Vec<usize>,
    policy: ExitPolicy,
}

/// How a generation ended.
#[derive(Debug)]
pub enum Finished {
    /// Every token was streamed (a stop token, `max_tokens` or the end of the context).
    Done(Box<Generation>),
    /// The caller stopped listening; decoding stopped at its next token.
    Abandoned,
}

impl FullModel {
    /// Verifies and loads the bundle's tokenizer and both partitions.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut model = SplitModel::open(dir, true)?;
        let cloud = model.take_in_process_cloud(CatchUp::Exact)?.ok_or_else(|| {
            Error::Internal("the bundle was opened without its cloud partition".into())
        })?;
        let exits = model.exit_layers();
        let policy = ExitPolicy::never(&model.manifest);
        let limits = ModelLimits {
            vocab_size: u32::try_from(model.edge.shape.vocab_size).unwrap_or(u32::MAX),
            max_context: model.edge.shape.max_position as u64,
        };
        let stop_ids = model.text.stop_ids().to_vec();
        Ok(Self { loaded: Mutex::new(Loaded { model, cloud, exits, policy }), limits, stop_ids })
    }

    pub fn limits(&self) -> ModelLimits {
        self.limits
    }

    /// Decodes `req` on the calling (blocking) thread, handing each token (with its
    /// probability and the alternatives the request asked for) to `on_token` as soon as it is
    /// chosen; `on_token` returns false when nobody listens any more.
    pub fn generate(
        &self,
        req: &ValidGenerate,
        on_token: &mut dyn FnMut(u32, f32, Vec<Pick>) -> bool,
    ) -> Result<Finished> {
        let mut guard = self.loaded.lock().map_err(|_| Error::Internal("model poisoned".into()))?;
        let Loaded { model, cloud, exits, policy } = &mut *guard;
        let opts = GenerateOptions {
            max_tokens: req.max_tokens as usize,
            mode: Mode::Full,
            policy: policy.clone(),
            sampling: SamplingParams {
                temperature: req.sampling.temperature,
                top_k: req.sampling.top_k as usize,
                top_p: req.sampling.top_p,
            },
            seed: req.seed,
            encoding: Encoding::F32,
            stop_ids: if req.stop_ids.is_empty() {
                self.stop_ids.clone()
            } else {
                req.stop_ids.clone()
            },
            adjustment: LogitAdjustment {
                bias: req.adjustment.bias.iter().copied().collect(),
                presence_penalty: req.adjustment.presence_penalty,
                frequency_penalty: req.adjustment.frequency_penalty,
            },
            top_k: req.top_k as usize,
        };
        let abandoned = Cell::new(false);
        // Every token of the full model is the in-process cloud's answer: its alternatives are
        // the last answer's.
        let alternatives = RefCell::new(Vec::new());
        let mut cloud =
            Abandonable { inner: cloud, abandoned: &abandoned, alternatives: &alternatives };
        let generation =
            generate(&mut model.edge, exits, Some(&mut cloud), &req.prompt_ids, &opts, &mut |ev| {
                let top = alternatives.take();
                if !abandoned.get() && !on_token(ev.token, ev.confidence, top) {
                    abandoned.set(true);
                }
            });
        match generation {
            _ if abandoned.get() => Ok(Finished::Abandoned),
            Ok(g) => Ok(Finished::Done(Box::new(g))),
            Err(e) => Err(e.into()),
        }
    }
}

/// The in-process cloud, refusing the next step once the caller has gone, so that an abandoned
/// generation stops after its current token instead of decoding to `max_tokens` for nobody.
struct Abandonable<'a> {
    inner: &'a mut InProcessCloud,
    abandoned: &'a Cell<bool>,
    /// The alternatives of the last answer, until the token is handed on.
    alternatives: &'a RefCell<Vec<Pick>>,
}

impl CloudTransport for Abandonable<'_> {
    fn upload(&mut self, session: SessionId, upload: Upload) -> collm_runtime::Result<UploadAck> {
        self.inner.upload(session, upload)
    }

    fn next_token(
        &mut self,
        session: SessionId,
        req: NextTokenRequest,
    ) -> collm_runtime::Result<CloudAnswer> {
        if self.abandoned.get() {
            return Err(collm_runtime::Error::Invalid("the caller stopped listening".into()));
        }
        let answer = self.inner.next_token(session, req)?;
        self.alternatives.replace(answer.top_k.clone());
        Ok(answer)
    }

    fn verify(&mut self, session: SessionId, req: VerifyRequest) -> collm_runtime::Result<Verdict> {
        self.inner.verify(session, req)
    }

    fn rollback(&mut self, session: SessionId, len: usize) -> collm_runtime::Result<()> {
        self.inner.rollback(session, len)
    }

    fn end_session(&mut self, session: SessionId) {
        self.inner.end_session(session);
    }
}
