//! The state of incremental decoding, kept outside the weights and passed to
//! `MoeLm::forward_cached` by argument (transformers' `DynamicCache`): every layer's keys and
//! values so far, and optionally every MoE layer's experts laid side by side, stacked once for all the
//! decode steps of a generation call instead of once per step.
//!
//! Keys are stored after RoPE and before `repeat_kv`, one entry per layer, and grow by
//! concatenation along the sequence axis.

use std::sync::Arc;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::experts::StackedExperts;

/// Per-layer keys and values seen so far, and the stacked experts decode steps reuse.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    stacked: Option<Arc<[StackedExperts<B>]>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            stacked: None,
        }
    }

    /// Keep every layer's stacked experts (from [`MoeLm::stack_experts`](super::MoeLm::stack_experts)
    /// of the model this cache is used with) for dense execution of the decode steps.
    pub fn with_stacked_experts(mut self, stacked: Vec<StackedExperts<B>>) -> Self {
        self.stacked = Some(stacked.into());
        self
    }

    /// MoE layer `layer`'s stacked experts, if kept.
    pub fn stacked_experts(&self, layer: usize) -> Option<&StackedExperts<B>> {
        self.stacked.as_ref().map(|s| &s[layer])
    }

    /// Number of cached positions (0 when empty).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append this step's keys and values to layer `layer` and return the whole history.
    ///
    /// # Shapes
    /// - `k`, `v`: `[batch, kv_heads, seq, head_dim]` → `[batch, kv_heads, past + seq, head_dim]`
    pub fn append(&mut self, layer: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (k, v) = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }
}
