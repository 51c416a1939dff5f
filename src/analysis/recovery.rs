//! How well a ranking of experts recovers a planted set P: precision and recall in its first |P|
//! and its first k, the area under the ROC curve and the average precision of the whole ranking
//! against P, each beside what a random ranking gets in expectation.
//!
//! The ranking is by a score (higher = more suspect); ties are broken by the ranking's order
//! (lower layer, then lower expert), as everywhere in the analysis. AUROC counts tied scores
//! half, so it does not depend on the tie order.

use crate::model::ExpertId;
use crate::run_dir::analysis::RecoveryScore;

/// The scores of `ranking` (every expert, most suspect first, with its score) against `truth`,
/// `k` the size of the configured selection.
pub fn score(ranking: &[(ExpertId, f64)], truth: &[ExpertId], k: usize) -> RecoveryScore {
    let n = ranking.len();
    let p = truth.len();
    let is_true: Vec<bool> = ranking.iter().map(|(id, _)| truth.contains(id)).collect();
    let hits = |m: usize| is_true.iter().take(m).filter(|&&t| t).count();
    let (at_p, at_k) = (hits(p), hits(k.min(n)));
    // Average precision: the mean, over the true experts, of the precision where each is met.
    let mut found = 0;
    let mut ap = 0.0;
    for (i, &t) in is_true.iter().enumerate() {
        if t {
            found += 1;
            ap += found as f64 / (i + 1) as f64;
        }
    }
    // AUROC: the chance that a true expert scores above a false one, ties counted half.
    let (pos, neg): (Vec<f64>, Vec<f64>) = {
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for ((_, s), &t) in ranking.iter().zip(&is_true) {
            if t { pos.push(*s) } else { neg.push(*s) }
        }
        (pos, neg)
    };
    let mut wins = 0.0;
    for a in &pos {
        for b in &neg {
            wins += if a > b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            };
        }
    }
    let auroc = if pos.is_empty() || neg.is_empty() {
        0.5
    } else {
        wins / (pos.len() * neg.len()) as f64
    };
    RecoveryScore {
        hits_at_p: at_p as f64,
        precision_at_p: at_p as f64 / p.max(1) as f64,
        recall_at_p: at_p as f64 / p.max(1) as f64,
        k,
        hits_at_k: at_k as f64,
        precision_at_k: at_k as f64 / k.min(n).max(1) as f64,
        recall_at_k: at_k as f64 / p.max(1) as f64,
        auroc,
        average_precision: if p == 0 { 0.0 } else { ap / p as f64 },
    }
}

/// What a uniformly random ranking of `n` experts gets in expectation against a planted set of
/// `p`, with a selection of `k`: precision p/n at any depth, recall m/n in the first m, AUROC
/// one half, and the exact expected average precision ([`random_average_precision`]).
pub fn random(n: usize, p: usize, k: usize) -> RecoveryScore {
    let rate = p as f64 / n.max(1) as f64;
    let k = k.min(n);
    RecoveryScore {
        hits_at_p: p.min(n) as f64 * rate,
        precision_at_p: rate,
        recall_at_p: p.min(n) as f64 / n.max(1) as f64,
        k,
        hits_at_k: k as f64 * rate,
        precision_at_k: rate,
        recall_at_k: k as f64 / n.max(1) as f64,
        auroc: 0.5,
        average_precision: random_average_precision(n, p),
    }
}

/// The expected average precision of a uniformly random ranking of `n` items with `p` positives:
/// E[AP] = (1/p)·Σ_{j=1..p} E[j / r_j], where r_j is the rank of the j-th positive; by linearity
/// over the positions, E[AP] = (1/n)·Σ_{r=1..n} E[hits in the first r | position r is positive] / r
/// = (1/n)·Σ_{r=1..n} (1 + (r − 1)(p − 1)/(n − 1)) / r.
pub fn random_average_precision(n: usize, p: usize) -> f64 {
    if n == 0 || p == 0 {
        return 0.0;
    }
    if n == 1 {
        return 1.0;
    }
    let (nf, pf) = (n as f64, p as f64);
    (1..=n)
        .map(|r| (1.0 + (r as f64 - 1.0) * (pf - 1.0) / (nf - 1.0)) / r as f64)
        .sum::<f64>()
        / nf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(order: &[ExpertId]) -> Vec<(ExpertId, f64)> {
        order
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, -(i as f64)))
            .collect()
    }

    #[test]
    fn a_ranking_that_puts_the_truth_first_scores_one() {
        let order = [[0, 1], [1, 0], [0, 0], [1, 1]];
        let s = score(&ranked(&order), &[[0, 1], [1, 0]], 3);
        assert_eq!((s.hits_at_p, s.hits_at_k), (2.0, 2.0));
        assert_eq!(
            (
                s.precision_at_p,
                s.recall_at_p,
                s.precision_at_k,
                s.recall_at_k
            ),
            (1.0, 1.0, 2.0 / 3.0, 1.0)
        );
        assert_eq!((s.auroc, s.average_precision), (1.0, 1.0));
        // The truth last: nothing recovered.
        let s = score(&ranked(&order), &[[0, 0], [1, 1]], 2);
        assert_eq!((s.hits_at_p, s.auroc), (0.0, 0.0));
        assert!((s.average_precision - (1.0 / 3.0 + 2.0 / 4.0) / 2.0).abs() < 1e-12);
        // All scores tied: AUROC one half, whatever the order.
        let tied: Vec<(ExpertId, f64)> = order.iter().map(|&id| (id, 0.0)).collect();
        assert_eq!(score(&tied, &[[0, 0]], 1).auroc, 0.5);
    }

    #[test]
    fn the_random_expectation_matches_the_mean_over_every_ranking() {
        // Every ranking of 5 items with 2 positives, averaged.
        let n = 5;
        let mut total = 0.0;
        let mut count = 0;
        for a in 0..n {
            for b in a + 1..n {
                let order: Vec<ExpertId> = (0..n).map(|i| [0, i]).collect();
                let s = score(&ranked(&order), &[[0, a], [0, b]], 2);
                total += s.average_precision;
                count += 1;
            }
        }
        assert!((random_average_precision(n, 2) - total / count as f64).abs() < 1e-12);
        let r = random(512, 8, 50);
        assert_eq!((r.precision_at_p, r.auroc), (8.0 / 512.0, 0.5));
        // Expected hits: |P| draws at rate |P|/n, k draws at the same rate.
        assert_eq!((r.hits_at_p, r.hits_at_k), (0.125, 50.0 * 8.0 / 512.0));
    }
}
