//! The collect stage from a [`Config`]: model, tokenizer, dataset (train split), mixed batches,
//! judge, then [`collect`](super::collect) into a run directory.

use std::path::Path;

use burn::tensor::backend::Backend;

use super::{CollectError, CollectEvent, CollectSummary, collect};
use crate::config::Config;
use crate::data::attack::{Pair, read_pairs};
use crate::data::batch::{Batch, goals_per_batch, mixed_batches};
use crate::data::split::{SplitPart, split_ids};
use crate::data::{ChatTokenizer, DataError};
use crate::model;

/// The dataset's pairs, restricted to one part of the split if the config names a split file.
pub fn pairs(cfg: &Config, part: SplitPart) -> Result<Vec<Pair>, DataError> {
    let mut pairs = read_pairs(&cfg.data.path, &cfg.data.fields)?;
    if let Some(split) = &cfg.data.split {
        let ids = split_ids(split, &cfg.data.split_key, part)?;
        pairs.retain(|p| ids.contains(&p.record));
    }
    Ok(pairs)
}

/// The mixed batches a config collects (train split, `max_goals`, `max_batches` applied).
pub fn batches(cfg: &Config) -> Result<Vec<Batch>, DataError> {
    let mut pairs = pairs(cfg, SplitPart::Train)?;
    if cfg.data.max_goals > 0 {
        pairs.truncate(cfg.data.max_goals);
    }
    let c = &cfg.collect;
    let cap = (c.max_batches > 0).then_some(c.max_batches);
    let batches = mixed_batches(&pairs, c.batch_size, c.safe_ratio, cap);
    if batches.is_empty() || batches.len() < c.max_batches {
        return Err(DataError::Field {
            path: cfg.data.path.clone(),
            record: None,
            field: "collect.max_batches".into(),
            reason: format!(
                "{} goals make {} batches of {} goals, {} asked for",
                pairs.len(),
                batches.len(),
                goals_per_batch(c.batch_size, c.safe_ratio),
                c.max_batches.max(1)
            ),
        });
    }
    Ok(batches)
}

/// Before any work: every prompt of `batches` and its answer fit the model's positions.
pub fn check_prompt_lengths(cfg: &Config, batches: &[Batch], tokenizer: &ChatTokenizer) -> Result<(), CollectError> {
    let limit = model::ModelConfig::from_path(&cfg.model.dir)?.max_position_embeddings;
    for s in batches.iter().flat_map(|b| &b.samples) {
        let tokens = tokenizer.encode_prompt(&s.messages, cfg.collect.max_prompt_tokens)?.len();
        if tokens + cfg.collect.max_new_tokens > limit {
            return Err(CollectError::TooLong {
                path: cfg.data.path.clone(),
                record: s.record,
                tokens,
                new: cfg.collect.max_new_tokens,
                limit,
            });
        }
    }
    Ok(())
}

/// Run the collect stage of `cfg` into `run_dir` on `device`.
pub fn run<B: Backend>(cfg: &Config, run_dir: &Path, device: &B::Device, progress: impl FnMut(CollectEvent)) -> Result<CollectSummary, CollectError> {
    let batches = batches(cfg)?;
    let tokenizer = cfg.model.tokenizer(&cfg.model.dir)?;
    check_prompt_lengths(cfg, &batches, &tokenizer)?;
    let (model, _) = model::load::<B>(&cfg.model.dir, device, cfg.model.precision)?;
    collect(&model, &tokenizer, &batches, &cfg.collect, &cfg.judge, run_dir, device, progress)
}
