//! The stages of a run, in order: collect → analyze → train → one evaluation per variant.
//!
//! This is the one list of stages. The run directory knows which artifacts each stage leaves and
//! when they are complete ([`super::RunDir::is_done`]); the pipeline knows which settings each
//! stage depends on (`Stage::inputs`, in `pipeline::stage`), which is what decides whether a
//! finished stage still matches a config and what a sweep shares.

use serde::{Deserialize, Serialize};

/// One stage of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Generation with routing capture.
    Collect,
    /// Risk difference, unsafe experts and masks.
    Analyze,
    /// Expert-only fine-tuning and export.
    Train,
    /// One evaluation of a model.
    Eval(Variant),
}

impl Stage {
    /// Its name: `collect`, `analyze`, `train`, `eval/<variant>`.
    pub fn name(&self) -> String {
        match self {
            Stage::Collect => "collect".into(),
            Stage::Analyze => "analyze".into(),
            Stage::Train => "train".into(),
            Stage::Eval(v) => format!("eval/{}", v.name()),
        }
    }

    /// Where it comes in a run: collect 0, analyze 1, train 2, every evaluation 3.
    pub fn order(&self) -> u8 {
        match self {
            Stage::Collect => 0,
            Stage::Analyze => 1,
            Stage::Train => 2,
            Stage::Eval(_) => 3,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// A model a run evaluates. In a config it is spelled by its name: `"base"`, `"trained"`, or a
/// steering setting `"steer-a5"`, `"steer-d8"`, `"steer-a5-d8"` (the directory under `eval/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Variant {
    /// The model as given.
    Base,
    /// The model steered at inference (SteerMoE) by the run's expert ranking.
    Steered(SteerSetting),
    /// The fine-tuned model (`final_model/`).
    Trained,
}

impl Variant {
    /// Its name, which is also its directory under `eval/`.
    pub fn name(&self) -> String {
        match self {
            Variant::Base => "base".into(),
            Variant::Steered(s) => s.name(),
            Variant::Trained => "trained".into(),
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "base" => Ok(Variant::Base),
            "trained" => Ok(Variant::Trained),
            "steered" => Err("\"steered\" was replaced by one entry per steering setting, e.g. \"steer-a5\" (5 safe experts forced on), \"steer-d8\" (8 unsafe ones forced off), \"steer-a5-d8\"".into()),
            other => other.parse::<SteerSetting>().map(Variant::Steered),
        }
    }
}

impl TryFrom<String> for Variant {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Variant> for String {
    fn from(v: Variant) -> String {
        v.name()
    }
}

/// One inference-time steering setting (the SteerMoE paper's): experts of the run's ranking
/// forced into or out of every token's top-k.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct SteerSetting {
    /// Force this many of the most safety-linked experts (most negative aggregated risk
    /// difference, at most top-k per layer) into every token's top-k.
    pub activate_safe: usize,
    /// Force this many of the riskiest experts (most positive) out of every token's top-k.
    pub deactivate_unsafe: usize,
}

impl SteerSetting {
    /// Its name: `steer-a5`, `steer-d8`, `steer-a5-d8`.
    pub fn name(&self) -> String {
        let mut name = String::from("steer");
        if self.activate_safe > 0 {
            name += &format!("-a{}", self.activate_safe);
        }
        if self.deactivate_unsafe > 0 {
            name += &format!("-d{}", self.deactivate_unsafe);
        }
        name
    }
}

impl std::str::FromStr for SteerSetting {
    type Err = String;

    /// Parse `steer-a5`, `steer-d8` or `steer-a5-d8`.
    fn from_str(name: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{name:?} is not a variant: expected \"base\", \"trained\" or a steering setting such as \"steer-a5\", \"steer-d8\", \"steer-a5-d8\""
            )
        };
        let rest = name.strip_prefix("steer-").ok_or_else(bad)?;
        let mut s = SteerSetting::default();
        let mut parts = rest.split('-').peekable();
        if let Some(a) = parts.peek().and_then(|p| p.strip_prefix('a')) {
            s.activate_safe = a.parse().map_err(|_| bad())?;
            parts.next();
        }
        if let Some(d) = parts.peek().and_then(|p| p.strip_prefix('d')) {
            s.deactivate_unsafe = d.parse().map_err(|_| bad())?;
            parts.next();
        }
        if parts.next().is_some() || s == SteerSetting::default() || s.name() != name {
            return Err(bad());
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_spelled_by_their_names() {
        for name in ["base", "trained", "steer-a5", "steer-d8", "steer-a5-d8"] {
            let v: Variant = name.parse().unwrap();
            assert_eq!(v.name(), name);
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(name));
        }
        assert_eq!(
            "steer-a5-d8".parse::<Variant>().unwrap(),
            Variant::Steered(SteerSetting {
                activate_safe: 5,
                deactivate_unsafe: 8
            })
        );
        for bad in [
            "steer",
            "steer-",
            "steer-a0",
            "steer-d8-a5",
            "steer-a5x",
            "steer-a05",
            "Base",
        ] {
            assert!(bad.parse::<Variant>().is_err(), "{bad}");
        }
        assert!(
            "steered"
                .parse::<Variant>()
                .unwrap_err()
                .contains("steer-a5")
        );
        assert!(Stage::Collect < Stage::Analyze && Stage::Train < Stage::Eval(Variant::Base));
        assert_eq!(Stage::Eval(Variant::Trained).name(), "eval/trained");
    }
}
