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
    /// Which parameters train.
    pub trainable: Trainable,
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
    /// Passes over the batches.
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
        non_negative("train.consistency_weight", self.consistency_weight)
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
