//! The sparse mixture-of-experts feed-forward block (transformers: `OlmoeSparseMoeBlock`,
//! `Qwen3MoeSparseMoeBlock`): a router, [`routing`](super::routing) turning its logits into each
//! token's top-k experts, and the experts run grouped or dense ([`ExpertExecution`]).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use super::config::ModelConfig;
use super::experts::{
    Choice, Expert, ExpertExecution, StackedExperts, dense_linear, grouped_experts, linear,
    permute_rows,
};
use super::routing::LayerRouting;

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

/// Sparse mixture-of-experts feed-forward.
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
    pub fn new(gate: Linear<B>, experts: Vec<Expert<B>>, cfg: &ModelConfig) -> Self {
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
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        routing: &LayerRouting<B>,
        execution: ExpertExecution,
        stacked: Option<&StackedExperts<B>>,
        gather: bool,
    ) -> MoeOutput<B> {
        let [batch, seq, hidden] = x.dims();
        let tokens = batch * seq;
        let x = x.reshape([tokens, hidden]);
        // In float32 burn's matmul, not cuBLAS (whose float32 runs TF32): the router is a small
        // product, and its logits decide the routing this tool measures. In bf16 or f16 cuBLAS
        // (both accumulate in float32 and round to the dtype).
        let logits = match x.dtype() {
            DType::F32 => linear(&self.gate, x.clone()),
            _ => dense_linear(&self.gate, x.clone()),
        };
        let choice = routing.choose(logits.clone(), batch, self.top_k, self.norm_topk_prob);
        let chosen = routing.capture.then(|| choice.experts.clone());
        let dtype = x.dtype();
        let use_dense = match execution {
            ExpertExecution::Grouped => false,
            ExpertExecution::Dense => true,
            ExpertExecution::Auto => tokens <= DENSE_TOKENS_PER_EXPERT * self.experts.len(),
        };
        let stacked = match use_dense {
            true => stacked
                .cloned()
                .or_else(|| StackedExperts::stack(&self.experts, dtype)),
            false => None,
        };
        let out = match stacked {
            Some(stacked) => stacked.forward(x, choice),
            None => self.grouped(x, choice, gather),
        };
        MoeOutput {
            hidden: out.reshape([batch, seq, hidden]),
            router_logits: routing.capture.then_some(logits),
            chosen,
        }
    }

    /// The grouped execution: `x` `[tokens, hidden]` → `[tokens, hidden]`; `gather`: see
    /// [`grouped_experts`].
    fn grouped(&self, x: Tensor<B, 2>, choice: Choice<B>, gather: bool) -> Tensor<B, 2> {
        let k = self.top_k;
        let x_dtype = x.dtype();
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
        let repeated = x
            .unsqueeze_dim::<3>(1)
            .expand([tokens, k, hidden])
            .reshape([n, hidden]);
        let xs = permute_rows(repeated, sorted.clone(), position.clone());
        let counts: Vec<usize> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        let ys = permute_rows(
            grouped_experts(&self.experts, xs, &counts, gather),
            position,
            sorted,
        );
        // Σ over each token's k choices of routing weight × expert output.
        (ys * choice.weights.cast(x_dtype).reshape([n, 1]))
            .reshape([tokens, k, hidden])
            .sum_dim(1)
            .reshape([tokens, hidden])
    }
}

/// Below this many tokens per expert, [`ExpertExecution::Auto`] runs the experts densely.
pub const DENSE_TOKENS_PER_EXPERT: usize = 4;
