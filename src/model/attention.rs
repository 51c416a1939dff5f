//! Self-attention of both architectures: q/k RMSNorm, optional qkv clamp, RoPE, grouped-query
//! heads and a float32 softmax (transformers: `OlmoeAttention`, `Qwen3MoeAttention`).
//!
//! The two differ in the q/k norms only ([`QkNorm`]): OLMoE norms the whole query and key
//! projections before splitting them into heads (and may clamp q, k and v); Qwen3-MoE norms each
//! head over `head_dim` after the split. Both take the head width from the config, which for
//! Qwen3 need not be `hidden_size / num_attention_heads`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::cache::KvCache;
use super::config::{ModelConfig, QkNorm};
use super::experts::{dense_linear, to_f32};
use super::norm::RmsNorm;
use super::rope::apply_rope;

/// Multi-head attention with q/k norms, RoPE and grouped-query heads.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Hub key `self_attn.q_proj`: `hidden → heads · head_dim`.
    pub q_proj: Linear<B>,
    /// Hub key `self_attn.k_proj`: `hidden → kv_heads · head_dim`.
    pub k_proj: Linear<B>,
    /// Hub key `self_attn.v_proj`: `hidden → kv_heads · head_dim`.
    pub v_proj: Linear<B>,
    /// Hub key `self_attn.o_proj`: `heads · head_dim → hidden`.
    pub o_proj: Linear<B>,
    /// Over the full query width (OLMoE) or one head (Qwen3); Hub key `self_attn.q_norm`.
    pub q_norm: RmsNorm<B>,
    /// Over the full key width (OLMoE) or one head (Qwen3); Hub key `self_attn.k_norm`.
    pub k_norm: RmsNorm<B>,
    #[module(skip)]
    num_heads: usize,
    #[module(skip)]
    num_kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
    #[module(skip)]
    qk_norm: QkNorm,
    #[module(skip)]
    clip_qkv: Option<f64>,
}

impl<B: Backend> Attention<B> {
    /// Assemble from loaded parts; head counts, head width, norm placement and clamp come from
    /// `cfg`.
    pub fn new(
        q_proj: Linear<B>,
        k_proj: Linear<B>,
        v_proj: Linear<B>,
        o_proj: Linear<B>,
        q_norm: RmsNorm<B>,
        k_norm: RmsNorm<B>,
        cfg: &ModelConfig,
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
            head_dim: cfg.head_dim,
            qk_norm: cfg.qk_norm,
            clip_qkv: cfg.clip_qkv,
        }
    }

    /// Query heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`; `cos`, `sin`: `[batch, seq, 1, head_dim]`;
    ///   `masked`: `[batch, 1, seq, keys]` (`keys`: the positions so far, or every slot of a
    ///   [`KvCache`] written in place), `true` = may not attend
    /// - returns `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        masked: &Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let head_dim = self.head_dim;
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq, n, head_dim]);
        let q = linear_3d(&self.q_proj, x.clone());
        let k = linear_3d(&self.k_proj, x.clone());
        let v = linear_3d(&self.v_proj, x);
        // [batch, seq, heads, head_dim] each.
        let (q, k, v) = match self.qk_norm {
            QkNorm::Full => {
                let (mut q, mut k, mut v) = (self.q_norm.forward(q), self.k_norm.forward(k), v);
                if let Some(clip) = self.clip_qkv {
                    q = q.clamp(-clip, clip);
                    k = k.clamp(-clip, clip);
                    v = v.clamp(-clip, clip);
                }
                (
                    heads(q, self.num_heads),
                    heads(k, self.num_kv_heads),
                    heads(v, self.num_kv_heads),
                )
            }
            QkNorm::PerHead => (
                self.q_norm.forward(heads(q, self.num_heads)),
                self.k_norm.forward(heads(k, self.num_kv_heads)),
                heads(v, self.num_kv_heads),
            ),
        };
        let q = apply_rope(q, cos, sin).swap_dims(1, 2);
        let k = apply_rope(k, cos, sin).swap_dims(1, 2);
        let v = v.swap_dims(1, 2);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let scale = (head_dim as f64).powf(-0.5);
        // A decode step's attention on a GPU backend: one kernel (see `crate::cube`).
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        if let Some(out) = crate::cube::try_decode_attention(&q, &k, &v, masked, scale) {
            // [batch, heads, 1, dim] contiguous is [batch, 1, heads · dim] already (one position):
            // no swap, which would make burn copy.
            return linear_3d(
                &self.o_proj,
                out.reshape([batch, seq, self.num_heads * head_dim]),
            );
        }
        let total = k.dims()[2];
        let k = repeat_kv(k, self.num_heads / self.num_kv_heads);
        let v = repeat_kv(v, self.num_heads / self.num_kv_heads);
        // One product per (sequence, head): [batch · heads, seq, head_dim] · [.., head_dim, total].
        let items = batch * self.num_heads;
        let scores = bmm(
            q.reshape([items, seq, head_dim]),
            k.reshape([items, total, head_dim]).swap_dims(1, 2),
        )
        .reshape([batch, self.num_heads, seq, total])
        .mul_scalar(scale);
        let dtype = scores.dtype();
        let scores = to_f32(scores).mask_fill(
            masked.clone().expand([batch, self.num_heads, seq, total]),
            f32::NEG_INFINITY,
        );
        // attn_weights = softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        let probs = softmax(scores, 3).cast(dtype).reshape([items, seq, total]);
        let out = bmm(probs, v.reshape([items, total, head_dim]))
            .reshape([batch, self.num_heads, seq, head_dim])
            .swap_dims(1, 2)
            .reshape([batch, seq, self.num_heads * head_dim]);
        linear_3d(&self.o_proj, out)
    }
}

/// A linear layer over `[batch, seq, in]` as one `[batch * seq, in]` matmul ([`dense_linear`]:
/// cuBLAS on CUDA): a 3-d input would be a batched matmul against a broadcast weight, which some
/// backends run (and pack the weight for) once per batch row.
pub fn linear_3d<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, width] = x.dims();
    let y = dense_linear(layer, x.reshape([batch * seq, width]));
    let out = y.dims()[1];
    y.reshape([batch, seq, out])
}

/// `a_i · b_i` for every item `i` of the leading axis (`[n, m, k] · [n, k, p] → [n, m, p]`): one
/// cuBLAS batched GEMM on CUDA, burn's matmul elsewhere.
fn bmm<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    #[cfg(feature = "cuda")]
    if let Some(c) = crate::cuda::try_batched_matmul(&a, &b) {
        return c;
    }
    a.matmul(b)
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
