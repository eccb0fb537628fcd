//! Repetition at the end of an answer: when a sequence of tokens "falls into a loop". The
//! benchmark counts answers that end in one; the exit policy keeps the edge from carrying one
//! on its own.

use serde::Serialize;

/// When an answer "falls into a loop": its tail is periodic with a period of at most
/// `max_period` tokens (every token equals the one `period` tokens before it), and that
/// periodic tail spans at least `max(min_repeats · period, min_span)` tokens. A loop that the
/// answer escaped before its end does not count; an answer that ends in a repetition and then
/// a stop token does (the caller strips stop tokens first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LoopDetector {
    pub max_period: usize,
    pub min_repeats: usize,
    pub min_span: usize,
}

impl Default for LoopDetector {
    /// Phrases of up to 32 tokens; at least three copies and 16 tokens of repetition, so a
    /// doubled word or a repeated list marker is not a loop while "health conditions like"
    /// five times over is.
    fn default() -> Self {
        Self { max_period: 32, min_repeats: 3, min_span: 16 }
    }
}

/// A loop found at the end of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Loop {
    /// Tokens per repetition (the smallest period that qualifies).
    pub period: usize,
    /// Tokens at the end of the answer covered by the repetition (including its first copy).
    pub span: usize,
}

impl LoopDetector {
    /// The loop `tokens` ends in, if any.
    pub fn find(&self, tokens: &[u32]) -> Option<Loop> {
        let n = tokens.len();
        (1..=self.max_period.min(n / 2)).find_map(|period| {
            let repeated =
                (period..n).rev().take_while(|&i| tokens[i] == tokens[i - period]).count();
            let span = repeated + period;
            (span >= (self.min_repeats * period).max(self.min_span))
                .then_some(Loop { period, span })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repeat(phrase: &[u32], times: usize) -> Vec<u32> {
        phrase.iter().copied().cycle().take(phrase.len() * times).collect()
    }

    #[test]
    fn a_tail_repeating_a_phrase_is_a_loop() {
        let mut answer = vec![7, 8, 9, 10];
        answer.extend(repeat(&[1, 2, 3], 6));
        let found = LoopDetector::default().find(&answer).expect("a loop");
        assert_eq!(found, Loop { period: 3, span: 18 });
        // A cut-off final copy still belongs to the loop.
        answer.push(1);
        assert_eq!(LoopDetector::default().find(&answer), Some(Loop { period: 3, span: 19 }));
    }

    #[test]
    fn a_repeated_token_needs_the_minimum_span() {
        let d = LoopDetector::default();
        let mut answer = vec![5, 6];
        answer.extend(repeat(&[4], 15));
        assert_eq!(d.find(&answer), None, "15 copies of one token are under the 16-token span");
        answer.push(4);
        assert_eq!(d.find(&answer), Some(Loop { period: 1, span: 16 }));
    }

    #[test]
    fn long_periods_need_three_copies() {
        let d = LoopDetector::default();
        let phrase: Vec<u32> = (100..120).collect();
        assert_eq!(d.find(&repeat(&phrase, 2)), None);
        assert_eq!(d.find(&repeat(&phrase, 3)), Some(Loop { period: 20, span: 60 }));
        let too_long: Vec<u32> = (100..140).collect();
        assert_eq!(d.find(&repeat(&too_long, 4)), None, "period 40 is over the maximum of 32");
    }

    #[test]
    fn ordinary_text_and_an_escaped_repetition_are_not_loops() {
        let d = LoopDetector::default();
        let text: Vec<u32> = (0..200).map(|i| (i * 7919 % 1000) as u32).collect();
        assert_eq!(d.find(&text), None);
        let mut escaped = repeat(&[1, 2], 20);
        escaped.extend([3, 4, 5, 6]);
        assert_eq!(d.find(&escaped), None);
        assert_eq!(d.find(&[]), None);
        assert_eq!(d.find(&[1]), None);
    }
}
