//! The state of incremental decoding, kept outside the weights and passed to
//! `MoeLm::forward_cached` by argument (transformers' `DynamicCache`): every layer's keys and
//! values so far, and optionally every MoE layer's experts laid side by side, stacked once for all the
//! decode steps of a generation call instead of once per step.
//!
//! Keys are stored after RoPE and before `repeat_kv`, one entry per layer. By default they grow by
//! concatenation along the sequence axis (a copy of the whole history per layer and step);
//! [`KvCache::with_capacity`] instead keeps buffers with room to spare, writes each step's keys
//! and values into them in place, and doubles them (up to the capacity) when full: attention then
//! runs over every slot of the buffers, the slots not yet written masked by causality. Both kinds
//! take continuous batching's row changes (rows dropped, appended, padded in front).
//!
//! The cache also keeps the forward pass's [`Constants`] (the index and RoPE's frequencies), made
//! at the first pass and reused by the later ones, so a decode step uploads nothing.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::constants::Constants;
use super::experts::StackedExperts;

/// Per-layer keys and values seen so far, and the stacked experts decode steps reuse.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// At most this many positions, when written in place.
    capacity: Option<usize>,
    /// Positions written (and committed) so far.
    filled: usize,
    stacked: Option<Arc<[StackedExperts<B>]>>,
    constants: Option<Constants<B>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers, growing by concatenation.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            capacity: None,
            filled: 0,
            stacked: None,
            constants: None,
        }
    }

    /// Write keys and values in place into buffers of up to `positions` slots per layer (prompt
    /// and generated tokens): sized to the next power of two of the positions so far, doubled
    /// when full. Attention reads every slot, masking those beyond the ones written.
    pub fn with_capacity(mut self, positions: usize) -> Self {
        self.capacity = Some(positions);
        self
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

    /// The constants of a forward pass whose index must reach `len`: those kept, or `make`'s
    /// (called with `len`, or the capacity where that is larger, so that one upload serves every
    /// later pass), then kept.
    pub fn constants(
        &mut self,
        len: usize,
        make: impl FnOnce(usize) -> Constants<B>,
    ) -> Constants<B> {
        match &self.constants {
            Some(c) if c.len() >= len => c.clone(),
            _ => {
                let made = make(len.max(self.capacity.unwrap_or(0)));
                self.constants = Some(made.clone());
                made
            }
        }
    }

    /// Number of cached positions (0 when empty).
    pub fn len(&self) -> usize {
        self.filled
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many key slots attention reads in a forward pass of `seq` new positions: every slot
    /// of the in-place buffers (grown if they are full), or the positions so far.
    ///
    /// # Panics
    /// When `seq` more positions do not fit the capacity.
    pub fn key_slots(&self, seq: usize) -> usize {
        let total = self.filled + seq;
        match self.capacity {
            Some(capacity) => {
                assert!(
                    total <= capacity,
                    "KV cache overflow: {total} positions, room for {capacity}"
                );
                // The buffers' size so far: the first layer's (all grow to the same size).
                let slots = self
                    .layers
                    .first()
                    .and_then(|l| l.as_ref())
                    .map_or(0, |(k, _)| k.dims()[2]);
                match total <= slots {
                    true => slots,
                    false => total
                        .next_power_of_two()
                        .max(2 * slots)
                        .clamp(total, capacity),
                }
            }
            None => total,
        }
    }

    /// Append this step's keys and values to layer `layer` (at the positions after those
    /// committed) and return every key slot attention reads ([`KvCache::key_slots`]).
    ///
    /// # Shapes
    /// - `k`, `v`: `[batch, kv_heads, seq, head_dim]` → `[batch, kv_heads, key_slots(seq), head_dim]`
    pub fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let past = self.filled;
        let [batch, heads, seq, dim] = k.dims();
        // Before this layer's buffers are taken out: the size is read from the first layer's.
        let slots = self.key_slots(seq);
        let (k, v) = match (self.layers[layer].take(), self.capacity) {
            (held, Some(_)) => {
                let zeros = |t: &Tensor<B, 4>, n: usize| {
                    Tensor::zeros([batch, heads, n, dim], (&t.device(), t.dtype()))
                };
                let grow = |t: Tensor<B, 4>| match t.dims()[2] {
                    have if have < slots => {
                        let more = zeros(&t, slots - have);
                        Tensor::cat(vec![t, more], 2)
                    }
                    _ => t,
                };
                let (ck, cv) = match held {
                    Some((ck, cv)) => (grow(ck), grow(cv)),
                    None => (zeros(&k, slots), zeros(&v, slots)),
                };
                let at = [0..batch, 0..heads, past..past + seq, 0..dim];
                // The buffers are held here alone, so the writes happen in place.
                (ck.slice_assign(at.clone(), k), cv.slice_assign(at, v))
            }
            (Some((pk, pv)), None) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            (None, None) => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Count `seq` positions as written, once every layer has appended them.
    pub fn commit(&mut self, seq: usize) {
        self.filled += seq;
    }

    /// Keep only batch rows `rows` (in that order); with none left the cache is empty again.
    /// Continuous batching drops finished sequences with it (the buffers of a cache written in
    /// place keep their slots).
    pub fn select_rows(&mut self, rows: &[usize]) {
        if rows.is_empty() {
            self.layers.iter_mut().for_each(|l| *l = None);
            self.filled = 0;
            return;
        }
        for layer in self.layers.iter_mut() {
            if let Some((k, v)) = layer.take() {
                let device = k.device();
                let index = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(
                        rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                        [rows.len()],
                    ),
                    &device,
                );
                *layer = Some((k.select(0, index.clone()), v.select(0, index)));
            }
        }
    }

    /// Drop the first `n` positions of every row (positions no row reads any more; a cache
    /// written in place loses as many slots).
    pub fn drop_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        assert!(
            n <= self.filled,
            "dropping {n} of {} positions",
            self.filled
        );
        for layer in self.layers.iter_mut() {
            if let Some((k, v)) = layer.take() {
                let [b, h, s, d] = k.dims();
                let keep = [0..b, 0..h, n..s, 0..d];
                *layer = Some((k.slice(keep.clone()), v.slice(keep)));
            }
        }
        self.filled -= n;
    }

    /// Put `n` empty positions (zeros) before every row's, which the caller's attention mask
    /// must mark as padding (a cache written in place gains as many slots).
    pub fn pad_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        for layer in self.layers.iter_mut() {
            if let Some((k, v)) = layer.take() {
                let [b, h, _, d] = k.dims();
                let zeros = Tensor::<B, 4>::zeros([b, h, n, d], (&k.device(), k.dtype()));
                *layer = Some((
                    Tensor::cat(vec![zeros.clone(), k], 2),
                    Tensor::cat(vec![zeros, v], 2),
                ));
            }
        }
        self.filled += n;
    }

    /// Append the rows of `other`, which holds as many positions, after this cache's rows (an
    /// empty cache takes `other` as it is). Where this cache is written in place, `other`'s
    /// buffers get its empty slots after their positions.
    ///
    /// # Panics
    /// When the two hold different numbers of positions, or `other` is written in place.
    pub fn append_rows(&mut self, other: KvCache<B>) {
        assert!(
            other.capacity.is_none(),
            "rows are appended from a cache that grows by concatenation"
        );
        if self.is_empty() {
            self.layers = other.layers;
            self.filled = other.filled;
            if self.constants.is_none() {
                self.constants = other.constants;
            }
            return;
        }
        assert_eq!(
            self.filled, other.filled,
            "rows of different lengths: pad the shorter first"
        );
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            *mine = match (mine.take(), theirs) {
                (Some((k, v)), Some((ok, ov))) => {
                    let slots = k.dims()[2];
                    let widen = |t: Tensor<B, 4>| match t.dims() {
                        [b, h, have, d] if have < slots => {
                            let zeros =
                                Tensor::zeros([b, h, slots - have, d], (&t.device(), t.dtype()));
                            Tensor::cat(vec![t, zeros], 2)
                        }
                        _ => t,
                    };
                    Some((
                        Tensor::cat(vec![k, widen(ok)], 0),
                        Tensor::cat(vec![v, widen(ov)], 0),
                    ))
                }
                (a, b) => a.or(b),
            };
        }
    }
}
