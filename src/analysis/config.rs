//! `[analysis]`: how experts are ranked (risk difference of activation rates, or the causal
//! effect of removing each one), which tokens the risk difference counts, and how unsafe experts
//! are picked.

use serde::{Deserialize, Serialize};

use crate::model::Removal;
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
    /// `risk_diff` (the method: the sets of `ranking`, whichever it is); `random`: the matched
    /// ablation, those sets under a random relabelling of the experts drawn from `seed`;
    /// `anti_ranked`: the other end of the ranking (the most negative risk difference or effect);
    /// `planted`: the planted experts themselves (the oracle; needs a planted model).
    pub experts: ExpertSource,
    /// The planted experts to score the rankings against (`recovery.json`): a `planted.json`;
    /// unset, the model directory's own `planted.json` if it has one.
    pub truth: Option<std::path::PathBuf>,
    /// How experts are ranked: `"riskdiff"` (which experts the jailbreaks *use*: the risk
    /// difference of activation rates), `"ablation"` (which experts *produce* the behaviour: the
    /// rise of the answer NLL when each expert is removed, every expert ablated exactly),
    /// `"attribution"` (its first-order estimate, one backward pass per batch), or
    /// `"attribution+ablation"` (attribution over every expert, then exact ablation of the
    /// `ablate_top` best).
    pub ranking: Ranking,
    /// Which effect ranks (effect rankings): `"specific"` (the rise on the jailbreaks' answers
    /// minus the rise on the plain goals' refusals, so that experts every answer needs are not
    /// picked) or `"unsafe"` (the rise on the jailbreaks' answers alone).
    pub score: EffectScore,
    /// How an expert is removed for the ranking's effect: `"zero"` (its routing weight set to
    /// 0) or `"route"` (routed around: the next expert takes its slot). Exact ablation measures
    /// both unless `ablate_both` is false; attribution is the first-order effect of zeroing.
    pub removal: Removal,
    /// Exact ablation measures both removals (`true`, the effects files hold both) or only
    /// `removal` (`false`: half the passes).
    pub ablate_both: bool,
    /// Experts ablated exactly after attribution (`"attribution+ablation"`).
    pub ablate_top: usize,
    /// Answer tokens counted per answer in the effects (0 = all): the first ones decide between
    /// a refusal and compliance.
    pub answer_tokens: usize,
}

/// How experts are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ranking {
    /// The risk difference of activation rates over `token_scope`.
    #[serde(rename = "riskdiff")]
    RiskDiff,
    /// Exact ablation of every expert.
    #[serde(rename = "ablation")]
    Ablation,
    /// Attribution patching: gradient × routing weight.
    #[serde(rename = "attribution")]
    Attribution,
    /// Attribution, then exact ablation of the `ablate_top` best.
    #[serde(rename = "attribution+ablation")]
    AttributionAblation,
}

impl Ranking {
    /// Every ranking, in the order reports list them.
    pub const ALL: [Ranking; 4] = [
        Ranking::RiskDiff,
        Ranking::Attribution,
        Ranking::AttributionAblation,
        Ranking::Ablation,
    ];

    /// Whether it needs the model (an effect ranking).
    pub fn is_causal(self) -> bool {
        self != Ranking::RiskDiff
    }
}

impl std::fmt::Display for Ranking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ranking::RiskDiff => "riskdiff",
            Ranking::Ablation => "ablation",
            Ranking::Attribution => "attribution",
            Ranking::AttributionAblation => "attribution+ablation",
        })
    }
}

/// Which effect ranks the experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectScore {
    /// Rise on the jailbreaks' answers minus rise on the plain goals' refusals.
    Specific,
    /// Rise on the jailbreaks' answers.
    Unsafe,
}

impl std::fmt::Display for EffectScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EffectScore::Specific => "specific",
            EffectScore::Unsafe => "unsafe",
        })
    }
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
            // benches/method/effects/RULE.md applied to three planted organisms (issue 43).
            ranking: Ranking::Attribution,
            score: EffectScore::Unsafe,
            removal: Removal::Zero,
            ablate_both: true,
            ablate_top: 128,
            answer_tokens: 16,
        }
    }
}

impl AnalysisConfig {
    /// Check the values: thresholds are risk differences, finite and in [-1, 1].
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least("analysis.top_k", self.top_k, 1)?;
        if self.ranking == Ranking::AttributionAblation {
            at_least("analysis.ablate_top", self.ablate_top, 1)?;
        }
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
