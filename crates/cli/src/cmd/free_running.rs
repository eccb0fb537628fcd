//! Answers written free-running in several modes on one loaded model, each compared with the
//! full model's answer to the same prompt and scored by the full model (the probability it
//! gives every token of the answer, in context).

use anyhow::{Context, Result};
use collm_calibrate::{Answer, QualityTally};
use collm_runtime::repetition::LoopDetector;
use collm_runtime::transport::{CloudTransport, InProcessCloud};
use collm_runtime::{Encoding, ExitPolicy, GenerateOptions, Generation, Mode, Origin, SplitModel};

/// One way of answering: a mode and (for collaborative) its exit policy.
#[derive(Debug, Clone)]
pub struct ModeRun {
    pub label: String,
    pub mode: Mode,
    pub policy: ExitPolicy,
}

/// One answer as the report's JSON lines keep it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AnswerRecord {
    pub prompt: usize,
    pub mode: String,
    pub tokens: Vec<u32>,
    pub origins: Vec<Origin>,
    /// The full model's natural-log probability of each token.
    pub logprobs: Vec<f64>,
    pub identical: bool,
    /// Whether the answer ends in a loop (the report's detector, trailing stop token aside).
    pub looped: bool,
}

/// Per mode (in the order given, after the full model's own), what its answers were worth.
pub struct QualityRun {
    pub full: QualityTally,
    pub modes: Vec<(ModeRun, QualityTally)>,
    pub answers: Vec<AnswerRecord>,
}

pub struct FreeRunning<'a> {
    pub model: &'a mut SplitModel,
    pub cloud: &'a mut InProcessCloud,
    pub new_tokens: usize,
    pub encoding: Encoding,
    pub detector: LoopDetector,
    /// Keep every answer for the caller (for `--answers`).
    pub keep_answers: bool,
}

/// The full model's answers to a prompt set, scored by itself: what every mode is compared with.
pub struct References {
    prompts: Vec<Vec<u32>>,
    answers: Vec<Generation>,
    logprobs: Vec<Vec<f64>>,
    looped: Vec<bool>,
    pub tally: QualityTally,
}

impl FreeRunning<'_> {
    /// Greedy answers to every prompt: the full model's first, then each run's.
    pub fn run(&mut self, prompts: &[Vec<u32>], runs: &[ModeRun]) -> Result<QualityRun> {
        let references = self.references(prompts)?;
        let mut out = QualityRun { full: references.tally.clone(), modes: vec![], answers: vec![] };
        for run in runs {
            let (tally, answers) = self.run_mode(&references, run)?;
            out.modes.push((run.clone(), tally));
            out.answers.extend(answers);
        }
        if self.keep_answers {
            for (i, (g, lp)) in references.answers.iter().zip(&references.logprobs).enumerate() {
                let verdict = Verdict { identical: true, looped: references.looped[i] };
                out.answers.push(record(i, "full", g, lp.clone(), verdict));
            }
        }
        Ok(out)
    }

    /// The full model's greedy answers to `prompts`, and their likelihood.
    pub fn references(&mut self, prompts: &[Vec<u32>]) -> Result<References> {
        let full = ModeRun {
            label: "full".into(),
            mode: Mode::Full,
            policy: ExitPolicy::never(&self.model.manifest),
        };
        let mut r = References {
            prompts: prompts.to_vec(),
            answers: vec![],
            logprobs: vec![],
            looped: vec![],
            tally: QualityTally::default(),
        };
        for (i, prompt) in prompts.iter().enumerate() {
            let g = self.answer(prompt, &full)?;
            let lp = self.score(prompt, &g.tokens)?;
            let verdict = self.tally(&g, &lp, &g.tokens, &mut r.tally);
            eprintln!("prompt {}/{}: full model, {} tokens", i + 1, prompts.len(), g.tokens.len());
            r.answers.push(g);
            r.logprobs.push(lp);
            r.looped.push(verdict.looped);
        }
        Ok(r)
    }

    /// One mode's answers to the reference prompts, compared with the full model's.
    pub fn run_mode(
        &mut self,
        references: &References,
        run: &ModeRun,
    ) -> Result<(QualityTally, Vec<AnswerRecord>)> {
        let mut tally = QualityTally::default();
        let mut records = vec![];
        let mut differing = vec![];
        for (i, prompt) in references.prompts.iter().enumerate() {
            let reference = &references.answers[i].tokens;
            let g = self.answer(prompt, run)?;
            let logprobs = if g.tokens == *reference {
                references.logprobs[i].clone()
            } else {
                self.score(prompt, &g.tokens)?
            };
            let verdict = self.tally(&g, &logprobs, reference, &mut tally);
            if !verdict.identical {
                differing.push(collm_calibrate::quality::common_prefix(&g.tokens, reference));
            }
            if self.keep_answers {
                records.push(record(i, &run.label, &g, logprobs, verdict));
            }
        }
        eprintln!(
            "{}: {}/{} identical, edge share {:.1}%, first differences at {differing:?}",
            run.label,
            tally.identical,
            tally.prompts,
            100.0 * tally.edge_share()
        );
        Ok((tally, records))
    }

    fn tally(
        &self,
        g: &Generation,
        logprobs: &[f64],
        reference: &[u32],
        tally: &mut QualityTally,
    ) -> Verdict {
        let stops = self.model.text.stop_ids();
        // Loops are looked for in the text: a trailing stop token is not part of it.
        let text_len = g.tokens.iter().rposition(|t| !stops.contains(t)).map_or(0, |i| i + 1);
        let edge_tokens = g.origins.iter().filter(|o| **o == Origin::Edge).count();
        let looped = self.detector.find(&g.tokens[..text_len]).is_some();
        let answer = Answer { tokens: &g.tokens, looped, edge_tokens, logprobs };
        tally.add(&answer, reference);
        Verdict { identical: g.tokens == reference, looped }
    }

    fn answer(&mut self, prompt: &[u32], run: &ModeRun) -> Result<Generation> {
        let opts = GenerateOptions::greedy(
            self.new_tokens,
            run.mode,
            run.policy.clone(),
            self.encoding,
            self.model.text.stop_ids().to_vec(),
        );
        let exits = self.model.exit_layers();
        let cloud =
            (run.mode != Mode::Standalone).then_some(&mut *self.cloud as &mut dyn CloudTransport);
        collm_runtime::generate(&mut self.model.edge, &exits, cloud, prompt, &opts, &mut |_| {})
            .with_context(|| format!("{} generation", run.label))
    }

    /// The full model's log-probability of each answer token after `prompt` and the tokens
    /// before it.
    fn score(&mut self, prompt: &[u32], answer: &[u32]) -> Result<Vec<f64>> {
        if answer.is_empty() {
            return Ok(vec![]);
        }
        let scored = collm_runtime::score::score(
            &mut self.model.edge,
            self.cloud.partition_mut(),
            &[],
            prompt,
            answer,
        )?;
        Ok(scored.iter().map(|p| p.full.target_logprob).collect())
    }
}

/// What the tally found in one answer.
struct Verdict {
    identical: bool,
    looped: bool,
}

fn record(
    prompt: usize,
    mode: &str,
    g: &Generation,
    logprobs: Vec<f64>,
    verdict: Verdict,
) -> AnswerRecord {
    AnswerRecord {
        prompt,
        mode: mode.to_string(),
        tokens: g.tokens.clone(),
        origins: g.origins.clone(),
        logprobs,
        identical: verdict.identical,
        looped: verdict.looped,
    }
}
