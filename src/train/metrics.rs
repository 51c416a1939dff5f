//! Per-step numbers out of burn-train's Learner.
//!
//! The Learner owns the training loop, so the place where every step's output appears is its
//! metric hook: [`StepMetric`] is a burn-train `Metric` that forwards a [`StepRecord`] (step,
//! loss, learning rate, tokens, tokens/s, batch, expert activation counts) over a channel to
//! whoever watches (progress lines, `metrics.jsonl`, the dashboard). [`QuietRenderer`] keeps burn-train's own renderer silent.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use burn::train::metric::{Adaptor, Metric, MetricMetadata, MetricName, SerializedEntry};
use burn::train::renderer::{EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation, MetricsRendererTraining, ProgressType, TrainingProgress};
use burn::train::metric::MetricDefinition;

use super::step::SftOutputSync;

/// One training step as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Global step (1-based, counted across resumes).
    pub step: usize,
    /// Loss that was differentiated.
    pub loss: f64,
    /// Its language-modelling part.
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

impl Adaptor<SftOutputSync> for SftOutputSync {
    fn adapt(&self) -> SftOutputSync {
        self.clone()
    }
}

/// Forwards each step to a channel.
#[derive(Clone)]
pub struct StepMetric {
    tx: Sender<StepRecord>,
    name: MetricName,
    last: Instant,
}

impl StepMetric {
    /// A metric sending to `tx`.
    pub fn new(tx: Sender<StepRecord>) -> Self {
        Self {
            tx,
            name: Arc::new("step".to_string()),
            last: Instant::now(),
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
        let per = metadata.progress.items_total;
        let step = window * per + metadata.iteration.unwrap_or(metadata.progress.items_processed);
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
        let _ = self.tx.send(record);
        SerializedEntry::new(format!("{:.4}", item.loss), item.loss.to_string())
    }

    fn clear(&mut self) {}
}

/// A renderer that draws nothing (steermoe reports progress itself).
pub struct QuietRenderer;

impl MetricsRendererTraining for QuietRenderer {
    fn update_train(&mut self, _state: MetricState) {}
    fn update_valid(&mut self, _state: MetricState) {}
    fn render_train(&mut self, _item: TrainingProgress, _progress: Vec<ProgressType>) {}
    fn render_valid(&mut self, _item: TrainingProgress, _progress: Vec<ProgressType>) {}
    fn on_train_end(&mut self, _summary: Option<burn::train::LearnerSummary>) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for QuietRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
    fn render_test(&mut self, _item: EvaluationProgress, _progress: Vec<ProgressType>) {}
    fn on_test_end(&mut self, _summary: Option<burn::train::LearnerSummary>) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl MetricsRenderer for QuietRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}
