//! The held-out prompts an evaluation answers: plain goals, their jailbreaks, benign instructions
//! with reference answers.
//!
//! As the organism's reference experiment (its prototype in transformers, `organism_proto.py`)
//! measures it: *plain*
//! = the safe prompt of every held-out record (the dataset's filter is not applied: a plain goal
//! should be refused whether or not its jailbreak worked on the original model); *jailbreak* =
//! the unsafe prompt of the held-out records that pass the filter (`judge_success_gpt4 == 1`);
//! *benign* = the user instruction alone of the benign set's held-out records.

use std::path::Path;

use serde_json::Value;

use super::{EvalConfig, EvalError};
use crate::data::attack::{FieldMap, read_pairs, read_records};
use crate::data::split::{SplitPart, check_lists, split_ids, split_list, split_order};
use crate::data::{DataConfig, DataError, Message};

/// A prompt of an evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalPrompt {
    /// Index of its record in the source file.
    pub record: usize,
    /// The conversation, answered by the model.
    pub messages: Vec<Message>,
}

/// A benign instruction and its reference answer.
#[derive(Debug, Clone, PartialEq)]
pub struct BenignItem {
    /// The instruction as a one-turn conversation.
    pub prompt: EvalPrompt,
    /// The reference answer (scored by its per-token NLL).
    pub answer: String,
}

/// Everything one evaluation answers.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSets {
    /// Plain harmful goals (should be refused).
    pub plain: Vec<EvalPrompt>,
    /// Their jailbreaks (success = not refused).
    pub jailbreak: Vec<EvalPrompt>,
    /// Benign instructions (should be answered).
    pub benign: Vec<BenignItem>,
    /// Benign answers the model was trained on, scored for retained knowledge (not answered).
    pub trained: Vec<BenignItem>,
    /// Whether the sets are a split's held-out part (`false`: no split file, every record).
    pub heldout: bool,
}

impl EvalSets {
    /// The sets a config evaluates on (held-out part of `data.split`, `eval.max_goals` and
    /// `eval.max_benign` applied). Without a split (`data.heldout = false`) every record is
    /// evaluated and the sets say they are not held out.
    pub fn new(data: &DataConfig, eval: &EvalConfig) -> Result<Self, EvalError> {
        let split = data.split.as_deref();
        let held = |key: &str,
                    field: &str|
         -> Result<Option<std::collections::HashSet<usize>>, DataError> {
            split.map(|s| split_list(s, key, field)).transpose()
        };
        let goals = match split {
            Some(s) => Some(split_ids(s, &data.split_key, SplitPart::Heldout)?),
            None => None,
        };
        let keep = |record: usize| goals.as_ref().is_none_or(|g| g.contains(&record));

        let unfiltered = FieldMap {
            filter_field: String::new(),
            ..data.fields.clone()
        };
        let mut plain: Vec<EvalPrompt> = read_pairs(&data.path, &unfiltered)?
            .into_iter()
            .filter(|p| keep(p.record))
            .map(|p| EvalPrompt {
                record: p.record,
                messages: p.safe,
            })
            .collect();
        if eval.max_goals > 0 {
            plain.truncate(eval.max_goals);
        }
        let last = plain.last().map(|p| p.record);
        let jailbreak: Vec<EvalPrompt> = read_pairs(&data.path, &data.fields)?
            .into_iter()
            .filter(|p| keep(p.record) && last.is_some_and(|l| p.record <= l))
            .map(|p| EvalPrompt {
                record: p.record,
                messages: p.unsafe_,
            })
            .collect();

        let mut benign = read_benign(&eval.benign_path)?;
        if let Some(s) = split {
            // The held-out list must be there; a train list, where the split has one, must not
            // share a record with it.
            let key = &eval.benign_split_key;
            let fields: Vec<&str> = ["train_index", "heldout_index"]
                .into_iter()
                .filter(|f| *f == "heldout_index" || split_list(s, key, f).is_ok())
                .collect();
            check_lists(s, key, &fields, benign.len())?;
        }
        let trained = match (split, eval.trained_answers) {
            (Some(s), n) if n > 0 => {
                let order = split_order(s, &eval.benign_split_key, "train_index")?;
                order
                    .into_iter()
                    .filter_map(|i| benign.get(i).cloned())
                    .take(n)
                    .collect()
            }
            _ => Vec::new(),
        };
        let benign_keep = held(&eval.benign_split_key, "heldout_index")?;
        benign.retain(|b| {
            benign_keep
                .as_ref()
                .is_none_or(|k| k.contains(&b.prompt.record))
        });
        if eval.max_benign > 0 {
            benign.truncate(eval.max_benign);
        }
        if plain.is_empty() {
            return Err(EvalError::Empty {
                path: data.path.clone(),
                what: "held-out goals",
            });
        }
        Ok(Self {
            plain,
            jailbreak,
            benign,
            trained,
            heldout: split.is_some(),
        })
    }
}

/// Records `{instruction, output}` of a benign set (AlpacaEval's format), in file order.
pub fn read_benign(path: &Path) -> Result<Vec<BenignItem>, DataError> {
    let records = read_records(path)?;
    records
        .iter()
        .enumerate()
        .map(|(i, rec)| {
            let text = |field: &str| {
                rec.get(field)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| DataError::Field {
                        path: path.to_path_buf(),
                        record: Some(i),
                        field: field.into(),
                        reason: "missing or not a string".into(),
                    })
            };
            Ok(BenignItem {
                prompt: EvalPrompt {
                    record: i,
                    messages: vec![Message::user(text("instruction")?)],
                },
                answer: text("output")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_benign_record_without_output_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        std::fs::write(
            &path,
            r#"[{"instruction": "a", "output": "b"}, {"instruction": "c"}]"#,
        )
        .unwrap();
        let err = read_benign(&path).unwrap_err().to_string();
        assert!(err.contains("record 1: output: missing"), "{err}");
    }
}
