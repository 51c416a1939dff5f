//! OLMoE top to bottom (Muennighoff et al. 2024, "OLMoE: Open Mixture-of-Experts Language
//! Models"), following transformers' `models/olmoe/modeling_olmoe.py`:
//! `Attention` (`OlmoeAttention`), `Expert` (`OlmoeMLP`), `MoeBlock` (`OlmoeSparseMoeBlock`),
//! `DecoderLayer`, `OlmoeModel` and `Olmoe` (`OlmoeForCausalLM`).
//!
//! Field names are the Hub's checkpoint keys (`model.layers.{i}.mlp.experts.{e}.gate_proj`, ...).
//! Computation follows transformers' dtype policy: RMSNorm, the router softmax and the attention
//! softmax run in float32 whatever the activations' dtype.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::cache::KvCache;
use super::config::OlmoeConfig;
use super::rope::{Rope, apply_rope};
use super::experts::{Choice, Expert, ExpertExecution, StackedExperts, grouped_experts, grouped_linear, in_dtype, linear, permute_rows};
use super::routing::{LayerRouting, Routing, to_f32};

/// RMSNorm computed in float32 (transformers: `OlmoeRMSNorm`).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Scale; Hub key `weight`.
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A norm with the given scale.
    pub fn new(weight: Param<Tensor<B, 1>>, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// `weight * (x / sqrt(mean(x²) + eps))`, the normalisation in float32.
    ///
    /// # Shapes
    /// - `x`: `[..., width]` → same
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = to_f32(x);
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x * (variance.add_scalar(self.eps)).sqrt().recip();
        let [width] = self.weight.dims();
        let mut shape = [1; D];
        shape[D - 1] = width;
        self.weight.val().reshape(shape) * normed.cast(dtype)
    }
}

/// Multi-head attention with q/k RMSNorm over the whole projection, optional qkv clamp, RoPE
/// and grouped-query heads (transformers: `OlmoeAttention`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Hub key `self_attn.q_proj`.
    pub q_proj: Linear<B>,
    /// Hub key `self_attn.k_proj`.
    pub k_proj: Linear<B>,
    /// Hub key `self_attn.v_proj`.
    pub v_proj: Linear<B>,
    /// Hub key `self_attn.o_proj`.
    pub o_proj: Linear<B>,
    /// Over the full query width; Hub key `self_attn.q_norm`.
    pub q_norm: RmsNorm<B>,
    /// Over the full key width; Hub key `self_attn.k_norm`.
    pub k_norm: RmsNorm<B>,
    #[module(skip)]
    num_heads: usize,
    #[module(skip)]
    num_kv_heads: usize,
    #[module(skip)]
    clip_qkv: Option<f64>,
}

impl<B: Backend> Attention<B> {
    /// Assemble from loaded parts; head counts and clamp come from `cfg`.
    pub fn new(
        q_proj: Linear<B>,
        k_proj: Linear<B>,
        v_proj: Linear<B>,
        o_proj: Linear<B>,
        q_norm: RmsNorm<B>,
        k_norm: RmsNorm<B>,
        cfg: &OlmoeConfig,
    ) -> Self {
        Self {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            clip_qkv: cfg.clip_qkv,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`; `cos`, `sin`: `[batch, 1, seq, head_dim]`;
    ///   `masked`: `[batch, 1, seq, past + seq]`, `true` = may not attend
    /// - returns `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        masked: &Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        let mut q = self.q_norm.forward(linear_3d(&self.q_proj, x.clone()));
        let mut k = self.k_norm.forward(linear_3d(&self.k_proj, x.clone()));
        let mut v = linear_3d(&self.v_proj, x);
        if let Some(clip) = self.clip_qkv {
            q = q.clamp(-clip, clip);
            k = k.clamp(-clip, clip);
            v = v.clamp(-clip, clip);
        }
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq, n, head_dim]).swap_dims(1, 2);
        let q = apply_rope(heads(q, self.num_heads), cos, sin);
        let k = apply_rope(heads(k, self.num_kv_heads), cos, sin);
        let v = heads(v, self.num_kv_heads);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let total = k.dims()[2];
        let k = repeat_kv(k, self.num_heads / self.num_kv_heads);
        let v = repeat_kv(v, self.num_heads / self.num_kv_heads);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar((head_dim as f64).powf(-0.5));
        let dtype = scores.dtype();
        let scores = to_f32(scores).mask_fill(
            masked.clone().expand([batch, self.num_heads, seq, total]),
            f32::NEG_INFINITY,
        );
        // attn_weights = softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        let probs = softmax(scores, 3).cast(dtype);
        let out = probs.matmul(v).swap_dims(1, 2).reshape([batch, seq, hidden]);
        linear_3d(&self.o_proj, out)
    }
}

/// A linear layer over `[batch, seq, in]` as one `[batch * seq, in]` matmul: a 3-d input would
/// be a batched matmul against a broadcast weight, which some backends run (and pack the weight
/// for) once per batch row.
///
/// Without a bias this is a [`grouped_linear`] of one group: cuBLAS on CUDA.
pub fn linear_3d<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, width] = x.dims();
    let x = x.reshape([batch * seq, width]);
    let y = match layer.bias {
        None => {
            let w = in_dtype(layer.weight.val(), x.dtype());
            grouped_linear(x, vec![w], &[batch * seq])
        }
        Some(_) => linear(layer, x),
    };
    let out = y.dims()[1];
    y.reshape([batch, seq, out])
}

/// `repeat_kv`: each key/value head serves `groups` query heads.
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [batch, kv_heads, seq, dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, kv_heads, groups, seq, dim])
        .reshape([batch, kv_heads * groups, seq, dim])
}

/// What a MoE block returns.
#[derive(Debug, Clone)]
pub struct MoeOutput<B: Backend> {
    /// `[batch, seq, hidden]`.
    pub hidden: Tensor<B, 3>,
    /// `[batch * seq, experts]` router logits before mask and steering, if captured.
    pub router_logits: Option<Tensor<B, 2>>,
    /// `[batch * seq, k]` the experts each token was routed to, by descending weight, if captured.
    pub chosen: Option<Tensor<B, 2, Int>>,
}

/// Sparse mixture-of-experts feed-forward (transformers: `OlmoeSparseMoeBlock`).
#[derive(Module, Debug)]
pub struct MoeBlock<B: Backend> {
    /// Router; Hub key `mlp.gate`.
    pub gate: Linear<B>,
    /// Hub keys `mlp.experts.{e}`.
    pub experts: Vec<Expert<B>>,
    #[module(skip)]
    top_k: usize,
    #[module(skip)]
    norm_topk_prob: bool,
}

impl<B: Backend> MoeBlock<B> {
    /// Assemble from a router and experts; k and renormalisation come from `cfg`.
    pub fn new(gate: Linear<B>, experts: Vec<Expert<B>>, cfg: &OlmoeConfig) -> Self {
        Self {
            gate,
            experts,
            top_k: cfg.num_experts_per_tok,
            norm_topk_prob: cfg.norm_topk_prob,
        }
    }

    /// Experts chosen per token.
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Route every token to its top-k experts and sum their outputs weighted by routing weight.
    ///
    /// Two executions give the same result (see [`ExpertExecution`]): *grouped* reads the
    /// `[tokens, k]` choices on the host once, groups the (token, choice) rows by expert, runs
    /// each expert once on its contiguous rows ([`grouped_experts`]) and gathers the outputs back
    /// to sum each token's k of them (transformers' expert loop adds them with `index_add_`; a
    /// gather both ways keeps burn's serial scatter kernels out of forward and backward, see
    /// [`permute_rows`]); *dense* runs every expert on every token with the experts laid side by
    /// side and nothing read back (see [`StackedExperts`]).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → hidden `[batch, seq, hidden]`, logits `[batch * seq, experts]`
    pub fn forward(&self, x: Tensor<B, 3>, routing: &LayerRouting<B>, execution: ExpertExecution, stacked: Option<&StackedExperts<B>>) -> MoeOutput<B> {
        let [batch, seq, hidden] = x.dims();
        let tokens = batch * seq;
        let x = x.reshape([tokens, hidden]);
        let logits = linear(&self.gate, x.clone());
        let choice = routing.choose(logits.clone(), batch, self.top_k, self.norm_topk_prob);
        let chosen = routing.capture.then(|| choice.experts.clone());
        let dtype = x.dtype();
        let use_dense = match execution {
            ExpertExecution::Grouped => false,
            ExpertExecution::Dense => true,
            ExpertExecution::Auto => tokens <= DENSE_TOKENS_PER_EXPERT * self.experts.len(),
        };
        let stacked = match use_dense {
            true => stacked.cloned().or_else(|| StackedExperts::stack(&self.experts, dtype)),
            false => None,
        };
        let out = match stacked {
            Some(stacked) => stacked.forward(x, choice),
            None => self.grouped(x, choice),
        };
        MoeOutput {
            hidden: out.reshape([batch, seq, hidden]),
            router_logits: routing.capture.then_some(logits),
            chosen,
        }
    }

    /// The grouped execution: `x` `[tokens, hidden]` → `[tokens, hidden]`.
    fn grouped(&self, x: Tensor<B, 2>, choice: Choice<B>) -> Tensor<B, 2> {
        let k = self.top_k;
        let chosen: Vec<i64> = choice.experts.clone().into_data().iter::<i64>().collect();
        let num_experts = self.experts.len();
        // Stable counting sort of the (token, slot) pairs by expert.
        let mut starts = vec![0usize; num_experts + 1];
        for &e in &chosen {
            starts[e as usize + 1] += 1;
        }
        for e in 0..num_experts {
            starts[e + 1] += starts[e];
        }
        // sorted[at] = the flat (token, slot) index of the pair at sorted position `at`;
        // position[flat] = where that pair sits in sorted order.
        let mut fill = starts.clone();
        let mut sorted = vec![0i64; chosen.len()];
        let mut position = vec![0i64; chosen.len()];
        for (flat, &e) in chosen.iter().enumerate() {
            let at = fill[e as usize];
            sorted[at] = flat as i64;
            position[flat] = at as i64;
            fill[e as usize] += 1;
        }
        let device = x.device();
        let [tokens, hidden] = x.dims();
        let n = chosen.len();
        let sorted = Tensor::<B, 1, Int>::from_data(TensorData::new(sorted, [n]), &device);
        let position = Tensor::<B, 1, Int>::from_data(TensorData::new(position, [n]), &device);
        // Each token's row k times (flat order), then grouped by expert: gathers only, no
        // scatter forward or backward (see `permute_rows`).
        let repeated = x.unsqueeze_dim::<3>(1).expand([tokens, k, hidden]).reshape([n, hidden]);
        let xs = permute_rows(repeated, sorted.clone(), position.clone());
        let counts: Vec<usize> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        let ys = permute_rows(grouped_experts(&self.experts, xs, &counts), position, sorted);
        // Σ over each token's k choices of routing weight × expert output.
        (ys * choice.weights.reshape([n, 1])).reshape([tokens, k, hidden]).sum_dim(1).reshape([tokens, hidden])
    }
}

/// Below this many tokens per expert, [`ExpertExecution::Auto`] runs the experts densely.
pub const DENSE_TOKENS_PER_EXPERT: usize = 4;

/// Pre-norm decoder layer: attention and MoE, each with a residual.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Hub key `self_attn`.
    pub self_attn: Attention<B>,
    /// Hub key `mlp`.
    pub mlp: MoeBlock<B>,
    /// Hub key `input_layernorm`.
    pub input_layernorm: RmsNorm<B>,
    /// Hub key `post_attention_layernorm`.
    pub post_attention_layernorm: RmsNorm<B>,
}

/// The decoder stack (transformers: `OlmoeModel`).
#[derive(Module, Debug)]
pub struct OlmoeModel<B: Backend> {
    /// Hub key `model.embed_tokens`.
    pub embed_tokens: Embedding<B>,
    /// Hub keys `model.layers.{i}`.
    pub layers: Vec<DecoderLayer<B>>,
    /// Hub key `model.norm`.
    pub norm: RmsNorm<B>,
}

/// OLMoE with its LM head (transformers: `OlmoeForCausalLM`).
#[derive(Module, Debug)]
pub struct Olmoe<B: Backend> {
    /// Hub prefix `model`.
    pub model: OlmoeModel<B>,
    /// Hub key `lm_head`; for tied checkpoints it holds a copy of the embedding.
    pub lm_head: Linear<B>,
    #[module(skip)]
    rope: Rope,
    #[module(skip)]
    execution: ExpertExecution,
}

/// Inputs of one forward pass.
#[derive(Debug, Clone)]
pub struct OlmoeInput<B: Backend> {
    /// `[batch, seq]` token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, past + seq]`, `true` = real token, `false` = padding; `None` = no padding.
    pub attention_mask: Option<Tensor<B, 2, Bool>>,
    /// `[batch, seq]` RoPE positions; `None` = `past..past + seq` for every row.
    pub positions: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> OlmoeInput<B> {
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
pub struct OlmoeOutput<B: Backend> {
    /// `[batch, seq, vocab]` (`[batch, 1, vocab]` from `forward_cached_last`).
    pub logits: Tensor<B, 3>,
    /// `[batch, seq, hidden]`, after the final norm.
    pub hidden: Tensor<B, 3>,
    /// `[layers, batch, seq, experts]` router logits before mask and steering, if captured.
    pub router_logits: Option<Tensor<B, 4>>,
    /// `[layers, batch, seq, k]` the experts each token was routed to, if captured.
    pub chosen: Option<Tensor<B, 4, Int>>,
}

/// The decoder's output before the LM head.
#[derive(Debug, Clone)]
pub struct Decoded<B: Backend> {
    /// `[batch, seq, hidden]`, after the final norm.
    pub hidden: Tensor<B, 3>,
    /// `[layers, batch, seq, experts]` router logits before mask and steering, if captured.
    pub router_logits: Option<Tensor<B, 4>>,
    /// `[layers, batch, seq, k]` the experts each token was routed to, by descending weight, if
    /// captured: what the forward pass really chose, masks and steering included.
    pub chosen: Option<Tensor<B, 4, Int>>,
}

impl<B: Backend> Olmoe<B> {
    /// Assemble a model from its parts (see `checkpoint` for loading).
    pub fn new(model: OlmoeModel<B>, lm_head: Linear<B>, cfg: &OlmoeConfig) -> Self {
        Self {
            model,
            lm_head,
            rope: Rope::new(cfg.head_dim(), cfg.rope_theta),
            execution: ExpertExecution::Auto,
        }
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

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    /// Experts per MoE layer.
    pub fn num_experts(&self) -> usize {
        self.model.layers[0].mlp.experts.len()
    }

    /// Every layer's experts laid side by side for dense execution ([`KvCache::with_stacked_experts`]
    /// reuses them across forward passes of an unchanging model, such as decode steps). `None`
    /// when the experts have biases.
    pub fn stack_experts(&self) -> Option<Vec<StackedExperts<B>>> {
        let dtype = self.model.embed_tokens.weight.val().dtype();
        self.model.layers.iter().map(|l| StackedExperts::stack(&l.mlp.experts, dtype)).collect()
    }

    /// A full forward pass with no cache.
    pub fn forward(&self, input: OlmoeInput<B>, routing: &Routing<B>) -> OlmoeOutput<B> {
        let decoded = self.run(input, None, routing);
        self.with_head(decoded, false)
    }

    /// A forward pass that reads and extends `cache` (prefill, then one token at a time).
    pub fn forward_cached(&self, input: OlmoeInput<B>, cache: &mut KvCache<B>, routing: &Routing<B>) -> OlmoeOutput<B> {
        let decoded = self.run(input, Some(cache), routing);
        self.with_head(decoded, false)
    }

    /// [`Olmoe::forward_cached`] computing logits for the last position only (`[batch, 1,
    /// vocab]`): what decoding needs, without the LM head over a whole prompt.
    pub fn forward_cached_last(&self, input: OlmoeInput<B>, cache: &mut KvCache<B>, routing: &Routing<B>) -> OlmoeOutput<B> {
        let decoded = self.run(input, Some(cache), routing);
        self.with_head(decoded, true)
    }

    /// The decoder without the LM head. Training applies the head only where the loss counts.
    pub fn forward_hidden(&self, input: OlmoeInput<B>, routing: &Routing<B>) -> Decoded<B> {
        self.run(input, None, routing)
    }

    fn with_head(&self, decoded: Decoded<B>, last_only: bool) -> OlmoeOutput<B> {
        let Decoded {
            hidden,
            router_logits,
            chosen,
        } = decoded;
        let logits = if last_only {
            let [batch, seq, width] = hidden.dims();
            linear_3d(&self.lm_head, hidden.clone().slice([0..batch, seq - 1..seq, 0..width]))
        } else {
            linear_3d(&self.lm_head, hidden.clone())
        };
        OlmoeOutput {
            logits,
            hidden,
            router_logits,
            chosen,
        }
    }

    fn run(&self, input: OlmoeInput<B>, mut cache: Option<&mut KvCache<B>>, routing: &Routing<B>) -> Decoded<B> {
        let [batch, seq] = input.input_ids.dims();
        let device = input.input_ids.device();
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let total = past + seq;
        let positions = input.positions.unwrap_or_else(|| {
            Tensor::<B, 1, Int>::arange(past as i64..total as i64, &device)
                .unsqueeze_dim::<2>(0)
                .expand([batch, seq])
        });
        let (cos, sin) = self.rope.cos_sin(positions);
        let masked = attention_mask(input.attention_mask, batch, seq, past, &device);

        let mut x = self.model.embed_tokens.forward(input.input_ids);
        let mut router_logits = Vec::new();
        let mut chosen = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(x.clone());
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = x + layer.self_attn.forward(h, &cos, &sin, &masked, layer_cache);
            let h = layer.post_attention_layernorm.forward(x.clone());
            let stacked = cache.as_deref().and_then(|c| c.stacked_experts(i));
            let moe = layer.mlp.forward(h, &routing.layer(i), self.execution, stacked);
            x = x + moe.hidden;
            if let Some(logits) = moe.router_logits {
                let experts = logits.dims()[1];
                router_logits.push(logits.reshape([batch, seq, experts]));
            }
            if let Some(c) = moe.chosen {
                let k = c.dims()[1];
                chosen.push(c.reshape([batch, seq, k]));
            }
        }
        Decoded {
            hidden: self.model.norm.forward(x),
            router_logits: (!router_logits.is_empty()).then(|| Tensor::stack(router_logits, 0)),
            chosen: (!chosen.is_empty()).then(|| Tensor::stack(chosen, 0)),
        }
    }
}

/// Which (query, key) pairs may not attend: `[batch, 1, seq, past + seq]`, `true` = masked.
///
/// A query attends to keys at or before its own slot that are real tokens. Each query always
/// attends to itself, so the softmax of a padding row stays finite (its output is never read).
fn attention_mask<B: Backend>(
    padding: Option<Tensor<B, 2, Bool>>,
    batch: usize,
    seq: usize,
    past: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let total = past + seq;
    let keys = Tensor::<B, 1, Int>::arange(0..total as i64, device)
        .reshape([1, 1, total])
        .expand([batch, seq, total]);
    let queries = Tensor::<B, 1, Int>::arange(past as i64..total as i64, device)
        .reshape([1, seq, 1])
        .expand([batch, seq, total]);
    let causal = keys.clone().lower_equal(queries.clone());
    let allowed = match padding {
        Some(valid) => {
            let valid = valid.reshape([batch, 1, total]).expand([batch, seq, total]);
            causal.bool_and(valid).bool_or(keys.equal(queries))
        }
        None => causal,
    };
    allowed.bool_not().unsqueeze_dim(1)
}
