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

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Instant;

use burn::train::logger::MetricLogger;
use burn::train::metric::MetricDefinition;
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{
    Adaptor, Metric, MetricMetadata, MetricName, NumericEntry, SerializedEntry,
};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use serde::{Deserialize, Serialize};

use super::step::SftOutputSync;
pub use crate::run_dir::training::{StepRecord, ValidRecord};

/// One validation batch's loss, as the validation metric reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidBatch {
    /// The last training step before it.
    pub step: usize,
    /// Mean next-token loss over the batch's counted tokens.
    #[serde(with = "crate::run_dir::training::nonfinite")]
    pub lm_loss: f64,
    /// Tokens counted.
    pub tokens: usize,
}

/// What the renderer forwards.
#[derive(Debug, Clone)]
pub enum Report {
    /// A training step.
    Step(StepRecord),
    /// A validation batch.
    Valid(ValidBatch),
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
            phase: match item.phase {
                super::config::Phase::Joint => String::new(),
                phase => phase.name().to_string(),
            },
        };
        SerializedEntry::new(
            format!("{:.4}", item.loss),
            serde_json::to_string(&record).expect("step records serialise"),
        )
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
        SerializedEntry::new(
            format!("{:.4}", item.lm_loss),
            serde_json::to_string(&batch).expect("valid batches serialise"),
        )
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
    fn on_train_end(
        &mut self,
        _summary: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for ChannelRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
    fn render_test(&mut self, _item: EvaluationProgress, _progress: Vec<ProgressType>) {}
    fn on_test_end(
        &mut self,
        _summary: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
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
    fn read_numeric(
        &mut self,
        _name: &str,
        _epoch: usize,
        _split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        Ok(Vec::new())
    }
    fn log_metric_definition(&mut self, _definition: MetricDefinition) {}
    fn log_epoch_summary(&mut self, _summary: EpochSummary) {}
}
