//! The experts of a MoE layer, and the two ways of running them on routed tokens — a leaf of
//! the model: it depends on burn only.
//!
//! - [`Expert`]: one SwiGLU MLP (transformers: `OlmoeMLP`);
//! - [`Choice`]: the experts a router picked for each token and their weights;
//! - [`StackedExperts`]: dense execution. Every expert of a layer runs on every token, each output
//!   weighted by that token's routing weight (zero for experts it did not choose).
//!
//! The grouped path of [`MoeBlock`](super::olmoe::MoeBlock) does exactly the chosen work but must
//! read the choices on the host to group tokens by expert, once per layer, and runs one small
//! matmul per expert whose shape changes with every batch. For a few tokens (a decode step) that
//! synchronisation and those launches cost far more than the arithmetic: dense execution is two
//! matmuls over the experts laid side by side, `[tokens, hidden] × [hidden, experts·inter]` and
//! back, with fixed shapes and nothing read back, at `experts / k` times the FLOPs. A decode step
//! reads every expert's weights either way once the batch has a few sequences.
//!
//! `down(w · h) = w · down(h)` for a linear `down`, so the result equals the grouped path's up to
//! rounding; unchosen experts have weight exactly zero and contribute exactly nothing, to the output
//! and to the gradients.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor};

/// How MoE blocks run their experts; every choice gives the same result up to rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExpertExecution {
    /// Dense for a few tokens per expert (decode steps, small batches), grouped otherwise.
    #[default]
    Auto,
    /// Tokens grouped by expert, each expert run on its own tokens (reads the choices on the host).
    Grouped,
    /// Every expert on every token, weighted by routing weight (nothing read back).
    Dense,
}

/// One SwiGLU expert (transformers: `OlmoeMLP`).
#[derive(Module, Debug)]
pub struct Expert<B: Backend> {
    /// Hub key `gate_proj`.
    pub gate_proj: Linear<B>,
    /// Hub key `up_proj`.
    pub up_proj: Linear<B>,
    /// Hub key `down_proj`.
    pub down_proj: Linear<B>,
}

impl<B: Backend> Expert<B> {
    /// `down_proj(silu(gate_proj(x)) * up_proj(x))`
    ///
    /// # Shapes
    /// - `x`: `[tokens, hidden]` → `[tokens, hidden]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

/// The experts chosen for every token of one layer.
#[derive(Debug, Clone)]
pub struct Choice<B: Backend> {
    /// `[tokens, k]`: routing weight of each chosen expert, in the hidden dtype.
    pub weights: Tensor<B, 2>,
    /// `[tokens, k]`: the chosen experts, by descending probability.
    pub experts: Tensor<B, 2, Int>,
}

/// The experts of one MoE layer side by side.
#[derive(Debug, Clone)]
pub struct StackedExperts<B: Backend> {
    /// `[hidden, experts * inter]`.
    gate: Tensor<B, 2>,
    /// `[hidden, experts * inter]`.
    up: Tensor<B, 2>,
    /// `[experts * inter, hidden]`.
    down: Tensor<B, 2>,
    experts: usize,
}

impl<B: Backend> StackedExperts<B> {
    /// Lay `experts` side by side (differentiable: gradients flow back to each expert's weights).
    /// `None` when an expert has a bias, which this path does not carry.
    pub fn stack(experts: &[Expert<B>]) -> Option<Self> {
        if experts.is_empty()
            || experts
                .iter()
                .any(|e| e.gate_proj.bias.is_some() || e.up_proj.bias.is_some() || e.down_proj.bias.is_some())
        {
            return None;
        }
        let cat = |pick: fn(&Expert<B>) -> Tensor<B, 2>, dim: usize| {
            Tensor::cat(experts.iter().map(pick).collect(), dim)
        };
        Some(Self {
            gate: cat(|e| e.gate_proj.weight.val(), 1),
            up: cat(|e| e.up_proj.weight.val(), 1),
            down: cat(|e| e.down_proj.weight.val(), 0),
            experts: experts.len(),
        })
    }

    /// Σ over chosen experts of routing weight × expert output.
    ///
    /// # Shapes
    /// - `x`: `[tokens, hidden]`, `choice`: `[tokens, k]` → `[tokens, hidden]`
    pub fn forward(&self, x: Tensor<B, 2>, choice: Choice<B>) -> Tensor<B, 2> {
        let [tokens, _] = x.dims();
        let [_, width] = self.gate.dims();
        let inter = width / self.experts;
        let weights = Tensor::<B, 2>::zeros([tokens, self.experts], (&x.device(), x.dtype()))
            .scatter(1, choice.experts, choice.weights, IndexingUpdateOp::Add);
        let h = silu(x.clone().matmul(self.gate.clone())) * x.matmul(self.up.clone());
        let h = h.reshape([tokens, self.experts, inter]) * weights.reshape([tokens, self.experts, 1]);
        h.reshape([tokens, width]).matmul(self.down.clone())
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::nn::LinearConfig;
    use burn::tensor::{Distribution, TensorData};

    use super::*;

    type B = NdArray<f32>;

    fn expert(hidden: usize, inter: usize, device: &burn::backend::ndarray::NdArrayDevice) -> Expert<B> {
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        Expert {
            gate_proj: lin(hidden, inter),
            up_proj: lin(hidden, inter),
            down_proj: lin(inter, hidden),
        }
    }

    #[test]
    fn equals_the_weighted_sum_of_the_chosen_experts() {
        let device = Default::default();
        let experts: Vec<Expert<B>> = (0..4).map(|_| expert(6, 5, &device)).collect();
        let x = Tensor::<B, 2>::random([3, 6], Distribution::Normal(0.0, 1.0), &device);
        let chosen = [[2i64, 0], [1, 3], [3, 2]];
        let w = [[0.7f32, 0.2], [0.5, 0.5], [0.9, 0.0]];
        let choice = Choice {
            weights: Tensor::from_data(TensorData::from(w), &device),
            experts: Tensor::<B, 2, Int>::from_data(TensorData::from(chosen), &device),
        };
        let got = StackedExperts::stack(&experts).unwrap().forward(x.clone(), choice);
        for t in 0..3 {
            let row = x.clone().slice(t..t + 1);
            let mut want = row.zeros_like();
            for j in 0..2 {
                want = want + experts[chosen[t][j] as usize].forward(row.clone()).mul_scalar(w[t][j]);
            }
            got.clone()
                .slice(t..t + 1)
                .into_data()
                .assert_approx_eq::<f32>(&want.into_data(), burn::tensor::Tolerance::absolute(1e-6));
        }
    }
}
