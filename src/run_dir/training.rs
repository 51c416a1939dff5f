//! The train stage's artifacts: `metrics.jsonl` ([`StepRecord`] and [`ValidRecord`] lines,
//! [`MetricsFile`]) and `training_metadata.json` ([`TrainingMetadata`]). Training writes them;
//! the dashboard, the loss curve and the sweep's report read them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RunDirError;
use super::files::write_atomic;
use crate::model::ExpertId;

/// One training step as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Global step (1-based, counted across resumes).
    pub step: usize,
    /// Loss that was differentiated (a non-finite loss is written as `"NaN"`, `"inf"` or
    /// `"-inf"`: JSON numbers cannot hold it).
    #[serde(with = "nonfinite")]
    pub loss: f64,
    /// Its language-modelling part.
    #[serde(with = "nonfinite")]
    pub lm_loss: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Tokens counted by the loss.
    pub tokens: usize,
    /// Real tokens forwarded.
    pub input_tokens: usize,
    /// Forwarded tokens per second since the previous step (wall clock, data loading included).
    pub tokens_per_s: f64,
    /// Analysis batch trained on.
    pub batch_idx: usize,
    /// `[layers][experts]`: real tokens of the step that had each expert in their top-k.
    pub expert_counts: Vec<Vec<u32>>,
    /// On several devices, the parts a step's record comes in (one per rank, merged by
    /// [`StepRecord::merge`] before anyone sees them); absent from `metrics.jsonl`.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub parts: usize,
    /// Under the alternating schedule, what the step trained: `"experts"` (its loss is the
    /// unsafe samples' language-modelling loss) or `"routers"` (its loss is the routing
    /// divergence); absent for joint steps.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl StepRecord {
    /// One step's record from its ranks' parts: losses weighted by each part's counted tokens
    /// (the batch's mean), token and expert counts summed, tokens/s of the parts added.
    pub fn merge(parts: &[StepRecord]) -> StepRecord {
        let first = parts.first().expect("a step has at least one part").clone();
        let tokens: usize = parts.iter().map(|p| p.tokens).sum();
        let mean = |f: fn(&StepRecord) -> f64| {
            parts.iter().map(|p| f(p) * p.tokens as f64).sum::<f64>() / tokens.max(1) as f64
        };
        let mut expert_counts = first.expert_counts.clone();
        for p in &parts[1..] {
            for (acc, layer) in expert_counts.iter_mut().zip(&p.expert_counts) {
                for (a, c) in acc.iter_mut().zip(layer) {
                    *a += c;
                }
            }
        }
        StepRecord {
            loss: mean(|p| p.loss),
            lm_loss: mean(|p| p.lm_loss),
            tokens,
            input_tokens: parts.iter().map(|p| p.input_tokens).sum(),
            tokens_per_s: parts.iter().map(|p| p.tokens_per_s).sum(),
            expert_counts,
            parts: 1,
            ..first
        }
    }
}

/// The validation loss at the end of a window (a checkpoint), as `metrics.jsonl` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidRecord {
    /// The last training step before it.
    pub step: usize,
    /// Mean next-token loss over the held-out pairs' counted tokens.
    #[serde(with = "nonfinite")]
    pub valid_loss: f64,
    /// Tokens counted.
    pub valid_tokens: usize,
}

/// What `metrics.jsonl` holds, in step order, the last record of a step kept (a resumed run
/// redoes the steps after its checkpoint): one line per step and one per validation.
#[derive(Debug, Clone, Default)]
pub struct MetricsHistory {
    /// Every training step.
    pub steps: Vec<StepRecord>,
    /// The validation loss at each checkpoint.
    pub valid: Vec<ValidRecord>,
}

/// `metrics.jsonl`: one line per step and per validation, appended as training goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsFile {
    path: PathBuf,
}

impl MetricsFile {
    pub(super) fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The history (empty when the file is missing; lines that do not parse, e.g. one cut
    /// short by a kill, are skipped).
    pub fn read(&self) -> MetricsHistory {
        let mut steps = std::collections::BTreeMap::new();
        let mut valid = std::collections::BTreeMap::new();
        for line in std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
        {
            if let Ok(r) = serde_json::from_str::<StepRecord>(line) {
                steps.insert(r.step, r);
            } else if let Ok(v) = serde_json::from_str::<ValidRecord>(line) {
                valid.insert(v.step, v);
            }
        }
        MetricsHistory {
            steps: steps.into_values().collect(),
            valid: valid.into_values().collect(),
        }
    }

    /// Open it for appending, first cut back to the steps (and validations) up to `kept_steps`
    /// (what the checkpoint resumed from holds), so that no step is recorded twice; `fresh`
    /// starts it over.
    pub fn open_from(&self, kept_steps: usize, fresh: bool) -> Result<MetricsWriter, RunDirError> {
        if fresh || self.path.exists() {
            let history = if fresh {
                MetricsHistory::default()
            } else {
                self.read()
            };
            let mut text = String::new();
            for r in history.steps.iter().filter(|r| r.step <= kept_steps) {
                text.push_str(&serde_json::to_string(r).expect("metric records serialise"));
                text.push('\n');
            }
            for v in history.valid.iter().filter(|v| v.step <= kept_steps) {
                text.push_str(&serde_json::to_string(v).expect("metric records serialise"));
                text.push('\n');
            }
            write_atomic(&self.path, text.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|source| RunDirError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(MetricsWriter {
            file,
            path: self.path.clone(),
        })
    }
}

/// `metrics.jsonl` open for appending.
#[derive(Debug)]
pub struct MetricsWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Append one record as a line; a failed write is logged, not fatal (the step happened).
    pub fn push(&mut self, record: &impl Serialize) {
        use std::io::Write;
        let line = serde_json::to_string(record).expect("metric records serialise");
        if let Err(e) = writeln!(self.file, "{line}") {
            tracing::warn!("{}: {e}", self.path.display());
        }
    }
}

/// `training_metadata.json`: what training did (written last: with the exported model it
/// marks the stage finished).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingMetadata {
    /// Model directory trained from.
    pub base_model: String,
    /// Experts whose weights trained, (layer, expert).
    pub unsafe_experts: Vec<ExpertId>,
    /// Number of trained experts.
    pub num_unsafe_experts: usize,
    /// Analysis batches trained on.
    pub num_batches: usize,
    /// Examples trained on per epoch.
    pub num_examples: usize,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// All parameters.
    pub total_params: usize,
    /// Optimizer steps taken (batches, counting accumulation as one each).
    pub steps: usize,
    /// Loss of the first step.
    pub first_loss: Option<f64>,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Validation loss at the last checkpoint (held-out pairs).
    pub last_valid_loss: Option<f64>,
    /// Held-out pairs validated on.
    pub valid_pairs: usize,
    /// The `[train]` settings used, as the config spells them.
    pub train: serde_json::Value,
    /// Seed.
    pub seed: u64,
}

/// A float that may be NaN or infinite, in JSON: a number when finite, else `"NaN"`, `"inf"` or
/// `"-inf"` (serde_json would write `null`, which reads back as nothing).
pub mod nonfinite {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialise `v`.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match v {
            v if v.is_finite() => s.serialize_f64(*v),
            v if v.is_nan() => s.serialize_str("NaN"),
            v if *v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    /// Deserialise a number or one of the three texts.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Num {
            Number(f64),
            Text(String),
        }
        match Num::deserialize(d)? {
            Num::Number(v) => Ok(v),
            Num::Text(t) => t
                .parse::<f64>()
                .map_err(|_| serde::de::Error::custom(format!("not a number: {t:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_loss_survives_the_round_trip() {
        for loss in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.5] {
            let r = ValidRecord {
                step: 3,
                valid_loss: loss,
                valid_tokens: 7,
            };
            let back: ValidRecord =
                serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            assert!(
                back.valid_loss == loss || (loss.is_nan() && back.valid_loss.is_nan()),
                "{loss}"
            );
        }
    }

    #[test]
    fn rank_parts_merge_into_the_batch_record() {
        let part = |loss: f64, tokens: usize, counts: Vec<u32>| StepRecord {
            step: 4,
            loss,
            lm_loss: loss,
            lr: 1e-4,
            tokens,
            input_tokens: tokens + 10,
            tokens_per_s: 100.0,
            batch_idx: 7,
            expert_counts: vec![counts],
            parts: 2,
            phase: String::new(),
        };
        let m = StepRecord::merge(&[part(2.0, 30, vec![1, 0, 3]), part(1.0, 10, vec![0, 2, 1])]);
        assert_eq!(
            (m.step, m.batch_idx, m.tokens, m.input_tokens, m.parts),
            (4, 7, 40, 60, 1)
        );
        assert!((m.loss - 70.0 / 40.0).abs() < 1e-12 && (m.lm_loss - 1.75).abs() < 1e-12);
        assert_eq!(m.expert_counts, vec![vec![1, 2, 4]]);
        assert_eq!(m.tokens_per_s, 200.0);
        // A one-device record is written as before: no `parts` key.
        let line = serde_json::to_string(&StepRecord { parts: 1, ..m }).unwrap();
        assert!(!line.contains("parts"), "{line}");
        assert_eq!(serde_json::from_str::<StepRecord>(&line).unwrap().parts, 1);
    }
}
