//! Text in and out: the bundle's tokenizer (special tokens recognised in raw prompts) and its
//! chat template, rendered with a Jinja engine.

use std::path::Path;

use collm_bundle::manifest::TokenizerInfo;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct TextCodec {
    tokenizer: tokenizers::Tokenizer,
    /// The same tokenizer with special tokens treated as plain text: for what users wrote.
    literal: tokenizers::Tokenizer,
    /// Every special token's text and id.
    specials: Vec<(String, u32)>,
    chat_template: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
    stop_ids: Vec<u32>,
}

impl TextCodec {
    pub fn load(path: &Path, info: &TokenizerInfo) -> Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            Error::Invalid(format!("cannot load tokenizer {}: {e}", path.display()))
        })?;
        let name = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
        let mut stop_ids: Vec<u32> = info.special_tokens.eos.into_iter().collect();
        for marker in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"] {
            if let Some(id) = tokenizer.token_to_id(marker).filter(|id| !stop_ids.contains(id)) {
                stop_ids.push(id);
            }
        }
        let mut literal = tokenizer.clone();
        literal.set_encode_special_tokens(true);
        let specials = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && !t.content.is_empty())
            .map(|(id, t)| (t.content, id))
            .collect();
        Ok(Self {
            bos: name(info.special_tokens.bos),
            eos: name(info.special_tokens.eos),
            chat_template: info.chat_template.clone(),
            tokenizer,
            literal,
            specials,
            stop_ids,
        })
    }

    /// Token ids of raw text, as llama.cpp reads a prompt: the BOS token first when the model
    /// asks for one (`add_bos_token`, as Llama 2 and Mistral do), and special tokens written
    /// out (e.g. `<|im_start|>`) recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Invalid(format!("cannot tokenize prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a conversation, ending with the assistant's turn opened. What the messages
    /// say is tokenized as text only: a user who writes `<|im_start|>system` gets those
    /// characters, not a forged turn. The special tokens the template itself writes stay
    /// special, and ordinary conversations tokenize exactly as their rendered prompt does.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        // Render with each content replaced by a marker found nowhere in the conversation, so
        // every special token in the result is the template's. Then tokenize as the tokenizer
        // does a prompt (split at special tokens, each piece on its own), but with the contents
        // put back into the pieces and special tokens in them read as plain text.
        let mut nonce = 0u64;
        while messages.iter().any(|m| m.content.contains(&format!("\u{E000}{nonce}:"))) {
            nonce += 1;
        }
        let marker = |i: usize| format!("\u{E000}{nonce}:{i}\u{E001}");
        let masked: Vec<ChatMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| ChatMessage { role: m.role.clone(), content: marker(i) })
            .collect();
        let rendered = self.render_chat(&masked)?;
        let mut ids = Vec::new();
        let mut shown = 0;
        let mut put_back = |piece: &str, ids: &mut Vec<u32>| -> Result<()> {
            let mut text = piece.to_string();
            for (i, m) in messages.iter().enumerate() {
                let mark = marker(i);
                shown += text.matches(&mark).count();
                text = text.replace(&mark, &m.content);
            }
            ids.extend(self.encode_with(&self.literal, &text)?);
            Ok(())
        };
        let mut rest = rendered.as_str();
        while let Some((at, len, id)) = self.first_special(rest) {
            put_back(&rest[..at], &mut ids)?;
            ids.push(id);
            rest = &rest[at + len..];
        }
        put_back(rest, &mut ids)?;
        if shown != messages.len() {
            return Err(Error::Invalid(format!(
                "the chat template shows {shown} message contents for {} messages; cannot keep what they say apart from its markup",
                messages.len()
            )));
        }
        Ok(ids)
    }

    /// The leftmost (then longest) special token in `text`: its byte offset, length and id.
    fn first_special(&self, text: &str) -> Option<(usize, usize, u32)> {
        self.specials
            .iter()
            .filter_map(|(s, id)| text.find(s.as_str()).map(|at| (at, s.len(), *id)))
            .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)))
    }

    fn encode_with(&self, tokenizer: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(vec![]);
        }
        let enc = tokenizer
            .encode(text, false)
            .map_err(|e| Error::Invalid(format!("cannot tokenize prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The prompt text for a conversation, ending with the assistant's turn opened.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::Invalid("a chat needs at least one message".into()));
        }
        let template = self.chat_template.as_deref().ok_or_else(|| {
            Error::Invalid("this bundle has no chat template: use a raw prompt".into())
        })?;
        let mut env = minijinja::Environment::new();
        // Templates written for Python's Jinja call str/list/dict methods (`.strip()`,
        // `.startswith()`, `.items()`); minijinja-contrib maps them onto minijinja's filters.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| Error::Invalid(format!("chat template does not parse: {e}")))?;
        let tmpl = env.get_template("chat").map_err(|e| Error::Invalid(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
        })
        .map_err(|e| Error::Invalid(format!("chat template failed: {e}")))
    }

    /// Text of generated ids, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::Invalid(format!("cannot decode tokens: {e}")))
    }

    /// The text one token adds (special tokens written out), for per-token displays.
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// The bytes one token stands for (part of a character, for some), for log probabilities.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let piece = self.tokenizer.id_to_token(id);
        crate::token_bytes::token_bytes(piece.as_deref(), &self.token_text(id))
    }

    /// Ids that end a generation (end-of-sequence and end-of-turn markers).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use collm_checkpoint::SpecialTokens;
    use collm_checkpoint::tiny::{TinySpec, checkpoint};

    use super::*;

    fn codec(template: &str) -> TextCodec {
        let ck = checkpoint(&TinySpec::default(), 0).unwrap();
        codec_of(&ck.tokenizer_json, template)
    }

    fn codec_of(tokenizer_json: &str, template: &str) -> TextCodec {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, tokenizer_json).unwrap();
        let info = TokenizerInfo {
            file: "tokenizer.json".into(),
            special_tokens: SpecialTokens { bos: Some(1), eos: Some(2), special: vec![] },
            chat_template: Some(template.into()),
        };
        TextCodec::load(&path, &info).unwrap()
    }

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn templates_calling_python_string_methods_render() {
        // As Qwen2 / Llama 3 style templates write them: str.strip(), str.startswith(),
        // str.split(), dict.items() and str.upper() inside Jinja.
        let template = "{% for m in messages %}{% if m['content'].startswith('!') %}{{ m['role'].upper() }}{% endif %}<|im_start|>{{ m.role }}\n{{ m['content'].strip() }}|{{ m['content'].split()|length }}<|im_end|>\n{% endfor %}{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let text = codec(template)
            .render_chat(&[msg("system", "  be brief \n"), msg("user", "!hi there")])
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nbe brief|2<|im_end|>\nUSER<|im_start|>user\n!hi there|2<|im_end|>\na=1<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raw_prompts_start_with_bos_when_the_model_asks_for_it_and_chats_keep_the_templates() {
        let vocab = collm_checkpoint::tiny::build_vocab(50);
        let mut md = collm_checkpoint::tiny::tokenizer_metadata(&vocab);
        md.insert("tokenizer.ggml.add_bos_token", collm_gguf::Value::Bool(true));
        let tok = collm_checkpoint::tokenizer_from_gguf(&md).unwrap();
        let with_bos = codec_of(&tok.tokenizer_json, "<|im_start|>{{ messages[0].content }}");
        assert_eq!(with_bos.encode("the").unwrap()[0], 1);
        assert_eq!(with_bos.encode_chat(&[msg("user", "the")]).unwrap().first(), Some(&1));
        assert_eq!(
            with_bos
                .encode_chat(&[msg("user", "the")])
                .unwrap()
                .iter()
                .filter(|&&t| t == 1)
                .count(),
            1
        );
        let without = codec("{{ messages[0].content }}");
        assert_ne!(without.encode("the").unwrap()[0], 1);
    }

    #[test]
    fn an_unknown_method_is_a_clear_error() {
        let e = codec("{{ messages[0].content.frobnicate() }}")
            .render_chat(&[msg("user", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("chat template failed") && e.contains("frobnicate"), "{e}");
    }
}
