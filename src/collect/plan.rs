//! What collect will do, decided before any work: the mixed batches a config's train goals make,
//! and whether every prompt and its answer fit the model's positions.

use super::{CollectConfig, CollectError};
use crate::data::batch::{Batch, goals_per_batch, mixed_batches};
use crate::data::split::SplitPart;
use crate::data::{ChatTokenizer, DataConfig, DataError};

/// The mixed batches collect makes from the train part of `data` (`data.max_goals` and
/// `collect.max_batches` applied).
pub fn plan(data: &DataConfig, cfg: &CollectConfig) -> Result<Vec<Batch>, DataError> {
    let mut pairs = data.pairs(SplitPart::Train)?;
    if data.max_goals > 0 {
        pairs.truncate(data.max_goals);
    }
    let cap = (cfg.max_batches > 0).then_some(cfg.max_batches);
    let batches = mixed_batches(&pairs, cfg.batch_size, cfg.safe_ratio, cap);
    if batches.is_empty() || batches.len() < cfg.max_batches {
        let filter = if data.fields.filter_field.is_empty() {
            String::new()
        } else {
            format!(
                " (records whose {} is {}, the data.fields filter)",
                data.fields.filter_field, data.fields.filter_value
            )
        };
        let part = if data.split.is_some() {
            "train goals"
        } else {
            "goals"
        };
        return Err(DataError::Field {
            path: data.path.clone(),
            record: None,
            field: "collect.max_batches".into(),
            reason: format!(
                "{} {part}{filter} make {} batches of {} goals, {} asked for",
                pairs.len(),
                batches.len(),
                goals_per_batch(cfg.batch_size, cfg.safe_ratio),
                cfg.max_batches.max(1)
            ),
        });
    }
    Ok(batches)
}

/// Before any work: every prompt of `batches` (cut to `collect.max_prompt_tokens`) and its answer
/// fit the model's `max_position_embeddings` (`limit`).
pub fn check_prompt_lengths(
    data: &DataConfig,
    cfg: &CollectConfig,
    batches: &[Batch],
    tokenizer: &ChatTokenizer,
    limit: usize,
) -> Result<(), CollectError> {
    for s in batches.iter().flat_map(|b| &b.samples) {
        let tokens = tokenizer
            .encode_prompt(&s.messages, cfg.max_prompt_tokens)?
            .len();
        if tokens + cfg.max_new_tokens > limit {
            return Err(CollectError::TooLong {
                path: data.path.clone(),
                record: s.record,
                tokens,
                new: cfg.max_new_tokens,
                limit,
            });
        }
    }
    Ok(())
}
