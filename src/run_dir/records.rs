//! The collect stage's records: `samples.jsonl` lines and `routing/batch-NNNNN.json`
//! ([`SampleRecord`]), `routing/index.json` ([`RoutingIndex`]). Collect writes them; analysis and
//! training read them, through [`super::RunDir`].

use serde::{Deserialize, Serialize};

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
    /// Batches the collect stage makes in all (recorded before the first, so that whether
    /// collect is finished needs no dataset); absent in directories of older versions.
    #[serde(default)]
    pub planned: Option<usize>,
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
