//! Turning a stream of token ids into a stream of text: each new token's text is the difference
//! between the decoded text before and after it, held back while it ends in an incomplete UTF-8
//! sequence; and OpenAI `stop` strings, which end the text before the first occurrence and are
//! not returned. Pure: the decoding function is supplied.

/// What the stream produced for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Text released by this token (may be empty while a character is incomplete).
    pub text: String,
    /// A stop string was reached: the generation must end, `text` ends before it.
    pub stopped: bool,
}

pub struct TextStream {
    ids: Vec<u32>,
    /// Text already released.
    released: String,
    stops: Vec<String>,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            ids: Vec::new(),
            released: String::new(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// Adds a token; `decode` turns all ids so far into text.
    pub fn push(&mut self, id: u32, decode: impl Fn(&[u32]) -> String) -> Delta {
        self.ids.push(id);
        let full = decode(&self.ids);
        if let Some(cut) = self.first_stop(&full) {
            let text = full.get(self.released.len()..cut).unwrap_or_default().to_string();
            self.released = full[..cut.max(self.released.len()).min(full.len())].to_string();
            return Delta { text, stopped: true };
        }
        // An incomplete character decodes as U+FFFD: wait for the next token.
        let mut end = full.len();
        if full.ends_with('\u{FFFD}') {
            end = full.trim_end_matches('\u{FFFD}').len();
        }
        // Hold back a tail that could be the start of a stop string.
        end = end.min(self.safe_end(&full[..end]));
        if end <= self.released.len() || !full.is_char_boundary(self.released.len()) {
            return Delta { text: String::new(), stopped: false };
        }
        let text = full[self.released.len()..end].to_string();
        self.released.push_str(&text);
        Delta { text, stopped: false }
    }

    /// Text still held back when the generation ends without a stop string.
    pub fn finish(&mut self, decode: impl Fn(&[u32]) -> String) -> String {
        let full = decode(&self.ids);
        let rest = full.get(self.released.len()..).unwrap_or_default().to_string();
        self.released = full;
        rest
    }

    /// All text released so far.
    pub fn text(&self) -> &str {
        &self.released
    }

    fn first_stop(&self, full: &str) -> Option<usize> {
        // Only text not yet released can contain a new stop (released text never held one).
        let from = self.released.len().saturating_sub(self.longest_stop());
        let from = (0..=from).rev().find(|&i| full.is_char_boundary(i)).unwrap_or(0);
        self.stops.iter().filter_map(|s| full[from..].find(s.as_str()).map(|i| from + i)).min()
    }

    fn longest_stop(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }

    /// The end of the text that cannot be the beginning of a stop string.
    fn safe_end(&self, text: &str) -> usize {
        let mut end = text.len();
        for stop in &self.stops {
            for k in (1..stop.len()).rev() {
                if stop.is_char_boundary(k) && text.ends_with(&stop[..k]) {
                    end = end.min(text.len() - k);
                    break;
                }
            }
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: each id is a byte; invalid UTF-8 decodes lossily, like a tokenizer.
    fn decode(ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn run(stops: &[&str], text: &[u8]) -> (Vec<String>, bool, String) {
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = vec![];
        for &b in text {
            let d = s.push(b as u32, decode);
            out.push(d.text);
            if d.stopped {
                return (out, true, s.text().to_string());
            }
        }
        out.push(s.finish(decode));
        (out, false, s.text().to_string())
    }

    #[test]
    fn a_multibyte_character_is_released_whole() {
        let (parts, stopped, all) = run(&[], "aé".as_bytes());
        assert!(!stopped);
        assert_eq!(parts, vec!["a", "", "é", ""]);
        assert_eq!(all, "aé");
    }

    #[test]
    fn text_ends_before_the_stop_string_and_never_shows_its_start() {
        let (parts, stopped, all) = run(&["\nUser:"], b"Hi!\nUser: more");
        assert!(stopped);
        assert_eq!(all, "Hi!");
        assert!(parts.iter().all(|p| !p.contains('\n')), "{parts:?}");
    }

    #[test]
    fn a_false_start_of_a_stop_string_is_released_later() {
        let (_, stopped, all) = run(&["END"], b"ENough said");
        assert!(!stopped);
        assert_eq!(all, "ENough said");
    }
}
