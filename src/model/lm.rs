//! A MoE causal language model top to bottom, for OLMoE (Muennighoff et al. 2024, "OLMoE: Open
//! Mixture-of-Experts Language Models"; transformers' `modeling_olmoe.py`) and Qwen3-MoE (Qwen
//! team 2025, "Qwen3 Technical Report"; transformers' `modeling_qwen3_moe.py`): embedding,
//! pre-norm decoder layers of [`Attention`] and a feed-forward block, final norm, LM head.
//!
//! The two architectures share this one code path; what differs is read from the config
//! ([`ModelConfig`]): where the q/k norms sit ([`QkNorm`](super::config::QkNorm)), the head width,
//! the qkv clamp, and which layers are MoE ([`FeedForward`]: every OLMoE layer; Qwen3's
//! `decoder_sparse_step` and `mlp_only_layers` may make some dense).
//!
//! Routing is addressed by *MoE layer*: the n-th MoE block of the stack is MoE layer n, whatever
//! its decoder index ([`MoeLm::moe_layers`] maps one to the other). Masks, steering, captured
//! router logits and every analysis artifact are `[moe_layers, ...]`.
//!
//! Field names are the Hub's checkpoint keys (`model.layers.{i}.mlp.experts.{e}.gate_proj`, ...).
//! Computation follows transformers' dtype policy: RMSNorm, the router softmax and the attention
//! softmax run in float32 whatever the activations' dtype.

use std::any::Any;
use std::sync::Arc;

use burn::module::Module;
use burn::nn::{Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

use super::attention::{Attention, linear_3d};
use super::cache::KvCache;
use super::config::ModelConfig;
use super::constants::Constants;
use super::experts::{Expert, ExpertExecution, StackedExperts, grouped_experts};
use super::moe::MoeBlock;
use super::norm::RmsNorm;
use super::rope::Rope;
use super::routing::Routing;

/// A decoder layer's feed-forward block (Hub key `mlp`).
// One per layer, built once: the size difference between the variants costs nothing, and burn's
// `Module` derive wants the blocks inline.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum FeedForward<B: Backend> {
    /// Router and experts (Hub keys `mlp.gate`, `mlp.experts.{e}`).
    Moe(MoeBlock<B>),
    /// One SwiGLU MLP on every token (Hub keys `mlp.gate_proj`, `mlp.up_proj`, `mlp.down_proj`;
    /// transformers: `Qwen3MoeMLP`).
    Dense(Expert<B>),
}

impl<B: Backend> FeedForward<B> {
    /// The MoE block, if this is one.
    pub fn moe(&self) -> Option<&MoeBlock<B>> {
        match self {
            FeedForward::Moe(m) => Some(m),
            FeedForward::Dense(_) => None,
        }
    }

    /// The MoE block, mutably, if this is one.
    pub fn moe_mut(&mut self) -> Option<&mut MoeBlock<B>> {
        match self {
            FeedForward::Moe(m) => Some(m),
            FeedForward::Dense(_) => None,
        }
    }
}

/// Pre-norm decoder layer: attention and a feed-forward block, each with a residual.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Hub key `self_attn`.
    pub self_attn: Attention<B>,
    /// Hub key `mlp`.
    pub mlp: FeedForward<B>,
    /// Hub key `input_layernorm`.
    pub input_layernorm: RmsNorm<B>,
    /// Hub key `post_attention_layernorm`.
    pub post_attention_layernorm: RmsNorm<B>,
}

/// The decoder stack (transformers: `OlmoeModel`, `Qwen3MoeModel`).
#[derive(Module, Debug)]
pub struct DecoderStack<B: Backend> {
    /// Hub key `model.embed_tokens`.
    pub embed_tokens: Embedding<B>,
    /// Hub keys `model.layers.{i}`.
    pub layers: Vec<DecoderLayer<B>>,
    /// Hub key `model.norm`.
    pub norm: RmsNorm<B>,
}

/// The decoder stack with its LM head (transformers: `OlmoeForCausalLM`, `Qwen3MoeForCausalLM`).
#[derive(Module, Debug)]
pub struct MoeLm<B: Backend> {
    /// Hub prefix `model`.
    pub model: DecoderStack<B>,
    /// Hub key `lm_head`; for tied checkpoints it holds a copy of the embedding.
    pub lm_head: Linear<B>,
    #[module(skip)]
    rope: Rope,
    #[module(skip)]
    execution: ExpertExecution,
    /// Whether the grouped execution gathers its groups into one batch (see
    /// [`MoeLm::for_gradients`]).
    #[module(skip)]
    gather: bool,
    /// Every MoE layer's experts stacked once and shared with the experts' own weights, when
    /// [`MoeLm::share_experts`] made them.
    #[module(skip)]
    shared: SharedStacks,
}

/// A model's stacked experts (`Vec<StackedExperts<B>>`, one per MoE layer), behind a type that
/// does not name the backend: burn's `Module` derive clones skipped fields as they are when it
/// moves a model to another backend (`valid`, `from_inner`), and there the stacks no longer
/// downcast to the new backend's type, so that model stacks its experts afresh.
#[derive(Clone, Default)]
struct SharedStacks(Option<Arc<dyn Any + Send + Sync>>);

impl std::fmt::Debug for SharedStacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "SharedStacks(Some)",
            None => "SharedStacks(None)",
        })
    }
}

/// Inputs of one forward pass.
#[derive(Debug, Clone)]
pub struct LmInput<B: Backend> {
    /// `[batch, seq]` token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, past + seq]` (or as wide as a preallocated [`KvCache`]'s slots; positions after
    /// `past + seq` are not read), `true` = real token, `false` = padding; `None` = no padding.
    pub attention_mask: Option<Tensor<B, 2, Bool>>,
    /// `[batch, seq]` RoPE positions; `None` = `past..past + seq` for every row.
    pub positions: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> LmInput<B> {
    /// Unpadded ids with default positions.
    pub fn ids(input_ids: Tensor<B, 2, Int>) -> Self {
        Self {
            input_ids,
            attention_mask: None,
            positions: None,
        }
    }

    /// Ids with a padding mask (`true` = real token).
    pub fn padded(input_ids: Tensor<B, 2, Int>, attention_mask: Tensor<B, 2, Bool>) -> Self {
        Self {
            input_ids,
            attention_mask: Some(attention_mask),
            positions: None,
        }
    }
}

/// Outputs of one forward pass.
#[derive(Debug, Clone)]
pub struct LmOutput<B: Backend> {
    /// `[batch, seq, vocab]` (`[batch, 1, vocab]` from `forward_cached_last`).
    pub logits: Tensor<B, 3>,
    /// `[batch, seq, hidden]`, after the final norm.
    pub hidden: Tensor<B, 3>,
    /// `[moe_layers, batch, seq, experts]` router logits before mask and steering, if captured.
    pub router_logits: Option<Tensor<B, 4>>,
    /// `[moe_layers, batch, seq, k]` the experts each token was routed to, if captured.
    pub chosen: Option<Tensor<B, 4, Int>>,
}

/// The decoder's output before the LM head.
#[derive(Debug, Clone)]
pub struct Decoded<B: Backend> {
    /// `[batch, seq, hidden]`, after the final norm.
    pub hidden: Tensor<B, 3>,
    /// `[moe_layers, batch, seq, experts]` router logits before mask and steering, if captured.
    pub router_logits: Option<Tensor<B, 4>>,
    /// `[moe_layers, batch, seq, k]` the experts each token was routed to, by descending weight, if
    /// captured: what the forward pass really chose, masks and steering included.
    pub chosen: Option<Tensor<B, 4, Int>>,
}

impl<B: Backend> MoeLm<B> {
    /// Assemble a model from its parts (see `checkpoint` for loading).
    pub fn new(model: DecoderStack<B>, lm_head: Linear<B>, cfg: &ModelConfig) -> Self {
        Self {
            model,
            lm_head,
            rope: Rope::new(cfg.head_dim, cfg.rope_theta),
            execution: ExpertExecution::Auto,
            gather: false,
            shared: SharedStacks::default(),
        }
    }

    /// For passes that will be differentiated (training, attribution): the grouped execution
    /// gathers each layer's groups into one padded batch instead of slicing them, whose gradient
    /// is one scatter instead of a full-size tensor per group ([`gathered_linear`]). The result is
    /// the same; passes that are not differentiated are cheaper with the slices.
    ///
    /// [`gathered_linear`]: super::experts::gathered_linear
    pub fn for_gradients(mut self) -> Self {
        self.gather = true;
        self
    }

    /// Run the MoE blocks' experts this way (every way gives the same result up to rounding).
    pub fn with_execution(mut self, execution: ExpertExecution) -> Self {
        self.execution = execution;
        self
    }

    /// How the MoE blocks run their experts.
    pub fn execution(&self) -> ExpertExecution {
        self.execution
    }

    /// Number of decoder layers (what a [`KvCache`] holds).
    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    /// Number of MoE layers (what routing masks, steering and captures are indexed by).
    pub fn num_moe_layers(&self) -> usize {
        self.moe_blocks().count()
    }

    /// The decoder index of every MoE layer, in order.
    pub fn moe_layers(&self) -> Vec<usize> {
        self.model
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.mlp.moe().is_some())
            .map(|(i, _)| i)
            .collect()
    }

    /// MoE layer `l` (the `l`-th MoE block of the stack).
    pub fn moe_block(&self, l: usize) -> &MoeBlock<B> {
        self.moe_blocks()
            .nth(l)
            .unwrap_or_else(|| panic!("no MoE layer {l}"))
    }

    /// MoE layer `l`, mutably.
    pub fn moe_block_mut(&mut self, l: usize) -> &mut MoeBlock<B> {
        self.model
            .layers
            .iter_mut()
            .filter_map(|x| x.mlp.moe_mut())
            .nth(l)
            .unwrap_or_else(|| panic!("no MoE layer {l}"))
    }

    /// Every MoE block, in order.
    pub fn moe_blocks(&self) -> impl Iterator<Item = &MoeBlock<B>> {
        self.model.layers.iter().filter_map(|l| l.mlp.moe())
    }

    /// Experts per MoE layer.
    pub fn num_experts(&self) -> usize {
        self.moe_block(0).experts.len()
    }

    /// Experts chosen per token.
    pub fn top_k(&self) -> usize {
        self.moe_block(0).top_k()
    }

    /// Every MoE layer's experts laid side by side for dense execution
    /// ([`KvCache::with_stacked_experts`] reuses them across forward passes of an unchanging
    /// model, such as decode steps). `None` when the experts have biases.
    pub fn stack_experts(&self) -> Option<Vec<StackedExperts<B>>> {
        if let Some(shared) = self.shared_stacks() {
            return Some(shared.clone());
        }
        let dtype = self.model.embed_tokens.weight.val().dtype();
        self.moe_blocks()
            .map(|m| StackedExperts::stack(&m.experts, dtype))
            .collect()
    }

    /// For a model that will only run inference: every MoE layer's experts stacked for dense
    /// execution once, and each expert's weights replaced by a view into its layer's stack
    /// ([`StackedExperts::share_with`]), layer by layer, with the backend's freed memory released
    /// after each: the weights are held once (instead of once more by every generation call's
    /// stack), and the dense decode path reads them in place. Nothing changes for the grouped
    /// execution, for experts with biases, or for experts not held in the activations' dtype (the
    /// embedding's). Do not train the result: an update of an expert's weights would not reach
    /// the stack the dense path reads.
    pub fn share_experts(mut self) -> Self {
        let dtype = self.model.embed_tokens.weight.val().dtype();
        let shareable = self.execution != ExpertExecution::Grouped
            && self.moe_blocks().all(|m| {
                m.experts.iter().all(|e| {
                    !e.has_bias()
                        && [&e.gate_proj, &e.up_proj, &e.down_proj]
                            .iter()
                            .all(|l| l.weight.val().dtype() == dtype)
                })
            });
        let device = self.model.embed_tokens.weight.val().device();
        if !shareable || B::ad_enabled(&device) || self.moe_blocks().next().is_none() {
            return self;
        }
        let mut stacks = Vec::new();
        for layer in &mut self.model.layers {
            if let Some(block) = layer.mlp.moe_mut() {
                // Each stack in a buffer of its own size (the backend's persistent allocations,
                // exact sizes) rather than a page of the pools' size classes: at Qwen3-30B-A3B's
                // shape the pools held 66,064 MiB after sharing against 66,510 (H100,
                // `benches/results/qwen3-shape.jsonl`). The stack's work runs inside, so that its
                // buffers are allocated there.
                let stack = B::memory_persistent_allocations(
                    &device,
                    block.experts.clone(),
                    |experts: Vec<Expert<B>>| {
                        let stack = StackedExperts::stack(&experts, dtype)
                            .expect("checked: no biases, at least one expert");
                        let _ = B::sync(&device);
                        stack
                    },
                );
                stack.share_with(&mut block.experts);
                stacks.push(stack);
                // The experts' own buffers are free once the queued work has run.
                let _ = B::sync(&device);
                B::memory_cleanup(&device);
            }
        }
        self.shared = SharedStacks(Some(Arc::new(stacks)));
        self
    }

    /// The stacks [`MoeLm::share_experts`] made, if this model holds them for this backend.
    fn shared_stacks(&self) -> Option<&Vec<StackedExperts<B>>> {
        self.shared.0.as_ref()?.downcast_ref()
    }

    /// A full forward pass with no cache.
    pub fn forward(&self, input: LmInput<B>, routing: &Routing<B>) -> LmOutput<B> {
        let decoded = self.run(input, None, routing, true);
        self.with_head(decoded, false)
    }

    /// A forward pass that reads and extends `cache` (prefill, then one token at a time).
    pub fn forward_cached(
        &self,
        input: LmInput<B>,
        cache: &mut KvCache<B>,
        routing: &Routing<B>,
    ) -> LmOutput<B> {
        let decoded = self.run(input, Some(cache), routing, true);
        self.with_head(decoded, false)
    }

    /// [`MoeLm::forward_cached`] computing logits for the last position only (`[batch, 1,
    /// vocab]`): what decoding needs, without the LM head over a whole prompt, nor the chosen
    /// experts (`chosen` is `None`; captured router logits are kept).
    pub fn forward_cached_last(
        &self,
        input: LmInput<B>,
        cache: &mut KvCache<B>,
        routing: &Routing<B>,
    ) -> LmOutput<B> {
        let decoded = self.run(input, Some(cache), routing, false);
        self.with_head(decoded, true)
    }

    /// [`MoeLm::forward_cached_last`] that also keeps the experts each position was routed to
    /// (`chosen`, when `routing` captures): what a server returning routed experts needs.
    pub fn forward_cached_last_routed(
        &self,
        input: LmInput<B>,
        cache: &mut KvCache<B>,
        routing: &Routing<B>,
    ) -> LmOutput<B> {
        let decoded = self.run(input, Some(cache), routing, true);
        self.with_head(decoded, true)
    }

    /// The decoder without the LM head. Training applies the head only where the loss counts.
    pub fn forward_hidden(&self, input: LmInput<B>, routing: &Routing<B>) -> Decoded<B> {
        self.run(input, None, routing, true)
    }

    fn with_head(&self, decoded: Decoded<B>, last_only: bool) -> LmOutput<B> {
        let Decoded {
            hidden,
            router_logits,
            chosen,
        } = decoded;
        let logits = if last_only {
            let [batch, seq, width] = hidden.dims();
            linear_3d(
                &self.lm_head,
                hidden.clone().slice([0..batch, seq - 1..seq, 0..width]),
            )
        } else {
            linear_3d(&self.lm_head, hidden.clone())
        };
        LmOutput {
            logits,
            hidden,
            router_logits,
            chosen,
        }
    }

    /// The decoder; the chosen experts are stacked (when captured) only if `keep_chosen`.
    fn run(
        &self,
        input: LmInput<B>,
        mut cache: Option<&mut KvCache<B>>,
        routing: &Routing<B>,
        keep_chosen: bool,
    ) -> Decoded<B> {
        let (x, frame) = self.frame(input, cache.as_deref_mut());
        let mut layers = Layers::default();
        let x = self.layers_from(
            x,
            0,
            &frame,
            cache.as_deref_mut(),
            routing,
            keep_chosen,
            &mut layers,
        );
        if let Some(cache) = cache {
            cache.commit(frame.seq);
        }
        Decoded {
            hidden: self.model.norm.forward(x),
            router_logits: (!layers.router_logits.is_empty())
                .then(|| Tensor::stack(layers.router_logits, 0)),
            chosen: (!layers.chosen.is_empty()).then(|| Tensor::stack(layers.chosen, 0)),
        }
    }

    /// The embeddings of `input` and what every layer reads beside them (positions, masks).
    fn frame(&self, input: LmInput<B>, cache: Option<&mut KvCache<B>>) -> (Tensor<B, 3>, Frame<B>) {
        let [batch, seq] = input.input_ids.dims();
        let device = input.input_ids.device();
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let total = past + seq;
        // Key slots attention reads: the positions so far, or a preallocated cache's every slot.
        let keys = cache.as_ref().map(|c| c.key_slots(seq)).unwrap_or(total);
        // The index reaches every key slot (so every query position) and every expert.
        let need = keys.max(
            self.moe_blocks()
                .map(|m| m.experts.len())
                .max()
                .unwrap_or(0),
        );
        let make = |len| Constants::new(len, &self.rope, &device);
        let constants = match cache {
            Some(c) => c.constants(need, make),
            None => make(need),
        };
        let positions = input.positions.unwrap_or_else(|| {
            constants
                .range(past..total)
                .unsqueeze_dim::<2>(0)
                .expand([batch, seq])
        });
        let (cos, sin) = self.rope.cos_sin(positions, constants.inv_freq());
        let masked = attention_mask(input.attention_mask, batch, seq, past, keys, &constants);
        let x = self.model.embed_tokens.forward(input.input_ids);
        (
            x,
            Frame {
                batch,
                seq,
                cos,
                sin,
                masked,
                constants,
            },
        )
    }

    /// Decoder layers `start..` on the residual stream `x` entering layer `start` (its attention
    /// skipped when `x` is `layers.resume`'s: see [`MoeLm::resume`]); routing logits, choices
    /// and (with `layers.keep_trunk`) the residual before each MoE block go into `layers`.
    #[allow(clippy::too_many_arguments)]
    fn layers_from(
        &self,
        mut x: Tensor<B, 3>,
        start: usize,
        frame: &Frame<B>,
        mut cache: Option<&mut KvCache<B>>,
        routing: &Routing<B>,
        keep_chosen: bool,
        layers: &mut Layers<B>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = [frame.batch, frame.seq];
        let mut moe_layer = self.model.layers[..start]
            .iter()
            .filter(|l| l.mlp.moe().is_some())
            .count();
        // The last block's output, added to the residual stream by the next norm (one kernel in
        // inference on a GPU: `RmsNorm::forward_residual`), or after the last layer.
        let mut pending: Option<Tensor<B, 3>> = None;
        for (i, layer) in self.model.layers.iter().enumerate().skip(start) {
            if !(i == start && layers.skip_first_attention) {
                let (sum, h) = layer.input_layernorm.forward_residual(x, pending.take());
                x = sum;
                let layer_cache = cache.as_deref_mut().map(|c| (c, i));
                pending = Some(layer.self_attn.forward(
                    h,
                    &frame.cos,
                    &frame.sin,
                    &frame.masked,
                    layer_cache,
                ));
            }
            let (sum, h) = layer
                .post_attention_layernorm
                .forward_residual(x, pending.take());
            x = sum;
            let block = match &layer.mlp {
                FeedForward::Moe(block) => block,
                FeedForward::Dense(mlp) => {
                    let [_, _, hidden] = h.dims();
                    let tokens = batch * seq;
                    let y = grouped_experts(
                        std::slice::from_ref(mlp),
                        h.reshape([tokens, hidden]),
                        &[tokens],
                        false,
                    );
                    pending = Some(y.reshape([batch, seq, hidden]));
                    continue;
                }
            };
            if layers.keep_trunk {
                layers.trunk.push(x.clone());
            }
            let stacked = cache
                .as_deref()
                .and_then(|c| c.stacked_experts(moe_layer))
                .or_else(|| self.shared_stacks().map(|s| &s[moe_layer]));
            let layer_routing = routing
                .layer(moe_layer)
                .with_index(frame.constants.range(0..block.experts.len()));
            let moe = block.forward(h, &layer_routing, self.execution, stacked, self.gather);
            moe_layer += 1;
            pending = Some(moe.hidden);
            if let Some(logits) = moe.router_logits {
                let experts = logits.dims()[1];
                layers
                    .router_logits
                    .push(logits.reshape([batch, seq, experts]));
            }
            if let Some(c) = moe.chosen.filter(|_| keep_chosen) {
                let k = c.dims()[1];
                layers.chosen.push(c.reshape([batch, seq, k]));
            }
        }
        match pending {
            Some(y) => x + y,
            None => x,
        }
    }

    /// A forward pass with no cache that keeps the residual stream entering every MoE block: the
    /// start of [`MoeLm::resume`], which re-runs only the layers a change to one MoE layer
    /// reaches.
    pub fn trunk(&self, input: LmInput<B>, routing: &Routing<B>) -> Trunk<B> {
        let (x, frame) = self.frame(input, None);
        let mut layers = Layers {
            keep_trunk: true,
            ..Layers::default()
        };
        let x = self.layers_from(x, 0, &frame, None, routing, false, &mut layers);
        Trunk {
            hidden: self.model.norm.forward(x),
            at_moe: layers.trunk,
            frame,
        }
    }

    /// The final hidden states `[batch, seq, hidden]` (after the final norm) of `trunk`'s input
    /// with MoE layer `moe_layer` and every layer above it run under `routing`: the layers below
    /// it, and its attention, are the trunk's. Equal to [`MoeLm::forward_hidden`] under a routing
    /// that differs from the trunk's only from `moe_layer` up.
    pub fn resume(&self, trunk: &Trunk<B>, moe_layer: usize, routing: &Routing<B>) -> Tensor<B, 3> {
        self.resume_repeated(trunk, moe_layer, 1, routing)
    }

    /// [`MoeLm::resume`] on `times` copies of the trunk's batch, one after another
    /// (`[times * batch, seq, hidden]`), each under its own rows of `routing` (e.g.
    /// [`Routing::without_each`]): several ablations in one forward pass.
    pub fn resume_repeated(
        &self,
        trunk: &Trunk<B>,
        moe_layer: usize,
        times: usize,
        routing: &Routing<B>,
    ) -> Tensor<B, 3> {
        let start = self.moe_layers()[moe_layer];
        let mut layers = Layers {
            skip_first_attention: true,
            ..Layers::default()
        };
        let frame = trunk.frame.repeated(times);
        let x = self.layers_from(
            trunk.at_moe[moe_layer].clone().repeat_dim(0, times),
            start,
            &frame,
            None,
            routing,
            false,
            &mut layers,
        );
        self.model.norm.forward(x)
    }
}

/// What every decoder layer of one pass reads beside the residual stream.
#[derive(Debug, Clone)]
struct Frame<B: Backend> {
    batch: usize,
    seq: usize,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    masked: Tensor<B, 4, Bool>,
    constants: Constants<B>,
}

impl<B: Backend> Frame<B> {
    /// The frame of `times` copies of this pass's batch, one after another.
    fn repeated(&self, times: usize) -> Self {
        if times == 1 {
            return self.clone();
        }
        Self {
            batch: self.batch * times,
            seq: self.seq,
            cos: repeat_rows(&self.cos, times),
            sin: repeat_rows(&self.sin, times),
            masked: repeat_rows(&self.masked, times),
            constants: self.constants.clone(),
        }
    }
}

/// `t` with its batch rows repeated `times` times, one copy after another (a single row, shared
/// by every sample, is kept as it is).
fn repeat_rows<B: Backend, K: burn::tensor::TensorKind<B> + burn::tensor::BasicOps<B>>(
    t: &Tensor<B, 4, K>,
    times: usize,
) -> Tensor<B, 4, K> {
    match t.dims()[0] {
        1 => t.clone(),
        _ => t.clone().repeat_dim(0, times),
    }
}

/// What [`MoeLm::layers_from`] collects, and how it starts.
#[derive(Debug)]
struct Layers<B: Backend> {
    /// The first layer's attention is already in the residual stream.
    skip_first_attention: bool,
    /// Keep the residual stream entering each MoE block.
    keep_trunk: bool,
    trunk: Vec<Tensor<B, 3>>,
    /// `[batch, seq, experts]` per MoE layer.
    router_logits: Vec<Tensor<B, 3>>,
    /// `[batch, seq, k]` per MoE layer.
    chosen: Vec<Tensor<B, 3, Int>>,
}

impl<B: Backend> Default for Layers<B> {
    fn default() -> Self {
        Self {
            skip_first_attention: false,
            keep_trunk: false,
            trunk: Vec::new(),
            router_logits: Vec::new(),
            chosen: Vec::new(),
        }
    }
}

/// One forward pass kept where [`MoeLm::resume`] restarts it.
#[derive(Debug, Clone)]
pub struct Trunk<B: Backend> {
    /// `[batch, seq, hidden]` final hidden states (after the final norm) of the pass.
    pub hidden: Tensor<B, 3>,
    /// `[batch, seq, hidden]` per MoE layer: the residual stream entering its block (after its
    /// decoder layer's attention).
    pub at_moe: Vec<Tensor<B, 3>>,
    frame: Frame<B>,
}

/// Which (query, key) pairs may not attend: `[batch, 1, seq, keys]`, `true` = masked.
///
/// A query attends to keys at or before its own slot that are real tokens. Each query always
/// attends to itself, so the softmax of a padding row stays finite (its output is never read).
/// Key slots after the last query (a preallocated cache's unwritten ones) are masked by
/// causality; a padding mask narrower than `keys` is taken as covering the first slots. The
/// indices are slices of `constants`' (which must reach `keys`).
fn attention_mask<B: Backend>(
    padding: Option<Tensor<B, 2, Bool>>,
    batch: usize,
    seq: usize,
    past: usize,
    keys: usize,
    constants: &Constants<B>,
) -> Tensor<B, 4, Bool> {
    let total = past + seq;
    let key_index = constants
        .range(0..keys)
        .reshape([1, 1, keys])
        .expand([batch, seq, keys]);
    let queries = constants
        .range(past..total)
        .reshape([1, seq, 1])
        .expand([batch, seq, keys]);
    let causal = key_index.clone().lower_equal(queries.clone());
    let allowed = match padding {
        Some(valid) => {
            let [_, width] = valid.dims();
            let valid = match width.cmp(&keys) {
                std::cmp::Ordering::Less => {
                    let device = valid.device();
                    Tensor::cat(
                        vec![
                            valid,
                            Tensor::<B, 2, Bool>::zeros([batch, keys - width], &device),
                        ],
                        1,
                    )
                }
                std::cmp::Ordering::Equal => valid,
                std::cmp::Ordering::Greater => valid.slice([0..batch, 0..keys]),
            };
            let valid = valid.reshape([batch, 1, keys]).expand([batch, seq, keys]);
            causal.bool_and(valid).bool_or(key_index.equal(queries))
        }
        None => causal,
    };
    allowed.bool_not().unsqueeze_dim(1)
}
