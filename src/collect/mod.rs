//! The `collect` stage: generate answers to mixed paired batches with routing capture and write
//! them to a run directory (the seeds' `get_routings_with_generation`,
//! `separate_prompt_and_generation_routings` and `process_mixed_batches`, in-process and batched).
//!
//! Run directory layout (every file written to a temporary name, then renamed):
//! - `samples.jsonl`: one line per sample of every finished batch ([`SampleRecord`]);
//! - `routing/batch-NNNNN.safetensors`: per kept sample `prompt.{in_batch_idx}` and
//!   `gen.{in_batch_idx}`, router logits `[layers, tokens, experts]` in f16, padding excluded;
//!   per kept pair `reply_safe.{i}` and `reply_unsafe.{i}` (`i` its unsafe sample), the experts
//!   chosen on its teacher-forced replies, `[layers, tokens, k]` u16 ([`replies`]);
//! - `routing/batch-NNNNN.json`: that batch's sample records (written after its tensors, so a
//!   batch is finished exactly when its `.json` exists);
//! - `routing/index.json`: [`RoutingIndex`], the model shape and every finished batch.
//!
//! Rerunning on the same directory skips finished batches.

pub mod replies;
pub mod stage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use crate::config::CollectConfig;
use crate::data::batch::{Batch, Label};
use crate::data::{ChatTokenizer, DataError};
use crate::generate::{GenerateOptions, RouterLogits, generate};
use crate::judge::{Judge, JudgeError};
use crate::run_dir::write_atomic;
use crate::model::{MoeLm, Routing};
use crate::run_dir::records::{BatchEntry, RoutingIndex, SampleRecord, batch_file, finished_batches, read_batch_records};
use crate::run_dir::RunDirError;

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

/// Collect `batches` into `run_dir` (created), skipping batches already finished there.
#[allow(clippy::too_many_arguments)]
pub fn collect<B: Backend>(
    model: &MoeLm<B>,
    tokenizer: &ChatTokenizer,
    batches: &[Batch],
    cfg: &CollectConfig,
    judge: &dyn Judge,
    run_dir: &Path,
    device: &B::Device,
    mut progress: impl FnMut(CollectEvent),
) -> Result<CollectSummary, CollectError> {
    let routing_dir = run_dir.join("routing");
    std::fs::create_dir_all(&routing_dir).map_err(|source| RunDirError::Io {
        path: routing_dir.clone(),
        source,
    })?;
    let done: Vec<bool> = batches
        .iter()
        .map(|b| run_dir.join(batch_file(b.batch_idx, "json")).is_file())
        .collect();
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
    let mut index = write_summary_files(run_dir, model, top_k)?;
    for (batch, _) in batches.iter().zip(&done).filter(|(_, d)| !**d) {
        let prompts = batch
            .samples
            .iter()
            .map(|s| tokenizer.encode_prompt(&s.messages, cfg.max_prompt_tokens))
            .collect::<Result<Vec<_>, DataError>>()?;
        let gens = generate(model, &prompts, &opts, &Routing::free(), device, |n| {
            summary.tokens += n;
            progress(CollectEvent::Tokens(n));
        });
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
                refused: judge.refuses(&prompt_text, &response)?,
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
        write_batch(run_dir, batch.batch_idx, &records, &gens, &replies)?;
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
        append_batch(run_dir, &mut index, batch.batch_idx, &records)?;
    }
    if summary.collected > 0 {
        write_summary_files(run_dir, model, top_k)?;
    }
    Ok(summary)
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
fn activation_by_label(records: &[SampleRecord], gens: &[crate::generate::Generation], top_k: usize) -> (Vec<f32>, Vec<f32>) {
    let mut acc = [(Vec::new(), 0usize), (Vec::new(), 0usize)];
    let mut counter = crate::analysis::TopKCounter::new(top_k);
    for (r, g) in records.iter().zip(gens) {
        let Some(rl) = g.gen_routing.as_ref().filter(|_| r.kept) else { continue };
        let slot = &mut acc[(r.label == Label::Unsafe) as usize];
        if slot.0.is_empty() {
            slot.0 = vec![0u64; rl.layers * rl.experts];
        }
        counter.count(rl, rl.tokens, &mut slot.0);
        slot.1 += rl.tokens;
    }
    let norm = |(v, n): (Vec<u64>, usize)| v.into_iter().map(|c| c as f32 / n.max(1) as f32).collect();
    let [safe, unsafe_] = acc;
    (norm(safe), norm(unsafe_))
}

/// Write a batch's routing tensors, then its records (the record file marks it finished).
fn write_batch(
    run_dir: &Path,
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
    let path = run_dir.join(batch_file(batch_idx, "safetensors"));
    let bytes = crate::run_dir::routing::encode(&tensors, &chosen).map_err(|reason| CollectError::Corrupt {
        path: path.clone(),
        reason,
    })?;
    write_atomic(&path, &bytes)?;
    let json = serde_json::to_string_pretty(records).expect("records serialise");
    write_atomic(&run_dir.join(batch_file(batch_idx, "json")), json.as_bytes())?;
    Ok(())
}

/// One batch's lines of `samples.jsonl` and its entry in `routing/index.json`.
fn batch_summary(batch_idx: usize, records: &[SampleRecord]) -> (String, BatchEntry) {
    let mut lines = String::new();
    for r in records {
        lines.push_str(&serde_json::to_string(r).expect("record serialises"));
        lines.push('\n');
    }
    let kept = records.iter().filter(|r| r.kept).count();
    let entry = BatchEntry {
        batch_idx,
        file: batch_file(batch_idx, "safetensors"),
        kept,
        dropped: records.len() - kept,
    };
    (lines, entry)
}

/// Write `routing/index.json`.
fn write_index(run_dir: &Path, index: &RoutingIndex) -> Result<(), CollectError> {
    let json = serde_json::to_string_pretty(index).expect("index serialises");
    Ok(write_atomic(&run_dir.join("routing/index.json"), json.as_bytes())?)
}

/// Add a finished batch to `samples.jsonl` (appended) and `routing/index.json` (rewritten: one
/// short entry per batch).
fn append_batch(run_dir: &Path, index: &mut RoutingIndex, batch_idx: usize, records: &[SampleRecord]) -> Result<(), CollectError> {
    use std::io::Write;
    let (lines, entry) = batch_summary(batch_idx, records);
    let path = run_dir.join("samples.jsonl");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(lines.as_bytes()))
        .map_err(|source| RunDirError::Io { path, source })?;
    index.batches.push(entry);
    write_index(run_dir, index)
}

/// Rewrite `samples.jsonl` and `routing/index.json` from the finished batches (each written to a
/// new file and renamed into place, so a hard link to an earlier version is left as it was).
fn write_summary_files<B: Backend>(run_dir: &Path, model: &MoeLm<B>, top_k: usize) -> Result<RoutingIndex, CollectError> {
    let mut lines = String::new();
    let mut index = RoutingIndex {
        layers: model.num_moe_layers(),
        moe_layers: model.moe_layers(),
        experts: model.num_experts(),
        top_k,
        batches: Vec::new(),
    };
    for b in finished_batches(run_dir) {
        let (batch_lines, entry) = batch_summary(b, &read_batch_records(run_dir, b)?);
        lines.push_str(&batch_lines);
        index.batches.push(entry);
    }
    write_atomic(&run_dir.join("samples.jsonl"), lines.as_bytes())?;
    write_index(run_dir, &index)?;
    Ok(index)
}
