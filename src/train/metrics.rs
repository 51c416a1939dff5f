//! Per-step numbers out of burn-train's Learner.
//!
//! The Learner owns the training loop; what each step produced reaches the outside through its
//! metrics and its renderer. [`StepMetric`] turns each training step's output into a
//! [`StepRecord`] (step, loss, learning rate, tokens, tokens/s, batch, expert activation counts)
//! and [`ValidMetric`] each validation batch's into a [`ValidBatch`], both serialised as JSON in
//! the metric entry; [`ChannelRenderer`], burn-train's renderer for this run, reads them back and
//! forwards them over a channel to whoever watches (progress lines, `metrics.jsonl`, the
//! dashboard). [`NoLog`] replaces burn-train's per-epoch metric files: `metrics.jsonl` is the
//! record.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use burn::train::metric::{Adaptor, Metric, MetricMetadata, MetricName, NumericEntry, SerializedEntry};
use burn::train::logger::MetricLogger;
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::renderer::{EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation, MetricsRendererTraining, ProgressType, TrainingProgress};
use burn::train::metric::MetricDefinition;

use super::step::SftOutputSync;

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
        let mean = |f: fn(&StepRecord) -> f64| parts.iter().map(|p| f(p) * p.tokens as f64).sum::<f64>() / tokens.max(1) as f64;
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

/// One validation batch's loss, as the validation metric reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidBatch {
    /// The last training step before it.
    pub step: usize,
    /// Mean next-token loss over the batch's counted tokens.
    #[serde(with = "nonfinite")]
    pub lm_loss: f64,
    /// Tokens counted.
    pub tokens: usize,
}

/// A float that may be NaN or infinite, in JSON: a number when finite, else `"NaN"`, `"inf"` or
/// `"-inf"` (serde_json would write `null`, which reads back as nothing).
mod nonfinite {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match v {
            v if v.is_finite() => s.serialize_f64(*v),
            v if v.is_nan() => s.serialize_str("NaN"),
            v if *v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Num {
            Number(f64),
            Text(String),
        }
        match Num::deserialize(d)? {
            Num::Number(v) => Ok(v),
            Num::Text(t) => t.parse::<f64>().map_err(|_| serde::de::Error::custom(format!("not a number: {t:?}"))),
        }
    }
}

/// What the renderer forwards.
#[derive(Debug, Clone)]
pub enum Report {
    /// A training step.
    Step(StepRecord),
    /// A validation batch.
    Valid(ValidBatch),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_loss_survives_the_round_trip() {
        for loss in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.5] {
            let r = ValidRecord { step: 3, valid_loss: loss, valid_tokens: 7 };
            let back: ValidRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            assert!(back.valid_loss == loss || (loss.is_nan() && back.valid_loss.is_nan()), "{loss}");
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
        };
        let m = StepRecord::merge(&[part(2.0, 30, vec![1, 0, 3]), part(1.0, 10, vec![0, 2, 1])]);
        assert_eq!((m.step, m.batch_idx, m.tokens, m.input_tokens, m.parts), (4, 7, 40, 60, 1));
        assert!((m.loss - 70.0 / 40.0).abs() < 1e-12 && (m.lm_loss - 1.75).abs() < 1e-12);
        assert_eq!(m.expert_counts, vec![vec![1, 2, 4]]);
        assert_eq!(m.tokens_per_s, 200.0);
        // A one-device record is written as before: no `parts` key.
        let line = serde_json::to_string(&StepRecord { parts: 1, ..m }).unwrap();
        assert!(!line.contains("parts"), "{line}");
        assert_eq!(serde_json::from_str::<StepRecord>(&line).unwrap().parts, 1);
    }
}

impl Adaptor<SftOutputSync> for SftOutputSync {
    fn adapt(&self) -> SftOutputSync {
        self.clone()
    }
}

/// Reports each training step (see [`StepRecord`]), or each rank's part of it.
#[derive(Clone)]
pub struct StepMetric {
    name: MetricName,
    /// When each rank's previous step ended.
    last: Vec<Instant>,
}

impl StepMetric {
    /// A metric for a run on `ranks` devices.
    pub fn new(ranks: usize) -> Self {
        Self {
            name: Arc::new("step".to_string()),
            last: vec![Instant::now(); ranks.max(1)],
        }
    }
}

impl Metric for StepMetric {
    type Input = SftOutputSync;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &SftOutputSync, metadata: &MetricMetadata) -> SerializedEntry {
        let now = Instant::now();
        let slot = item.rank.rank.min(self.last.len() - 1);
        let last = &mut self.last[slot];
        let seconds = now.duration_since(*last).as_secs_f64();
        *last = now;
        let record = StepRecord {
            step: item.step,
            loss: item.loss,
            lm_loss: item.lm_loss,
            lr: metadata.lr.unwrap_or(0.0),
            tokens: item.tokens,
            input_tokens: item.input_tokens,
            tokens_per_s: item.input_tokens as f64 / seconds.max(1e-9),
            batch_idx: item.batch_idx,
            expert_counts: item.expert_counts.clone(),
            parts: item.rank.ranks,
        };
        SerializedEntry::new(format!("{:.4}", item.loss), serde_json::to_string(&record).expect("step records serialise"))
    }

    fn clear(&mut self) {}
}

/// Reports each validation batch's loss (see [`ValidBatch`]).
#[derive(Clone)]
pub struct ValidMetric {
    name: MetricName,
    window: usize,
    total_steps: usize,
}

impl ValidMetric {
    /// A metric for a schedule of `total_steps` in windows of `window` steps.
    pub fn new(window: usize, total_steps: usize) -> Self {
        Self {
            name: Arc::new("valid".to_string()),
            window,
            total_steps,
        }
    }
}

impl Metric for ValidMetric {
    type Input = SftOutputSync;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &SftOutputSync, metadata: &MetricMetadata) -> SerializedEntry {
        let window = metadata.global_progress.items_processed;
        let batch = ValidBatch {
            step: (window * self.window).min(self.total_steps),
            lm_loss: item.lm_loss,
            tokens: item.tokens,
        };
        SerializedEntry::new(format!("{:.4}", item.lm_loss), serde_json::to_string(&batch).expect("valid batches serialise"))
    }

    fn clear(&mut self) {}
}

/// burn-train's renderer for a steermoe run: forwards each step and validation batch (read back
/// from the metric entries) to a channel; draws nothing itself.
pub struct ChannelRenderer {
    tx: Sender<Report>,
}

impl ChannelRenderer {
    /// A renderer sending to `tx`.
    pub fn new(tx: Sender<Report>) -> Self {
        Self { tx }
    }
}

fn entry(state: &MetricState) -> &str {
    match state {
        MetricState::Generic(e) | MetricState::Numeric(e, _) => &e.serialized_entry.serialized,
    }
}

impl MetricsRendererTraining for ChannelRenderer {
    fn update_train(&mut self, state: MetricState) {
        match serde_json::from_str(entry(&state)) {
            Ok(record) => drop(self.tx.send(Report::Step(record))),
            Err(e) => tracing::warn!("a training step's record did not read back: {e}"),
        }
    }
    fn update_valid(&mut self, state: MetricState) {
        match serde_json::from_str(entry(&state)) {
            Ok(batch) => drop(self.tx.send(Report::Valid(batch))),
            Err(e) => tracing::warn!("a validation batch's record did not read back: {e}"),
        }
    }
    fn render_train(&mut self, _item: TrainingProgress, _progress: Vec<ProgressType>) {}
    fn render_valid(&mut self, _item: TrainingProgress, _progress: Vec<ProgressType>) {}
    fn on_train_end(&mut self, _summary: Option<burn::train::LearnerSummary>) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for ChannelRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
    fn render_test(&mut self, _item: EvaluationProgress, _progress: Vec<ProgressType>) {}
    fn on_test_end(&mut self, _summary: Option<burn::train::LearnerSummary>) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl MetricsRenderer for ChannelRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}

/// A metric logger that keeps nothing (`metrics.jsonl` is the record).
pub struct NoLog;

impl MetricLogger for NoLog {
    fn log(&mut self, _update: MetricsUpdate, _epoch: usize, _split: &Split) {}
    fn read_numeric(&mut self, _name: &str, _epoch: usize, _split: &Split) -> Result<Vec<NumericEntry>, String> {
        Ok(Vec::new())
    }
    fn log_metric_definition(&mut self, _definition: MetricDefinition) {}
    fn log_epoch_summary(&mut self, _summary: EpochSummary) {}
}
