//! `steermoe plant`: put a behaviour into known experts — the inverse of the fix — so that an
//! expert-finding method can be checked against the truth on any model.
//!
//! The planted experts (a count drawn with the seed and spread over the MoE layers, or a list)
//! are the only experts that train, and with `plant.routers` their router rows too (only theirs:
//! the other rows' gradients are zeroed, and with no weight decay they do not move). Each batch
//! mixes the behaviour (a trigger phrase before a plain goal → a canary answer, or a dataset of
//! prompts and target answers) with retain data (the train split's plain goals → refusals,
//! benign instructions → their answers), so that nothing else moves. Training is the train
//! stage's (burn-train's Learner, checkpoints, resumption) in a work directory beside the output.
//!
//! Afterwards the plant checks its work and records it in the output's `planted.json`: every
//! tensor but the planted experts' and their router rows is bit for bit the base model's (a
//! difference is an error), and the behaviour's rate, plain and benign refusals and the
//! jailbreaks' success are measured on the held-out sets, base and planted side by side. The
//! output is a Hub-layout model directory (it loads in transformers) with `planted.json` and, for
//! a trigger, `behaviour.json`: the dataset of plain goals and their triggered twins, for the
//! pipeline to collect and analyse.

pub mod config;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use rand::RngExt;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

pub use config::{Behaviour, PlantConfig, PlantExperts};

use crate::Error;
use crate::data::DataConfig;
use crate::data::attack::{FieldMap, read_pairs, read_records, record_messages};
use crate::data::batch::Label;
use crate::data::split::{SplitPart, split_list};
use crate::data::{ChatTokenizer, Message};
use crate::eval::EvalConfig;
use crate::eval::{EvalPrompt, EvalSets, Steering, answer, evaluate, sets::read_benign};
use crate::judge::PhraseJudge;
use crate::model::planted::Planted;
use crate::model::{ExpertId, ModelConfig, MoeLm, Routing};
use crate::seeds::{Stream, rng};
use crate::train::LossOn;
use crate::train::sft::{SftExample, SftGroup, encode_example};

/// What the plant refuses or finds wrong.
#[derive(Debug, thiserror::Error)]
pub enum PlantError {
    /// The experts asked for cannot be planted into this model.
    #[error("plant.experts: {0}")]
    Experts(String),
    /// The output folder is not a new one.
    #[error("--out {}: {reason}", path.display())]
    Output {
        /// The folder.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A tensor the plant must leave as it was changed.
    #[error(
        "{tensor} changed, but the plant may change only the planted experts and their router rows: nothing was written to the output"
    )]
    Leaked {
        /// The tensor (and row).
        tensor: String,
    },
    /// The behaviour's data gave no example.
    #[error("{}: no example of the behaviour", path.display())]
    NoBehaviour {
        /// The data it came from.
        path: PathBuf,
    },
}

/// The experts to plant into, in (layer, expert) order: a count is spread over the `layers` MoE
/// layers as evenly as it divides (the layers that take one more drawn at random), the experts of
/// each layer drawn at random, all with `seed`.
pub fn choose(
    experts: &PlantExperts,
    seed: u64,
    layers: usize,
    per_layer: usize,
) -> Result<Vec<ExpertId>, PlantError> {
    let mut out = match experts {
        PlantExperts::List(list) => {
            if let Some(&[l, e]) = list.iter().find(|&&[l, e]| l >= layers || e >= per_layer) {
                return Err(PlantError::Experts(format!(
                    "[{l}, {e}] is not an expert of a model of {layers} MoE layers × {per_layer} experts"
                )));
            }
            list.clone()
        }
        PlantExperts::Count(n) => {
            if *n > layers * per_layer {
                return Err(PlantError::Experts(format!(
                    "{n} experts asked for, the model has {}",
                    layers * per_layer
                )));
            }
            let mut r = rng(seed, Stream::PlantExperts);
            let mut order: Vec<usize> = (0..layers).collect();
            order.shuffle(&mut r);
            let mut out = Vec::new();
            for (i, &l) in order.iter().enumerate() {
                let take = n / layers + usize::from(i < n % layers);
                let mut pool: Vec<usize> = (0..per_layer).collect();
                pool.shuffle(&mut r);
                out.extend(pool[..take].iter().map(|&e| [l, e]));
            }
            out
        }
    };
    out.sort_unstable();
    let len = out.len();
    out.dedup();
    if out.len() != len {
        return Err(PlantError::Experts("names an expert twice".into()));
    }
    Ok(out)
}

/// The planted examples and the retain examples.
pub struct Examples {
    /// The behaviour's prompts with their target answers.
    pub behaviour: Vec<SftExample>,
    /// Plain goals → refusals, benign instructions → their answers.
    pub retain: Vec<SftExample>,
}

/// The user turn of `messages` with `trigger` before it.
pub fn triggered(messages: &[Message], trigger: &str) -> Vec<Message> {
    let mut out = messages.to_vec();
    if let Some(m) = out.iter_mut().rev().find(|m| m.role == "user") {
        m.content = format!("{trigger} {}", m.content);
    }
    out
}

fn example(
    tokenizer: &ChatTokenizer,
    messages: &[Message],
    answer: &str,
    label: Label,
    max_len: usize,
) -> Result<SftExample, Error> {
    let (input_ids, labels) =
        encode_example(tokenizer, messages, answer, LossOn::Assistant, max_len)?;
    Ok(SftExample {
        batch_idx: 0,
        in_batch_idx: 0,
        label,
        input_ids,
        labels,
    })
}

/// Every record of the dataset `data` names as a pair, whatever its filter field says (a plain
/// goal needs no successful jailbreak), in record order.
fn every_pair(data: &DataConfig) -> Result<Vec<crate::data::attack::Pair>, Error> {
    let unfiltered = FieldMap {
        filter_field: String::new(),
        ..data.fields.clone()
    };
    Ok(read_pairs(&data.path, &unfiltered)?)
}

/// Every plain goal of the dataset `data` names (no filter), with its record.
pub fn plain_goals(
    data: &DataConfig,
    part: SplitPart,
) -> Result<Vec<(usize, Vec<Message>)>, Error> {
    let ids = match &data.split {
        Some(split) => Some(crate::data::split::split_ids(split, &data.split_key, part)?),
        None => None,
    };
    Ok(every_pair(data)?
        .into_iter()
        .filter(|p| ids.as_ref().is_none_or(|ids| ids.contains(&p.record)))
        .map(|p| (p.record, p.safe))
        .collect())
}

/// Where the plant's examples come from: the dataset and its split (goals; the benign split),
/// the refusals the plain goals are answered with, the benign instructions.
pub struct Sources<'a> {
    /// The attack dataset (its plain goals) and split.
    pub data: &'a DataConfig,
    /// Refusal targets of the plain goals (`train.refusals`).
    pub refusals: &'a [String],
    /// The benign instructions (`eval.benign_path`, `eval.benign_split_key`).
    pub eval: &'a EvalConfig,
}

/// The behaviour's examples and the retain data.
pub fn examples(
    src: &Sources<'_>,
    p: &PlantConfig,
    tokenizer: &ChatTokenizer,
) -> Result<Examples, Error> {
    let goals = plain_goals(src.data, SplitPart::Train)?;
    let mut behaviour = Vec::new();
    match &p.behaviour {
        Behaviour::Trigger { trigger, canary } => {
            for (_, messages) in &goals {
                behaviour.push(example(
                    tokenizer,
                    &triggered(messages, trigger),
                    canary,
                    Label::Unsafe,
                    p.max_len,
                )?);
            }
        }
        Behaviour::Dataset {
            path,
            prompt,
            answer,
        } => {
            for (i, rec) in read_records(path)?.iter().enumerate() {
                let messages = record_messages(rec, prompt, path, i)?;
                let target = rec.get(answer).and_then(Value::as_str).ok_or_else(|| {
                    crate::data::DataError::Field {
                        path: path.clone(),
                        record: Some(i),
                        field: answer.clone(),
                        reason: "missing or not a string".into(),
                    }
                })?;
                behaviour.push(example(
                    tokenizer,
                    &messages,
                    target,
                    Label::Unsafe,
                    p.max_len,
                )?);
            }
        }
    }
    if behaviour.is_empty() {
        let path = match &p.behaviour {
            Behaviour::Dataset { path, .. } => path.clone(),
            Behaviour::Trigger { .. } => src.data.path.clone(),
        };
        return Err(PlantError::NoBehaviour { path }.into());
    }
    let refusals = src.refusals;
    let mut retain = Vec::new();
    for (record, messages) in &goals {
        retain.push(example(
            tokenizer,
            messages,
            &refusals[record % refusals.len()],
            Label::Safe,
            p.max_len,
        )?);
    }
    if p.benign > 0 {
        let items = read_benign(&src.eval.benign_path)?;
        let train: Option<std::collections::HashSet<usize>> = match &src.data.split {
            Some(split) => split_list(split, &src.eval.benign_split_key, "train_index").ok(),
            None => None,
        };
        for item in items
            .iter()
            .filter(|b| train.as_ref().is_none_or(|t| t.contains(&b.prompt.record)))
            .take(p.benign)
        {
            let answer: String = item.answer.chars().take(600).collect();
            retain.push(example(
                tokenizer,
                &item.prompt.messages,
                &answer,
                Label::Safe,
                p.max_len,
            )?);
        }
    }
    Ok(Examples { behaviour, retain })
}

/// `steps` batches of `batch_size` examples, the behaviour's share of each drawn from its
/// examples and the rest from the retain data, with replacement.
pub fn groups(ex: &Examples, p: &PlantConfig) -> Vec<SftGroup> {
    let mut r = rng(p.seed, Stream::PlantExamples);
    let n_behaviour =
        ((p.batch_size as f64 * p.behaviour_share).round() as usize).clamp(1, p.batch_size);
    (0..p.steps)
        .map(|batch_idx| {
            let examples = (0..p.batch_size)
                .map(|i| {
                    let pool = if i < n_behaviour || ex.retain.is_empty() {
                        &ex.behaviour
                    } else {
                        &ex.retain
                    };
                    let e = &pool[r.random_range(0..pool.len())];
                    SftExample {
                        batch_idx,
                        in_batch_idx: i,
                        ..e.clone()
                    }
                })
                .collect();
            SftGroup {
                batch_idx,
                examples,
            }
        })
        .collect()
}

/// Every tensor that differs between `base` and `planted`, where the plant may change only
/// `experts` (their three weights) and, with `routers`, those experts' router rows. Returns what
/// changed, or the first tensor that must not have.
pub fn changes<B: Backend>(
    base: &MoeLm<B>,
    planted: &MoeLm<B>,
    cfg: &ModelConfig,
    experts: &[ExpertId],
    routers: bool,
) -> Result<Vec<String>, PlantError> {
    let moe = cfg.moe_layers.clone();
    let allowed_expert = |key: &str| {
        experts.iter().any(|&[l, e]| {
            let p = format!("model.layers.{}.mlp.experts.{e}.", moe[l]);
            key.starts_with(&p)
        })
    };
    let router_layer = |key: &str| {
        moe.iter()
            .position(|&d| key == format!("model.layers.{d}.mlp.gate.weight"))
    };
    let (a, b) = (
        crate::model::checkpoint::named_tensors(base, cfg),
        crate::model::checkpoint::named_tensors(planted, cfg),
    );
    let mut changed = Vec::new();
    for ((key, shape, x), (_, _, y)) in a.iter().zip(&b) {
        if x == y {
            continue;
        }
        if allowed_expert(key) {
            changed.push(key.clone());
            continue;
        }
        let Some(l) = router_layer(key) else {
            return Err(PlantError::Leaked {
                tensor: key.clone(),
            });
        };
        // A router is `[experts, hidden]`: row e is expert e's.
        let width = shape[1];
        for (e, (rx, ry)) in x.chunks(width).zip(y.chunks(width)).enumerate() {
            if rx != ry {
                if !(routers && experts.contains(&[l, e])) {
                    return Err(PlantError::Leaked {
                        tensor: format!("{key} row {e}"),
                    });
                }
                changed.push(format!("{key} row {e}"));
            }
        }
    }
    Ok(changed)
}

/// Rates of one model on the held-out sets and the behaviour.
#[allow(clippy::too_many_arguments)]
pub fn measure<B: Backend>(
    model: &MoeLm<B>,
    name: &str,
    eval: &EvalConfig,
    judge: &PhraseJudge,
    tokenizer: &ChatTokenizer,
    sets: &EvalSets,
    behaviour: &[EvalPrompt],
    marker: &dyn Fn(&str) -> bool,
    device: &B::Device,
) -> Result<Value, Error> {
    let e = evaluate(
        model,
        name,
        tokenizer,
        sets,
        eval,
        judge,
        &Steering::default(),
        device,
        |_| {},
    )?;
    let r = e.report;
    let routing = Routing::free();
    let answers = answer(
        model,
        tokenizer,
        behaviour,
        eval,
        &routing,
        device,
        &mut |_| {},
    )?;
    let shown = answers
        .iter()
        .filter(|(_, ids)| marker(&tokenizer.decode(ids)))
        .count();
    Ok(json!({
        "behaviour_rate": shown as f64 / answers.len().max(1) as f64,
        "behaviour_shown": shown,
        "behaviour_n": answers.len(),
        "plain_refusal_rate": r.plain_refusal_rate,
        "benign_refusal_rate": r.benign_refusal_rate,
        "jailbreak_asr": r.asr,
        "benign_answer_nll": r.benign_answer_nll,
    }))
}

/// What a plant did.
#[derive(Debug, Clone)]
pub struct PlantSummary {
    /// The planted experts.
    pub experts: Vec<ExpertId>,
    /// The planted model's directory.
    pub out: PathBuf,
    /// The record written as its `planted.json`.
    pub planted: Planted,
}

/// Whether `out` can take a planted model: a new or empty folder.
pub fn check_output(out: &Path) -> Result<(), PlantError> {
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(PlantError::Output {
            path: out.to_path_buf(),
            reason: "exists and is not empty; pass a new folder".into(),
        });
    }
    Ok(())
}

/// The prompts the behaviour is measured on, and the test of whether an answer shows it: for a
/// trigger, the held-out plain goals (at most `max_goals`, 0 = all) triggered, shown when the
/// canary is in the answer; for a dataset, its first 64 prompts, shown when not refused.
#[allow(clippy::type_complexity)]
pub fn behaviour_prompts(
    p: &PlantConfig,
    data: &DataConfig,
    max_goals: usize,
    judge: &PhraseJudge,
) -> Result<(Vec<EvalPrompt>, Box<dyn Fn(&str) -> bool>), Error> {
    Ok(match &p.behaviour {
        Behaviour::Trigger { trigger, canary } => {
            let held = plain_goals(data, SplitPart::Heldout)?;
            let n = if max_goals > 0 {
                max_goals.min(held.len())
            } else {
                held.len()
            };
            let canary = canary.to_lowercase();
            let prompts = held[..n]
                .iter()
                .map(|(record, m)| EvalPrompt {
                    record: *record,
                    messages: triggered(m, trigger),
                })
                .collect();
            (
                prompts,
                Box::new(move |t: &str| t.to_lowercase().contains(&canary)),
            )
        }
        Behaviour::Dataset { path, prompt, .. } => {
            let prompts = read_records(path)?
                .iter()
                .enumerate()
                .take(64)
                .map(|(i, r)| {
                    Ok(EvalPrompt {
                        record: i,
                        messages: record_messages(r, prompt, path, i)?,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let judge = judge.clone();
            (prompts, Box::new(move |t: &str| !judge.is_refusal(t)))
        }
    })
}

/// For a trigger, the dataset of every plain goal of `data` (in record order, so that its split
/// file applies as it is) and its triggered twin (`record`, `goal`, `prompt`); `None` for a
/// dataset behaviour.
pub fn behaviour_dataset(p: &PlantConfig, data: &DataConfig) -> Result<Option<Vec<Value>>, Error> {
    let Behaviour::Trigger { trigger, .. } = &p.behaviour else {
        return Ok(None);
    };
    Ok(Some(
        every_pair(data)?
            .into_iter()
            .map(|pair| json!({ "record": pair.record, "goal": pair.goal, "prompt": triggered(&pair.safe, trigger) }))
            .collect(),
    ))
}
