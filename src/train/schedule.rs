//! The learning-rate schedule: linear warmup to the peak over `warmup` steps, then linear decay
//! to zero at `total` steps (transformers' default `linear` schedule with warmup).
//!
//! burn-train's data-parallel loop advances each rank's scheduler once per rank for every item,
//! as if the ranks shared the items; here every rank serves every step (its part of the batch),
//! so on `n` devices the schedule moves one step every `n` calls ([`WarmupLinear::per_step`]).
//!
//! The alternating schedule runs at RASA's constant rates instead: each pass at its phase's rate
//! (`train.lr` for expert passes, `train.router_lr` for router passes), after the same warmup
//! ([`WarmupLinear::phased`]).

use burn::optim::LearningRate;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::backend::Backend;

/// Linear warmup, then linear decay.
#[derive(Debug, Clone)]
pub struct WarmupLinear {
    peak: f64,
    warmup: usize,
    total: usize,
    /// Calls of `step()` so far.
    calls: usize,
    /// Calls per optimizer step.
    per_step: usize,
    /// The alternating schedule: each pass's constant rate, and the steps of a pass.
    phased: Option<(std::sync::Arc<Vec<f64>>, usize)>,
}

impl WarmupLinear {
    /// A schedule peaking at `peak` after `warmup` of `total` steps.
    pub fn new(peak: f64, warmup: usize, total: usize) -> Self {
        Self {
            peak,
            warmup,
            total: total.max(1),
            calls: 0,
            per_step: 1,
            phased: None,
        }
    }

    /// Constant rates per pass (`rates[p]` for the `steps_per_pass` steps of pass `p`) after the
    /// warmup, instead of the linear decay.
    pub fn phased(mut self, rates: Vec<f64>, steps_per_pass: usize) -> Self {
        self.phased = Some((std::sync::Arc::new(rates), steps_per_pass.max(1)));
        self
    }

    /// Advance one step every `calls` calls of `step()` (the number of devices of a
    /// data-parallel run).
    pub fn per_step(mut self, calls: usize) -> Self {
        self.per_step = calls.max(1);
        self
    }

    /// The rate at (0-based) step `s`.
    pub fn at(&self, s: usize) -> f64 {
        if let Some((rates, per_pass)) = &self.phased {
            let rate = rates
                .get(s / per_pass)
                .or(rates.last())
                .copied()
                .unwrap_or(self.peak);
            return match s < self.warmup {
                true => rate * (s + 1) as f64 / self.warmup as f64,
                false => rate,
            };
        }
        if s < self.warmup {
            self.peak * (s + 1) as f64 / self.warmup as f64
        } else {
            let left = self.total.saturating_sub(s) as f64;
            let span = (self.total - self.warmup.min(self.total)).max(1) as f64;
            self.peak * (left / span).min(1.0)
        }
    }
}

impl LrScheduler for WarmupLinear {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        let lr = self.at(self.calls / self.per_step);
        self.calls += 1;
        lr
    }

    /// Steps taken (not calls: a checkpoint resumes on any number of devices).
    fn to_record<B: Backend>(&self) -> usize {
        self.calls / self.per_step
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.calls = record * self.per_step;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_zero() {
        let s = WarmupLinear::new(1.0, 2, 6);
        let lrs: Vec<f64> = (0..6).map(|i| s.at(i)).collect();
        assert_eq!(lrs, vec![0.5, 1.0, 1.0, 0.75, 0.5, 0.25]);
        let s = WarmupLinear::new(2.0, 0, 4);
        assert_eq!(s.at(0), 2.0);
    }

    #[test]
    fn alternating_passes_keep_their_phase_rates() {
        let s = WarmupLinear::new(1.0, 1, 6).phased(vec![1e-4, 1e-6, 1e-4], 2);
        let lrs: Vec<f64> = (0..6).map(|i| s.at(i)).collect();
        assert_eq!(lrs, vec![1e-4, 1e-4, 1e-6, 1e-6, 1e-4, 1e-4]);
        let warm = WarmupLinear::new(1.0, 2, 4).phased(vec![2.0, 4.0], 2);
        assert_eq!(warm.at(0), 1.0, "warmup scales the first pass's rate");
    }

    #[test]
    fn on_two_devices_each_step_is_called_twice() {
        type B = burn::backend::NdArray<f32>;
        let mut one = WarmupLinear::new(1.0, 2, 6);
        let mut two = WarmupLinear::new(1.0, 2, 6).per_step(2);
        for _ in 0..3 {
            let lr = one.step();
            assert_eq!((two.step(), two.step()), (lr, lr));
        }
        assert_eq!(two.to_record::<B>(), 3);
        let resumed = WarmupLinear::new(1.0, 2, 6).load_record::<B>(two.to_record::<B>());
        assert_eq!(
            resumed.clone().step(),
            one.step(),
            "a 2-device checkpoint resumes on one device"
        );
    }
}
