//! The eval stage's artifacts, in `eval/<variant>/` of a run directory or any folder
//! `steermoe eval --out` names: `eval.json` ([`EvalReport`], written last: it marks the
//! evaluation finished) and `responses.jsonl` ([`ResponseRecord`]); with an HTTP judge,
//! `judge_cache.jsonl` ([`CachedVerdict`]: its verdicts, appended as they arrive).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{JsonFile, JsonLines};
use super::{DirLock, RunDirError};
use crate::judge::{CachedVerdict, Rubric, VerdictCache};
use crate::model::ExpertId;

/// How many answers of a set the judge counted (refused, or complied for jailbreaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Prompts answered.
    pub n: usize,
    /// Answers counted.
    pub hits: usize,
}

impl Count {
    /// `hits / n`, `None` for an empty set.
    pub fn rate(self) -> Option<f64> {
        (self.n > 0).then(|| self.hits as f64 / self.n as f64)
    }
}

impl std::iter::Sum for Count {
    /// Several sets' counts pooled.
    fn sum<I: Iterator<Item = Count>>(iter: I) -> Self {
        iter.fold(Count { n: 0, hits: 0 }, |a, c| Count {
            n: a.n + c.n,
            hits: a.hits + c.hits,
        })
    }
}

/// The reference answers' negative log-likelihood.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NllCount {
    /// Answers scored.
    pub answers: usize,
    /// Answer tokens scored.
    pub tokens: usize,
    /// Sum of their NLLs (nats).
    pub total: f64,
}

/// What one evaluation measured (`eval.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The model directory evaluated.
    pub model: String,
    /// Experts forced into every token's top-k by steering, `(layer, expert)` (empty: none).
    #[serde(default)]
    pub activated_experts: Vec<ExpertId>,
    /// Experts forced out of every token's top-k by steering.
    #[serde(default)]
    pub deactivated_experts: Vec<ExpertId>,
    /// Whether the prompts are a split's held-out part.
    pub heldout: bool,
    /// Attack success rate: share of jailbreaks answered without a refusal.
    pub asr: Option<f64>,
    /// Share of plain harmful goals refused.
    pub plain_refusal_rate: Option<f64>,
    /// Share of benign instructions refused.
    pub benign_refusal_rate: Option<f64>,
    /// Mean per-token NLL of the benign reference answers (nats).
    pub benign_answer_nll: Option<f64>,
    /// Jailbreaks: `hits` = complied.
    pub jailbreak: Count,
    /// Plain goals: `hits` = refused.
    pub plain: Count,
    /// Benign instructions: `hits` = refused.
    pub benign: Count,
    /// Behind `benign_answer_nll`.
    pub nll: NllCount,
    /// Mean per-token NLL of answers the model was trained on (a fixed sample of the benign
    /// set's train part, `eval.trained_answers`): retained knowledge, which moves where benign
    /// refusals do not. `None` when no sample is configured.
    #[serde(default)]
    pub trained_answer_nll: Option<f64>,
    /// Behind `trained_answer_nll`.
    #[serde(default)]
    pub trained_nll: Option<NllCount>,
    /// New tokens per answer.
    pub max_new_tokens: usize,
    /// Tokens generated in all.
    pub generated_tokens: usize,
    /// Each attack family on its own held-out split, in config order; empty when the config
    /// has one family (`jailbreak` and `plain` are then its counts). `jailbreak` and `plain`
    /// above pool the families trained on.
    #[serde(default)]
    pub families: Vec<FamilyReport>,
    /// XSTest's safe prompts: `hits` = wrongly refused (`None`: not evaluated).
    #[serde(default)]
    pub xstest_safe: Option<Count>,
    /// Share of XSTest's safe prompts refused: over-refusal.
    #[serde(default)]
    pub xstest_over_refusal_rate: Option<f64>,
    /// XSTest's unsafe prompts: `hits` = rightly refused.
    #[serde(default)]
    pub xstest_unsafe: Option<Count>,
    /// Share of XSTest's unsafe prompts refused.
    #[serde(default)]
    pub xstest_unsafe_refusal_rate: Option<f64>,
    /// StrongREJECT's harmful prompts: `hits` = refused (`None`: not evaluated).
    #[serde(default)]
    pub strongreject: Option<Count>,
    /// Share of StrongREJECT's prompts refused.
    #[serde(default)]
    pub strongreject_refusal_rate: Option<f64>,
    /// The HTTP judge's verdicts on the same answers (`[judge] kind = "http"`); every field
    /// above is the phrase judge's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_judge: Option<LlmJudgeReport>,
}

/// The HTTP judge's rates in an [`EvalReport`], counted over the answers it decided (an
/// unparsed or failed one is in no count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmJudgeReport {
    /// Its endpoint (`judge.base_url`).
    pub base_url: String,
    /// Its model (`judge.model`).
    pub model: String,
    /// The rubric it answered.
    pub rubric: Rubric,
    /// Rubric `harm`: the score from which an answer is a successful jailbreak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harm_success_at: Option<u8>,
    /// Share of jailbreaks it judged complied with (pooled as the report's `jailbreak`).
    pub asr: Option<f64>,
    /// Share of plain goals it judged refused.
    pub plain_refusal_rate: Option<f64>,
    /// Share of benign instructions it judged refused (`None` with rubric `harm`, which does
    /// not tell a helpful benign answer from a refusal, and asks nothing about them).
    pub benign_refusal_rate: Option<f64>,
    /// Share of XSTest's safe prompts it judged refused (`None` with rubric `harm`).
    #[serde(default)]
    pub xstest_over_refusal_rate: Option<f64>,
    /// Share of XSTest's unsafe prompts it judged refused.
    #[serde(default)]
    pub xstest_unsafe_refusal_rate: Option<f64>,
    /// Share of StrongREJECT's prompts it judged refused.
    #[serde(default)]
    pub strongreject_refusal_rate: Option<f64>,
    /// Jailbreaks: `hits` = complied.
    pub jailbreak: Count,
    /// Plain goals: `hits` = refused.
    pub plain: Count,
    /// Benign instructions: `hits` = refused (`None`: not judged).
    #[serde(default)]
    pub benign: Option<Count>,
    /// XSTest's safe prompts: `hits` = refused.
    #[serde(default)]
    pub xstest_safe: Option<Count>,
    /// XSTest's unsafe prompts: `hits` = refused.
    #[serde(default)]
    pub xstest_unsafe: Option<Count>,
    /// StrongREJECT's prompts: `hits` = refused.
    #[serde(default)]
    pub strongreject: Option<Count>,
    /// Each attack family's counts, as the report's `families`.
    #[serde(default)]
    pub families: Vec<FamilyReport>,
    /// Answers where its refusal verdict differs from the phrase judge's.
    pub disagreements: usize,
    /// Answers it decided.
    pub judged: usize,
    /// Answers whose every reply was outside the rubric.
    pub unparsed: usize,
    /// Answers whose every request failed.
    pub failed: usize,
    /// Answers decided without a request (the cache, or a repeated pair).
    pub cached: usize,
    /// HTTP requests made, retries included.
    pub requests: usize,
}

impl LlmJudgeReport {
    /// Fill the rates from the counts.
    pub fn with_rates(mut self) -> Self {
        self.asr = self.jailbreak.rate();
        self.plain_refusal_rate = self.plain.rate();
        self.benign_refusal_rate = self.benign.and_then(Count::rate);
        self.xstest_over_refusal_rate = self.xstest_safe.and_then(Count::rate);
        self.xstest_unsafe_refusal_rate = self.xstest_unsafe.and_then(Count::rate);
        self.strongreject_refusal_rate = self.strongreject.and_then(Count::rate);
        self.families = self
            .families
            .into_iter()
            .map(FamilyReport::with_rates)
            .collect();
        self
    }
}

/// One attack family's held-out counts in an [`EvalReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyReport {
    /// The family's name.
    pub name: String,
    /// Whether the run trains on it (its counts are in the report's pooled ones).
    pub trained: bool,
    /// Its plain goals: `hits` = refused.
    pub plain: Count,
    /// Its jailbreaks: `hits` = complied.
    pub jailbreak: Count,
    /// Its attack success rate.
    pub asr: Option<f64>,
    /// Share of its plain goals refused.
    pub plain_refusal_rate: Option<f64>,
}

impl FamilyReport {
    /// Fill the rates from the counts.
    pub fn with_rates(mut self) -> Self {
        self.asr = self.jailbreak.rate();
        self.plain_refusal_rate = self.plain.rate();
        self
    }
}

impl EvalReport {
    /// Fill the rates from the counts.
    pub fn with_rates(mut self) -> Self {
        self.asr = self.jailbreak.rate();
        self.plain_refusal_rate = self.plain.rate();
        self.benign_refusal_rate = self.benign.rate();
        self.benign_answer_nll =
            (self.nll.tokens > 0).then(|| self.nll.total / self.nll.tokens as f64);
        self.trained_answer_nll = self
            .trained_nll
            .filter(|c| c.tokens > 0)
            .map(|c| c.total / c.tokens as f64);
        self.families = self
            .families
            .into_iter()
            .map(FamilyReport::with_rates)
            .collect();
        self.xstest_over_refusal_rate = self.xstest_safe.and_then(Count::rate);
        self.xstest_unsafe_refusal_rate = self.xstest_unsafe.and_then(Count::rate);
        self.strongreject_refusal_rate = self.strongreject.and_then(Count::rate);
        self
    }
}

/// One answer (a line of `responses.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRecord {
    /// `plain`, `jailbreak` or `benign`; with several attack families `plain:<family>` and
    /// `jailbreak:<family>`; `xstest_safe`, `xstest_unsafe`, `strongreject`.
    pub set: String,
    /// Record index in the set's file (a family's own file for `plain:<family>`).
    pub record: usize,
    /// Prompt tokens fed (after truncation).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub new_tokens: usize,
    /// The answer.
    pub text: String,
    /// The judge's verdict.
    pub refused: bool,
}

/// The folder of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalDir {
    root: PathBuf,
}

impl EvalDir {
    /// The evaluation folder at `root` (nothing is created): a run directory's `eval/<variant>`
    /// or the folder `steermoe eval --out` names.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `eval.json`.
    pub fn report(&self) -> JsonFile<EvalReport> {
        JsonFile::at(self.root.join("eval.json"))
    }

    /// `responses.jsonl`.
    pub fn responses(&self) -> JsonLines<ResponseRecord> {
        JsonLines::at(self.root.join("responses.jsonl"))
    }

    /// `judge_cache.jsonl`: the HTTP judge's verdicts, appended as they arrive.
    pub fn judge_cache(&self) -> JsonLines<CachedVerdict> {
        JsonLines::at(self.root.join("judge_cache.jsonl"))
    }

    /// The HTTP judge's verdict cache backed by [`EvalDir::judge_cache`]: its verdicts loaded (a
    /// missing file is empty), each new one appended as it arrives. Lines that do not parse, such
    /// as one cut by a kill, are dropped and the file rewritten without them.
    pub fn open_judge_cache(&self) -> Result<VerdictCache, RunDirError> {
        let file = self.judge_cache();
        let (entries, bad) = file.read_valid()?;
        if bad > 0 {
            tracing::warn!(
                "{}: dropped {bad} unreadable line(s)",
                file.path().display()
            );
            file.write(&entries)?;
        }
        let sink = move |v: &CachedVerdict| {
            file.append(std::slice::from_ref(v))
                .map_err(|e| e.to_string())
        };
        Ok(VerdictCache::backed(entries, Box::new(sink)))
    }

    /// Whether the evaluation is finished: both files there and read back.
    pub fn is_done(&self) -> bool {
        self.report().reads_back() && self.responses().reads_back()
    }

    /// Write the answers, then the report (last: its presence means the evaluation is whole).
    pub fn write(
        &self,
        report: &EvalReport,
        responses: &[ResponseRecord],
    ) -> Result<(), RunDirError> {
        self.responses().write(responses)?;
        self.report().write(report)
    }

    /// Hold the folder for this process (created if missing): a second evaluation into it fails
    /// at once, naming the holder.
    pub fn lock(&self) -> Result<DirLock, RunDirError> {
        super::lock(&self.root)
    }

    /// The finished evaluations in the subfolders of `dir` (e.g. a run's `eval/`), named by
    /// subfolder: base first, then steering settings, then the trained model, then the rest by
    /// name.
    pub fn reports_in(dir: &Path) -> Vec<(String, EvalReport)> {
        let mut found: Vec<(String, EvalReport)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                Some((
                    e.file_name().to_str()?.to_string(),
                    EvalDir::at(e.path()).report().read().ok()?,
                ))
            })
            .collect();
        let rank = |name: &str| match name {
            "base" => 0,
            n if n.starts_with("steer") => 1,
            "trained" => 2,
            _ => 3,
        };
        found.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::Verdict;

    #[test]
    fn the_judge_cache_survives_a_cut_line_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let out = EvalDir::at(dir.path().to_path_buf());
        let mut c = out.open_judge_cache().unwrap();
        assert!(c.is_empty());
        c.insert("a".into(), Verdict::Refusal).unwrap();
        c.insert("b".into(), Verdict::Harm(4)).unwrap();
        let path = out.judge_cache().path().to_path_buf();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"key\":\"c\",\"verd");
        std::fs::write(&path, text).unwrap();
        let c = out.open_judge_cache().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("b"), Some(&Verdict::Harm(4)));
        assert_eq!(
            out.judge_cache().read().unwrap().len(),
            2,
            "the cut line is gone"
        );
    }
}
