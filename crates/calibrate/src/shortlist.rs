//! A vocabulary shortlist for a cheaper exit head: the exit head computes logits for these
//! tokens only (a `K × H` matrix instead of `V × H`), and everything else is impossible for it.
//! Tokens the full model itself chose on calibration text come first, most frequent first;
//! then the most frequent tokens of answer text in the corpus; then nothing. Tokens that must
//! always be reachable (the stop tokens) are in whatever the size.

use std::collections::HashMap;

/// Token counts, by id.
#[derive(Debug, Clone, Default)]
pub struct TokenCounts(HashMap<u32, u64>);

impl TokenCounts {
    pub fn add(&mut self, token: u32) {
        *self.0.entry(token).or_default() += 1;
    }

    pub fn extend(&mut self, tokens: impl IntoIterator<Item = u32>) {
        tokens.into_iter().for_each(|t| self.add(t));
    }

    pub fn distinct(&self) -> usize {
        self.0.len()
    }

    /// Ids, most frequent first (ties: smaller id first).
    fn ranked(&self) -> Vec<u32> {
        let mut v: Vec<(u32, u64)> = self.0.iter().map(|(&t, &c)| (t, c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter().map(|(t, _)| t).collect()
    }
}

/// Up to `size` token ids below `vocab`, ascending: `always`, then `emitted` by frequency,
/// then `corpus` by frequency.
pub fn select_shortlist(
    always: &[u32],
    emitted: &TokenCounts,
    corpus: &TokenCounts,
    vocab: usize,
    size: usize,
) -> Vec<u32> {
    let mut chosen = vec![false; vocab];
    let mut out = Vec::with_capacity(size.min(vocab));
    let candidates = always.iter().copied().chain(emitted.ranked()).chain(corpus.ranked());
    for t in candidates {
        if out.len() == size {
            break;
        }
        if let Some(slot) = chosen.get_mut(t as usize).filter(|c| !**c) {
            *slot = true;
            out.push(t);
        }
    }
    out.sort_unstable();
    out
}

/// Share of `tokens` that are in the (ascending) `shortlist`.
pub fn coverage(shortlist: &[u32], tokens: impl IntoIterator<Item = u32>) -> f64 {
    let (mut hit, mut all) = (0usize, 0usize);
    for t in tokens {
        all += 1;
        hit += usize::from(shortlist.binary_search(&t).is_ok());
    }
    if all == 0 { 1.0 } else { hit as f64 / all as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(tokens: &[u32]) -> TokenCounts {
        let mut c = TokenCounts::default();
        c.extend(tokens.iter().copied());
        c
    }

    #[test]
    fn emitted_tokens_come_before_corpus_tokens_and_stop_tokens_always_fit() {
        let emitted = counts(&[7, 7, 7, 9, 9, 4]);
        let corpus = counts(&[1, 1, 1, 1, 3, 3, 9]);
        assert_eq!(select_shortlist(&[2], &emitted, &corpus, 10, 3), vec![2, 7, 9]);
        assert_eq!(select_shortlist(&[2], &emitted, &corpus, 10, 5), vec![1, 2, 4, 7, 9]);
        assert_eq!(select_shortlist(&[2], &emitted, &corpus, 10, 6), vec![1, 2, 3, 4, 7, 9]);
        assert_eq!(
            select_shortlist(&[2], &emitted, &corpus, 10, 100).len(),
            6,
            "no more than known"
        );
    }

    #[test]
    fn ties_break_by_id_and_out_of_vocabulary_ids_are_dropped() {
        let emitted = counts(&[5, 3, 12]);
        assert_eq!(select_shortlist(&[], &emitted, &TokenCounts::default(), 10, 1), vec![3]);
        assert_eq!(select_shortlist(&[11], &emitted, &TokenCounts::default(), 10, 5), vec![3, 5]);
    }

    #[test]
    fn coverage_counts_tokens_in_the_shortlist() {
        assert_eq!(coverage(&[1, 4, 9], [1, 4, 4, 5]), 0.75);
        assert_eq!(coverage(&[1], []), 1.0);
    }
}
