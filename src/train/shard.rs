//! One analysis batch split across the ranks of a data-parallel run, so that one optimizer step
//! still sees exactly that batch.
//!
//! Rank `r` of `n` takes every `n`-th safe example and every `n`-th unsafe example, starting at
//! the `r`-th of each (in `in_batch_idx` order): each rank keeps the batch's safe/unsafe share and
//! every example lands on exactly one rank. Each rank pads its own shard.
//!
//! The loss of a batch is the mean over its counted tokens, `Σ_t ℓ_t / T`. A rank's own loss is
//! the mean over its shard's `T_r` tokens; DDP averages the ranks' gradients. Weighting rank
//! `r`'s loss by [`loss_scale`] `= n · T_r / T` makes that average
//! `(1/n) Σ_r n (T_r/T) ∇(Σ_{t∈r} ℓ_t / T_r) = ∇(Σ_t ℓ_t / T)`: the one-device gradient, exactly
//! (up to the order of float sums).

use crate::data::batch::Label;

use super::sft::{SftExample, SftGroup};

/// The place of one process in a data-parallel run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rank {
    /// This rank, `0..ranks`.
    pub rank: usize,
    /// Ranks in all (1: one device).
    pub ranks: usize,
}

impl Rank {
    /// The only rank of a one-device run.
    pub const SOLE: Rank = Rank { rank: 0, ranks: 1 };
}

/// The examples of `group` that `rank` trains on, in `in_batch_idx` order.
pub fn shard(group: &SftGroup, rank: Rank) -> Vec<&SftExample> {
    if rank.ranks <= 1 {
        return group.examples.iter().collect();
    }
    let pick = |label: Label| {
        group
            .examples
            .iter()
            .filter(move |e| e.label == label)
            .skip(rank.rank)
            .step_by(rank.ranks)
    };
    let mut out: Vec<&SftExample> = pick(Label::Safe).chain(pick(Label::Unsafe)).collect();
    out.sort_by_key(|e| e.in_batch_idx);
    out
}

/// Tokens an example adds to the loss (its targets, shifted by one).
pub fn counted_tokens(example: &SftExample) -> usize {
    example
        .labels
        .iter()
        .skip(1)
        .filter(|&&l| l != crate::model::loss::IGNORE_INDEX)
        .count()
}

/// The weight of rank `r`'s mean loss, `n · T_r / T` (1 on one device; 0 for a shard without
/// counted tokens, whose loss is then 0 too).
pub fn loss_scale(shard_tokens: usize, batch_tokens: usize, ranks: usize) -> f32 {
    if ranks <= 1 || batch_tokens == 0 {
        return 1.0;
    }
    (ranks * shard_tokens) as f32 / batch_tokens as f32
}

/// Why a batch cannot be split across `ranks`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "analysis batch {batch_idx} has {safe} safe and {unsafe_} unsafe examples to train on: too few to give each of {ranks} devices at least one (lower model.devices, or raise collect.batch_size)"
)]
pub struct TooSmall {
    /// The batch.
    pub batch_idx: usize,
    /// Its safe examples.
    pub safe: usize,
    /// Its unsafe examples.
    pub unsafe_: usize,
    /// Ranks asked for.
    pub ranks: usize,
}

/// Check that every rank gets at least one example of every batch (a rank with an empty shard
/// would have no forward pass to take part in the step's gradient exchange).
pub fn check(groups: &[SftGroup], ranks: usize) -> Result<(), TooSmall> {
    match groups.iter().find(|g| g.examples.len() < ranks) {
        Some(g) => {
            let safe = g.examples.iter().filter(|e| e.label == Label::Safe).count();
            Err(TooSmall {
                batch_idx: g.batch_idx,
                safe,
                unsafe_: g.examples.len() - safe,
                ranks,
            })
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(labels: &[Label]) -> SftGroup {
        SftGroup {
            batch_idx: 3,
            examples: labels
                .iter()
                .enumerate()
                .map(|(i, &label)| SftExample {
                    batch_idx: 3,
                    in_batch_idx: i,
                    label,
                    input_ids: vec![1; 4 + i],
                    labels: std::iter::once(-100)
                        .chain(std::iter::repeat_n(1, 3 + i))
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn each_rank_keeps_the_share_and_every_example_lands_once() {
        const S: Label = Label::Safe;
        const U: Label = Label::Unsafe;
        // 8 + 8 interleaved, as collect mixes them.
        let g = group(&[S, U, S, U, S, S, U, U, S, U, S, U, S, S, U, U]);
        let mut seen = Vec::new();
        for r in 0..2 {
            let s = shard(&g, Rank { rank: r, ranks: 2 });
            assert_eq!(s.iter().filter(|e| e.label == S).count(), 4, "rank {r}");
            assert_eq!(s.iter().filter(|e| e.label == U).count(), 4, "rank {r}");
            assert!(s.windows(2).all(|w| w[0].in_batch_idx < w[1].in_batch_idx));
            seen.extend(s.iter().map(|e| e.in_batch_idx));
        }
        seen.sort();
        assert_eq!(seen, (0..16).collect::<Vec<_>>());
        // Uneven: 3 safe, 2 unsafe over 2 ranks → 2+1 safe, 1+1 unsafe.
        let g = group(&[S, S, U, S, U]);
        let ids = |r| {
            shard(&g, Rank { rank: r, ranks: 2 })
                .iter()
                .map(|e| e.in_batch_idx)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(0), vec![0, 2, 3]);
        assert_eq!(ids(1), vec![1, 4]);
        assert_eq!(shard(&g, Rank::SOLE).len(), 5);
    }

    #[test]
    fn scales_average_to_the_batch_mean() {
        // Shard means m_r over T_r tokens: Σ_r scale_r · m_r / n is the batch mean.
        let (t, sums) = ([30usize, 10], [12.0f32, 2.0]);
        let total: usize = t.iter().sum();
        let mean: f32 = (0..2)
            .map(|r| loss_scale(t[r], total, 2) * sums[r] / t[r] as f32)
            .sum::<f32>()
            / 2.0;
        assert!((mean - 14.0 / 40.0).abs() < 1e-7, "{mean}");
        assert_eq!(loss_scale(7, 9, 1), 1.0);
    }

    #[test]
    fn a_batch_smaller_than_the_ranks_is_refused() {
        let g = group(&[Label::Safe, Label::Unsafe]);
        assert!(check(std::slice::from_ref(&g), 2).is_ok());
        let e = check(std::slice::from_ref(&g), 3).unwrap_err();
        assert!(
            e.to_string().contains("batch 3 has 1 safe and 1 unsafe"),
            "{e}"
        );
    }
}
