//! The key/value cache of incremental decoding, kept outside the weights and passed to
//! `Olmoe::forward_cached` by argument (transformers' `DynamicCache`).
//!
//! Keys are stored after RoPE and before `repeat_kv`, one entry per layer, and grow by
//! concatenation along the sequence axis.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Per-layer keys and values seen so far.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
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
