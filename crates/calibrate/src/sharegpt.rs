//! Incremental reader of the ShareGPT dump: a top-level JSON array of
//! `{"id": ..., "conversations": [{"from": ..., "value": ...}]}` records.
//!
//! The published file is cut off mid-record, and it is far too large to hold as one JSON value,
//! so records are framed by a small scanner (brace depth, strings and escapes) and each complete
//! record is parsed on its own. A broken tail ends the stream cleanly and is reported through
//! [`ShareGptReader::end`].

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// One ShareGPT record: its id and its turns as `(role, text)`, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: String,
    pub turns: Vec<(String, String)>,
}

impl Conversation {
    /// The first turn whose role is `human`, if any.
    pub fn first_human_turn(&self) -> Option<&str> {
        self.turns.iter().find(|(role, _)| role == "human").map(|(_, text)| text.as_str())
    }
}

/// How the stream ended, once it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The closing `]` was reached.
    Complete { records: usize },
    /// The input stopped inside a record (or before the closing `]`); `partial_bytes` of an
    /// unfinished record were dropped.
    Truncated { records: usize, partial_bytes: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Records,
    Done(Option<StreamEnd>),
}

/// Yields one [`Conversation`] per complete record. A record that is complete JSON but not a
/// valid record yields an `Err` and the stream goes on with the next one.
pub struct ShareGptReader<R> {
    reader: R,
    offset: u64,
    records: usize,
    state: State,
    buf: Vec<u8>,
}

impl ShareGptReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self::new(BufReader::with_capacity(1 << 20, file)))
    }
}

impl<R: BufRead> ShareGptReader<R> {
    pub fn new(reader: R) -> Self {
        Self { reader, offset: 0, records: 0, state: State::Start, buf: Vec::new() }
    }

    /// Complete records framed so far (including ones that failed to parse).
    pub fn records_read(&self) -> usize {
        self.records
    }

    /// Bytes of input consumed so far.
    pub fn bytes_consumed(&self) -> u64 {
        self.offset
    }

    /// `Some` once the stream has ended without an I/O or framing error.
    pub fn end(&self) -> Option<StreamEnd> {
        match self.state {
            State::Done(end) => end,
            _ => None,
        }
    }

    fn io_error(&mut self, e: std::io::Error) -> Error {
        self.state = State::Done(None);
        Error::Io { path: "<sharegpt stream>".into(), source: e }
    }

    /// Skips whitespace and the commas between records; returns the next byte without consuming
    /// it, or `None` at end of input.
    fn peek_significant(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            let chunk = self.reader.fill_buf()?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let skip = chunk.iter().position(|b| {
                !(b.is_ascii_whitespace() || (*b == b',' && self.state == State::Records))
            });
            match skip {
                Some(i) => {
                    let b = chunk[i];
                    self.reader.consume(i);
                    self.offset += i as u64;
                    return Ok(Some(b));
                }
                None => {
                    let n = chunk.len();
                    self.reader.consume(n);
                    self.offset += n as u64;
                }
            }
        }
    }

    /// Copies one balanced `{...}` into `buf`. Returns `false` if the input ends first.
    fn frame_record(&mut self) -> std::io::Result<bool> {
        self.buf.clear();
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        loop {
            let chunk = self.reader.fill_buf()?;
            if chunk.is_empty() {
                return Ok(false);
            }
            let mut end = None;
            for (i, &b) in chunk.iter().enumerate() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let take = end.unwrap_or(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            self.reader.consume(take);
            self.offset += take as u64;
            if end.is_some() {
                return Ok(true);
            }
        }
    }
}

impl<R: BufRead> Iterator for ShareGptReader<R> {
    type Item = Result<Conversation>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.state == State::Start {
            match self.peek_significant() {
                Err(e) => return Some(Err(self.io_error(e))),
                Ok(Some(b'[')) => {
                    self.reader.consume(1);
                    self.offset += 1;
                    self.state = State::Records;
                }
                Ok(None) => {
                    self.state =
                        State::Done(Some(StreamEnd::Truncated { records: 0, partial_bytes: 0 }));
                }
                Ok(Some(_)) => {
                    self.state = State::Done(None);
                    return Some(Err(Error::NotAnArray { offset: self.offset }));
                }
            }
        }
        if self.state != State::Records {
            return None;
        }
        let records = self.records;
        match self.peek_significant() {
            Err(e) => return Some(Err(self.io_error(e))),
            Ok(None) => {
                self.state = State::Done(Some(StreamEnd::Truncated { records, partial_bytes: 0 }));
                return None;
            }
            Ok(Some(b']')) => {
                self.reader.consume(1);
                self.offset += 1;
                self.state = State::Done(Some(StreamEnd::Complete { records }));
                return None;
            }
            Ok(Some(_)) => {}
        }
        let start = self.offset;
        match self.frame_record() {
            Err(e) => return Some(Err(self.io_error(e))),
            Ok(false) => {
                let partial_bytes = self.buf.len();
                self.state = State::Done(Some(StreamEnd::Truncated { records, partial_bytes }));
                return None;
            }
            Ok(true) => {}
        }
        self.records += 1;
        Some(
            serde_json::from_slice::<RawRecord>(&self.buf)
                .map(RawRecord::into_conversation)
                .map_err(|source| Error::Record { index: records, offset: start, source }),
        )
    }
}

#[derive(Deserialize)]
struct RawRecord {
    #[serde(default)]
    id: RawId,
    #[serde(default)]
    conversations: Vec<RawTurn>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum RawId {
    Text(String),
    Number(serde_json::Number),
    #[default]
    Missing,
}

#[derive(Deserialize)]
struct RawTurn {
    #[serde(default)]
    from: String,
    #[serde(default)]
    value: Option<String>,
}

impl RawRecord {
    fn into_conversation(self) -> Conversation {
        let id = match self.id {
            RawId::Text(s) => s,
            RawId::Number(n) => n.to_string(),
            RawId::Missing => String::new(),
        };
        let turns =
            self.conversations.into_iter().map(|t| (t.from, t.value.unwrap_or_default())).collect();
        Conversation { id, turns }
    }
}

/// The first human turn of successive records, trimmed of surrounding whitespace and cut to at
/// most `max_chars` characters. Records without a non-empty human turn are passed over and do
/// not count towards `skip` or `take`, so `(0, n)` and `(n, m)` give disjoint, adjacent sets.
/// Returns fewer than `take` prompts if the file runs out; reads only as far as it needs.
pub fn first_prompts(
    path: &Path,
    skip: usize,
    take: usize,
    max_chars: usize,
) -> Result<Vec<String>> {
    let mut prompts = Vec::with_capacity(take.min(1 << 16));
    if take == 0 {
        return Ok(prompts);
    }
    let mut seen = 0usize;
    for conversation in ShareGptReader::open(path)? {
        let conversation = conversation?;
        let Some(text) = conversation.first_human_turn().map(str::trim).filter(|t| !t.is_empty())
        else {
            continue;
        };
        seen += 1;
        if seen <= skip {
            continue;
        }
        prompts.push(truncate_chars(text, max_chars).to_owned());
        if prompts.len() == take {
            break;
        }
    }
    Ok(prompts)
}

fn truncate_chars(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

#[cfg(test)]
mod tests;
