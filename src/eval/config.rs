//! `[eval]`: which models a run evaluates, on which held-out prompts, with how many tokens.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::generate::Sampling;
use crate::generate::fit::BatchCount;
use crate::model::Removal;
use crate::run_dir::{SteerSetting, Variant};
use crate::validate::{Invalid, at_least, ensure, not_blank};

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// The models `steermoe run` evaluates, in table order: `"base"`, `"trained"`, and steering
    /// settings of the SteerMoE paper by name (`"steer-a5"`: the 5 most safety-linked experts
    /// forced on; `"steer-d8"`: the 8 riskiest forced off; `"steer-a5-d8"`: both).
    pub variants: Vec<Variant>,
    /// Evaluate at most this many held-out goals (0 = all): plain prompts of the first ones,
    /// jailbreaks of those among them that pass `data.fields`' filter.
    pub max_goals: usize,
    /// Benign prompts: a JSON array or JSONL of records with `instruction` and `output`.
    pub benign_path: PathBuf,
    /// Key of the benign set in `data.split` (its `heldout_index` list is evaluated).
    pub benign_split_key: String,
    /// Evaluate at most this many benign prompts (0 = all).
    pub max_benign: usize,
    /// Score the NLL of this many answers the model was trained on (the first records of the
    /// benign set's `train_index` in `data.split`): retained knowledge (0 = none).
    pub trained_answers: usize,
    /// Prompts per generation batch (and answers per scoring batch). `"auto"` (the default): as
    /// many as the device's free memory holds (CUDA; see `generate::fit`), 16 elsewhere.
    pub batch_size: BatchCount,
    /// Generated tokens per answer (greedy unless `sampling` says otherwise).
    pub max_new_tokens: usize,
    /// Keep only the last this many prompt tokens (0 = no limit).
    pub max_prompt_tokens: usize,
    /// Greedy or seeded sampling.
    pub sampling: Sampling,
    /// Longest prompt + reference answer scored for the answer NLL; longer answers are cut.
    pub nll_max_len: usize,
    /// XSTest (over-refusal): a JSON array or JSONL of records with `prompt` and `label`
    /// (`"safe"` or `"unsafe"`), each prompt answered as one user turn; safe prompts refused are
    /// over-refusals, unsafe ones refused are right. `None`: not evaluated.
    pub xstest_path: Option<PathBuf>,
    /// StrongREJECT (harmful requests): records with `prompt`, each answered as one user turn
    /// and counted when refused. `None`: not evaluated.
    pub strongreject_path: Option<PathBuf>,
    /// How steering's forced-off experts leave the routing: `"route"` (the SteerMoE paper's:
    /// the next expert takes the slot) or `"zero"` (the routing weight set to 0, the other
    /// experts keep theirs) — the two ways analysis ablates an expert.
    pub removal: Removal,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            variants: vec![
                Variant::Base,
                Variant::Steered(SteerSetting {
                    activate_safe: 5,
                    deactivate_unsafe: 0,
                }),
                Variant::Trained,
            ],
            max_goals: 0,
            benign_path: PathBuf::from("models/data/alpaca-eval.json"),
            benign_split_key: "alpaca_eval".into(),
            max_benign: 0,
            trained_answers: 0,
            batch_size: BatchCount::Auto,
            max_new_tokens: 48,
            max_prompt_tokens: 464,
            sampling: Sampling::Greedy,
            nll_max_len: 512,
            xstest_path: None,
            strongreject_path: None,
            removal: Removal::Route,
        }
    }
}

impl EvalConfig {
    /// Check the values: each variant listed once, positive sizes, finite sampling.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut seen = std::collections::HashSet::new();
        for (i, v) in self.variants.iter().enumerate() {
            ensure(seen.insert(*v), &format!("eval.variants[{i}]"), || {
                format!("{} is listed twice", v.name())
            })?;
        }
        self.batch_size.validate("eval.batch_size", 1)?;
        at_least("eval.max_new_tokens", self.max_new_tokens, 1)?;
        at_least("eval.nll_max_len", self.nll_max_len, 8)?;
        not_blank("eval.benign_split_key", &self.benign_split_key)?;
        for (key, path) in [
            ("eval.xstest_path", &self.xstest_path),
            ("eval.strongreject_path", &self.strongreject_path),
        ] {
            ensure(
                path.as_ref().is_none_or(|p| !p.as_os_str().is_empty()),
                key,
                || "is empty: name a file, or leave the key out to skip the set".into(),
            )?;
        }
        self.sampling.validate("eval.sampling")
    }

    /// The steering settings it evaluates, in order.
    pub fn steer_settings(&self) -> Vec<SteerSetting> {
        self.variants
            .iter()
            .filter_map(|v| match v {
                Variant::Steered(s) => Some(*s),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_named_and_listed_once() {
        let cfg: EvalConfig =
            toml::from_str("variants = [\"base\", \"steer-a5-d8\", \"trained\"]").unwrap();
        assert_eq!(
            cfg.steer_settings(),
            vec![SteerSetting {
                activate_safe: 5,
                deactivate_unsafe: 8
            }]
        );
        let twice = EvalConfig {
            variants: vec![Variant::Base, Variant::Base],
            ..EvalConfig::default()
        };
        assert_eq!(twice.validate().unwrap_err().key, "eval.variants[1]");
        let err = toml::from_str::<EvalConfig>("variants = [\"steered\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("steer-a5"), "{err}");
        let bad = EvalConfig {
            sampling: Sampling::Sample {
                temperature: f64::NAN,
                top_p: 1.0,
                seed: 0,
            },
            ..EvalConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "eval.sampling.temperature");
    }
}
