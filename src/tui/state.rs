//! What the dashboard shows, as plain data: fed by training steps and collect events, read by
//! the widgets. No terminal here, so it is unit-tested directly.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use crate::analysis::select::ExpertId;
use crate::train::StepRecord;

/// Steps the activation heatmap sums over.
pub const HEAT_WINDOW: usize = 32;
/// Weight of the past in the smoothed loss (exponential moving average).
pub const SMOOTHING: f64 = 0.9;

/// The run's key facts, shown in the header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunInfo {
    /// Model directory.
    pub model: String,
    /// Backend name.
    pub backend: String,
    /// Compute precision.
    pub precision: String,
    /// Trainable and total parameters, once known.
    pub params: Option<(usize, usize)>,
    /// The run directory.
    pub run_dir: String,
    /// Experts per layer (to lay out collect's flat activation shares).
    pub experts: usize,
}

impl RunInfo {
    /// The facts of a config's run in `run_dir` (reads the model's `config.json`).
    pub fn new(
        cfg: &crate::config::Config,
        run_dir: &std::path::Path,
    ) -> Result<Self, crate::model::LoadError> {
        Ok(Self {
            model: cfg.model.dir.display().to_string(),
            backend: cfg.model.backend.to_string(),
            precision: format!("{:?}", cfg.model.precision).to_lowercase(),
            params: None,
            run_dir: run_dir.display().to_string(),
            experts: crate::model::ModelConfig::from_path(&cfg.model.dir)?.num_experts,
        })
    }
}

/// Which view is on screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    /// Loss, lr, progress, expert activation.
    #[default]
    Train,
    /// Generation progress and safe/unsafe activation.
    Collect,
}

/// State of the training view.
#[derive(Debug, Clone, Default)]
pub struct TrainState {
    /// `(step, loss)` of every step.
    pub loss: Vec<(f64, f64)>,
    /// `(step, smoothed loss)`.
    pub smoothed: Vec<(f64, f64)>,
    /// `(step, validation loss)` at each checkpoint.
    pub valid: Vec<(f64, f64)>,
    /// `(step, routing divergence)` of the alternating schedule's router steps (kept out of
    /// `loss` and `smoothed`: another quantity).
    pub router: Vec<(f64, f64)>,
    /// The last step.
    pub last: Option<StepRecord>,
    /// Steps in the schedule.
    pub total_steps: usize,
    /// Time spent training, for the ETA.
    pub elapsed: Duration,
    /// Recent steps' `[layers][experts]` counts, newest last.
    pub recent: VecDeque<Vec<Vec<u32>>>,
    /// The experts being trained (marked on the heatmap).
    pub unsafe_experts: HashSet<ExpertId>,
    /// Each analysis batch's experts, by batch index (the current batch's mask is shown).
    pub batch_experts: Vec<(usize, Vec<ExpertId>)>,
}

impl TrainState {
    /// Take one step in.
    pub fn push(&mut self, step: StepRecord) {
        let x = step.step as f64;
        if step.phase == "routers" {
            self.router.push((x, step.loss));
            self.last = Some(step);
            return;
        }
        let smooth = match self.smoothed.last() {
            Some(&(_, prev)) => SMOOTHING * prev + (1.0 - SMOOTHING) * step.loss,
            None => step.loss,
        };
        self.loss.push((x, step.loss));
        self.smoothed.push((x, smooth));
        if !step.expert_counts.is_empty() {
            self.recent.push_back(step.expert_counts.clone());
            while self.recent.len() > HEAT_WINDOW {
                self.recent.pop_front();
            }
        }
        self.last = Some(step);
    }

    /// `[layers][experts]` share of the recent tokens that chose each expert (one of top-k),
    /// normalised by the hottest expert, so 1.0 = the most used.
    pub fn heat(&self) -> Vec<Vec<f64>> {
        let Some(first) = self.recent.front() else {
            return Vec::new();
        };
        let mut sum: Vec<Vec<f64>> = first.iter().map(|l| vec![0.0; l.len()]).collect();
        for counts in &self.recent {
            for (s, c) in sum.iter_mut().zip(counts) {
                for (s, &c) in s.iter_mut().zip(c) {
                    *s += c as f64;
                }
            }
        }
        let max = sum.iter().flatten().fold(0.0f64, |m, &v| m.max(v));
        if max > 0.0 {
            sum.iter_mut().flatten().for_each(|v| *v /= max);
        }
        sum
    }

    /// Share of the schedule done.
    pub fn progress(&self) -> f64 {
        match (&self.last, self.total_steps) {
            (Some(s), t) if t > 0 => (s.step as f64 / t as f64).min(1.0),
            _ => 0.0,
        }
    }

    /// Time left at the pace so far.
    pub fn eta(&self) -> Option<Duration> {
        let p = self.progress();
        (p > 0.0 && p < 1.0).then(|| self.elapsed.mul_f64((1.0 - p) / p))
    }

    /// The experts of the batch trained on last (its routing mask).
    pub fn current_mask(&self) -> Option<&[ExpertId]> {
        let b = self.last.as_ref()?.batch_idx;
        self.batch_experts
            .iter()
            .find(|(i, _)| *i == b)
            .map(|(_, e)| e.as_slice())
    }
}

/// State of the collect view.
#[derive(Debug, Clone, Default)]
pub struct CollectState {
    /// Batches in the run and finished.
    pub total: usize,
    /// Finished batches.
    pub done: usize,
    /// Tokens generated.
    pub tokens: usize,
    /// Time spent generating.
    pub elapsed: Duration,
    /// Kept and dropped samples so far.
    pub kept: usize,
    /// Dropped by the quality filter.
    pub dropped: usize,
    /// Running mean activation share per (layer, expert), safe and unsafe, `[layers][experts]`.
    pub safe: Vec<Vec<f64>>,
    /// Unsafe.
    pub unsafe_: Vec<Vec<f64>>,
    /// Batches averaged into them.
    pub batches_seen: usize,
}

impl CollectState {
    /// Tokens per second so far.
    pub fn rate(&self) -> f64 {
        self.tokens as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Average one batch's activation shares (flat `layers * experts`) into the running means.
    pub fn push_activation(&mut self, safe: &[f32], unsafe_: &[f32], experts: usize) {
        let rows = |v: &[f32]| -> Vec<Vec<f64>> {
            v.chunks(experts.max(1))
                .map(|r| r.iter().map(|&x| x as f64).collect())
                .collect()
        };
        let (s, u) = (rows(safe), rows(unsafe_));
        let n = self.batches_seen as f64;
        let mix = |old: &mut Vec<Vec<f64>>, new: Vec<Vec<f64>>| {
            if old.is_empty() {
                *old = new;
            } else {
                for (o, r) in old.iter_mut().zip(new) {
                    for (o, x) in o.iter_mut().zip(r) {
                        *o = (*o * n + x) / (n + 1.0);
                    }
                }
            }
        };
        mix(&mut self.safe, s);
        mix(&mut self.unsafe_, u);
        self.batches_seen += 1;
    }

    /// `unsafe - safe` activation share per (layer, expert): the running risk difference.
    pub fn difference(&self) -> Vec<Vec<f64>> {
        self.unsafe_
            .iter()
            .zip(&self.safe)
            .map(|(u, s)| u.iter().zip(s).map(|(u, s)| u - s).collect())
            .collect()
    }
}

/// Everything on the dashboard.
#[derive(Debug, Clone, Default)]
pub struct Dashboard {
    /// Header facts.
    pub info: RunInfo,
    /// The view shown.
    pub view: View,
    /// Training.
    pub train: TrainState,
    /// Collect.
    pub collect: CollectState,
    /// Training is paused.
    pub paused: bool,
    /// A stop was requested.
    pub stopping: bool,
    /// The help overlay is open.
    pub help: bool,
    /// The latest status line.
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn step(step: usize, loss: f64, counts: Vec<Vec<u32>>) -> StepRecord {
        StepRecord {
            step,
            loss,
            lm_loss: loss,
            lr: 1e-4,
            tokens: 10,
            input_tokens: 100,
            tokens_per_s: 1000.0,
            batch_idx: step % 2,
            expert_counts: counts,
            parts: 1,
            phase: String::new(),
        }
    }

    #[test]
    fn loss_is_smoothed_and_heat_normalised_over_the_window() {
        let mut s = TrainState {
            total_steps: 4,
            elapsed: Duration::from_secs(10),
            ..Default::default()
        };
        s.push(step(1, 2.0, vec![vec![4, 0], vec![1, 1]]));
        s.push(step(2, 1.0, vec![vec![4, 0], vec![1, 1]]));
        assert!((s.smoothed[1].1 - 1.9).abs() < 1e-12, "{}", s.smoothed[1].1);
        assert_eq!(s.heat(), vec![vec![1.0, 0.0], vec![0.25, 0.25]]);
        assert_eq!(s.progress(), 0.5);
        assert_eq!(s.eta(), Some(Duration::from_secs(10)));
        for i in 3..3 + HEAT_WINDOW {
            s.push(step(i, 1.0, vec![vec![0, 2], vec![0, 0]]));
        }
        assert_eq!(s.recent.len(), HEAT_WINDOW);
        assert_eq!(s.heat()[0], vec![0.0, 1.0]);
    }

    #[test]
    fn collect_activation_is_a_running_mean() {
        let mut c = CollectState::default();
        c.push_activation(&[0.5, 0.0], &[0.0, 1.0], 2);
        c.push_activation(&[0.5, 0.5], &[0.0, 0.0], 2);
        assert_eq!(c.safe, vec![vec![0.5, 0.25]]);
        assert_eq!(c.difference(), vec![vec![-0.5, 0.25]]);
    }
}
