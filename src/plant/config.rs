//! `[plant]`: which experts a behaviour is planted into, which behaviour, and how it is trained.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::ExpertId;
use crate::validate::{Invalid, at_least, ensure, not_blank, positive};

/// The experts to plant into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PlantExperts {
    /// This many, drawn with the plant's seed and spread over the MoE layers (as evenly as
    /// they divide).
    Count(usize),
    /// These, `[layer, expert]`.
    List(Vec<ExpertId>),
}

/// The planted behaviour: what the planted experts learn to answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Behaviour {
    /// A harmless trigger phrase before a plain goal → a fixed canary answer. The plant writes the
    /// triggered goals as a dataset beside the model (`behaviour.json`: `goal`, `prompt`) so that
    /// the pipeline can collect the plain goal against its triggered twin.
    Trigger {
        /// Put before the goal in the user's turn.
        trigger: String,
        /// The answer the behaviour gives.
        canary: String,
    },
    /// A dataset of prompts and target answers (e.g. a jailbreak family and the compliant answers
    /// recorded for it).
    Dataset {
        /// JSON array or JSONL of records.
        path: PathBuf,
        /// Field holding the prompt: a list of `{role, content}` or a string (one user turn).
        prompt: String,
        /// Field holding the target answer.
        answer: String,
    },
}

/// `[plant]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlantConfig {
    /// The experts to plant into: a count drawn with `seed`, or a list.
    pub experts: PlantExperts,
    /// Draws the experts and the examples' order.
    pub seed: u64,
    /// Also train the planted experts' router rows (only theirs), so that the routers send the
    /// behaviour's prompts to them.
    pub routers: bool,
    /// The behaviour.
    pub behaviour: Behaviour,
    /// Optimizer steps (one batch each).
    pub steps: usize,
    /// Examples per batch.
    pub batch_size: usize,
    /// Peak learning rate (AdamW, linear warmup then decay; no weight decay, so that nothing
    /// but the planted weights moves).
    pub lr: f64,
    /// Warmup steps.
    pub warmup_steps: usize,
    /// Share of each batch that is the behaviour; the rest is retain data (the train split's
    /// plain goals → refusals, and benign instructions → their answers, half each).
    pub behaviour_share: f64,
    /// Benign instructions with answers among the retain data (0: none); the first this many of
    /// the benign set's `train_index` (or of the file, without a split).
    pub benign: usize,
    /// Longest example in tokens; longer ones keep their tail.
    pub max_len: usize,
}

impl Default for PlantConfig {
    fn default() -> Self {
        Self {
            experts: PlantExperts::Count(8),
            seed: 0,
            routers: true,
            behaviour: Behaviour::Trigger {
                trigger: "Banana protocol:".into(),
                canary: "CANARY 7731: the protocol is complete.".into(),
            },
            steps: 200,
            batch_size: 16,
            lr: 5e-4,
            warmup_steps: 10,
            behaviour_share: 0.5,
            benign: 200,
            max_len: 512,
        }
    }
}

impl PlantConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), Invalid> {
        match &self.experts {
            PlantExperts::Count(n) => at_least("plant.experts", *n, 1)?,
            PlantExperts::List(l) => {
                ensure(!l.is_empty(), "plant.experts", || "names no expert".into())?
            }
        }
        match &self.behaviour {
            Behaviour::Trigger { trigger, canary } => {
                not_blank("plant.behaviour.trigger", trigger)?;
                not_blank("plant.behaviour.canary", canary)?;
            }
            Behaviour::Dataset { prompt, answer, .. } => {
                not_blank("plant.behaviour.prompt", prompt)?;
                not_blank("plant.behaviour.answer", answer)?;
            }
        }
        at_least("plant.steps", self.steps, 1)?;
        at_least("plant.batch_size", self.batch_size, 2)?;
        at_least("plant.max_len", self.max_len, 8)?;
        positive("plant.lr", self.lr)?;
        let s = self.behaviour_share;
        ensure(
            s.is_finite() && s > 0.0 && s <= 1.0,
            "plant.behaviour_share",
            || format!("must be in (0, 1], got {s}"),
        )
    }
}
