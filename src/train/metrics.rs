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
}

impl Adaptor<SftOutputSync> for SftOutputSync {
    fn adapt(&self) -> SftOutputSync {
        self.clone()
    }
}

/// Reports each training step (see [`StepRecord`]).
#[derive(Clone)]
pub struct StepMetric {
    name: MetricName,
    last: Instant,
    window: usize,
}

impl StepMetric {
    /// A metric for windows of `window` steps.
    pub fn new(window: usize) -> Self {
        Self {
            name: Arc::new("step".to_string()),
            last: Instant::now(),
            window,
        }
    }
}

impl Metric for StepMetric {
    type Input = SftOutputSync;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &SftOutputSync, metadata: &MetricMetadata) -> SerializedEntry {
        // Global step: windows before this one times the window length, plus the iteration.
        let window = metadata.global_progress.items_processed.saturating_sub(1);
        let step = window * self.window + metadata.iteration.unwrap_or(metadata.progress.items_processed);
        let now = Instant::now();
        let seconds = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let record = StepRecord {
            step,
            loss: item.loss,
            lm_loss: item.lm_loss,
            lr: metadata.lr.unwrap_or(0.0),
            tokens: item.tokens,
            input_tokens: item.input_tokens,
            tokens_per_s: item.input_tokens as f64 / seconds.max(1e-9),
            batch_idx: item.batch_idx,
            expert_counts: item.expert_counts.clone(),
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
