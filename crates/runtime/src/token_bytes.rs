//! The bytes a token stands for, as OpenAI's log probabilities report them (`bytes`): a
//! token of a byte-level BPE vocabulary may hold part of a UTF-8 character, whose text alone
//! cannot say which bytes it holds. Pure: the vocabulary's piece for the token is supplied.

/// The bytes of a vocabulary piece: byte-level BPE pieces (GPT-2's printable stand-ins for
/// bytes) are mapped back, SentencePiece byte pieces (`<0x0A>`) read, SentencePiece's `▁`
/// read as a space; anything else is taken as UTF-8 text (`decoded`, the token's own text).
pub fn token_bytes(piece: Option<&str>, decoded: &str) -> Vec<u8> {
    let Some(piece) = piece else { return decoded.as_bytes().to_vec() };
    if let Some(b) = sentencepiece_byte(piece) {
        return vec![b];
    }
    if piece.contains('\u{2581}') {
        return piece.replace('\u{2581}', " ").into_bytes();
    }
    match piece.chars().map(byte_level).collect::<Option<Vec<u8>>>() {
        // A piece that is plain text reads the same either way; one with stand-ins only so.
        Some(bytes) if !bytes.is_empty() => bytes,
        _ => decoded.as_bytes().to_vec(),
    }
}

fn sentencepiece_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

/// GPT-2's byte-to-character table, inverted: printable Latin-1 bytes stand for themselves,
/// the other 68 bytes for U+0100 onwards, in byte order.
fn byte_level(c: char) -> Option<u8> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let code = c as u32;
    if code < 0x100 {
        return printable(code).then_some(code as u8);
    }
    let n = (code - 0x100) as usize;
    (0u32..=0xff).filter(|&b| !printable(b)).nth(n).map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_pieces_map_back_to_their_bytes() {
        assert_eq!(token_bytes(Some("\u{120}hello"), " hello"), b" hello".to_vec());
        assert_eq!(token_bytes(Some("\u{10a}"), "\n"), b"\n".to_vec());
        // Half of "é" (0xC3 0xA9): the piece "Ã" stands for 0xC3 alone.
        assert_eq!(token_bytes(Some("\u{c3}"), "\u{fffd}"), vec![0xc3]);
    }

    #[test]
    fn sentencepiece_pieces_and_unknown_ones_are_read_too() {
        assert_eq!(token_bytes(Some("<0x0A>"), "\n"), vec![0x0a]);
        assert_eq!(token_bytes(Some("\u{2581}the"), " the"), b" the".to_vec());
        assert_eq!(token_bytes(None, "x"), b"x".to_vec());
        assert_eq!(token_bytes(Some("<|im_end|>"), "<|im_end|>"), b"<|im_end|>".to_vec());
    }
}
