//! Choosing unsafe experts and building masks (the seeds' `identify_unsafe_experts`,
//! `identify_random_experts`, `create_expert_mask`).

use rand::rngs::StdRng;
use rand::{SeedableRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};

use super::risk::{RiskRow, by_risk};

/// A (layer, expert) pair.
pub type ExpertId = [usize; 2];

/// Experts whose `risk_diff` exceeds `threshold`, the `top_k` riskiest first.
pub fn unsafe_experts(rows: &[RiskRow], threshold: f64, top_k: usize) -> Vec<ExpertId> {
    by_risk(rows)
        .into_iter()
        .filter(|&i| rows[i].risk_diff > threshold)
        .take(top_k)
        .map(|i| [rows[i].layer, rows[i].expert])
        .collect()
}

/// `top_k` distinct (layer, expert) pairs drawn uniformly with `seed` (the random ablation).
pub fn random_experts(layers: usize, experts: usize, top_k: usize, seed: u64) -> Vec<ExpertId> {
    let mut all: Vec<ExpertId> = (0..layers).flat_map(|l| (0..experts).map(move |e| [l, e])).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    all.shuffle(&mut rng);
    all.truncate(top_k);
    all
}

/// A `[layers, experts]` mask, 1 for the given experts.
pub fn mask(ids: &[ExpertId], layers: usize, experts: usize) -> Vec<f32> {
    let mut m = vec![0.0; layers * experts];
    for &[l, e] in ids {
        m[l * experts + e] = 1.0;
    }
    m
}

/// The union of several expert lists, in (layer, expert) order.
pub fn union(lists: &[Vec<ExpertId>]) -> Vec<ExpertId> {
    let mut all: Vec<ExpertId> = lists.iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    all
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
    /// Random ablation instead of risk order.
    pub random_experts: bool,
    /// Base seed of the random ablation (batch `b` uses `random_seed + b`).
    pub random_seed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(layer: usize, expert: usize, risk_diff: f64) -> RiskRow {
        RiskRow {
            layer,
            expert,
            a_safe: 0,
            d_safe: 0,
            a_unsafe: 0,
            d_unsafe: 0,
            a_safe_n: 0.0,
            a_unsafe_n: 0.0,
            risk_diff,
        }
    }

    #[test]
    fn threshold_then_top_k_in_risk_order_ties_by_position() {
        let rows = vec![row(0, 0, 0.1), row(0, 1, 0.3), row(1, 0, 0.1), row(1, 1, -0.2)];
        assert_eq!(unsafe_experts(&rows, 0.0, 2), vec![[0, 1], [0, 0]]);
        assert_eq!(unsafe_experts(&rows, 0.0, 10), vec![[0, 1], [0, 0], [1, 0]]);
        assert_eq!(unsafe_experts(&rows, 0.5, 10), Vec::<ExpertId>::new(), "all below: empty set");
        assert_eq!(mask(&[], 2, 2), vec![0.0; 4], "an empty set is still a valid mask");
    }

    #[test]
    fn random_experts_are_deterministic_and_distinct() {
        let a = random_experts(4, 8, 10, 42);
        assert_eq!(a, random_experts(4, 8, 10, 42));
        assert_ne!(a, random_experts(4, 8, 10, 43));
        assert_eq!(union(&[a.clone()]).len(), 10);
        assert!(a.iter().all(|&[l, e]| l < 4 && e < 8));
    }
}
