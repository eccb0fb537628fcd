//! Runtime types <-> wire types.

use collm_protocol::{Adjustment, Sampling, pb};
use collm_runtime::adjust::{Generated, LogitAdjustment};
use collm_runtime::sampling::{Pick, SamplingParams};
use collm_runtime::transport::CloudAnswer;

pub fn sampling(p: &SamplingParams) -> Sampling {
    Sampling { temperature: p.temperature, top_k: p.top_k as u32, top_p: p.top_p }
}

pub fn answer(reply: &pb::NextTokenReply) -> CloudAnswer {
    CloudAnswer {
        pick: Pick { token: reply.token, prob: reply.prob },
        top_k: reply.top_k.iter().map(|t| Pick { token: t.token, prob: t.prob }).collect(),
    }
}

/// A request's logit adjustment with the generated tokens it counts; `None` when it changes
/// nothing, so a cloud that predates adjustments is sent what it understands.
pub fn adjustment(a: &LogitAdjustment, seen: &Generated) -> Option<pb::LogitAdjustment> {
    Adjustment {
        bias: a.bias.iter().map(|(&t, &b)| (t, b)).collect(),
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
        generated: seen.counts().collect(),
    }
    .to_wire()
}
