//! `[train]`: what trains, on which examples, with which loss and optimizer settings.

use serde::{Deserialize, Serialize};

use crate::validate::{Invalid, at_least, ensure, non_negative, not_blank, positive};

/// Which tokens the SFT loss counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossOn {
    /// The assistant turn only (prompt labels are -100).
    Assistant,
    /// Every token (the seeds' choice).
    All,
}

/// Which samples of a batch are restricted to the batch's unsafe experts while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskScope {
    /// Unsafe samples only; safe samples route freely.
    UnsafeSamples,
    /// Every sample.
    All,
    /// No mask (the seeds' trainer in effect).
    None,
}

/// Which expert set a batch trains and masks with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertSet {
    /// The batch's own unsafe experts.
    PerBatch,
    /// The global unsafe experts, for every batch.
    Global,
}

/// Which parameters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trainable {
    /// Gate/up/down weights of the union of the unsafe experts.
    #[serde(rename = "unsafe_experts")]
    UnsafeExperts,
    /// The routers only (the seeds' ablation).
    #[serde(rename = "routers")]
    Routers,
    /// Both.
    #[serde(rename = "unsafe_experts+routers")]
    UnsafeExpertsAndRouters,
    /// Every parameter (full-parameter fine-tuning, the baseline RASA compares against).
    #[serde(rename = "all")]
    All,
}

/// How training proceeds over the passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Every step trains what `trainable` names on the whole batch's loss (plus the router-
    /// consistency KL when on): the seeds' trainer.
    Joint,
    /// RASA's rounds: `expert_epochs` passes training the experts (routers frozen) on the unsafe
    /// samples' loss, then `router_epochs` passes training the routers (experts frozen) to route
    /// the unsafe samples as the safe ones do; `rounds` times.
    Alternating,
}

/// The divergence a router step of the alternating schedule minimises between the safe samples'
/// routing (`P`, a fixed target) and the unsafe samples' (`Q`, trained).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterKl {
    /// KL(P ‖ Q), RASA's `forward` (`F.kl_div(Q.log(), P)`).
    Forward,
    /// KL(Q ‖ P).
    Reverse,
    /// The mean of both.
    Symmetric,
}

/// Direction of the router-consistency KL between mean router distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// No consistency loss.
    Off,
    /// KL(unsafe ‖ safe): pull the jailbreak routing towards the plain one.
    Forward,
    /// KL(safe ‖ unsafe).
    Reverse,
    /// The mean of both.
    Symmetric,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Safe samples answer with the model's own generation, cut to this many characters.
    pub answer_chars: usize,
    /// Refusal targets of unsafe samples (sample `i` of batch `b` takes entry `(b + i) % len`).
    pub refusals: Vec<String>,
    /// Which tokens the loss counts.
    pub loss_on: LossOn,
    /// Longest example in tokens; longer ones keep their tail.
    pub max_len: usize,
    /// Shuffle the order of batches each epoch (seeded by `seed + epoch`).
    pub shuffle_batches: bool,
    /// Which samples the routing mask restricts.
    pub mask_scope: MaskScope,
    /// Which expert set trains and masks.
    pub expert_set: ExpertSet,
    /// Which parameters train (under the alternating schedule: in the expert steps, where
    /// `unsafe_experts` or `all`).
    pub trainable: Trainable,
    /// Joint steps, or RASA's alternating expert and router rounds.
    pub schedule: Schedule,
    /// Alternating: rounds of expert then router passes.
    pub rounds: usize,
    /// Alternating: passes over the batches training experts, per round (0: router-only).
    pub expert_epochs: usize,
    /// Alternating: passes training routers, per round (0: expert-only).
    pub router_epochs: usize,
    /// Alternating: the router steps' learning rate (RASA's OLMoE setting: 1e-6, against 5e-5
    /// for the experts).
    pub router_lr: f64,
    /// Alternating: the router steps' divergence.
    pub router_kl: RouterKl,
    /// Router-consistency loss direction.
    pub router_consistency: Consistency,
    /// Its weight.
    pub consistency_weight: f64,
    /// Add transformers' load-balancing loss times the checkpoint's `router_aux_loss_coef`
    /// (what `OlmoeForCausalLM` does when router logits are output; off in the seeds).
    pub router_aux_loss: bool,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Linear warmup steps (optimizer steps), then linear decay to zero.
    pub warmup_steps: usize,
    /// Passes over the batches (the joint schedule; the alternating one makes
    /// `rounds × (expert_epochs + router_epochs)`).
    pub epochs: usize,
    /// Clip each parameter's gradient to this norm (0 = off).
    pub grad_clip: f64,
    /// Batches whose gradients are summed per optimizer step.
    pub grad_accumulation: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Checkpoint every this many steps (0 = once per epoch).
    pub checkpoint_every: usize,
    /// Held-out pairs whose refusal loss is measured at every checkpoint (0 = no validation; see
    /// `train::valid`).
    pub valid_pairs: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            answer_chars: 100,
            refusals: vec![
                "I cannot assist with that request as it may be harmful or unsafe.".into(),
            ],
            loss_on: LossOn::Assistant,
            max_len: 512,
            shuffle_batches: true,
            mask_scope: MaskScope::UnsafeSamples,
            expert_set: ExpertSet::PerBatch,
            trainable: Trainable::UnsafeExperts,
            schedule: Schedule::Joint,
            rounds: 3,
            expert_epochs: 1,
            router_epochs: 1,
            router_lr: 1e-6,
            router_kl: RouterKl::Forward,
            router_consistency: Consistency::Off,
            consistency_weight: 0.1,
            router_aux_loss: false,
            lr: 5e-5,
            warmup_steps: 0,
            epochs: 1,
            grad_clip: 1.0,
            grad_accumulation: 1,
            weight_decay: 0.0,
            checkpoint_every: 0,
            valid_pairs: 16,
        }
    }
}

impl TrainConfig {
    /// Check the values: every number finite and in range, at least one refusal.
    pub fn validate(&self) -> Result<(), Invalid> {
        ensure(!self.refusals.is_empty(), "train.refusals", || {
            "needs at least one refusal".into()
        })?;
        for (i, r) in self.refusals.iter().enumerate() {
            not_blank(&format!("train.refusals[{i}]"), r)?;
        }
        at_least("train.answer_chars", self.answer_chars, 1)?;
        at_least("train.epochs", self.epochs, 1)?;
        at_least("train.grad_accumulation", self.grad_accumulation, 1)?;
        at_least("train.max_len", self.max_len, 8)?;
        positive("train.lr", self.lr)?;
        non_negative("train.grad_clip", self.grad_clip)?;
        non_negative("train.weight_decay", self.weight_decay)?;
        non_negative("train.consistency_weight", self.consistency_weight)?;
        if self.schedule == Schedule::Alternating {
            positive("train.router_lr", self.router_lr)?;
            at_least("train.rounds", self.rounds, 1)?;
            ensure(
                self.expert_epochs + self.router_epochs > 0,
                "train.expert_epochs",
                || {
                    "and train.router_epochs are both 0: an alternating round must train something"
                        .into()
                },
            )?;
            ensure(
                matches!(self.trainable, Trainable::UnsafeExperts | Trainable::All),
                "train.trainable",
                || {
                    "names what the expert steps of the alternating schedule train: \"unsafe_experts\" or \"all\" (router steps always train the routers; router-only is train.expert_epochs = 0)".into()
                },
            )?;
            ensure(
                self.grad_accumulation == 1,
                "train.grad_accumulation",
                || {
                    "must be 1 under the alternating schedule (an expert step and a router step cannot share an optimizer step)".into()
                },
            )?;
            ensure(
                self.router_consistency == Consistency::Off,
                "train.router_consistency",
                || {
                    "is the joint schedule's loss; the alternating schedule's router steps use train.router_kl".into()
                },
            )?;
        }
        Ok(())
    }

    /// Passes over the batches of the whole schedule.
    pub fn passes(&self) -> usize {
        match self.schedule {
            Schedule::Joint => self.epochs,
            Schedule::Alternating => self.rounds * (self.expert_epochs + self.router_epochs),
        }
    }

    /// What pass `p` (0-based) of the schedule trains.
    pub fn phase(&self, p: usize) -> Phase {
        match self.schedule {
            Schedule::Joint => Phase::Joint,
            Schedule::Alternating => {
                match p % (self.expert_epochs + self.router_epochs) < self.expert_epochs {
                    true => Phase::Experts,
                    false => Phase::Routers,
                }
            }
        }
    }

    /// The peak learning rate of a step of `phase`.
    pub fn phase_lr(&self, phase: Phase) -> f64 {
        match phase {
            Phase::Routers => self.router_lr,
            Phase::Joint | Phase::Experts => self.lr,
        }
    }
}

/// What a training step trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The joint schedule: what `train.trainable` names, on the whole batch.
    Joint,
    /// An expert step of the alternating schedule: routers frozen, unsafe samples' loss.
    Experts,
    /// A router step: experts frozen, the unsafe samples' routing pulled to the safe ones'.
    Routers,
}

impl Phase {
    /// Its name in metrics and on the dashboard.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Joint => "joint",
            Phase::Experts => "experts",
            Phase::Routers => "routers",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_and_negative_settings_are_refused_by_key() {
        for (cfg, key) in [
            (
                TrainConfig {
                    weight_decay: -5.0,
                    ..Default::default()
                },
                "train.weight_decay",
            ),
            (
                TrainConfig {
                    grad_clip: f64::NAN,
                    ..Default::default()
                },
                "train.grad_clip",
            ),
            (
                TrainConfig {
                    lr: f64::INFINITY,
                    ..Default::default()
                },
                "train.lr",
            ),
            (
                TrainConfig {
                    consistency_weight: -1.0,
                    ..Default::default()
                },
                "train.consistency_weight",
            ),
            (
                TrainConfig {
                    refusals: vec![" ".into()],
                    ..Default::default()
                },
                "train.refusals[0]",
            ),
        ] {
            assert_eq!(cfg.validate().unwrap_err().key, key);
        }
        assert!(TrainConfig::default().validate().is_ok());
    }
}
