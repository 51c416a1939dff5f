//! The learning-rate schedule: linear warmup to the peak over `warmup` steps, then linear decay
//! to zero at `total` steps (transformers' default `linear` schedule with warmup).

use burn::optim::LearningRate;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::backend::Backend;

/// Linear warmup, then linear decay.
#[derive(Debug, Clone)]
pub struct WarmupLinear {
    peak: f64,
    warmup: usize,
    total: usize,
    step: usize,
}

impl WarmupLinear {
    /// A schedule peaking at `peak` after `warmup` of `total` steps.
    pub fn new(peak: f64, warmup: usize, total: usize) -> Self {
        Self {
            peak,
            warmup,
            total: total.max(1),
            step: 0,
        }
    }

    /// The rate at (0-based) step `s`.
    pub fn at(&self, s: usize) -> f64 {
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
        let lr = self.at(self.step);
        self.step += 1;
        lr
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.step = record;
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
}
