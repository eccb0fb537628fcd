//! Runtime types <-> wire types.

use collm_protocol::{Sampling, pb};
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
