//! How one request picks from an exit head's logits: its logit adjustment (`logit_bias`, the
//! penalties) applied first, so that the exit confidence, the token and the probabilities
//! reported for it all come from the adjusted logits — as in the cloud, which applies the same
//! adjustment to its own — and the most likely alternatives listed when the client asked for
//! log probabilities.

use collm_runtime::adjust::Generated;
use collm_runtime::decoder::ReadyToPick;
use collm_runtime::sampling::{self, Pick};

use crate::generation::{GenerationRequest, Source, Token};

impl GenerationRequest {
    /// Each exit head's top token and its probability (its confidence), after the adjustment.
    pub(crate) fn heads(&self, ready: &ReadyToPick, seen: &Generated) -> Vec<(usize, Pick)> {
        ready
            .heads
            .iter()
            .map(|(layer, logits)| (*layer, sampling::top1(&self.adjustment.apply(logits, seen))))
            .collect()
    }

    /// The token an exit head picks with the draw `u`, after the adjustment.
    pub(crate) fn pick(&self, logits: &[f32], u: f64, seen: &Generated, source: Source) -> Token {
        let logits = self.adjustment.apply(logits, seen);
        let Pick { token, prob } = sampling::sample(&logits, &self.sampling, u);
        let alternatives = match self.alternatives {
            Some(k) if k > 0 => sampling::top_k(&logits, k),
            _ => vec![],
        };
        Token { id: token, source, prob, alternatives }
    }

    /// How many alternatives the cloud should return with its answers.
    pub(crate) fn cloud_alternatives(&self) -> usize {
        self.alternatives.unwrap_or(0)
    }
}
