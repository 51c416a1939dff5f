//! Mixed paired batches: each batch holds the safe and the unsafe prompt of the same goals, so
//! the risk difference of a batch compares the model on one set of goals asked two ways.
//!
//! A batch of `batch_size` with `safe_ratio` holds `n_safe = round(batch_size * safe_ratio)`
//! safe samples and `batch_size - n_safe` unsafe ones, drawn from `max(n_safe, n_unsafe)`
//! consecutive goals: goal `j` of the batch gives a safe sample if `j < n_safe` and an unsafe one
//! if `j < n_unsafe`. Safe samples come first (`in_batch_idx` 0..n_safe), then unsafe ones, each
//! group in goal order. A last batch with too few goals left is dropped.

use serde::{Deserialize, Serialize};

use super::attack::Pair;
use super::chat::Message;

/// Which prompt of its pair a sample is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// The plain goal.
    Safe,
    /// The jailbreak.
    Unsafe,
}

/// One prompt of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The batch it belongs to.
    pub batch_idx: usize,
    /// Its place in the batch.
    pub in_batch_idx: usize,
    /// Safe or unsafe.
    pub label: Label,
    /// The shared goal.
    pub goal: String,
    /// Index of the dataset record.
    pub record: usize,
    /// The conversation to answer.
    pub messages: Vec<Message>,
}

/// The samples of one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Index of the batch.
    pub batch_idx: usize,
    /// Its samples in `in_batch_idx` order.
    pub samples: Vec<Sample>,
}

/// How many safe and unsafe samples a batch holds.
pub fn split_counts(batch_size: usize, safe_ratio: f64) -> (usize, usize) {
    let n_safe = ((batch_size as f64) * safe_ratio).round() as usize;
    let n_safe = n_safe.min(batch_size);
    (n_safe, batch_size - n_safe)
}

/// Goals one batch consumes.
pub fn goals_per_batch(batch_size: usize, safe_ratio: f64) -> usize {
    let (s, u) = split_counts(batch_size, safe_ratio);
    s.max(u)
}

/// Cut `pairs` into mixed batches, at most `max_batches` of them if given.
pub fn mixed_batches(
    pairs: &[Pair],
    batch_size: usize,
    safe_ratio: f64,
    max_batches: Option<usize>,
) -> Vec<Batch> {
    let (n_safe, n_unsafe) = split_counts(batch_size, safe_ratio);
    let per = n_safe.max(n_unsafe).max(1);
    pairs
        .chunks_exact(per)
        .take(max_batches.unwrap_or(usize::MAX))
        .enumerate()
        .map(|(batch_idx, goals)| {
            let safe = goals[..n_safe].iter().map(|p| (Label::Safe, p, &p.safe));
            let unsafe_ = goals[..n_unsafe]
                .iter()
                .map(|p| (Label::Unsafe, p, &p.unsafe_));
            let samples = safe
                .chain(unsafe_)
                .enumerate()
                .map(|(in_batch_idx, (label, pair, messages))| Sample {
                    batch_idx,
                    in_batch_idx,
                    label,
                    goal: pair.goal.clone(),
                    record: pair.record,
                    messages: messages.clone(),
                })
                .collect();
            Batch { batch_idx, samples }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Vec<Pair> {
        (0..n)
            .map(|i| Pair {
                record: i,
                goal: format!("g{i}"),
                safe: vec![Message::user(format!("g{i}"))],
                unsafe_: vec![Message::user(format!("jailbreak g{i}"))],
            })
            .collect()
    }

    #[test]
    fn half_and_half_batches_pair_the_same_goals() {
        let batches = mixed_batches(&pairs(20), 16, 0.5, None);
        assert_eq!(
            batches.len(),
            2,
            "20 goals make two batches of 8 goals; 4 left over"
        );
        for b in &batches {
            assert_eq!(b.samples.len(), 16);
            for j in 0..8 {
                let (s, u) = (&b.samples[j], &b.samples[j + 8]);
                assert_eq!((s.label, u.label), (Label::Safe, Label::Unsafe));
                assert_eq!(s.goal, u.goal);
                assert_eq!((s.in_batch_idx, u.in_batch_idx), (j, j + 8));
            }
        }
        assert_eq!(batches[1].samples[0].goal, "g8");
    }

    #[test]
    fn uneven_ratio_and_cap() {
        let batches = mixed_batches(&pairs(20), 8, 0.25, Some(2));
        assert_eq!(batches.len(), 2);
        let labels: Vec<Label> = batches[0].samples.iter().map(|s| s.label).collect();
        assert_eq!(labels.iter().filter(|l| **l == Label::Safe).count(), 2);
        assert_eq!(labels.iter().filter(|l| **l == Label::Unsafe).count(), 6);
        assert_eq!(batches[1].samples[0].goal, "g6");
    }
}
