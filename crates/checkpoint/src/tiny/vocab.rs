//! A small byte-level BPE vocabulary: GPT-2's 256 byte symbols plus merges learned greedily
//! from a fixed English text, behind three ChatML control tokens.

use std::collections::{BTreeMap, HashSet};

pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const CONTROL: i32 = 3;
const NORMAL: i32 = 1;

const CORPUS: &str = "The quick brown fox jumps over the lazy dog. In the beginning there was \
the word, and the word was with the model. A language model reads the text of the prompt and \
then writes the next token, one at a time, until it reaches the end of the answer. When the edge \
device is not sure about the next word, it asks the cloud for help; otherwise it keeps going on \
its own. There is nothing more important than that the answer is right, and that the user gets \
it in time. This is the story of the things that we want to do with them, and of the people \
who are working on it in the world today. She said that he would be there in the morning, and \
they went to the station together.";

/// GPT-2's byte → printable character table (bytes that are already printable map to
/// themselves, the rest to code points from 256 up).
pub fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

/// Tokens (id order), their GGUF token types, and merges (`"a b"`, rank order).
#[derive(Debug, Clone, PartialEq)]
pub struct TinyVocab {
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
}

/// Words as the byte-level pre-tokenizer would see them: letters with an optional leading space.
fn corpus_words(table: &[char; 256]) -> BTreeMap<Vec<String>, usize> {
    let mut words = BTreeMap::new();
    let mut current = String::new();
    let mut flush = |w: &mut String| {
        if w.trim().chars().any(|c| c.is_ascii_alphabetic()) {
            let symbols = w.bytes().map(|b| table[b as usize].to_string()).collect();
            *words.entry(symbols).or_insert(0) += 1;
        }
        w.clear();
    };
    for ch in CORPUS.chars() {
        if ch.is_ascii_alphabetic() {
            current.push(ch);
        } else {
            flush(&mut current);
            if ch == ' ' {
                current.push(' ');
            }
        }
    }
    flush(&mut current);
    words
}

pub fn build_vocab(num_merges: usize) -> TinyVocab {
    let table = byte_to_unicode();
    let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    let mut token_types = vec![CONTROL; SPECIAL_TOKENS.len()];
    tokens.extend(table.iter().map(char::to_string));
    token_types.resize(tokens.len(), NORMAL);
    let mut known: HashSet<String> = tokens.iter().cloned().collect();

    let mut words: Vec<(Vec<String>, usize)> = corpus_words(&table).into_iter().collect();
    let mut merges = Vec::new();
    for _ in 0..num_merges {
        let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (symbols, freq) in &words {
            for pair in symbols.windows(2) {
                *counts.entry((&pair[0], &pair[1])).or_insert(0) += freq;
            }
        }
        // Highest count wins; the BTreeMap order makes ties deterministic.
        let Some(((a, b), _)) =
            counts.iter().fold(None, |best: Option<(&(&str, &str), usize)>, (k, &v)| match best {
                Some((_, bv)) if bv >= v => best,
                _ => Some((k, v)),
            })
        else {
            break;
        };
        let (a, b) = (a.to_string(), b.to_string());
        let merged = format!("{a}{b}");
        for (symbols, _) in &mut words {
            let mut i = 0;
            while i + 1 < symbols.len() {
                if symbols[i] == a && symbols[i + 1] == b {
                    symbols[i] = merged.clone();
                    symbols.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(format!("{a} {b}"));
        if known.insert(merged.clone()) {
            tokens.push(merged);
            token_types.push(NORMAL);
        }
    }
    TinyVocab { tokens, token_types, merges }
}
