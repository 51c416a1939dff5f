//! The experts of a MoE layer, and the two ways of running them on routed tokens — a leaf of
//! the model: it depends on burn only.
//!
//! - [`Expert`]: one SwiGLU MLP (transformers: `OlmoeMLP`, `Qwen3MoeMLP`);
//! - [`Choice`]: the experts a router picked for each token and their weights;
//! - [`StackedExperts`]: dense execution. Every expert of a layer runs on every token, each output
//!   weighted by that token's routing weight (zero for experts it did not choose).
//!
//! The grouped path of [`MoeBlock`](super::moe::MoeBlock) does exactly the chosen work but must
//! read the choices on the host to group tokens by expert, once per layer, and runs one small
//! matmul per expert whose shape changes with every batch. For a few tokens (a decode step) that
//! synchronisation and those launches cost far more than the arithmetic: dense execution is two
//! matmuls over the experts laid side by side, `[tokens, hidden] × [hidden, experts·inter]` and
//! back, with fixed shapes and nothing read back, at `experts / k` times the FLOPs. A decode step
//! reads every expert's weights either way once the batch has a few sequences. On CUDA, where few
//! of a layer's experts are chosen ([`ROUTED_MAX_SHARE`]), the stacks run routed only instead:
//! kernels that read just the chosen experts' weights from them, with nothing read back
//! (`crate::cube::routed_experts`).
//! - [`linear`]: a linear layer computed in its input's dtype, so that parameters kept in f32
//!   while the model computes in bf16 (the trained experts' master weights) take part as bf16.
//!
//! `down(w · h) = w · down(h)` for a linear `down`, so the result equals the grouped path's up to
//! rounding; unchosen experts have weight exactly zero and contribute exactly nothing, to the output
//! and to the gradients.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor};

/// `t` in `dtype` (`t` itself when it already is: no copy, no autodiff node).
pub fn in_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

/// Upcast to float32 where transformers computes in float32 (a no-op on f32 tensors).
pub fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    in_dtype(x, DType::F32)
}

/// `layer(x)` computed in `x`'s dtype.
///
/// Training keeps the trained parameters as f32 master weights while the rest of the model is
/// bf16 (an AdamW step of 5e-5 is below half a bf16 step for every weight with |w| ≥ 2⁻⁶: it would
/// round away). Here they are cast to the activations' dtype; autodiff casts their gradients back
/// to f32 for the optimizer. When the dtypes agree nothing is cast and this is `layer.forward(x)`.
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let dtype = x.dtype();
    burn::tensor::module::linear(
        x,
        in_dtype(layer.weight.val(), dtype),
        layer.bias.as_ref().map(|b| in_dtype(b.val(), dtype)),
    )
}

/// `layer(x)` for `x` `[rows, in]`, computed in `x`'s dtype: without a bias a [`grouped_linear`]
/// of one group (cuBLAS on CUDA), with one [`linear`].
pub fn dense_linear<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    match layer.bias {
        None => {
            let rows = x.dims()[0];
            let w = in_dtype(layer.weight.val(), x.dtype());
            grouped_linear(x, vec![w], &[rows])
        }
        Some(_) => linear(layer, x),
    }
}

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

/// `y_e = x_e · W_e` for every expert `e` of a layer: `x`'s rows grouped by expert, `counts[e]`
/// rows each in expert order, `W_e` `[in, out]` in `x`'s dtype. One group (`counts = [rows]`) is
/// a plain matmul.
///
/// On CUDA (feature `cuda`) this is one operation of burn's stream running cuBLAS GEMMs, forward
/// and backward ([`crate::cuda::grouped`]); elsewhere, and when cuBLAS cannot be loaded, burn's
/// matmul on each group's rows.
///
/// # Shapes
/// - `x`: `[Σ counts, in]`, each of `weights`: `[in, out]` → `[Σ counts, out]`
pub fn grouped_linear<B: Backend>(
    x: Tensor<B, 2>,
    weights: Vec<Tensor<B, 2>>,
    counts: &[usize],
) -> Tensor<B, 2> {
    debug_assert_eq!(weights.len(), counts.len());
    #[cfg(feature = "cuda")]
    if let Some(y) = crate::cuda::try_grouped_linear(&x, &weights, counts) {
        return y;
    }
    grouped_linear_matmul(x, weights, counts)
}

/// [`grouped_linear`] with burn's matmul on each group's rows, on every backend (what the CUDA
/// path is tested against).
pub fn grouped_linear_matmul<B: Backend>(
    x: Tensor<B, 2>,
    weights: Vec<Tensor<B, 2>>,
    counts: &[usize],
) -> Tensor<B, 2> {
    if let [w] = &weights[..] {
        return x.matmul(w.clone());
    }
    per_group(x, counts, |e, rows| rows.matmul(weights[e].clone()))
}

/// [`grouped_linear`] for a pass that will be differentiated: on the CUDA backend the same
/// grouped GEMM; elsewhere the groups gathered into `[groups, longest, in]` batches (short
/// groups padded with a zero row), one batched matmul each, and the real rows gathered back.
///
/// Slicing each group's rows, as [`grouped_linear_matmul`] does, costs little forward, but
/// burn-autodiff's backward of a slice is a zero tensor of the input's whole shape with the
/// slice's gradient written in, and the input's gradient then sums one of those per group:
/// `groups` full-size tensors made and added where a few gathers' scatters suffice. Groups of
/// like length share a batch, so padding costs less than half of each batch's arithmetic; passes
/// that are not differentiated keep the slices.
pub fn gathered_linear<B: Backend>(
    x: Tensor<B, 2>,
    weights: Vec<Tensor<B, 2>>,
    counts: &[usize],
) -> Tensor<B, 2> {
    #[cfg(feature = "cuda")]
    if let Some(y) = crate::cuda::try_grouped_linear(&x, &weights, counts) {
        return y;
    }
    padded_grouped_matmul(x, weights, counts)
}

/// Groups of up to this many rows share one padded batch in [`gathered_linear`], however unlike
/// their lengths.
const SHORT_GROUP: usize = 16;

fn padded_grouped_matmul<B: Backend>(
    x: Tensor<B, 2>,
    weights: Vec<Tensor<B, 2>>,
    counts: &[usize],
) -> Tensor<B, 2> {
    let [rows, width] = x.dims();
    let mut used: Vec<usize> = (0..counts.len()).filter(|&e| counts[e] > 0).collect();
    if rows == 0 || used.is_empty() {
        let out = weights.first().map_or(0, |w| w.dims()[1]);
        return Tensor::zeros([rows, out], (&x.device(), x.dtype()));
    }
    let first: Vec<usize> = counts
        .iter()
        .scan(0, |at, &c| {
            *at += c;
            Some(*at - c)
        })
        .collect();
    let device = x.device();
    let ids = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<B, 1, Int>::from_data(burn::tensor::TensorData::new(v, [n]), &device)
    };
    let zero = Tensor::zeros([1, width], (&device, x.dtype()));
    let x = Tensor::cat(vec![x, zero], 0);
    // Longest groups first, in buckets of groups at least half as long as the bucket's first
    // (the short tail, up to `SHORT_GROUP` rows a group, in one): padding stays under half a
    // bucket.
    used.sort_by_key(|&e| std::cmp::Reverse(counts[e]));
    let mut back = vec![0i64; rows];
    let mut parts = Vec::new();
    let mut offset = 0;
    let mut i = 0;
    while i < used.len() {
        let longest = counts[used[i]];
        let end = i + used[i..]
            .iter()
            .take_while(|&&e| 2 * counts[e] >= longest || longest <= SHORT_GROUP)
            .count();
        let bucket = &used[i..end];
        // gather[g * longest + r] = the r-th row of the bucket's g-th group, or `rows` (the zero
        // row); back[row] = where that row lands in the concatenated padded products.
        let mut gather = vec![rows as i64; bucket.len() * longest];
        for (g, &e) in bucket.iter().enumerate() {
            for r in 0..counts[e] {
                gather[g * longest + r] = (first[e] + r) as i64;
                back[first[e] + r] = (offset + g * longest + r) as i64;
            }
        }
        let xs = x
            .clone()
            .select(0, ids(gather))
            .reshape([bucket.len(), longest, width]);
        let w = Tensor::stack::<3>(bucket.iter().map(|&e| weights[e].clone()).collect(), 0);
        let out = w.dims()[2];
        parts.push(xs.matmul(w).reshape([bucket.len() * longest, out]));
        offset += bucket.len() * longest;
        i = end;
    }
    Tensor::cat(parts, 0).select(0, ids(back))
}

/// `f(e, rows of group e)` for every group with rows, concatenated in group order.
fn per_group<B: Backend>(
    x: Tensor<B, 2>,
    counts: &[usize],
    mut f: impl FnMut(usize, Tensor<B, 2>) -> Tensor<B, 2>,
) -> Tensor<B, 2> {
    let mut start = 0;
    let mut parts = Vec::new();
    for (e, &c) in counts.iter().enumerate() {
        if c > 0 {
            parts.push(f(e, x.clone().slice(start..start + c)));
        }
        start += c;
    }
    Tensor::cat(parts, 0)
}

/// The rows of `x` in the order `perm` (a permutation), `inverse` its inverse.
///
/// burn's gradient of a row gather is a scatter-add whose CUDA and wgpu kernels loop over the
/// rows serially (one thread per column: 14 ms for 64k rows of 2048 on an H200, three quarters
/// of a train step's kernel time). A permutation's gradient is the gather by its inverse, which the
/// CUDA backend uses ([`crate::cuda::grouped::try_permute_rows`]); elsewhere this is `x.select(0,
/// perm)`.
///
/// # Shapes
/// - `x`: `[rows, width]`, `perm`, `inverse`: `[rows]` → `[rows, width]`
pub fn permute_rows<B: Backend>(
    x: Tensor<B, 2>,
    perm: Tensor<B, 1, Int>,
    inverse: Tensor<B, 1, Int>,
) -> Tensor<B, 2> {
    #[cfg(feature = "cuda")]
    if let Some(y) = crate::cuda::grouped::try_permute_rows(&x, &perm, &inverse) {
        return y;
    }
    let _ = inverse;
    x.select(0, perm)
}

/// One SwiGLU MLP (transformers: `OlmoeMLP`, `Qwen3MoeMLP`): an expert, or a Qwen3 dense layer.
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
        linear(
            &self.down_proj,
            silu(linear(&self.gate_proj, x.clone())) * linear(&self.up_proj, x),
        )
    }

    /// Whether any projection has a bias (OLMoE's experts have none).
    pub fn has_bias(&self) -> bool {
        self.gate_proj.bias.is_some()
            || self.up_proj.bias.is_some()
            || self.down_proj.bias.is_some()
    }
}

/// Every expert of a layer on its own rows of `x` (grouped by expert, `counts[e]` rows each):
/// three [`grouped_linear`]s, the SwiGLU between them; [`gathered_linear`]s when `gather` (a
/// pass to be differentiated).
///
/// # Shapes
/// - `x`: `[Σ counts, hidden]` → `[Σ counts, hidden]`
pub fn grouped_experts<B: Backend>(
    experts: &[Expert<B>],
    x: Tensor<B, 2>,
    counts: &[usize],
    gather: bool,
) -> Tensor<B, 2> {
    if experts.iter().any(Expert::has_bias) {
        return per_group(x, counts, |e, rows| experts[e].forward(rows));
    }
    let dtype = x.dtype();
    let weights = |pick: fn(&Expert<B>) -> &Linear<B>| {
        experts
            .iter()
            .map(|e| in_dtype(pick(e).weight.val(), dtype))
            .collect::<Vec<_>>()
    };
    let linear = match gather {
        true => gathered_linear,
        false => grouped_linear,
    };
    let gate = linear(x.clone(), weights(|e| &e.gate_proj), counts);
    let up = linear(x, weights(|e| &e.up_proj), counts);
    linear(silu(gate) * up, weights(|e| &e.down_proj), counts)
}

/// The experts chosen for every token of one layer.
#[derive(Debug, Clone)]
pub struct Choice<B: Backend> {
    /// `[tokens, k]`: routing weight of each chosen expert, float32 (cast to the hidden dtype
    /// where it is used, so that the cast fuses with the product it feeds).
    pub weights: Tensor<B, 2>,
    /// `[tokens, k]`: the chosen experts, by descending probability.
    pub experts: Tensor<B, 2, Int>,
    /// `[tokens, experts]` float32, when the routing computed it: `weights` at the chosen experts'
    /// columns, zero elsewhere (what the dense execution scatters otherwise).
    pub dense: Option<Tensor<B, 2>>,
}

/// [`StackedExperts::forward`] reads only the chosen experts on CUDA when the share of a layer's
/// experts that its tokens would choose if they routed at random, `1 − (1 − k / experts)^tokens`,
/// is at most this (`STEERMOE_ROUTED_EXPERTS` = 0 or 1 overrides). The routed kernels read an
/// expert at ~80% of the bandwidth of the stacked GEMMs, which read every expert: on an H100 they
/// took 349 µs against 430 at Qwen3-30B-A3B's shape, batch 16 (share 0.64), and 400 against 295
/// at OLMoE-1B-7B's (share 0.88; `benches/results/routed-experts.jsonl`).
pub const ROUTED_MAX_SHARE: f64 = 0.7;

/// `1 − (1 − k / experts)^tokens`: the expected share of `experts` chosen by `tokens` tokens that
/// each choose `k` of them at random.
pub fn routed_share(tokens: usize, k: usize, experts: usize) -> f64 {
    let miss = 1.0 - k as f64 / experts.max(1) as f64;
    1.0 - miss.max(0.0).powi(tokens.min(i32::MAX as usize) as i32)
}

/// The experts of one MoE layer side by side.
#[derive(Debug, Clone)]
pub struct StackedExperts<B: Backend> {
    /// `[hidden, 2 * experts * inter]`: every expert's gate projection, then every expert's up
    /// projection (one GEMM computes both).
    gate_up: Tensor<B, 2>,
    /// `[experts * inter, hidden]`.
    down: Tensor<B, 2>,
    experts: usize,
}

impl<B: Backend> StackedExperts<B> {
    /// Lay `experts` side by side in `dtype`, the activations' (differentiable: gradients flow
    /// back to each expert's weights, in their own dtype). `None` when an expert has a bias,
    /// which this path does not carry.
    pub fn stack(experts: &[Expert<B>], dtype: DType) -> Option<Self> {
        if experts.is_empty() || experts.iter().any(Expert::has_bias) {
            return None;
        }
        let weights = |pick: fn(&Expert<B>) -> &Linear<B>| {
            experts
                .iter()
                .map(move |e| in_dtype(pick(e).weight.val(), dtype))
        };
        // One concatenation of the gate weights then the up weights: no intermediate copies.
        let gate_up = weights(|e| &e.gate_proj)
            .chain(weights(|e| &e.up_proj))
            .collect();
        Some(Self {
            gate_up: Tensor::cat(gate_up, 1),
            down: Tensor::cat(weights(|e| &e.down_proj).collect(), 0),
            experts: experts.len(),
        })
    }

    /// Point every expert's weights into this stack (made from `experts` by
    /// [`StackedExperts::stack`]), keeping their parameter ids: the experts and the stack then hold
    /// one copy of the weights where the backend slices in place (burn's CUDA and wgpu backends
    /// do for aligned slices, ndarray always), and their own buffers are dropped. Gate and up
    /// projections become column views `[hidden, inter]` of `gate_up` (row stride `2 · experts ·
    /// inter`), down projections row blocks of `down`. Only for a model that will not be trained:
    /// a later update of an expert's weights would not reach the stack.
    pub fn share_with(&self, experts: &mut [Expert<B>]) {
        let hidden = self.gate_up.dims()[0];
        let width = self.gate_up.dims()[1] / 2;
        let inter = width / self.experts;
        debug_assert_eq!(experts.len(), self.experts);
        let point = |layer: &mut Linear<B>, view: Tensor<B, 2>| {
            let id = layer.weight.id;
            layer.weight = Param::initialized(id, view);
        };
        for (e, expert) in experts.iter_mut().enumerate() {
            let cols = e * inter..(e + 1) * inter;
            point(
                &mut expert.gate_proj,
                self.gate_up.clone().slice([0..hidden, cols.clone()]),
            );
            point(
                &mut expert.up_proj,
                self.gate_up
                    .clone()
                    .slice([0..hidden, width + cols.start..width + cols.end]),
            );
            point(
                &mut expert.down_proj,
                self.down.clone().slice([cols, 0..hidden]),
            );
        }
    }

    /// Σ over chosen experts of routing weight × expert output.
    ///
    /// # Shapes
    /// - `x`: `[tokens, hidden]`, `choice`: `[tokens, k]` → `[tokens, hidden]`
    pub fn forward(&self, x: Tensor<B, 2>, choice: Choice<B>) -> Tensor<B, 2> {
        let [tokens, _] = x.dims();
        let width = self.gate_up.dims()[1] / 2;
        let inter = width / self.experts;
        let dtype = x.dtype();
        let device = x.device();
        let all = [tokens];
        // Few of the layer's experts chosen, on CUDA: only theirs read (see
        // `crate::cube::routed_experts`).
        #[cfg(feature = "cuda")]
        if crate::cube::routed_experts::routed_override().unwrap_or_else(|| {
            routed_share(tokens, choice.experts.dims()[1], self.experts) <= ROUTED_MAX_SHARE
        }) && let Some(y) = crate::cube::try_routed_experts(
            &x,
            &self.gate_up,
            &self.down,
            &choice.experts,
            &choice.weights,
            self.experts,
        ) {
            return y;
        }
        let gate_up = grouped_linear(x, vec![self.gate_up.clone()], &all);
        // For inference on a GPU backend, the SwiGLU and the weights in one kernel (see `crate::cube`).
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        if let Some(h) = choice
            .dense
            .as_ref()
            .and_then(|dense| crate::cube::try_swiglu(&gate_up, dense, inter))
        {
            return grouped_linear(h, vec![self.down.clone()], &all);
        }
        let weights = match choice.dense {
            Some(dense) => dense.cast(dtype),
            None => Tensor::<B, 2>::zeros([tokens, self.experts], (&device, dtype)).scatter(
                1,
                choice.experts,
                choice.weights.cast(dtype),
                IndexingUpdateOp::Add,
            ),
        };
        let h = silu(gate_up.clone().slice([0..tokens, 0..width]))
            * gate_up.slice([0..tokens, width..2 * width]);
        let h =
            h.reshape([tokens, self.experts, inter]) * weights.reshape([tokens, self.experts, 1]);
        grouped_linear(h.reshape([tokens, width]), vec![self.down.clone()], &all)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::nn::LinearConfig;
    use burn::tensor::{Distribution, TensorData};

    use super::*;

    type B = NdArray<f32>;

    fn expert(
        hidden: usize,
        inter: usize,
        device: &burn::backend::ndarray::NdArrayDevice,
    ) -> Expert<B> {
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
            dense: None,
        };
        let got = StackedExperts::stack(&experts, DType::F32)
            .unwrap()
            .forward(x.clone(), choice);
        for t in 0..3 {
            let row = x.clone().slice(t..t + 1);
            let mut want = row.zeros_like();
            for j in 0..2 {
                want = want
                    + experts[chosen[t][j] as usize]
                        .forward(row.clone())
                        .mul_scalar(w[t][j]);
            }
            got.clone()
                .slice(t..t + 1)
                .into_data()
                .assert_approx_eq::<f32>(
                    &want.into_data(),
                    burn::tensor::Tolerance::absolute(1e-6),
                );
        }
    }

    /// The expected share of experts a batch chooses at random: 82.4 of Qwen3-30B-A3B's 128 at
    /// batch 16 (routed only), 56.4 of OLMoE-1B-7B's 64 (the stacked GEMMs); none for no tokens.
    #[test]
    fn routed_share_is_the_expected_share_of_experts_chosen() {
        let qwen3 = routed_share(16, 8, 128);
        let olmoe = routed_share(16, 8, 64);
        assert!((qwen3 * 128.0 - 82.42).abs() < 0.01, "{qwen3}");
        assert!((olmoe * 64.0 - 56.44).abs() < 0.01, "{olmoe}");
        assert!(qwen3 <= ROUTED_MAX_SHARE && olmoe > ROUTED_MAX_SHARE);
        assert_eq!(routed_share(0, 8, 64), 0.0);
        assert_eq!(routed_share(3, 8, 8), 1.0);
    }

    /// The gathered groups give the sliced groups' products and gradients, bit for bit: groups of
    /// several lengths (several padded batches) with empty ones among them, and one group alone.
    #[test]
    fn gathered_groups_equal_sliced_groups_forward_and_backward() {
        type A = burn::backend::Autodiff<B>;
        let device = Default::default();
        for counts in [&[40usize, 0, 17, 3, 90, 1, 0, 33][..], &[25]] {
            let rows: usize = counts.iter().sum();
            let x = Tensor::<A, 2>::random([rows, 4], Distribution::Normal(0.0, 1.0), &device);
            let weights: Vec<Tensor<A, 2>> = counts
                .iter()
                .map(|_| Tensor::random([4, 3], Distribution::Normal(0.0, 1.0), &device))
                .collect();
            let run = |gather: bool| {
                let x = x.clone().detach().require_grad();
                let w: Vec<_> = weights
                    .iter()
                    .map(|w| w.clone().detach().require_grad())
                    .collect();
                let y = match gather {
                    true => gathered_linear(x.clone(), w.clone(), counts),
                    false => grouped_linear_matmul(x.clone(), w.clone(), counts),
                };
                let grads = (y.clone() * y.clone()).sum().backward();
                let mut out = vec![Some(y.into_data()), x.grad(&grads).map(|g| g.into_data())];
                out.extend(w.iter().map(|w| w.grad(&grads).map(|g| g.into_data())));
                out
            };
            for (got, want) in run(true).into_iter().zip(run(false)) {
                assert_eq!(got, want, "counts {counts:?}");
            }
        }
    }
}
