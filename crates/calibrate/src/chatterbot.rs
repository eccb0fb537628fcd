//! A second prompt distribution: the English part of the ChatterBot corpus (PyPI
//! `chatterbot-corpus`, BSD-3-Clause): short questions and chat openers — trivia, coding,
//! science, psychology, small talk — unlike ShareGPT's long, task-like first turns.
//!
//! Each `*.yml` file holds `conversations:`, a list of turn lists; the first turn of each is a
//! prompt. Prompts are deduplicated and put in a fixed pseudo-random order (by a hash of their
//! text), so that any slice mixes every topic instead of taking one file.

use std::collections::HashSet;
use std::path::Path;

use crate::{Error, Result};

/// Every distinct first turn of the corpus files in `dir`, in the corpus's fixed order.
pub fn chatterbot_prompts(dir: &Path) -> Result<Vec<String>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Empty("ChatterBot corpus (*.yml) files"));
    }
    let mut seen = HashSet::new();
    let mut prompts = vec![];
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        for prompt in
            first_turns(&text).map_err(|source| Error::Yaml { path: file.clone(), source })?
        {
            if seen.insert(prompt.clone()) {
                prompts.push(prompt);
            }
        }
    }
    prompts.sort_by_key(|p| (fnv1a(p.as_bytes()), p.clone()));
    Ok(prompts)
}

/// The trimmed, non-empty first turn of every conversation of one corpus file. Entries that
/// are not lists of strings (the published files have a few) are passed over.
fn first_turns(yaml: &str) -> Result<Vec<String>, serde_yaml::Error> {
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml)?;
    let conversations = doc.get("conversations").and_then(|c| c.as_sequence());
    Ok(conversations
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_sequence()?.first()?.as_str())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// 64-bit FNV-1a: a stable order that does not depend on the platform or a seed.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIVIA: &str = "categories:\n- trivia\nconversations:\n- - Who was the 37th President of the United States?\n  - Richard Nixon\n- - What year was President John F. Kennedy assassinated?\n  - '1963'\n- In a game of bingo, which number is two little ducks?\n- - '  '\n  - empty question\n";
    const SCIENCE: &str = "categories:\n- science\nconversations:\n- - what is a wavelength\n  - wavelength is the inverse of frequency.\n- - Who was the 37th President of the United States?\n  - a repeat\n";

    #[test]
    fn first_turns_skip_malformed_and_empty_entries() {
        assert_eq!(
            first_turns(TRIVIA).expect("parses"),
            vec![
                "Who was the 37th President of the United States?",
                "What year was President John F. Kennedy assassinated?",
            ]
        );
        assert!(first_turns("conversations: [[").is_err());
        assert_eq!(first_turns("categories: [x]").expect("parses"), Vec::<String>::new());
    }

    #[test]
    fn prompts_are_distinct_and_in_a_fixed_mixed_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("trivia.yml"), TRIVIA).expect("write");
        std::fs::write(dir.path().join("science.yml"), SCIENCE).expect("write");
        std::fs::write(dir.path().join("README.md"), "not a corpus file").expect("write");
        let prompts = chatterbot_prompts(dir.path()).expect("reads");
        assert_eq!(prompts.len(), 3, "{prompts:?}");
        let mut by_hash = prompts.clone();
        by_hash.sort_by_key(|p| fnv1a(p.as_bytes()));
        assert_eq!(prompts, by_hash);
        assert_eq!(chatterbot_prompts(dir.path()).expect("reads"), prompts, "stable");
    }

    #[test]
    fn a_broken_file_or_an_empty_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(chatterbot_prompts(dir.path()), Err(Error::Empty(_))));
        std::fs::write(dir.path().join("bad.yml"), "conversations: [[").expect("write");
        let err = chatterbot_prompts(dir.path()).expect_err("bad YAML");
        assert!(err.to_string().contains("bad.yml"), "{err}");
        assert!(matches!(chatterbot_prompts(&dir.path().join("missing")), Err(Error::Io { .. })));
    }
}
