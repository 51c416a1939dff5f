//! The analyze stage's artifacts: `unsafe_experts.json` ([`UnsafeExperts`]), the rows of
//! `risk_diff.csv` / `risk_diff_aggregated.csv` ([`RiskCsvRow`]) and, on a planted model,
//! `recovery.json` ([`Recovery`]). Analysis writes them; training, steering and the sweep's report
//! read them, through [`super::RunDir`].

use serde::{Deserialize, Serialize};

use crate::model::ExpertId;

/// `unsafe_experts.json`: what `analyze` chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnsafeExperts {
    /// Batch index of each entry of `per_batch`.
    pub batch_idx: Vec<usize>,
    /// Each analysed batch's unsafe experts, riskiest first.
    pub per_batch: Vec<Vec<ExpertId>>,
    /// Unsafe experts of the aggregate, riskiest first.
    pub global: Vec<ExpertId>,
    /// Union of the per-batch sets, in (layer, expert) order.
    pub union: Vec<ExpertId>,
    /// Every expert by aggregated risk difference, riskiest first (the random ablation: a random
    /// order): steering takes its sets from the two ends.
    pub ranking: Vec<ExpertId>,
    /// The settings used.
    pub params: SelectionParams,
}

impl UnsafeExperts {
    /// Check that every expert named is one of a model of `layers × experts`, and that the
    /// ranking ranks each of them once: a file from another model, or edited by hand, must not
    /// reach training or steering.
    pub fn check_shape(&self, layers: usize, experts: usize) -> Result<(), String> {
        let lists = self
            .per_batch
            .iter()
            .chain([&self.global, &self.union, &self.ranking]);
        if let Some(&[l, e]) = lists.flatten().find(|&&[l, e]| l >= layers || e >= experts) {
            return Err(format!(
                "names expert [{l}, {e}], but the model has {layers} MoE layers × {experts} experts"
            ));
        }
        let mut ranked = self.ranking.clone();
        ranked.sort_unstable();
        ranked.dedup();
        if self.ranking.len() != layers * experts || ranked.len() != self.ranking.len() {
            return Err(format!(
                "its ranking does not rank each of the model's {layers} × {experts} experts once"
            ));
        }
        if self.batch_idx.len() != self.per_batch.len() {
            return Err(format!(
                "{} batch indices for {} per-batch sets",
                self.batch_idx.len(),
                self.per_batch.len()
            ));
        }
        Ok(())
    }
}

/// Selection settings recorded with the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionParams {
    /// Per-batch threshold on `risk_diff`.
    pub batch_threshold: f64,
    /// Threshold on the aggregated `risk_diff`.
    pub global_threshold: f64,
    /// Experts kept per batch and globally.
    pub top_k: usize,
    /// Which tokens were counted.
    pub token_scope: String,
    /// `risk_diff` or `random` (the matched ablation).
    pub experts: String,
    /// Seed of the random ablation (`None` for the risk difference).
    pub seed: Option<u64>,
    /// How the experts were ranked (`analysis.ranking`; `riskdiff` in files of older versions).
    #[serde(default = "riskdiff")]
    pub ranking: String,
    /// The effect that ranked (`specific` or `unsafe`), with an effect ranking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<String>,
    /// How an expert was removed for it (`zero` or `route`), with an effect ranking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal: Option<String>,
}

fn riskdiff() -> String {
    "riskdiff".into()
}

/// `effects.json`: what an effect ranking measured (every expert's values are in
/// `effects.safetensors`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectsReport {
    /// `ablation`, `attribution` or `attribution+ablation`.
    pub ranking: String,
    /// The effect that ranks: `specific` (unsafe − safe) or `unsafe`.
    pub score: String,
    /// The removal whose exact effect ranks: `zero` or `route`.
    pub removal: String,
    /// Jailbreak answers (their compliance) measured on.
    pub unsafe_answers: usize,
    /// Plain-goal answers (their refusals) measured on.
    pub safe_answers: usize,
    /// Answer tokens counted per answer (0 = all).
    pub answer_tokens: usize,
    /// Answer tokens scored per forward pass over all batches.
    pub tokens: usize,
    /// Experts ablated exactly.
    pub ablated: usize,
    /// Seconds of attribution.
    pub attribution_seconds: f64,
    /// Seconds of exact ablation.
    pub ablation_seconds: f64,
    /// The ranking's first experts with every value measured for them.
    pub top: Vec<EffectRow>,
    /// Each ranking's first `analysis.top_k` experts.
    pub top_sets: Vec<TopSet>,
    /// How much each two of those sets share.
    pub overlaps: Vec<Overlap>,
    /// Spearman's rank correlation of attribution with exact ablation (zeroing, the configured
    /// score) over the experts ablated, when both ran.
    pub attribution_vs_ablation: Option<f64>,
}

/// One expert's measured effects (NLL rises in nats; `None`: not measured).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectRow {
    /// MoE layer.
    pub layer: usize,
    /// Expert.
    pub expert: usize,
    /// The ranking's score.
    pub score: f64,
    /// Exact, weight zeroed: on the jailbreaks' answers.
    pub zero_unsafe: Option<f64>,
    /// Exact, weight zeroed: on the plain goals' answers.
    pub zero_safe: Option<f64>,
    /// Exact, routed around: on the jailbreaks' answers.
    pub route_unsafe: Option<f64>,
    /// Exact, routed around: on the plain goals' answers.
    pub route_safe: Option<f64>,
    /// Attribution: on the jailbreaks' answers.
    pub attribution_unsafe: Option<f64>,
    /// Attribution: on the plain goals' answers.
    pub attribution_safe: Option<f64>,
}

/// A ranking's first experts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopSet {
    /// `riskdiff`, `attribution`, `ablation (zero)`, `ablation (route)`, or the configured
    /// ranking.
    pub ranking: String,
    /// Its first experts.
    pub experts: Vec<ExpertId>,
}

/// What two top sets share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overlap {
    /// One ranking.
    pub a: String,
    /// The other.
    pub b: String,
    /// Experts in both.
    pub shared: usize,
    /// `shared / |a ∪ b|`.
    pub jaccard: f64,
}

/// A row of `risk_diff.csv` (`batch_idx` set) or `risk_diff_aggregated.csv` (`risk_diff_abs`
/// set); the csv crate writes a missing column as an empty field, so each file leaves its other
/// column out entirely.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RiskCsvRow {
    /// The batch (per-batch table only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_idx: Option<usize>,
    /// MoE layer.
    pub layer: usize,
    /// Expert.
    pub expert: usize,
    /// Safe tokens that chose the expert.
    pub a_safe: u64,
    /// Safe tokens that did not.
    pub d_safe: u64,
    /// Unsafe tokens that chose the expert.
    pub a_unsafe: u64,
    /// Unsafe tokens that did not.
    pub d_unsafe: u64,
    /// Activation rate on safe tokens.
    pub a_safe_n: f64,
    /// Activation rate on unsafe tokens.
    pub a_unsafe_n: f64,
    /// `a_unsafe_n - a_safe_n`.
    pub risk_diff: f64,
    /// `|risk_diff|` (aggregated table only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_diff_abs: Option<f64>,
}

/// `recovery.json`: how well each ranking recovers the planted experts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// The file the truth came from (a model's `planted.json`, or `analysis.truth`).
    pub truth_file: String,
    /// The planted experts, P.
    pub truth: Vec<ExpertId>,
    /// Experts ranked (every expert of every MoE layer).
    pub experts: usize,
    /// The token scope the analysis selects with (its other rankings are for comparison).
    pub configured_scope: String,
    /// What a random ranking gets in expectation.
    pub random: RecoveryScore,
    /// One entry per ranking: the risk difference over each token scope.
    pub rankings: Vec<RankingRecovery>,
}

/// How one ranking recovers P.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankingRecovery {
    /// How experts are ranked: `risk_diff`.
    pub method: String,
    /// The tokens it counts.
    pub scope: String,
    /// Its scores.
    pub score: RecoveryScore,
    /// Its first |P| experts.
    pub top: Vec<ExpertId>,
}

/// A ranking's recovery of a planted set P.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryScore {
    /// Planted experts among the first |P| (for a random ranking its expectation, |P|²/n).
    pub hits_at_p: f64,
    /// Their share of the first |P|.
    pub precision_at_p: f64,
    /// The share of P among the first |P| (equal to the precision at |P|).
    pub recall_at_p: f64,
    /// The configured selection's size (`analysis.top_k`).
    pub k: usize,
    /// Planted experts among the first k (for a random ranking its expectation, k·|P|/n).
    pub hits_at_k: f64,
    /// Their share of the first k.
    pub precision_at_k: f64,
    /// The share of P among the first k.
    pub recall_at_k: f64,
    /// The chance that a planted expert is ranked above another one (ties half).
    pub auroc: f64,
    /// The mean precision at each planted expert's rank.
    pub average_precision: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experts_beyond_the_model_are_named() {
        let u = UnsafeExperts {
            batch_idx: vec![0],
            per_batch: vec![vec![[0, 1]]],
            global: vec![[1, 3]],
            union: vec![[0, 1]],
            ranking: vec![[0, 0], [0, 1], [1, 0], [1, 1]],
            params: SelectionParams {
                batch_threshold: 0.0,
                global_threshold: 0.0,
                top_k: 1,
                token_scope: "prompt".into(),
                experts: "risk_diff".into(),
                seed: None,
                ranking: "riskdiff".into(),
                score: None,
                removal: None,
            },
        };
        assert!(u.check_shape(2, 2).unwrap_err().contains("[1, 3]"));
        let ok = UnsafeExperts {
            global: vec![[1, 1]],
            ..u
        };
        ok.check_shape(2, 2).unwrap();
        assert!(ok.check_shape(2, 3).unwrap_err().contains("ranking"));
    }
}
