//! The `collect` stage: generate answers to mixed paired batches with routing capture and write
//! them to a run directory (the seeds' `get_routings_with_generation`,
//! `separate_prompt_and_generation_routings` and `process_mixed_batches`, in-process and batched).
//!
//! What it writes (see [`crate::run_dir`]): `routing/index.json` first, with the number of
//! batches planned; then per batch its routing tensors and its sample records (the records last:
//! they mark the batch finished), each finished batch appended to `samples.jsonl`. The teacher-
//! forced replies of the `response` token scope are [`replies`].
//!
//! Rerunning on the same directory keeps the finished batches and redoes any whose files are
//! missing or do not read back.

pub mod config;
pub mod plan;
pub mod replies;

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::backend::Backend;

pub use config::CollectConfig;
pub use plan::{check_prompt_lengths, plan};

use crate::data::batch::{Batch, Label};
use crate::data::{ChatTokenizer, DataError};
use crate::generate::fit::{self, BatchCount, RowCost};
use crate::generate::{GenerateOptions, RouterLogits, generate};
use crate::judge::{Judge, JudgeError};
use crate::model::{MoeLm, Routing};
use crate::run_dir::records::{BatchEntry, RoutingIndex, SampleRecord};
use crate::run_dir::{RunDir, RunDirError};

/// What can go wrong collecting.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// Tokenising or templating.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Loading the model.
    #[error(transparent)]
    Load(#[from] crate::model::LoadError),
    /// The judge failed.
    #[error(transparent)]
    Judge(#[from] JudgeError),
    /// Reading the run directory's records of finished batches.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// A prompt and its answer would not fit the model's positions.
    #[error("{}: record {record}: the prompt is {tokens} tokens; with collect.max_new_tokens = {new} that is more than the model's max_position_embeddings ({limit}); set collect.max_prompt_tokens to keep only the prompt's end", path.display())]
    TooLong {
        /// The dataset.
        path: PathBuf,
        /// The record.
        record: usize,
        /// Its prompt's tokens.
        tokens: usize,
        /// Tokens to generate.
        new: usize,
        /// The model's limit.
        limit: usize,
    },
    /// A batch's routing tensors could not be encoded.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Progress of a collect run.
#[derive(Debug, Clone)]
pub enum CollectEvent {
    /// Work to do: batches in all, already finished.
    Start {
        /// Batches in the run.
        total: usize,
        /// Finished in an earlier run.
        done: usize,
    },
    /// Tokens generated in one decode step.
    Tokens(usize),
    /// A batch finished.
    BatchDone {
        /// Its index.
        batch_idx: usize,
        /// Samples kept.
        kept: usize,
        /// Samples dropped by the quality filter.
        dropped: usize,
        /// Per (layer, expert) top-k activation share of its generated tokens, safe and unsafe.
        activation: Option<(Vec<f32>, Vec<f32>)>,
    },
}

/// What a collect run did.
#[derive(Debug, Clone)]
pub struct CollectSummary {
    /// Batches finished in this call.
    pub collected: usize,
    /// Batches that were already finished.
    pub resumed: usize,
    /// Batches with no pair left after the quality filter.
    pub skipped: Vec<usize>,
    /// Tokens generated in this call.
    pub tokens: usize,
}

/// What collect works with: the model, its tokenizer, the judge of its answers.
pub struct Collector<'a, B: Backend> {
    /// The model answering.
    pub model: &'a MoeLm<B>,
    /// Its tokenizer and chat template.
    pub tokenizer: &'a ChatTokenizer,
    /// The refusal judge.
    pub judge: &'a dyn Judge,
    /// Where it runs.
    pub device: &'a B::Device,
}

/// Collect `batches` into `dir`, keeping the batches finished there (a batch whose files do not
/// read back is redone).
pub fn collect<B: Backend>(
    c: &Collector<'_, B>,
    batches: &[Batch],
    cfg: &CollectConfig,
    dir: &RunDir,
    mut progress: impl FnMut(CollectEvent),
) -> Result<CollectSummary, CollectError> {
    let (model, tokenizer, device) = (c.model, c.tokenizer, c.device);
    let done: Vec<bool> = batches
        .iter()
        .map(|b| dir.batch_done(b.batch_idx))
        .collect();
    for (b, _) in batches
        .iter()
        .zip(&done)
        .filter(|(b, d)| !**d && dir.batch_records(b.batch_idx).exists())
    {
        tracing::warn!(
            "{}: batch {} does not read back; collecting it again",
            dir.path().display(),
            b.batch_idx
        );
        dir.remove_batch(b.batch_idx)?;
    }
    let resumed = done.iter().filter(|d| **d).count();
    progress(CollectEvent::Start {
        total: batches.len(),
        done: resumed,
    });
    let top_k = model.top_k();
    let opts = GenerateOptions {
        max_new_tokens: cfg.max_new_tokens,
        sampling: cfg.sampling,
        stop_ids: vec![tokenizer.eos_id],
        pad_id: tokenizer.pad_id,
        capture: true,
    };
    let mut summary = CollectSummary {
        collected: 0,
        resumed,
        skipped: Vec::new(),
        tokens: 0,
    };
    // The summary files from the batches finished so far (read once), then one batch appended at a
    // time; rewritten whole at the end (in batch order).
    let mut index = write_summary_files(dir, model, top_k, batches.len())?;
    let pending: Vec<&Batch> = batches
        .iter()
        .zip(&done)
        .filter(|(_, d)| !**d)
        .map(|(b, _)| b)
        .collect();
    // Batches a generation call answers: with "auto", as many as fit the device's free memory
    // at the longest prompt (one where that is not known).
    let per_call = cfg.generate_batches.or_else(|| {
        let cost = || {
            let longest = pending
                .iter()
                .flat_map(|b| &b.samples)
                .filter_map(|s| {
                    tokenizer
                        .encode_prompt(&s.messages, cfg.max_prompt_tokens)
                        .ok()
                })
                .map(|ids| ids.len())
                .max()
                .unwrap_or(0);
            RowCost::of(model).generation(longest, cfg.max_new_tokens, true)
        };
        let rows = fit::resolve::<B>(
            "collect.generate_batches",
            BatchCount::Auto,
            device,
            cost,
            cfg.batch_size,
        );
        (rows / cfg.batch_size).max(1)
    });
    for group in pending.chunks(per_call) {
        let mut prompts = Vec::new();
        for batch in group {
            for s in &batch.samples {
                prompts.push(tokenizer.encode_prompt(&s.messages, cfg.max_prompt_tokens)?);
            }
        }
        let mut answered = generate(model, &prompts, &opts, &Routing::free(), device, |n| {
            summary.tokens += n;
            progress(CollectEvent::Tokens(n));
        })
        .into_iter();
        for batch in group {
            let gens: Vec<_> = answered.by_ref().take(batch.samples.len()).collect();
            finish_batch(
                c,
                batch,
                gens,
                cfg,
                dir,
                top_k,
                &mut summary,
                &mut index,
                &mut progress,
            )?;
        }
    }
    if summary.collected > 0 {
        write_summary_files(dir, model, top_k, batches.len())?;
    }
    Ok(summary)
}

/// Judge, filter, route and write one answered batch.
#[allow(clippy::too_many_arguments)]
fn finish_batch<B: Backend>(
    c: &Collector<'_, B>,
    batch: &Batch,
    gens: Vec<crate::generate::Generation>,
    cfg: &CollectConfig,
    dir: &RunDir,
    top_k: usize,
    summary: &mut CollectSummary,
    index: &mut RoutingIndex,
    progress: &mut impl FnMut(CollectEvent),
) -> Result<(), CollectError> {
    let (model, tokenizer, device) = (c.model, c.tokenizer, c.device);
    let mut records = Vec::with_capacity(gens.len());
    for (s, g) in batch.samples.iter().zip(&gens) {
        let response = tokenizer.decode(&g.new_ids);
        let prompt_text = tokenizer.render(&s.messages, true)?;
        records.push(SampleRecord {
            batch_idx: s.batch_idx,
            in_batch_idx: s.in_batch_idx,
            label: s.label,
            goal: s.goal.clone(),
            record: s.record,
            messages: s.messages.clone(),
            prompt_ids: g.prompt_ids.clone(),
            new_ids: g.new_ids.clone(),
            refused: c.judge.refuses(&prompt_text, &response)?,
            response,
            kept: true,
        });
    }
    if cfg.quality_filter {
        apply_quality_filter(&mut records);
    }
    let kept = records.iter().filter(|r| r.kept).count();
    let dropped = records.len() - kept;
    let activation = (kept > 0).then(|| activation_by_label(&records, &gens, top_k));
    let replies = replies::route(model, &records, tokenizer.pad_id, device);
    write_batch(dir, batch.batch_idx, &records, &gens, &replies)?;
    if kept == 0 {
        summary.skipped.push(batch.batch_idx);
    }
    summary.collected += 1;
    progress(CollectEvent::BatchDone {
        batch_idx: batch.batch_idx,
        kept,
        dropped,
        activation,
    });
    append_batch(dir, index, batch.batch_idx, &records)?;
    Ok(())
}

/// A pair is kept only if its safe sample was refused and its unsafe one was not.
fn apply_quality_filter(records: &mut [SampleRecord]) {
    let mut verdicts: HashMap<usize, (Option<bool>, Option<bool>)> = HashMap::new();
    for r in records.iter() {
        let v = verdicts.entry(r.record).or_default();
        match r.label {
            Label::Safe => v.0 = Some(r.refused),
            Label::Unsafe => v.1 = Some(r.refused),
        }
    }
    for r in records.iter_mut() {
        let (safe, unsafe_) = verdicts[&r.record];
        // Goals with only one prompt in the batch (uneven ratios) are judged on that prompt.
        r.kept = safe.unwrap_or(true) && !unsafe_.unwrap_or(false);
    }
}

/// Top-k activation share per (layer, expert) of generated tokens, for safe and unsafe samples.
fn activation_by_label(
    records: &[SampleRecord],
    gens: &[crate::generate::Generation],
    top_k: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut acc = [(Vec::new(), 0usize), (Vec::new(), 0usize)];
    let mut counter = crate::analysis::TopKCounter::new(top_k);
    for (r, g) in records.iter().zip(gens) {
        let Some(rl) = g.gen_routing.as_ref().filter(|_| r.kept) else {
            continue;
        };
        let slot = &mut acc[(r.label == Label::Unsafe) as usize];
        if slot.0.is_empty() {
            slot.0 = vec![0u64; rl.layers * rl.experts];
        }
        counter.count(rl, rl.tokens, &mut slot.0);
        slot.1 += rl.tokens;
    }
    let norm =
        |(v, n): (Vec<u64>, usize)| v.into_iter().map(|c| c as f32 / n.max(1) as f32).collect();
    let [safe, unsafe_] = acc;
    (norm(safe), norm(unsafe_))
}

/// Write a batch's routing tensors, then its records (the record file marks it finished).
fn write_batch(
    dir: &RunDir,
    batch_idx: usize,
    records: &[SampleRecord],
    gens: &[crate::generate::Generation],
    replies: &[replies::ReplyRouting],
) -> Result<(), CollectError> {
    let mut tensors: Vec<(String, &RouterLogits)> = Vec::new();
    for (r, g) in records.iter().zip(gens).filter(|(r, _)| r.kept) {
        if let Some(p) = &g.prompt_routing {
            tensors.push((format!("prompt.{}", r.in_batch_idx), p));
        }
        if let Some(p) = &g.gen_routing {
            tensors.push((format!("gen.{}", r.in_batch_idx), p));
        }
    }
    let mut chosen = Vec::new();
    for r in replies {
        chosen.push((format!("reply_safe.{}", r.unsafe_idx), &r.safe));
        chosen.push((format!("reply_unsafe.{}", r.unsafe_idx), &r.unsafe_));
    }
    let file = dir.batch_routing(batch_idx);
    let bytes = crate::run_dir::routing::encode(&tensors, &chosen).map_err(|reason| {
        CollectError::Corrupt {
            path: file.path().to_path_buf(),
            reason,
        }
    })?;
    file.write(&bytes)?;
    dir.batch_records(batch_idx).write(&records.to_vec())?;
    Ok(())
}

/// A finished batch's entry in `routing/index.json`.
fn batch_entry(dir: &RunDir, batch_idx: usize, records: &[SampleRecord]) -> BatchEntry {
    let kept = records.iter().filter(|r| r.kept).count();
    let file = dir.batch_routing(batch_idx);
    BatchEntry {
        batch_idx,
        file: file
            .path()
            .strip_prefix(dir.path())
            .unwrap_or(file.path())
            .display()
            .to_string(),
        kept,
        dropped: records.len() - kept,
    }
}

/// Add a finished batch to `samples.jsonl` (appended) and `routing/index.json` (rewritten: one
/// short entry per batch).
fn append_batch(
    dir: &RunDir,
    index: &mut RoutingIndex,
    batch_idx: usize,
    records: &[SampleRecord],
) -> Result<(), CollectError> {
    dir.samples().append(records)?;
    index.batches.push(batch_entry(dir, batch_idx, records));
    Ok(dir.routing_index().write(index)?)
}

/// Rewrite `samples.jsonl` and `routing/index.json` (with the `planned` batches) from the
/// finished batches (each written to a new file and renamed into place, so a hard link to an
/// earlier version is left as it was).
fn write_summary_files<B: Backend>(
    dir: &RunDir,
    model: &MoeLm<B>,
    top_k: usize,
    planned: usize,
) -> Result<RoutingIndex, CollectError> {
    let mut samples = Vec::new();
    let mut index = RoutingIndex {
        layers: model.num_moe_layers(),
        moe_layers: model.moe_layers(),
        experts: model.num_experts(),
        top_k,
        planned: Some(planned),
        batches: Vec::new(),
    };
    for b in dir
        .recorded_batches()
        .into_iter()
        .filter(|&b| dir.batch_done(b))
    {
        let records = dir.batch_records(b).read()?;
        index.batches.push(batch_entry(dir, b, &records));
        samples.extend(records);
    }
    dir.samples().write(&samples)?;
    dir.routing_index().write(&index)?;
    Ok(index)
}
