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
        Ok(Self {
            bos: name(info.special_tokens.bos),
            eos: name(info.special_tokens.eos),
            chat_template: info.chat_template.clone(),
            tokenizer,
            stop_ids,
        })
    }

    /// Token ids of raw text; special tokens written out (e.g. `<|im_start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
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

    /// Ids that end a generation (end-of-sequence and end-of-turn markers).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }
}
