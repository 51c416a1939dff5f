//! Evaluation: attack success on held-out jailbreaks, refusals of the plain goals, and utility on
//! benign instructions (refusal rate, per-token NLL of reference answers), for a base, steered or
//! fine-tuned model; with several attack families, each family's own rates beside those pooled
//! over the families trained on; where configured, over-refusal on XSTest and refusals of
//! StrongREJECT's harmful requests.
//!
//! Each prompt is answered once: the families' sets are answered, and the pooled counts are
//! their sums over the families trained on.
//!
//! Answers are generated in batches of prompts sorted by length (greedy, `eval.max_new_tokens`),
//! judged by the config's refusal judge; the NLL is teacher-forced over the reference answer's
//! tokens (the assistant turn of the chat template). Steering forces experts into or out of every
//! token's top-k through the routing module (see [`crate::model::routing`]), in generation and NLL
//! alike.

pub mod config;
pub mod llm;
pub mod report;
pub mod sets;
pub mod stage;

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, ElementConversion, Int, Tensor, TensorData};

pub use config::EvalConfig;
pub use llm::llm_judge;
pub use report::{Count, EvalReport, FamilyReport, LlmJudgeReport, NllCount, table};
pub use sets::{BenignItem, EvalPrompt, EvalSets, FamilySets};
pub use stage::{Evaluator, evaluate_into, steering};

use crate::analysis::select::ExpertId;
use crate::data::{ChatTokenizer, DataError, Message};
use crate::generate::fit::{self, RowCost};
use crate::generate::{GenerateOptions, generate};
use crate::judge::{Judge, JudgeError};
use crate::model::loss::{IGNORE_INDEX, Targets, targeted_lm_loss};
use crate::model::{LmInput, MoeLm, Removal, Routing};
use crate::run_dir::eval::ResponseRecord;

/// What can go wrong evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading prompts, answers, split or tokenizer.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Loading the model.
    #[error(transparent)]
    Load(#[from] crate::model::LoadError),
    /// Reading a run directory's analysis or writing the results.
    #[error(transparent)]
    RunDir(#[from] crate::run_dir::RunDirError),
    /// The judge failed.
    #[error(transparent)]
    Judge(#[from] JudgeError),
    /// A measurement came out impossible: a numerical fault of the backend, not a result.
    #[error(
        "{model}: {what} came out {value}, which is impossible; nothing was written (a numerical fault of the backend: rerun the evaluation)"
    )]
    Impossible {
        /// The model evaluated.
        model: String,
        /// What was measured.
        what: &'static str,
        /// The value.
        value: f64,
    },
    /// Nothing to evaluate.
    #[error("{}: no {what} to evaluate", path.display())]
    Empty {
        /// The file the set came from.
        path: PathBuf,
        /// Which set.
        what: &'static str,
    },
    /// A run-directory input is missing or malformed.
    #[error("{}: {reason}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing results.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Inference-time steering (SteerMoE): experts forced into and out of every token's top-k.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Steering {
    /// Forced on, `(layer, expert)`.
    pub activate: Vec<ExpertId>,
    /// Forced off, `(layer, expert)`.
    pub deactivate: Vec<ExpertId>,
    /// How the forced-off experts leave the routing (`eval.removal`; the paper's: routed
    /// around).
    pub removal: Removal,
}

impl Steering {
    /// The routing that applies it to a model of `layers × experts`.
    pub fn routing<B: Backend>(
        &self,
        layers: usize,
        experts: usize,
        device: &B::Device,
    ) -> Routing<B> {
        // Exactly the listed experts: a layer the list does not touch is left alone (unlike a
        // routing mask, which lets an untouched layer route to all of its experts).
        let forced = |ids: &[ExpertId]| {
            (!ids.is_empty()).then(|| {
                let mut m = vec![false; layers * experts];
                for &[l, e] in ids {
                    m[l * experts + e] = true;
                }
                Tensor::<B, 2, Bool>::from_data(TensorData::new(m, [layers, experts]), device)
            })
        };
        let routing = Routing::free().with_forced(forced(&self.activate), None);
        match forced(&self.deactivate) {
            Some(off) => routing.without(off, self.removal),
            None => routing,
        }
    }
}

/// Progress of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalEvent {
    /// Prompts to answer and answers to score, in all.
    Start {
        /// Prompts to answer.
        prompts: usize,
        /// Reference answers to score.
        answers: usize,
    },
    /// A batch of prompts answered.
    Answered(usize),
    /// A batch of reference answers scored.
    Scored(usize),
    /// Tokens generated in one decode step.
    Tokens(usize),
}

/// An evaluation's report and every answer.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Rates and counts.
    pub report: EvalReport,
    /// Answers in set order (plain and jailbreak, or each family's; benign; XSTest's safe and
    /// unsafe prompts; StrongREJECT), each set in record order.
    pub responses: Vec<ResponseRecord>,
    /// The prompt each answer was judged against (its last user turn), beside `responses`.
    pub judged_prompts: Vec<String>,
}

/// Evaluate `model` on `sets`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    model: &MoeLm<B>,
    model_name: &str,
    tokenizer: &ChatTokenizer,
    sets: &EvalSets,
    cfg: &EvalConfig,
    judge: &dyn Judge,
    steering: &Steering,
    device: &B::Device,
    mut progress: impl FnMut(EvalEvent),
) -> Result<Evaluation, EvalError> {
    let routing = steering.routing::<B>(model.num_moe_layers(), model.num_experts(), device);
    let benign_prompts: Vec<EvalPrompt> = sets.benign.iter().map(|b| b.prompt.clone()).collect();
    let xstest = |safe: bool| -> Vec<EvalPrompt> {
        sets.xstest
            .iter()
            .filter(|(_, s)| *s == safe)
            .map(|(p, _)| p.clone())
            .collect()
    };
    let (xstest_safe, xstest_unsafe) = (xstest(true), xstest(false));
    // (name in responses.jsonl, prompts, whether a hit is compliance rather than a refusal)
    let several = sets.families.len() > 1;
    let mut plan: Vec<(String, &[EvalPrompt], bool)> = Vec::new();
    if several {
        for f in &sets.families {
            plan.push((format!("plain:{}", f.name), &f.plain, false));
            plan.push((format!("jailbreak:{}", f.name), &f.jailbreak, true));
        }
    } else {
        plan.push(("plain".into(), &sets.plain, false));
        plan.push(("jailbreak".into(), &sets.jailbreak, true));
    }
    plan.push(("benign".into(), &benign_prompts, false));
    for (name, prompts) in [
        ("xstest_safe", &xstest_safe),
        ("xstest_unsafe", &xstest_unsafe),
        ("strongreject", &sets.strongreject),
    ] {
        if !prompts.is_empty() {
            plan.push((name.into(), prompts, false));
        }
    }
    progress(EvalEvent::Start {
        prompts: plan.iter().map(|(_, p, _)| p.len()).sum(),
        answers: sets.benign.len() + sets.trained.len(),
    });
    let mut responses = Vec::new();
    let mut judged_prompts = Vec::new();
    let mut generated = 0;
    let mut counts = vec![Count { n: 0, hits: 0 }; plan.len()];
    for ((set, prompts, complied), count) in plan.iter().zip(&mut counts) {
        for (prompt, (prompt_tokens, new_ids)) in prompts.iter().zip(answer(
            model,
            tokenizer,
            prompts,
            cfg,
            &routing,
            device,
            &mut progress,
        )?) {
            let text = tokenizer.decode(&new_ids);
            let last_user = prompt
                .messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.as_str());
            let last_user = last_user.unwrap_or_default();
            let refused = judge.refuses(last_user, &text)?;
            judged_prompts.push(last_user.to_string());
            generated += new_ids.len();
            count.n += 1;
            // Jailbreaks count compliance, the others refusals.
            count.hits += usize::from(if *complied { !refused } else { refused });
            responses.push(ResponseRecord {
                set: set.clone(),
                record: prompt.record,
                prompt_tokens,
                new_tokens: new_ids.len(),
                text,
                refused,
            });
        }
    }
    let count = |name: &str| {
        plan.iter()
            .position(|(set, _, _)| set == name)
            .map(|i| counts[i])
    };
    let families: Vec<FamilyReport> = match several {
        true => sets
            .families
            .iter()
            .map(|f| FamilyReport {
                name: f.name.clone(),
                trained: f.trained,
                plain: count(&format!("plain:{}", f.name)).expect("planned"),
                jailbreak: count(&format!("jailbreak:{}", f.name)).expect("planned"),
                asr: None,
                plain_refusal_rate: None,
            })
            .collect(),
        false => Vec::new(),
    };
    let (plain, jailbreak) = match several {
        true => (
            families.iter().filter(|f| f.trained).map(|f| f.plain).sum(),
            families
                .iter()
                .filter(|f| f.trained)
                .map(|f| f.jailbreak)
                .sum(),
        ),
        false => (
            count("plain").expect("planned"),
            count("jailbreak").expect("planned"),
        ),
    };
    let nll = answer_nll(
        model,
        tokenizer,
        &sets.benign,
        cfg,
        &routing,
        device,
        &mut progress,
    )?;
    // A per-token NLL is finite and non-negative. On CUDA, under GPU memory exhaustion, the
    // answer-NLL forward pass was seen to return negative values: refuse them.
    if !possible_nll(nll.total) {
        return Err(EvalError::Impossible {
            model: model_name.to_string(),
            what: "the summed benign-answer NLL",
            value: nll.total,
        });
    }
    let trained_nll = if sets.trained.is_empty() {
        None
    } else {
        let c = answer_nll(
            model,
            tokenizer,
            &sets.trained,
            cfg,
            &routing,
            device,
            &mut progress,
        )?;
        if !possible_nll(c.total) {
            return Err(EvalError::Impossible {
                model: model_name.to_string(),
                what: "the summed trained-answer NLL",
                value: c.total,
            });
        }
        Some(c)
    };
    let report = EvalReport {
        model: model_name.to_string(),
        activated_experts: steering.activate.clone(),
        deactivated_experts: steering.deactivate.clone(),
        heldout: sets.heldout,
        asr: None,
        plain_refusal_rate: None,
        benign_refusal_rate: None,
        benign_answer_nll: None,
        plain,
        jailbreak,
        benign: count("benign").expect("planned"),
        nll,
        trained_answer_nll: None,
        trained_nll,
        max_new_tokens: cfg.max_new_tokens,
        generated_tokens: generated,
        families,
        xstest_safe: count("xstest_safe"),
        xstest_over_refusal_rate: None,
        xstest_unsafe: count("xstest_unsafe"),
        xstest_unsafe_refusal_rate: None,
        strongreject: count("strongreject"),
        strongreject_refusal_rate: None,
        llm_judge: None,
    }
    .with_rates();
    Ok(Evaluation {
        report,
        responses,
        judged_prompts,
    })
}

/// Answer `prompts` in batches of similar length: (prompt tokens fed, generated ids) per prompt,
/// in input order; generated ids stop before the EOS.
pub fn answer<B: Backend>(
    model: &MoeLm<B>,
    tokenizer: &ChatTokenizer,
    prompts: &[EvalPrompt],
    cfg: &EvalConfig,
    routing: &Routing<B>,
    device: &B::Device,
    progress: &mut impl FnMut(EvalEvent),
) -> Result<Vec<(usize, Vec<u32>)>, DataError> {
    let ids = prompts
        .iter()
        .map(|p| tokenizer.encode_prompt(&p.messages, cfg.max_prompt_tokens))
        .collect::<Result<Vec<_>, DataError>>()?;
    let opts = GenerateOptions {
        max_new_tokens: cfg.max_new_tokens,
        sampling: cfg.sampling,
        stop_ids: vec![tokenizer.eos_id],
        pad_id: tokenizer.pad_id,
        capture: false,
    };
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| (ids[i].len(), i));
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    let rows = fit::resolve::<B>(
        "eval.batch_size",
        cfg.batch_size,
        device,
        || RowCost::of(model).generation(longest, cfg.max_new_tokens, false),
        DEFAULT_ROWS,
    );
    let mut out = vec![(0, Vec::new()); ids.len()];
    for chunk in order.chunks(rows) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let gens = generate(model, &batch, &opts, routing, device, |n| {
            progress(EvalEvent::Tokens(n))
        });
        for (&i, g) in chunk.iter().zip(gens) {
            let mut new_ids = g.new_ids;
            if new_ids.last() == Some(&tokenizer.eos_id) {
                new_ids.pop();
            }
            out[i] = (g.prompt_ids.len(), new_ids);
        }
        progress(EvalEvent::Answered(chunk.len()));
    }
    Ok(out)
}

/// Rows a generation or scoring call takes where `eval.batch_size = "auto"` cannot see the
/// device's free memory (the CPU, wgpu).
pub const DEFAULT_ROWS: usize = 16;

/// Whether an NLL (a per-token mean or a sum of them) is possible: finite and not negative.
pub fn possible_nll(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

/// Teacher-forced NLL of each reference answer given its instruction, summed over the answer's
/// tokens (the assistant turn as the chat template closes it). An example longer than
/// `cfg.nll_max_len` keeps its head; one whose prompt alone fills it is not scored.
pub fn answer_nll<B: Backend>(
    model: &MoeLm<B>,
    tokenizer: &ChatTokenizer,
    items: &[BenignItem],
    cfg: &EvalConfig,
    routing: &Routing<B>,
    device: &B::Device,
    progress: &mut impl FnMut(EvalEvent),
) -> Result<NllCount, DataError> {
    let mut examples = Vec::new();
    for item in items {
        let prompt = tokenizer.encode_chat(&item.prompt.messages, true)?;
        let mut convo = item.prompt.messages.clone();
        convo.push(Message::assistant(item.answer.clone()));
        let mut full = tokenizer.encode_chat(&convo, false)?;
        full.truncate(cfg.nll_max_len);
        if prompt.len() < full.len() {
            examples.push((full, prompt.len()));
        }
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (examples[i].0.len(), i));
    let mut count = NllCount {
        answers: 0,
        tokens: 0,
        total: 0.0,
    };
    let longest = examples
        .iter()
        .map(|(full, _)| full.len())
        .max()
        .unwrap_or(0);
    let rows = fit::resolve::<B>(
        "eval.batch_size",
        cfg.batch_size,
        device,
        || RowCost::of(model).scoring(longest),
        DEFAULT_ROWS,
    );
    for chunk in order.chunks(rows) {
        let batch = chunk.len();
        let seq = chunk
            .iter()
            .map(|&i| examples[i].0.len())
            .max()
            .expect("non-empty chunk");
        let mut ids = vec![tokenizer.pad_id as i64; batch * seq];
        let mut valid = vec![false; batch * seq];
        let mut labels = vec![IGNORE_INDEX; batch * seq];
        for (r, &i) in chunk.iter().enumerate() {
            let (full, n_prompt) = &examples[i];
            for (t, &tok) in full.iter().enumerate() {
                ids[r * seq + t] = tok as i64;
                valid[r * seq + t] = true;
                if t >= *n_prompt {
                    labels[r * seq + t] = tok as i64;
                }
            }
        }
        let targets = Targets::<B>::from_labels(&labels, batch, seq, device);
        let input = LmInput {
            input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, seq]), device),
            attention_mask: Some(Tensor::<B, 2, Bool>::from_data(
                TensorData::new(valid, [batch, seq]),
                device,
            )),
            positions: None,
        };
        let hidden = model.forward_hidden(input, routing).hidden;
        let mean: f64 = targeted_lm_loss(hidden, &model.lm_head, &targets)
            .into_scalar()
            .elem();
        count.total += mean * targets.len() as f64;
        count.tokens += targets.len();
        count.answers += batch;
        progress(EvalEvent::Scored(batch));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::NdArray<f32>;

    fn rows(t: Option<Tensor<B, 3, Bool>>) -> Vec<bool> {
        t.expect("a forced mask")
            .into_data()
            .iter::<bool>()
            .collect()
    }

    #[test]
    fn steering_forces_exactly_the_listed_experts() {
        // One expert of layer 0 on, one of layer 2 off: the other layers are left alone (a
        // routing mask would have forced every expert of an untouched layer).
        let s = Steering {
            activate: vec![[0, 1]],
            deactivate: vec![[2, 3]],
            ..Steering::default()
        };
        let r = s.routing::<B>(3, 4, &Default::default());
        let mut on = vec![false; 12];
        on[1] = true;
        let mut off = vec![false; 12];
        off[2 * 4 + 3] = true;
        assert_eq!(rows(r.force_on), on);
        assert_eq!(rows(r.force_off), off);
        assert!(r.weight_scale.is_none());
        // Zeroed instead: the same experts scaled by 0, nothing routed around.
        let r = Steering {
            removal: Removal::Zero,
            ..s
        }
        .routing::<B>(3, 4, &Default::default());
        assert!(r.force_off.is_none());
        let scale: Vec<f32> = r.weight_scale.unwrap().into_data().to_vec().unwrap();
        assert_eq!(
            scale,
            off.iter()
                .map(|&o| if o { 0.0 } else { 1.0 })
                .collect::<Vec<_>>()
        );
    }
}
