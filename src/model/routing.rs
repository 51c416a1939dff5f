//! Routing: the one place where router logits become expert choices, used by every MoE layer.
//!
//! Mirrors transformers' `OlmoeTopKRouter` / `OlmoeSparseMoeBlock` routing: softmax over *all*
//! experts in float32, top-k of the probabilities, optional renormalisation of the k weights.
//! On top of it, a [`Routing`] (threaded through `forward` as an argument, never stored in the
//! model) can
//! - *capture* each layer's raw router logits (before mask and steering);
//! - *mask* experts: masked logits get −1e9 added before the softmax, exactly as the reference's
//!   `mask_router` does, so they are never chosen while an allowed expert remains and carry weight
//!   `exp(-1e9) = 0` when fewer than k are allowed (−1e9 rather than −inf keeps an all-masked row
//!   finite);
//! - *steer* as the SteerMoE paper's code does (adobe-research/SteerMoE, `OlmoeMoE.forward` of its
//!   vLLM models): the router logits become log-probabilities, each *forced-on* expert gets the
//!   token's highest log-probability + 0.01 (so it joins every token's top-k), each *forced-off*
//!   expert its lowest − 0.01 (so it leaves it), and the routing weights are the softmax of these
//!   scores. Both extremes are taken before either change.
//! - *remove* experts ([`Routing::without`], the one path by which analysis ablates an expert and
//!   `eval` and `serve` force one off), in either of two ways ([`Removal`]): *routed around* —
//!   the forced-off score above, so the next expert takes its slot — or *zeroed* — its routing
//!   weight multiplied by 0 after the top-k, so its contribution goes and every other expert
//!   keeps its weight;
//! - *scale* each expert's routing weight ([`Routing::with_weight_scale`]): zeroing is a scale of 0;
//!   at a scale of 1 the forward pass is unchanged and the gradient of a loss with respect to
//!   the scale is the first-order effect of zeroing (attribution patching).
//!
//! Ties in the top-k go to the lower expert index (a stable descending sort's order); a tie
//! between two allowed experts has measure zero with real logits, and ties between masked experts
//! carry weight zero. The top-k is computed on the device without sorting ([`top_k`]): burn 0.21's
//! sort runs on the host on every backend, a device synchronisation per MoE layer. On the GPU
//! backends its indices come from one kernel, and in inference the softmax, top-k and weights
//! too (`crate::cube`); the CPU runs the burn ops written here, which the kernels are tested
//! against.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

use super::experts::{Choice, to_f32};

/// Added to the logits of masked experts, as `mask_router` in `make_fixtures.py` does.
pub const MASK_PENALTY: f32 = -1e9;

/// How an expert is taken out of the routing.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Removal {
    /// Its router score set below every other (the SteerMoE paper's forced-off expert): it
    /// leaves the top-k and the next expert takes the slot.
    #[default]
    Route,
    /// Its routing weight set to 0 after the top-k: its contribution is removed and the other
    /// experts keep their weights (and their slots).
    Zero,
}

impl Removal {
    /// Both, in the order reports list them.
    pub const ALL: [Removal; 2] = [Removal::Zero, Removal::Route];
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Removal::Route => "route",
            Removal::Zero => "zero",
        })
    }
}

/// How the routers behave on one forward pass.
#[derive(Clone, Debug)]
pub struct Routing<B: Backend> {
    /// `[layers, batch or 1, experts]`, `true` = may be chosen.
    pub allow: Option<Tensor<B, 3, Bool>>,
    /// `[layers, batch or 1, experts]`, `true` = forced into every token's top-k (steering).
    pub force_on: Option<Tensor<B, 3, Bool>>,
    /// `[layers, batch or 1, experts]`, `true` = forced out of every token's top-k (steering).
    pub force_off: Option<Tensor<B, 3, Bool>>,
    /// `[layers, batch or 1, experts]` float32: each expert's routing weight is multiplied by its
    /// entry after the top-k (and its renormalisation).
    pub weight_scale: Option<Tensor<B, 3>>,
    /// Return each layer's router logits (before mask and steering) and chosen experts.
    pub capture: bool,
}

impl<B: Backend> Default for Routing<B> {
    fn default() -> Self {
        Self {
            allow: None,
            force_on: None,
            force_off: None,
            weight_scale: None,
            capture: false,
        }
    }
}

impl<B: Backend> Routing<B> {
    /// Free routing: no mask, no steering, no capture (the fast path).
    pub fn free() -> Self {
        Self::default()
    }

    /// Free routing that captures router logits.
    pub fn capturing() -> Self {
        Self {
            capture: true,
            ..Self::default()
        }
    }

    /// One expert mask for every sample.
    ///
    /// # Shapes
    /// - `allow`: `[layers, experts]`, `true` = may be chosen
    pub fn with_mask(mut self, allow: Tensor<B, 2, Bool>) -> Self {
        self.allow = Some(allow.unsqueeze_dim(1));
        self
    }

    /// One expert mask per sample.
    ///
    /// # Shapes
    /// - `allow`: `[batch, layers, experts]`, `true` = may be chosen
    pub fn with_sample_masks(mut self, allow: Tensor<B, 3, Bool>) -> Self {
        self.allow = Some(allow.swap_dims(0, 1));
        self
    }

    /// Steering: force experts into (`on`) and out of (`off`) every token's top-k.
    ///
    /// # Shapes
    /// - `on`, `off`: `[layers, experts]`, `true` = forced
    pub fn with_forced(
        mut self,
        on: Option<Tensor<B, 2, Bool>>,
        off: Option<Tensor<B, 2, Bool>>,
    ) -> Self {
        self.force_on = on.map(|m| m.unsqueeze_dim(1));
        self.force_off = off.map(|m| m.unsqueeze_dim(1));
        self
    }

    /// Take the experts of `off` out of the routing, the way `how` says (the one path of ablation
    /// and forced-off steering): routed around is [`Routing::with_forced`]'s forced-off score,
    /// zeroed a [`Routing::with_weight_scale`] of 0. Forced-off experts or a scale already set
    /// are replaced.
    ///
    /// # Shapes
    /// - `off`: `[layers, experts]`, `true` = removed
    pub fn without(self, off: Tensor<B, 2, Bool>, how: Removal) -> Self {
        self.removing(off.unsqueeze_dim(1), how)
    }

    /// [`Routing::without`] with its own experts removed from each sample: what ablates several
    /// experts in one forward pass (a batch repeated, each copy without one expert).
    ///
    /// # Shapes
    /// - `off`: `[batch, layers, experts]`, `true` = removed from that sample's routing
    pub fn without_each(self, off: Tensor<B, 3, Bool>, how: Removal) -> Self {
        self.removing(off.swap_dims(0, 1), how)
    }

    /// `off`: `[layers, batch or 1, experts]`.
    fn removing(mut self, off: Tensor<B, 3, Bool>, how: Removal) -> Self {
        match how {
            Removal::Route => self.force_off = Some(off),
            Removal::Zero => self.weight_scale = Some(off.bool_not().float()),
        }
        self
    }

    /// Multiply each expert's routing weight by `scale` (float32).
    ///
    /// # Shapes
    /// - `scale`: `[layers, experts]`
    pub fn with_weight_scale(mut self, scale: Tensor<B, 2>) -> Self {
        self.weight_scale = Some(scale.unsqueeze_dim(1));
        self
    }

    /// Turn capture on or off.
    pub fn with_capture(mut self, capture: bool) -> Self {
        self.capture = capture;
        self
    }

    /// The view of layer `layer`.
    pub fn layer(&self, layer: usize) -> LayerRouting<B> {
        LayerRouting {
            allow: self.allow.as_ref().map(|a| layer_rows(a, layer)),
            force_on: self.force_on.as_ref().map(|f| layer_rows(f, layer)),
            force_off: self.force_off.as_ref().map(|f| layer_rows(f, layer)),
            weight_scale: self.weight_scale.as_ref().map(|w| layer_rows(w, layer)),
            capture: self.capture,
            index: None,
        }
    }
}

/// Layer `layer` of a `[layers, batch or 1, experts]` setting: `[batch or 1, experts]`.
fn layer_rows<B: Backend, K: burn::tensor::TensorKind<B> + burn::tensor::BasicOps<B>>(
    setting: &Tensor<B, 3, K>,
    layer: usize,
) -> Tensor<B, 2, K> {
    let [_, rows, experts] = setting.dims();
    setting
        .clone()
        .slice(layer..layer + 1)
        .reshape([rows, experts])
}

/// A `[batch or 1, experts]` setting for each of `tokens` rows (batch-major, `seq` a sample).
fn per_token<B: Backend, K: burn::tensor::TensorKind<B> + burn::tensor::BasicOps<B>>(
    setting: Tensor<B, 2, K>,
    batch: usize,
    tokens: usize,
) -> Tensor<B, 2, K> {
    let [rows, experts] = setting.dims();
    if rows == 1 {
        setting.expand([tokens, experts])
    } else {
        setting
            .unsqueeze_dim::<3>(1)
            .expand([batch, tokens / batch, experts])
            .reshape([tokens, experts])
    }
}

/// One layer's routing settings, as [`Routing::layer`] hands them to a MoE block.
#[derive(Clone, Debug)]
pub struct LayerRouting<B: Backend> {
    /// `[batch or 1, experts]`, `true` = may be chosen.
    pub allow: Option<Tensor<B, 2, Bool>>,
    /// `[batch or 1, experts]`, `true` = forced into the top-k.
    pub force_on: Option<Tensor<B, 2, Bool>>,
    /// `[batch or 1, experts]`, `true` = forced out of the top-k.
    pub force_off: Option<Tensor<B, 2, Bool>>,
    /// `[batch or 1, experts]` float32: multiplies each expert's routing weight.
    pub weight_scale: Option<Tensor<B, 2>>,
    /// Capture the logits and the choices.
    pub capture: bool,
    /// `0..experts` on the logits' device for the top-k (`None`: made by each call).
    pub index: Option<Tensor<B, 1, Int>>,
}

impl<B: Backend> LayerRouting<B> {
    /// Take the top-k's `0..experts` from `index` rather than uploading it.
    pub fn with_index(mut self, index: Tensor<B, 1, Int>) -> Self {
        self.index = Some(index);
        self
    }

    /// Turn router logits into the top-k experts and their weights.
    ///
    /// # Shapes
    /// - `logits`: `[batch * seq, experts]` (rows batch-major), `batch` rows of `allow` expanded
    ///   over `seq`
    pub fn choose(
        &self,
        logits: Tensor<B, 2>,
        batch: usize,
        top_k: usize,
        renorm: bool,
    ) -> Choice<B> {
        let [tokens, num_experts] = logits.dims();
        let dtype = logits.dtype();
        let mut routed = logits;
        if let Some(allow) = &self.allow {
            // masked = router_logits + (1.0 - mask) * -1e9
            let penalty = allow
                .clone()
                .bool_not()
                .float()
                .cast(dtype)
                .mul_scalar(MASK_PENALTY);
            routed = routed + per_token(penalty, batch, tokens);
        }
        let scores = match self.force_on.is_some() || self.force_off.is_some() {
            false => routed,
            true => {
                // router_logits = log_softmax(router_logits); max_per_tok, min_per_tok taken first;
                // router_logits[:, pos_mask] = max_per_tok + 0.01; router_logits[:, neg_mask] = min_per_tok - 0.01
                let logp = log_softmax(to_f32(routed), 1);
                let top = logp
                    .clone()
                    .max_dim(1)
                    .add_scalar(0.01)
                    .expand([tokens, num_experts]);
                let bottom = logp
                    .clone()
                    .min_dim(1)
                    .sub_scalar(0.01)
                    .expand([tokens, num_experts]);
                let rows = |m: &Tensor<B, 2, Bool>| per_token(m.clone(), batch, tokens);
                let mut scores = logp;
                if let Some(on) = &self.force_on {
                    scores = scores.mask_where(rows(on), top);
                }
                if let Some(off) = &self.force_off {
                    scores = scores.mask_where(rows(off), bottom);
                }
                scores
            }
        };
        // Inference on a GPU backend: all of what follows as one kernel (see `crate::cube`), which
        // reads the scores in their own dtype (the float32 cast is its first step).
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        if let Some(route) = crate::cube::try_route(&scores, top_k, renorm) {
            return self.scaled(
                batch,
                Choice {
                    weights: route.weights,
                    experts: route.indices,
                    dense: Some(route.dense),
                },
            );
        }
        // probs = softmax(router_logits, dtype=torch.float)
        let probs = softmax(to_f32(scores), 1);
        let (mut weights, experts) = match &self.index {
            Some(index) => top_k_indexed(probs, top_k, index.clone()),
            None => self::top_k(probs, top_k),
        };
        if renorm {
            // top_v = top_v / top_v.sum(dim=-1, keepdim=True)
            weights = weights.clone() / weights.sum_dim(1);
        }
        self.scaled(
            batch,
            Choice {
                weights,
                experts,
                dense: None,
            },
        )
    }

    /// `choice` with each expert's weight multiplied by its [`LayerRouting::weight_scale`].
    fn scaled(&self, batch: usize, choice: Choice<B>) -> Choice<B> {
        let Some(scale) = &self.weight_scale else {
            return choice;
        };
        let [tokens, k] = choice.weights.dims();
        let scale = per_token(scale.clone(), batch, tokens);
        let at_chosen = scale.clone().gather(1, choice.experts.clone());
        debug_assert_eq!(at_chosen.dims(), [tokens, k]);
        Choice {
            weights: choice.weights * at_chosen,
            dense: choice.dense.map(|d| d * scale),
            experts: choice.experts,
        }
    }
}

/// The `k` largest entries of every row of `x` `[rows, n]`, in descending order (ties to the
/// lower index; NaN last), and their indices, both `[rows, k]`; the values are gathered from
/// `x`, so gradients flow to it as through burn's `topk_with_indices`.
///
/// Computed without a sort, all on the device: entry `j`'s rank is the number of entries that
/// come before it (larger, or equal at a lower index), and slot `r` holds the entry of rank `r`.
/// `O(rows · n²)` work, nothing at the OLMoE shapes (n = 64); burn 0.21's sort instead reads the
/// tensor back to the host, a synchronisation per call.
pub fn top_k<B: Backend>(x: Tensor<B, 2>, k: usize) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
    let index = Tensor::arange(0..x.dims()[1] as i64, &x.device());
    top_k_indexed(x, k, index)
}

/// [`top_k`] given `0..n` on `x`'s device (from a forward pass's
/// [`Constants`](super::constants::Constants), so that no MoE layer uploads it).
///
/// On burn's GPU backends the indices come from one kernel instead (`crate::cube::try_top_k`,
/// the same order), the values gathered as here.
pub fn top_k_indexed<B: Backend>(
    x: Tensor<B, 2>,
    k: usize,
    index: Tensor<B, 1, Int>,
) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if let Some(indices) = crate::cube::try_top_k(&x, k) {
        return (x.gather(1, indices.clone()), indices);
    }
    if on_host::<B>(&x.device()) {
        return top_k_on_host(x, k);
    }
    top_k_by_rank(x, k, index)
}

/// Whether `B` computes on the host (burn's ndarray backend, under autodiff or not): there
/// reading a tensor is a copy, not a device synchronisation.
fn on_host<B: Backend>(device: &B::Device) -> bool {
    B::name(device).contains("ndarray")
}

/// [`top_k_by_rank`]'s result computed on the host, in `O(rows · n log k)` rather than its
/// `O(rows · n²)` comparisons (on the CPU those dominated a forward pass of 64 experts): the same
/// order — descending, ties to the lower index, NaN ranked as −∞ — and the values gathered from
/// `x` on its backend, so gradients flow as there.
fn top_k_on_host<B: Backend>(x: Tensor<B, 2>, k: usize) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
    let [rows, n] = x.dims();
    assert!(k <= n, "top-{k} of rows of {n} entries");
    let values: Vec<f32> = x.to_data().convert::<f32>().to_vec().expect("float values");
    let mut indices = Vec::with_capacity(rows * k);
    let mut order: Vec<usize> = Vec::with_capacity(n);
    for row in values.chunks(n.max(1)) {
        let key = |i: usize| match row[i].is_nan() {
            true => f32::NEG_INFINITY,
            false => row[i],
        };
        let before = |a: &usize, b: &usize| {
            key(*b)
                .partial_cmp(&key(*a))
                .expect("no NaN keys")
                .then(a.cmp(b))
        };
        order.clear();
        order.extend(0..n);
        if k > 0 && k < n {
            order.select_nth_unstable_by(k - 1, before);
        }
        order[..k].sort_unstable_by(before);
        indices.extend(order[..k].iter().map(|&i| i as i64));
    }
    let indices = Tensor::<B, 2, Int>::from_data(
        burn::tensor::TensorData::new(indices, [rows, k]),
        &x.device(),
    );
    (x.gather(1, indices.clone()), indices)
}

/// [`top_k_indexed`] with burn's tensor ops on every backend (what the kernel is tested against).
pub fn top_k_by_rank<B: Backend>(
    x: Tensor<B, 2>,
    k: usize,
    index: Tensor<B, 1, Int>,
) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
    top_k_in_chunks(x, k, index, TOP_K_CHUNK_ELEMENTS)
}

/// Rows × n² above which [`top_k`] works through the rows in chunks, bounding its `[rows, n, n]`
/// intermediates (2²⁶ elements: 256 MiB as i32; one chunk for 8,192 rows of 64 experts).
const TOP_K_CHUNK_ELEMENTS: usize = 1 << 26;

fn top_k_in_chunks<B: Backend>(
    x: Tensor<B, 2>,
    k: usize,
    index: Tensor<B, 1, Int>,
    max_elements: usize,
) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
    let [rows, n] = x.dims();
    assert_eq!(index.dims(), [n], "top-k index of another width");
    let chunk = (max_elements / (n * n).max(1)).max(1);
    if rows <= chunk {
        return top_k_rows(x, k, index);
    }
    let (values, indices): (Vec<_>, Vec<_>) = (0..rows)
        .step_by(chunk)
        .map(|start| {
            top_k_rows(
                x.clone().slice([start..(start + chunk).min(rows), 0..n]),
                k,
                index.clone(),
            )
        })
        .unzip();
    (Tensor::cat(values, 0), Tensor::cat(indices, 0))
}

fn top_k_rows<B: Backend>(
    x: Tensor<B, 2>,
    k: usize,
    arange: Tensor<B, 1, Int>,
) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
    let [rows, n] = x.dims();
    assert!(k <= n, "top-{k} of rows of {n} entries");
    let cube = [rows, n, n];
    // NaN compares false with everything, which would leave ranks unassigned: rank it last.
    let keys = x.clone().mask_fill(x.clone().is_nan(), f32::NEG_INFINITY);
    // [r, j, l]: x[r, l] (the other entry) and x[r, j] (this one).
    let other = keys.clone().unsqueeze_dim::<3>(1).expand(cube);
    let this = keys.unsqueeze_dim::<3>(2).expand(cube);
    // 0..n gives the [j, l] mask `l < j`, the slots 0..k and the entries' indices.
    let lower = arange
        .clone()
        .reshape([1, n])
        .expand([n, n])
        .lower(arange.clone().reshape([n, 1]).expand([n, n]))
        .unsqueeze_dim::<3>(0)
        .expand(cube);
    let before =
        other.clone().greater(this.clone()).int() + other.equal(this).bool_and(lower).int();
    // [r, j, slot]: entry j has rank `slot`.
    let rank = before.sum_dim(2).expand([rows, n, k]);
    let slots = arange
        .clone()
        .slice(0..k)
        .reshape([1, 1, k])
        .expand([rows, n, k]);
    let index = arange.reshape([1, n, 1]).expand([rows, n, k]);
    let indices = (rank.equal(slots).int() * index)
        .sum_dim(1)
        .reshape([rows, k]);
    (x.gather(1, indices.clone()), indices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray<f32>;

    fn layer<B: Backend>(
        allow: Option<Tensor<B, 2, Bool>>,
        force: [Option<Tensor<B, 1, Bool>>; 2],
    ) -> LayerRouting<B> {
        let [force_on, force_off] = force.map(|f| f.map(|f| f.unsqueeze_dim(0)));
        LayerRouting {
            allow,
            force_on,
            force_off,
            weight_scale: None,
            ..Routing::free().layer(0)
        }
    }

    fn logits() -> Tensor<B, 2> {
        Tensor::from_floats(
            [[1.0, 3.0, 2.0, 0.0], [0.5, -1.0, 4.0, 3.5]],
            &Default::default(),
        )
    }

    #[test]
    fn free_routing_picks_the_largest_probabilities() {
        let choice = layer::<B>(None, [None, None]).choose(logits(), 1, 2, false);
        choice
            .experts
            .into_data()
            .assert_eq(&TensorData::from([[1i64, 2], [2, 3]]), false);
        // softmax([1,3,2,0]) at 3 and 2
        let e: Vec<f32> = [1.0f32, 3.0, 2.0, 0.0].iter().map(|v| v.exp()).collect();
        let s: f32 = e.iter().sum();
        let w = choice.weights.into_data().to_vec::<f32>().unwrap();
        assert!((w[0] - e[1] / s).abs() < 1e-6 && (w[1] - e[2] / s).abs() < 1e-6);
    }

    #[test]
    fn top_k_orders_like_a_stable_descending_sort() {
        let device = Default::default();
        let x = Tensor::<B, 2>::from_floats(
            [
                [0.1, 0.7, 0.7, 0.0, 0.2],
                [0.0, 0.0, 0.0, 0.0, 0.0],
                [5.0, 4.0, 3.0, 2.0, 1.0],
                [f32::NAN, 1.0, f32::NAN, 2.0, 0.5],
            ],
            &device,
        );
        let (values, indices) = top_k(x, 3);
        indices.into_data().assert_eq(
            &TensorData::from([[1i64, 2, 4], [0, 1, 2], [0, 1, 2], [3, 1, 4]]),
            false,
        );
        values.into_data().assert_eq(
            &TensorData::from([
                [0.7f32, 0.7, 0.2],
                [0.0, 0.0, 0.0],
                [5.0, 4.0, 3.0],
                [2.0, 1.0, 0.5],
            ]),
            false,
        );
        // An all-NaN row still gives valid, distinct indices.
        let (_, indices) = top_k(Tensor::<B, 2>::full([1, 4], f32::NAN, &device), 2);
        indices
            .into_data()
            .assert_eq(&TensorData::from([[0i64, 1]]), false);
        // Against a sort on the host, on random rows.
        let x = Tensor::<B, 2>::random([64, 16], burn::tensor::Distribution::Default, &device);
        let rows: Vec<f32> = x.to_data().to_vec().unwrap();
        let (_, indices) = top_k(x, 4);
        let got: Vec<i64> = indices.into_data().to_vec().unwrap();
        for (r, row) in rows.chunks(16).enumerate() {
            let mut order: Vec<usize> = (0..16).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            assert_eq!(
                &got[r * 4..r * 4 + 4],
                &order[..4].iter().map(|&i| i as i64).collect::<Vec<_>>()[..],
                "row {r}"
            );
        }
        // By rank on the device (what the GPU backends run without a kernel), the same, ties
        // and NaN included.
        let mut x = Tensor::<B, 2>::random([40, 16], burn::tensor::Distribution::Default, &device);
        x = x.mul_scalar(4.0).round().div_scalar(4.0);
        let x = x.clone().mask_fill(x.lower_elem(0.1), f32::NAN);
        let (v1, i1) = top_k(x.clone(), 5);
        let (v2, i2) = top_k_by_rank(x, 5, Tensor::arange(0..16, &device));
        i2.into_data().assert_eq(&i1.into_data(), true);
        v2.into_data().assert_eq(&v1.into_data(), true);
        // In chunks of 5 rows (the last one short), the same.
        let x = Tensor::<B, 2>::random([23, 16], burn::tensor::Distribution::Default, &device);
        let (v1, i1) = top_k(x.clone(), 4);
        let (v2, i2) = top_k_in_chunks(x, 4, Tensor::arange(0..16, &device), 5 * 16 * 16);
        i2.into_data().assert_eq(&i1.into_data(), true);
        v2.into_data().assert_eq(&v1.into_data(), true);
    }

    #[test]
    fn masked_experts_are_never_chosen_and_weigh_nothing() {
        let device = Default::default();
        // Only expert 0 allowed: the second choice is a masked expert with weight 0.
        let allow = Tensor::<B, 2, Bool>::from_bool(
            TensorData::from([[true, false, false, false]]),
            &device,
        );
        let choice = layer(Some(allow), [None, None]).choose(logits(), 1, 2, true);
        let experts = choice.experts.into_data().to_vec::<i64>().unwrap();
        let w = choice.weights.into_data().to_vec::<f32>().unwrap();
        assert_eq!(experts[0], 0);
        assert_eq!(experts[2], 0);
        assert_eq!((w[0], w[1], w[2], w[3]), (1.0, 0.0, 1.0, 0.0));
    }

    #[test]
    fn per_sample_masks() {
        let device = Default::default();
        // batch 2, seq 1: sample 0 may only use expert 3, sample 1 only expert 1.
        let allow = Tensor::<B, 2, Bool>::from_bool(
            TensorData::from([[false, false, false, true], [false, true, false, false]]),
            &device,
        );
        let choice = layer(Some(allow), [None, None]).choose(logits(), 2, 1, false);
        choice
            .experts
            .into_data()
            .assert_eq(&TensorData::from([[3i64], [1]]), false);
    }

    #[test]
    fn forced_experts_join_or_leave_every_top_k_as_the_paper_sets_them() {
        let device = Default::default();
        let mask = |v: [bool; 4]| {
            Some(Tensor::<B, 1, Bool>::from_bool(
                TensorData::from(v),
                &device,
            ))
        };
        // Expert 0 forced on, expert 2 forced off; k = 2.
        let choice = layer(
            None,
            [
                mask([true, false, false, false]),
                mask([false, false, true, false]),
            ],
        )
        .choose(logits(), 1, 2, false);
        choice
            .experts
            .into_data()
            .assert_eq(&TensorData::from([[0i64, 1], [0, 3]]), false);
        // Scores: log_softmax, forced on = max + 0.01, forced off = min - 0.01, then softmax.
        let row = [0.5f32, -1.0, 4.0, 3.5];
        let lse = row.iter().map(|v| v.exp()).sum::<f32>().ln();
        let logp: Vec<f32> = row.iter().map(|v| v - lse).collect();
        let mut s = logp.clone();
        s[0] = logp[2] + 0.01;
        s[2] = logp[1] - 0.01;
        let z: f32 = s.iter().map(|v| v.exp()).sum();
        let w = choice.weights.into_data().to_vec::<f32>().unwrap();
        assert!(
            (w[2] - s[0].exp() / z).abs() < 1e-6 && (w[3] - s[3].exp() / z).abs() < 1e-6,
            "{w:?}"
        );
    }
}
