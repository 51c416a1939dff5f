//! Live control of a training run from outside the Learner (the dashboard's `p` and `q`).
//!
//! burn-train's Learner owns the loop; what it offers is its [`Interrupter`], checked after every
//! step, which breaks off the current burn-train epoch (here: a window of `checkpoint_every`
//! steps) *before* that window's checkpoint. So a stop request is served by the loader: when the
//! next window starts and a stop is pending, the loader serves no batch and interrupts; the
//! window before it was checkpointed, and a rerun resumes from there with nothing lost. A second
//! request interrupts at once (the steps since the last checkpoint are redone on resume). Pause is
//! served by the loader too: it holds the next batch back while paused.
//!
//! On several devices every rank's loader asks whether a window may start; the first answer for
//! a window is every rank's, so that all ranks run the same steps (a rank that stopped alone would
//! leave the others waiting in the gradient exchange). For the same reason a second stop request
//! does not interrupt a data-parallel run mid-window: it stops at the next checkpoint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::train::Interrupter;

/// Shared handle: the training side polls it, the controlling side (a UI) sets it.
#[derive(Clone, Default)]
pub struct TrainControl {
    paused: Arc<AtomicBool>,
    /// 0 = run, 1 = stop at the next checkpoint, 2 = stop now.
    stop: Arc<AtomicU8>,
    interrupter: Interrupter,
    plan: Arc<Mutex<Option<TrainPlan>>>,
    /// Whether each window asked about so far may start (the first rank's answer).
    windows: Arc<Mutex<HashMap<usize, bool>>>,
    /// Several ranks: no interruption mid-window.
    parallel: Arc<AtomicBool>,
}

/// What a training run is about to do, published when it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainPlan {
    /// Optimizer steps in the schedule.
    pub total_steps: usize,
    /// Trainable and total parameters.
    pub params: (usize, usize),
    /// Experts whose weights train.
    pub trained: Vec<crate::analysis::select::ExpertId>,
    /// Each analysis batch's expert set (its routing mask).
    pub batch_experts: Vec<(usize, Vec<crate::analysis::select::ExpertId>)>,
}

impl std::fmt::Debug for TrainControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainControl")
            .field("paused", &self.is_paused())
            .field("stop", &self.stop.load(Ordering::Relaxed))
            .finish()
    }
}

impl TrainControl {
    /// A handle in the running state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pause or resume; returns whether it is now paused.
    pub fn toggle_pause(&self) -> bool {
        !self.paused.fetch_xor(true, Ordering::SeqCst)
    }

    /// Whether training is held.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Ask to stop: the first request stops at the next checkpoint, a second one at once.
    pub fn request_stop(&self) {
        let before = self.stop.fetch_add(1, Ordering::SeqCst);
        self.paused.store(false, Ordering::SeqCst);
        if before >= 1 && !self.parallel.load(Ordering::SeqCst) {
            self.interrupter.stop(Some("stopped by the user"));
        }
    }

    /// Whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst) > 0
    }

    /// Publish the run's plan (done by `train` before the first step).
    pub fn set_plan(&self, plan: TrainPlan) {
        *self.plan.lock().expect("plan lock") = Some(plan);
    }

    /// The run's plan, once training started.
    pub fn plan(&self) -> Option<TrainPlan> {
        self.plan.lock().expect("plan lock").clone()
    }

    /// The Learner's interrupter.
    pub fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// Mark the run as data-parallel (see the module docs).
    pub(crate) fn set_parallel(&self) {
        self.parallel.store(true, Ordering::SeqCst);
    }

    /// Called by the loader when window `w` starts: `false` (and the Learner interrupted) if a
    /// stop was pending when the first rank asked about `w`.
    pub(crate) fn window_may_start(&self, w: usize) -> bool {
        let may = *self
            .windows
            .lock()
            .expect("window lock")
            .entry(w)
            .or_insert_with(|| !self.stop_requested());
        if !may {
            self.interrupter
                .stop(Some("stopped by the user at a checkpoint"));
        }
        may
    }

    /// Called by the loader before each batch: waits while paused.
    pub(crate) fn wait_while_paused(&self) {
        while self.is_paused() && !self.stop_requested() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_waits_for_a_checkpoint_second_interrupts() {
        let c = TrainControl::new();
        assert!(c.toggle_pause() && c.is_paused());
        assert!(!c.toggle_pause() && !c.is_paused());
        assert!(c.window_may_start(0));
        c.request_stop();
        assert!(!c.interrupter().should_stop());
        assert!(!c.window_may_start(1));
        assert!(c.interrupter().should_stop());
        let c = TrainControl::new();
        c.request_stop();
        c.request_stop();
        assert!(c.interrupter().should_stop());
    }

    #[test]
    fn every_rank_gets_the_first_answer_for_a_window() {
        let c = TrainControl::new();
        c.set_parallel();
        assert!(c.window_may_start(3), "rank 0 starts window 3");
        c.request_stop();
        c.request_stop();
        assert!(
            !c.interrupter().should_stop(),
            "no interruption mid-window on several ranks"
        );
        assert!(c.window_may_start(3), "rank 1 runs window 3 too");
        assert!(
            !c.window_may_start(4) && !c.window_may_start(4),
            "and both stop before window 4"
        );
    }
}
