//! The cloud-only baseline's request, checked against the model before it reaches the decoder:
//! a non-empty prompt that leaves room in the context, known token ids, at least one token to
//! generate, sound sampling parameters.

use crate::adjustment::Adjustment;
use crate::pb;
use crate::valid::Sampling;
use crate::{ProtocolError, Result};

/// What a full-model replica accepts: fixed by the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Token ids are below it.
    pub vocab_size: u32,
    /// Positions per sequence, prompt and generated tokens together.
    pub max_context: u64,
}

/// A [`pb::GenerateRequest`] whose ids, lengths and numbers are known to be sound.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidGenerate {
    pub prompt_ids: Vec<u32>,
    /// At least 1.
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub seed: u64,
    /// Empty means the model's own end-of-turn tokens.
    pub stop_ids: Vec<u32>,
    pub adjustment: Adjustment,
    /// Alternatives to return with each token.
    pub top_k: u32,
}

/// Most alternatives a generate request may ask for with each token.
pub const MAX_GENERATE_TOP_K: u32 = crate::Limits::DEFAULT_MAX_TOP_K;

impl ValidGenerate {
    pub fn parse(req: pb::GenerateRequest, limits: &ModelLimits) -> Result<Self> {
        if req.prompt_ids.is_empty() {
            return Err(ProtocolError::EmptyPrompt);
        }
        let len = req.prompt_ids.len() as u64;
        if len >= limits.max_context {
            return Err(ProtocolError::PromptTooLong { len, max_context: limits.max_context });
        }
        let unknown = |ids: &[u32], what: &'static str| {
            ids.iter().position(|&id| id >= limits.vocab_size).map(|index| {
                ProtocolError::UnknownTokenId {
                    what,
                    index,
                    id: ids[index],
                    vocab_size: limits.vocab_size,
                }
            })
        };
        if let Some(e) = unknown(&req.prompt_ids, "prompt_ids") {
            return Err(e);
        }
        if let Some(e) = unknown(&req.stop_ids, "stop_ids") {
            return Err(e);
        }
        if req.max_tokens == 0 {
            return Err(ProtocolError::NoTokensAsked);
        }
        let sampling = Sampling::parse(req.sampling.as_ref())?;
        if req.top_k > MAX_GENERATE_TOP_K {
            return Err(ProtocolError::TopKTooLarge {
                requested: req.top_k,
                max: MAX_GENERATE_TOP_K,
            });
        }
        let adjustment = Adjustment::parse(req.adjustment, limits.max_context)?;
        adjustment.check_vocab(limits.vocab_size)?;
        Ok(Self {
            prompt_ids: req.prompt_ids,
            max_tokens: req.max_tokens,
            sampling,
            seed: req.seed,
            stop_ids: req.stop_ids,
            adjustment,
            top_k: req.top_k,
        })
    }
}

/// A generate request, as a caller sends it.
pub fn generate_request(
    prompt_ids: Vec<u32>,
    max_tokens: u32,
    sampling: Sampling,
    seed: u64,
    stop_ids: Vec<u32>,
) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt_ids,
        max_tokens,
        sampling: Some(sampling.to_wire()),
        seed,
        stop_ids,
        adjustment: None,
        top_k: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ModelLimits = ModelLimits { vocab_size: 100, max_context: 8 };

    fn req(prompt: &[u32]) -> pb::GenerateRequest {
        generate_request(prompt.to_vec(), 4, Sampling::default(), 7, vec![2])
    }

    #[test]
    fn a_sound_request_keeps_every_field() {
        let v = ValidGenerate::parse(req(&[1, 5, 99]), &LIMITS).expect("valid");
        assert_eq!(v.prompt_ids, vec![1, 5, 99]);
        assert_eq!((v.max_tokens, v.seed, v.stop_ids.clone()), (4, 7, vec![2]));
        let greedy = pb::GenerateRequest { sampling: None, ..req(&[1]) };
        assert_eq!(
            ValidGenerate::parse(greedy, &LIMITS).expect("valid").sampling,
            Sampling::default()
        );
    }

    #[test]
    fn each_unsound_request_is_invalid_argument_with_its_reason() {
        let cases = [
            (req(&[]), "prompt is empty"),
            (req(&[1; 8]), "8 tokens"),
            (req(&[1, 100]), "prompt_ids[1] = 100"),
            (pb::GenerateRequest { stop_ids: vec![7, 300], ..req(&[1]) }, "stop_ids[1] = 300"),
            (pb::GenerateRequest { max_tokens: 0, ..req(&[1]) }, "max_tokens"),
            (
                pb::GenerateRequest {
                    sampling: Some(pb::SamplingParams { temperature: -1.0, ..Default::default() }),
                    ..req(&[1])
                },
                "temperature",
            ),
        ];
        for (request, needle) in cases {
            let err = ValidGenerate::parse(request, &LIMITS).expect_err(needle);
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{needle}");
            assert!(status.message().contains(needle), "{:?} lacks {needle:?}", status.message());
        }
    }
}
