//! The validation set: held-out pairs answered with a refusal.
//!
//! Training never sees the held-out part of `data.split`; evaluation answers it. Validation takes
//! the *last* `train.valid_pairs` held-out records whose jailbreak passes the dataset's filter
//! (an evaluation cut by `eval.max_goals` takes the first ones) and asks for a refusal of both the
//! plain goal and its jailbreak (the refusal of record `r` is `train.refusals[r % len]`). Its loss
//! is the language-modelling loss of those refusals under free routing (as the model is deployed),
//! computed by burn-train's validation pass after every window, that is at every checkpoint.
//! Groups mix plain and jailbreak prompts, `collect.batch_size` examples each.

use crate::config::Config;
use crate::data::attack::read_pairs;
use crate::data::batch::Label;
use crate::data::split::{SplitPart, split_ids};
use crate::data::ChatTokenizer;

use super::sft::{SftExample, SftGroup, encode_example};
use super::TrainError;

/// The validation groups of `cfg` (empty when `train.valid_pairs` is 0 or there is no split).
pub fn heldout_groups(cfg: &Config, tokenizer: &ChatTokenizer) -> Result<Vec<SftGroup>, TrainError> {
    let t = &cfg.train;
    let Some(split) = cfg.data.split.as_deref() else {
        return Ok(Vec::new());
    };
    if t.valid_pairs == 0 {
        return Ok(Vec::new());
    }
    let held = split_ids(split, &cfg.data.split_key, SplitPart::Heldout)?;
    let pairs: Vec<_> = read_pairs(&cfg.data.path, &cfg.data.fields)?
        .into_iter()
        .filter(|p| held.contains(&p.record))
        .collect();
    let take = &pairs[pairs.len().saturating_sub(t.valid_pairs)..];
    let mut examples = Vec::with_capacity(2 * take.len());
    for p in take {
        let refusal = &t.refusals[p.record % t.refusals.len()];
        for (label, messages) in [(Label::Safe, &p.safe), (Label::Unsafe, &p.unsafe_)] {
            let (input_ids, labels) = encode_example(tokenizer, messages, refusal, t.loss_on, t.max_len)?;
            examples.push(SftExample {
                batch_idx: p.record,
                in_batch_idx: examples.len(),
                label,
                input_ids,
                labels,
            });
        }
    }
    let size = cfg.collect.batch_size.max(2);
    Ok(examples
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| SftGroup {
            batch_idx: i,
            examples: chunk.to_vec(),
        })
        .collect())
}
