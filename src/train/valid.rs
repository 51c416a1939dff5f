//! The validation set: held-out pairs answered with a refusal.
//!
//! Training never sees the held-out part of `data.split`; evaluation answers it. Validation takes
//! the *last* `train.valid_pairs` held-out records whose jailbreak passes the dataset's filter
//! (an evaluation cut by `eval.max_goals` takes the first ones) and asks for a refusal of both the
//! plain goal and its jailbreak (the refusal of record `r` is `train.refusals[r % len]`). Its loss
//! is the language-modelling loss of those refusals under free routing (as the model is deployed),
//! computed by burn-train's validation pass after every window, that is at every checkpoint.
//! Groups mix plain and jailbreak prompts, `collect.batch_size` examples each.

use super::TrainConfig;
use super::TrainError;
use super::sft::{SftExample, SftGroup, encode_example};
use crate::data::batch::Label;
use crate::data::split::SplitPart;
use crate::data::{ChatTokenizer, DataConfig};

/// The validation groups of `t` on the held-out part of `data`, in groups of `group_size`
/// examples (empty when `train.valid_pairs` is 0 or there is no split).
pub fn heldout_groups(
    data: &DataConfig,
    t: &TrainConfig,
    tokenizer: &ChatTokenizer,
    group_size: usize,
) -> Result<Vec<SftGroup>, TrainError> {
    if data.split.is_none() || t.valid_pairs == 0 {
        return Ok(Vec::new());
    }
    let pairs = data.pairs(SplitPart::Heldout)?;
    let take = &pairs[pairs.len().saturating_sub(t.valid_pairs)..];
    let mut examples = Vec::with_capacity(2 * take.len());
    for p in take {
        let refusal = &t.refusals[p.record % t.refusals.len()];
        for (label, messages) in [(Label::Safe, &p.safe), (Label::Unsafe, &p.unsafe_)] {
            let (input_ids, labels) =
                encode_example(tokenizer, messages, refusal, t.loss_on, t.max_len)?;
            examples.push(SftExample {
                batch_idx: p.record,
                in_batch_idx: examples.len(),
                label,
                input_ids,
                labels,
            });
        }
    }
    let size = group_size.max(2);
    Ok(examples
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| SftGroup {
            batch_idx: i,
            examples: chunk.to_vec(),
        })
        .collect())
}
