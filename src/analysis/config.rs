//! `[analysis]`: which tokens the risk difference counts and how unsafe experts are picked.

use serde::{Deserialize, Serialize};

use crate::validate::{Invalid, at_least, within};

/// `[analysis]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Which tokens count: `prompt`, `generation`, `generation_first_n`, `all`, `response`.
    pub token_scope: TokenScope,
    /// Generated tokens counted by `generation_first_n`.
    pub first_n: usize,
    /// A batch's unsafe experts have `risk_diff` above this.
    pub batch_threshold: f64,
    /// Global unsafe experts have aggregated `risk_diff` above this.
    pub global_threshold: f64,
    /// Unsafe experts kept per batch and globally.
    pub top_k: usize,
    /// `risk_diff` (the method); `random`: the matched ablation, the risk-difference sets under a
    /// random relabelling of the experts drawn from `seed`; `anti_ranked`: the experts with the
    /// most negative risk difference; `planted`: the planted experts themselves (the oracle; needs
    /// a planted model).
    pub experts: ExpertSource,
    /// The planted experts to score the rankings against (`recovery.json`): a `planted.json`;
    /// unset, the model directory's own `planted.json` if it has one.
    pub truth: Option<std::path::PathBuf>,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            token_scope: TokenScope::Generation,
            first_n: 16,
            batch_threshold: 0.0,
            global_threshold: 0.05,
            top_k: 50,
            experts: ExpertSource::RiskDiff,
            truth: None,
        }
    }
}

impl AnalysisConfig {
    /// Check the values: thresholds are risk differences, finite and in [-1, 1].
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least("analysis.top_k", self.top_k, 1)?;
        if self.token_scope == TokenScope::GenerationFirstN {
            at_least("analysis.first_n", self.first_n, 1)?;
        }
        within("analysis.batch_threshold", self.batch_threshold, -1.0, 1.0)?;
        within(
            "analysis.global_threshold",
            self.global_threshold,
            -1.0,
            1.0,
        )
    }

    /// The token scope as recorded in `unsafe_experts.json` (`generation_first_n(16)`).
    pub fn scope_name(&self) -> String {
        self.token_scope.name(self.first_n)
    }
}

/// Which tokens of a sample count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Prompt tokens only.
    Prompt,
    /// Generated tokens only (the seeds' choice).
    Generation,
    /// The first `first_n` generated tokens.
    GenerationFirstN,
    /// Prompt and generated tokens.
    All,
    /// The reply tokens of each pair's teacher-forced refusal (safe) and compliance (unsafe)
    /// after its jailbreak prompt, as the forward pass routed them.
    Response,
}

impl TokenScope {
    /// Every scope, in the order recovery reports them.
    pub const ALL: [TokenScope; 5] = [
        TokenScope::Prompt,
        TokenScope::Generation,
        TokenScope::GenerationFirstN,
        TokenScope::All,
        TokenScope::Response,
    ];

    /// Its name with its parameter: `generation_first_n(16)` for the first scope of `first_n`.
    pub fn name(self, first_n: usize) -> String {
        match self {
            TokenScope::GenerationFirstN => format!("generation_first_n({first_n})"),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for TokenScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenScope::Prompt => "prompt",
            TokenScope::Generation => "generation",
            TokenScope::GenerationFirstN => "generation_first_n",
            TokenScope::All => "all",
            TokenScope::Response => "response",
        })
    }
}

/// Where the expert sets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertSource {
    /// The risk difference (the method).
    RiskDiff,
    /// The matched random ablation: the risk-difference sets under a random relabelling of the
    /// experts (seed: the config's `seed`), steering sets from a random ranking.
    Random,
    /// The other end of the ranking: the experts most active on the plain goals (most negative
    /// risk difference), ranked from there.
    AntiRanked,
    /// The planted experts (the oracle): every batch's set and the head of the ranking.
    Planted,
}

impl std::fmt::Display for ExpertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExpertSource::RiskDiff => "risk_diff",
            ExpertSource::Random => "random",
            ExpertSource::AntiRanked => "anti_ranked",
            ExpertSource::Planted => "planted",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_threshold_is_refused_by_key() {
        let cfg = AnalysisConfig {
            batch_threshold: f64::NAN,
            ..AnalysisConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().key, "analysis.batch_threshold");
        let cfg = AnalysisConfig {
            global_threshold: 2.0,
            ..AnalysisConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().key, "analysis.global_threshold");
        assert!(AnalysisConfig::default().validate().is_ok());
    }
}
