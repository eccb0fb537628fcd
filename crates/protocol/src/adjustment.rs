//! A request's logit adjustment ([`pb::LogitAdjustment`]), checked: OpenAI's ranges for the
//! bias and the penalties, token ids within the vocabulary, and counts that fit in the context.

use crate::pb;
use crate::{ProtocolError, Result};

/// Most tokens one request may bias.
pub const MAX_BIASED_TOKENS: usize = 300;
const MAX_BIAS: f32 = 100.0;
const MAX_PENALTY: f32 = 2.0;

/// A [`pb::LogitAdjustment`] whose numbers are sound, in token order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adjustment {
    pub bias: Vec<(u32, f32)>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Token id and count among the tokens generated before the first position picked for.
    pub generated: Vec<(u32, u32)>,
}

impl Adjustment {
    /// Unset on the wire: no adjustment. Token ids are checked by [`Self::check_vocab`], where
    /// the vocabulary is known.
    pub fn parse(wire: Option<pb::LogitAdjustment>, max_context: u64) -> Result<Self> {
        let Some(wire) = wire else { return Ok(Self::default()) };
        let bad = |why: String| Err(ProtocolError::InvalidAdjustment(why));
        if wire.bias.len() > MAX_BIASED_TOKENS {
            return bad(format!("{} biased tokens; at most {MAX_BIASED_TOKENS}", wire.bias.len()));
        }
        for (name, p) in [
            ("presence_penalty", wire.presence_penalty),
            ("frequency_penalty", wire.frequency_penalty),
        ] {
            if !(-MAX_PENALTY..=MAX_PENALTY).contains(&p) {
                return bad(format!("{name} {p} is outside [-{MAX_PENALTY}, {MAX_PENALTY}]"));
            }
        }
        let mut bias: Vec<(u32, f32)> = wire.bias.into_iter().collect();
        bias.sort_by_key(|&(t, _)| t);
        if let Some((t, b)) = bias.iter().find(|(_, b)| !(-MAX_BIAS..=MAX_BIAS).contains(b)) {
            return bad(format!("the bias {b} of token {t} is outside [-{MAX_BIAS}, {MAX_BIAS}]"));
        }
        let mut generated: Vec<(u32, u32)> = wire.generated.into_iter().collect();
        generated.sort_by_key(|&(t, _)| t);
        let total: u64 = generated.iter().map(|&(_, c)| u64::from(c)).sum();
        if total >= max_context {
            return bad(format!(
                "{total} generated tokens counted; the context holds {max_context} positions"
            ));
        }
        Ok(Self {
            bias,
            presence_penalty: wire.presence_penalty,
            frequency_penalty: wire.frequency_penalty,
            generated,
        })
    }

    /// Every token it names is below `vocab_size`.
    pub fn check_vocab(&self, vocab_size: u32) -> Result<()> {
        let mut ids =
            self.bias.iter().map(|&(t, _)| t).chain(self.generated.iter().map(|&(t, _)| t));
        match ids.find(|&t| t >= vocab_size) {
            Some(t) => Err(ProtocolError::InvalidAdjustment(format!(
                "token {t} is outside the vocabulary of {vocab_size}"
            ))),
            None => Ok(()),
        }
    }

    /// The wire form; `None` when it changes nothing (as an older peer would send).
    pub fn to_wire(&self) -> Option<pb::LogitAdjustment> {
        let identity =
            self.bias.is_empty() && self.presence_penalty == 0.0 && self.frequency_penalty == 0.0;
        (!identity).then(|| pb::LogitAdjustment {
            bias: self.bias.iter().copied().collect(),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            generated: self.generated.iter().copied().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(bias: &[(u32, f32)], presence: f32, generated: &[(u32, u32)]) -> pb::LogitAdjustment {
        pb::LogitAdjustment {
            bias: bias.iter().copied().collect(),
            presence_penalty: presence,
            frequency_penalty: 0.0,
            generated: generated.iter().copied().collect(),
        }
    }

    #[test]
    fn a_sound_adjustment_round_trips_in_token_order() {
        let a = Adjustment::parse(Some(wire(&[(9, -1.0), (2, 3.0)], 0.5, &[(4, 2)])), 100)
            .expect("valid");
        assert_eq!(a.bias, vec![(2, 3.0), (9, -1.0)]);
        assert_eq!(a.generated, vec![(4, 2)]);
        assert!(a.check_vocab(10).is_ok());
        assert_eq!(Adjustment::parse(a.to_wire(), 100).expect("valid"), a);
        assert_eq!(Adjustment::parse(None, 100).expect("none"), Adjustment::default());
        assert_eq!(Adjustment::default().to_wire(), None);
    }

    #[test]
    fn each_unsound_adjustment_is_invalid_argument_naming_its_fault() {
        let cases = [
            (wire(&[(10, 1.0)], 0.0, &[]), "vocabulary"),
            (wire(&[], 0.0, &[(12, 1)]), "vocabulary"),
            (wire(&[(1, 101.0)], 0.0, &[]), "bias 101"),
            (wire(&[], -3.0, &[]), "presence_penalty"),
            (wire(&[], 0.0, &[(1, 60), (2, 40)]), "100 generated"),
            (wire(&(0..301).map(|t| (t, 1.0)).collect::<Vec<_>>(), 0.0, &[]), "301"),
        ];
        for (w, needle) in cases {
            let err =
                Adjustment::parse(Some(w), 100).and_then(|a| a.check_vocab(10)).expect_err(needle);
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(needle), "{:?} lacks {needle}", status.message());
        }
    }
}
