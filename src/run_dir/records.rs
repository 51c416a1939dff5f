//! The collect stage's records in a run directory: `samples.jsonl` lines and
//! `routing/batch-NNNNN.json` ([`SampleRecord`]), `routing/index.json` ([`RoutingIndex`]), and the
//! names of a batch's files. Collect writes them; analysis and training read them, through here.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::RunDirError;
use crate::data::batch::Label;

/// One line of `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// Batch of the sample.
    pub batch_idx: usize,
    /// Place in the batch.
    pub in_batch_idx: usize,
    /// Safe or unsafe.
    pub label: Label,
    /// The shared goal.
    pub goal: String,
    /// Dataset record index.
    pub record: usize,
    /// The conversation that was answered.
    pub messages: Vec<crate::data::Message>,
    /// Chat-templated prompt ids (after truncation).
    pub prompt_ids: Vec<u32>,
    /// Generated ids.
    pub new_ids: Vec<u32>,
    /// The generated text, special tokens skipped.
    pub response: String,
    /// The judge's verdict on the response.
    pub refused: bool,
    /// Whether the quality filter kept the sample's pair (routing stored only if so).
    pub kept: bool,
}

/// `routing/index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingIndex {
    /// MoE layers (the routing files' first axis).
    pub layers: usize,
    /// The decoder index of each MoE layer (empty in run directories written before it was
    /// recorded, when every layer was MoE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moe_layers: Vec<usize>,
    /// Experts per layer.
    pub experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Finished batches in order.
    pub batches: Vec<BatchEntry>,
}

/// A finished batch in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchEntry {
    /// Batch index.
    pub batch_idx: usize,
    /// Routing file, relative to the run directory.
    pub file: String,
    /// Samples with stored routing.
    pub kept: usize,
    /// Samples dropped by the quality filter.
    pub dropped: usize,
}

/// File of batch `i` in `routing/`.
pub fn batch_file(i: usize, ext: &str) -> String {
    format!("routing/batch-{i:05}.{ext}")
}

/// Read the records of a finished batch.
pub fn read_batch_records(run_dir: &Path, batch_idx: usize) -> Result<Vec<SampleRecord>, RunDirError> {
    let path = run_dir.join(batch_file(batch_idx, "json"));
    let text = std::fs::read_to_string(&path).map_err(|e| RunDirError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| RunDirError::Corrupt {
        path,
        reason: e.to_string(),
    })
}

/// Finished batch indices found in `run_dir/routing`, sorted.
pub fn finished_batches(run_dir: &Path) -> Vec<usize> {
    let mut out: Vec<usize> = std::fs::read_dir(run_dir.join("routing"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("batch-")?.strip_suffix(".json")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

