//! Choosing experts: unsafe experts by risk difference (the seeds' `identify_unsafe_experts`),
//! the matched random ablation, masks, and the steering sets of the SteerMoE paper.
//!
//! The random ablation is the risk-difference selection under a seeded random relabelling of
//! every (layer, expert) pair ([`relabel`]): each batch gets as many random experts as it had
//! unsafe ones, the union trained is as large, and the batches overlap exactly as much, so the
//! two arms train the same share of parameters and differ only in *which* experts.

use rand::seq::SliceRandom;

use super::risk::{RiskRow, by_risk};
use crate::seeds::{Stream, rng};

pub use super::config::ExpertSource;
pub use crate::model::ExpertId;
pub use crate::run_dir::analysis::SelectionParams;

/// Experts whose `risk_diff` exceeds `threshold`, the `top_k` riskiest first.
pub fn unsafe_experts(rows: &[RiskRow], threshold: f64, top_k: usize) -> Vec<ExpertId> {
    by_risk(rows)
        .into_iter()
        .filter(|&i| rows[i].risk_diff > threshold)
        .take(top_k)
        .map(|i| [rows[i].layer, rows[i].expert])
        .collect()
}

/// Every (layer, expert) pair in a seeded random order (stream `stream`).
fn shuffled(layers: usize, experts: usize, seed: u64, stream: Stream) -> Vec<ExpertId> {
    let mut all: Vec<ExpertId> = (0..layers)
        .flat_map(|l| (0..experts).map(move |e| [l, e]))
        .collect();
    all.shuffle(&mut rng(seed, stream));
    all
}

/// The random relabelling of the ablation: `relabel(seed)[l * experts + e]` replaces `[l, e]`.
pub fn relabel(layers: usize, experts: usize, seed: u64) -> Vec<ExpertId> {
    shuffled(layers, experts, seed, Stream::ExpertPermutation)
}

/// A random ranking of every expert (the ablation's stand-in for the risk ranking in steering).
pub fn random_ranking(layers: usize, experts: usize, seed: u64) -> Vec<ExpertId> {
    shuffled(layers, experts, seed, Stream::ExpertRanking)
}

/// `ids` under the relabelling `map` (from [`relabel`]).
pub fn apply(map: &[ExpertId], ids: &[ExpertId], experts: usize) -> Vec<ExpertId> {
    ids.iter().map(|&[l, e]| map[l * experts + e]).collect()
}

/// The steering sets of the SteerMoE paper from a ranking of every expert, riskiest first:
/// `activate` experts forced on, taken from the safe end (most negative risk difference first)
/// with at most `top_k` per layer (more could not all join a top-k); `deactivate` experts forced
/// off, taken from the unsafe end with at most `experts - top_k` per layer (a token keeps `top_k`
/// experts to choose from), never one already forced on.
pub fn steering_sets(
    ranking: &[ExpertId],
    experts: usize,
    top_k: usize,
    activate: usize,
    deactivate: usize,
) -> (Vec<ExpertId>, Vec<ExpertId>) {
    let pick =
        |order: &mut dyn Iterator<Item = &ExpertId>, n: usize, cap: usize, skip: &[ExpertId]| {
            let mut per_layer = std::collections::HashMap::<usize, usize>::new();
            let mut out = Vec::new();
            for &id in order {
                if out.len() == n {
                    break;
                }
                let used = per_layer.entry(id[0]).or_default();
                if *used < cap && !skip.contains(&id) {
                    *used += 1;
                    out.push(id);
                }
            }
            out
        };
    let on = pick(&mut ranking.iter().rev(), activate, top_k, &[]);
    let off = pick(
        &mut ranking.iter(),
        deactivate,
        experts.saturating_sub(top_k),
        &on,
    );
    (on, off)
}

/// The routing mask of an expert set, `[layers, experts]` row-major, `true` = may be chosen: the
/// set's experts, and every expert of a layer the set does not touch (masking all of a layer's
/// experts would leave its tokens none to route to). Analysis writes these masks to
/// `expert_masks.safetensors`; training applies exactly them.
pub fn routing_mask(ids: &[ExpertId], layers: usize, experts: usize) -> Vec<bool> {
    let mut m = vec![false; layers * experts];
    for &[l, e] in ids {
        m[l * experts + e] = true;
    }
    for layer in m.chunks_mut(experts) {
        if !layer.contains(&true) {
            layer.fill(true);
        }
    }
    m
}

/// [`routing_mask`] as f32 (1 = may be chosen), the layout of `expert_masks.safetensors`.
pub fn mask(ids: &[ExpertId], layers: usize, experts: usize) -> Vec<f32> {
    routing_mask(ids, layers, experts)
        .into_iter()
        .map(|a| if a { 1.0 } else { 0.0 })
        .collect()
}

/// The union of several expert lists, in (layer, expert) order.
pub fn union(lists: &[Vec<ExpertId>]) -> Vec<ExpertId> {
    let mut all: Vec<ExpertId> = lists.iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    all
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
        let rows = vec![
            row(0, 0, 0.1),
            row(0, 1, 0.3),
            row(1, 0, 0.1),
            row(1, 1, -0.2),
        ];
        assert_eq!(unsafe_experts(&rows, 0.0, 2), vec![[0, 1], [0, 0]]);
        assert_eq!(unsafe_experts(&rows, 0.0, 10), vec![[0, 1], [0, 0], [1, 0]]);
        assert_eq!(
            unsafe_experts(&rows, 0.5, 10),
            Vec::<ExpertId>::new(),
            "all below: empty set"
        );
        assert_eq!(
            mask(&[], 2, 2),
            vec![1.0; 4],
            "an empty set leaves every expert allowed"
        );
        assert_eq!(
            mask(&[[0, 1]], 2, 3),
            vec![0.0, 1.0, 0.0, 1.0, 1.0, 1.0],
            "layer 0 restricted to its set; layer 1, untouched, keeps all its experts"
        );
    }

    #[test]
    fn relabelling_is_a_seeded_bijection_that_keeps_set_sizes_and_overlaps() {
        let map = relabel(4, 8, 42);
        assert_eq!(map, relabel(4, 8, 42));
        assert_ne!(map, relabel(4, 8, 43));
        assert_eq!(
            union(std::slice::from_ref(&map)).len(),
            32,
            "every expert appears once"
        );
        let a = vec![[0, 1], [2, 3], [3, 7]];
        let b = vec![[2, 3], [1, 0]];
        let (ra, rb) = (apply(&map, &a, 8), apply(&map, &b, 8));
        assert_eq!((ra.len(), rb.len()), (3, 2));
        assert_eq!(union(&[ra.clone(), rb.clone()]).len(), union(&[a, b]).len());
        assert_eq!(ra[1], rb[0], "a shared expert stays shared");
    }

    #[test]
    fn steering_sets_come_from_the_two_ends_of_the_ranking_with_per_layer_caps() {
        // 2 layers x 4 experts, k = 2, ranked riskiest first.
        let ranking = vec![
            [0, 0],
            [0, 1],
            [0, 2],
            [1, 0],
            [1, 1],
            [1, 2],
            [0, 3],
            [1, 3],
        ];
        // Safe end: [1,3], [0,3], [1,2], [1,1] (layer 1 full after 2), [1,0] skipped, [0,2].
        let (on, off) = steering_sets(&ranking, 4, 2, 4, 0);
        assert_eq!(on, vec![[1, 3], [0, 3], [1, 2], [0, 2]]);
        assert!(off.is_empty());
        // Unsafe end: at most 4 - 2 = 2 per layer, never a forced-on expert.
        let (on, off) = steering_sets(&ranking, 4, 2, 1, 5);
        assert_eq!(on, vec![[1, 3]]);
        assert_eq!(off, vec![[0, 0], [0, 1], [1, 0], [1, 1]]);
    }
}
