//! The SFT set, keeping the batch structure of the analysis (the seeds'
//! `create_batch_structured_dataset`): per analysed batch, its kept safe samples answered with
//! the model's own generation (cut to `answer_chars` characters) and its kept unsafe samples
//! answered with a refusal, chat-templated, each keeping `batch_idx`, `in_batch_idx` and label.
//!
//! Labels are the input ids with -100 on the prompt part when `loss_on = "assistant"` (the prompt
//! part is the template rendered with `add_generation_prompt`), on nothing when `"all"`.
//! Examples longer than `max_len` keep their tail, so the answer survives.

use super::config::{LossOn, TrainConfig};
use crate::data::batch::Label;
use crate::data::{ChatTokenizer, DataError, Message};
use crate::model::loss::IGNORE_INDEX;
use crate::run_dir::RunDir;

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// Analysis batch.
    pub batch_idx: usize,
    /// Place in the batch.
    pub in_batch_idx: usize,
    /// Safe or unsafe.
    pub label: Label,
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Targets, -100 where not counted.
    pub labels: Vec<i64>,
}

/// The examples of one analysis batch, in `in_batch_idx` order.
#[derive(Debug, Clone, PartialEq)]
pub struct SftGroup {
    /// Analysis batch.
    pub batch_idx: usize,
    /// Its examples.
    pub examples: Vec<SftExample>,
}

/// Tokenise `messages` plus an assistant `answer` into ids and labels.
pub fn encode_example(
    tokenizer: &ChatTokenizer,
    messages: &[Message],
    answer: &str,
    loss_on: LossOn,
    max_len: usize,
) -> Result<(Vec<u32>, Vec<i64>), DataError> {
    let prompt_text = tokenizer.render(messages, true)?;
    let prompt = tokenizer.encode(&prompt_text)?;
    let mut full_msgs = messages.to_vec();
    full_msgs.push(Message::assistant(answer));
    let full_text = tokenizer.render(&full_msgs, false)?;
    // The loss leaves out the prompt's length in tokens, as the reference does; that needs the
    // prompt's text to begin the conversation's (token merges across the seam aside).
    if loss_on == LossOn::Assistant && !full_text.starts_with(&prompt_text) {
        let tail: String = prompt_text
            .chars()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(DataError::Template {
            path: "tokenizer_config.json".into(),
            reason: format!(
                "the conversation with its answer does not begin with the generation prompt, so the prompt \
                 cannot be left out of the loss (prompt ends {:?}); check [model] enable_thinking",
                tail
            ),
        });
    }
    let mut ids = tokenizer.encode(&full_text)?;
    let mut n_prompt = match loss_on {
        LossOn::Assistant => prompt.len().min(ids.len()),
        LossOn::All => 0,
    };
    if ids.len() > max_len {
        let over = ids.len() - max_len;
        ids.drain(..over);
        n_prompt = n_prompt.saturating_sub(over);
    }
    let labels = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| if i < n_prompt { IGNORE_INDEX } else { t as i64 })
        .collect();
    Ok((ids, labels))
}

/// Build the SFT groups of the analysed batches `batch_ids` of a collected run.
pub fn build(
    dir: &RunDir,
    batch_ids: &[usize],
    tokenizer: &ChatTokenizer,
    cfg: &TrainConfig,
) -> Result<Vec<SftGroup>, super::TrainError> {
    let mut groups = Vec::with_capacity(batch_ids.len());
    for &b in batch_ids {
        let mut examples = Vec::new();
        for r in dir.batch_records(b).read()?.into_iter().filter(|r| r.kept) {
            let answer = match r.label {
                Label::Safe => r
                    .response
                    .chars()
                    .take(cfg.answer_chars)
                    .collect::<String>(),
                Label::Unsafe => cfg.refusals[(b + r.in_batch_idx) % cfg.refusals.len()].clone(),
            };
            let (input_ids, labels) =
                encode_example(tokenizer, &r.messages, &answer, cfg.loss_on, cfg.max_len)?;
            examples.push(SftExample {
                batch_idx: b,
                in_batch_idx: r.in_batch_idx,
                label: r.label,
                input_ids,
                labels,
            });
        }
        if !examples.is_empty() {
            groups.push(SftGroup {
                batch_idx: b,
                examples,
            });
        }
    }
    Ok(groups)
}
