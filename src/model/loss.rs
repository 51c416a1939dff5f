//! The causal language-modelling loss, as transformers' `ForCausalLMLoss`: logits at position t
//! predict the label at t + 1; labels of -100 are ignored; the mean is over counted tokens.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::experts::{dense_linear, to_f32};

/// Label value that is not counted (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Mean next-token cross-entropy over labels that are not [`IGNORE_INDEX`], in float32.
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab]`; `labels`: `[batch, seq]` → scalar `[1]`
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [batch, seq, vocab] = logits.dims();
    let logits = to_f32(logits.slice([0..batch, 0..seq - 1, 0..vocab]));
    let targets = labels
        .slice([0..batch, 1..seq])
        .reshape([batch * (seq - 1), 1]);
    let counted = targets.clone().not_equal_elem(IGNORE_INDEX);
    let safe = targets.clone().mask_fill(counted.clone().bool_not(), 0);
    let logp = log_softmax(logits.reshape([batch * (seq - 1), vocab]), 1);
    let picked = logp.gather(1, safe);
    let weight = counted.float();
    let n = weight.clone().sum();
    (picked * weight).sum().neg() / n
}

/// Where the loss counts in a batch, precomputed on the host: training applies the LM head only
/// at these positions (the assistant turn is a small part of a long jailbreak prompt).
#[derive(Debug, Clone)]
pub struct Targets<B: Backend> {
    /// `[n]` flat positions `b * seq + t` whose logits predict a counted label.
    pub positions: Tensor<B, 1, Int>,
    /// `[n]` the label each of them predicts (the label at `t + 1`).
    pub labels: Tensor<B, 1, Int>,
}

impl<B: Backend> Targets<B> {
    /// From `[batch, seq]` labels in row-major order (`-100` = not counted).
    pub fn from_labels(labels: &[i64], batch: usize, seq: usize, device: &B::Device) -> Self {
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        for b in 0..batch {
            for t in 0..seq.saturating_sub(1) {
                let l = labels[b * seq + t + 1];
                if l != IGNORE_INDEX {
                    positions.push((b * seq + t) as i64);
                    targets.push(l);
                }
            }
        }
        let n = positions.len();
        Self {
            positions: Tensor::from_data(burn::tensor::TensorData::new(positions, [n]), device),
            labels: Tensor::from_data(burn::tensor::TensorData::new(targets, [n]), device),
        }
    }

    /// Number of counted tokens.
    pub fn len(&self) -> usize {
        self.positions.dims()[0]
    }

    /// Whether nothing counts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Mean next-token cross-entropy at the counted positions, applying `head` there only (through
/// [`dense_linear`]: cuBLAS on CUDA, where burn's GEMM took ~45 ms of a train step at the
/// OLMoE-1B-7B shape). Equal to [`causal_lm_loss`] over the full logits.
///
/// # Shapes
/// - `hidden`: `[batch, seq, hidden]` → scalar `[1]`
pub fn targeted_lm_loss<B: Backend>(
    hidden: Tensor<B, 3>,
    head: &burn::nn::Linear<B>,
    targets: &Targets<B>,
) -> Tensor<B, 1> {
    let n = targets.len();
    token_nll(hidden, head, targets)
        .sum()
        .div_scalar(n.max(1) as f64)
}

/// The next-token cross-entropy at each counted position, in float32, applying `head` there
/// only (as [`targeted_lm_loss`], which is their mean).
///
/// # Shapes
/// - `hidden`: `[batch, seq, hidden]` → `[targets]`
pub fn token_nll<B: Backend>(
    hidden: Tensor<B, 3>,
    head: &burn::nn::Linear<B>,
    targets: &Targets<B>,
) -> Tensor<B, 1> {
    let [batch, seq, width] = hidden.dims();
    let rows = hidden
        .reshape([batch * seq, width])
        .select(0, targets.positions.clone());
    let logp = log_softmax(to_f32(dense_linear(head, rows)), 1);
    let n = targets.len();
    logp.gather(1, targets.labels.clone().reshape([n, 1]))
        .neg()
        .reshape([n])
}

/// The Switch-Transformer load-balancing loss OLMoE adds (times `router_aux_loss_coef`) when
/// router logits are output (transformers: `load_balancing_loss_func`, no attention mask):
/// `E * Σ_e f_e · P_e`, where `f_e` is the share of (token, slot) choices that picked expert `e`
/// (top-k of the softmax of the given logits, over every layer's tokens) and `P_e` the mean
/// router probability of `e`. Only `P_e` carries gradient.
///
/// # Shapes
/// - `router_logits`: `[layers, batch, seq, experts]` → scalar `[1]`
pub fn load_balancing_loss<B: Backend>(router_logits: Tensor<B, 4>, top_k: usize) -> Tensor<B, 1> {
    let [layers, batch, seq, experts] = router_logits.dims();
    let rows = layers * batch * seq;
    let probs =
        burn::tensor::activation::softmax(to_f32(router_logits.reshape([rows, experts])), 1);
    // On the device, without burn's sort (a host round trip); see `routing::top_k`.
    let (_, selected) = super::routing::top_k(probs.clone().detach(), top_k);
    let picks = Tensor::<B, 2>::zeros([rows, experts], (&probs.device(), probs.dtype())).scatter(
        1,
        selected,
        Tensor::ones([rows, top_k], (&probs.device(), probs.dtype())),
        burn::tensor::IndexingUpdateOp::Add,
    );
    let share = picks.mean_dim(0);
    let mean_prob = probs.mean_dim(0);
    (share * mean_prob).sum().mul_scalar(experts as f64)
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tensor};

    use super::*;

    type B = NdArray<f32>;

    #[test]
    fn load_balancing_loss_is_experts_times_choice_shares_times_mean_probabilities() {
        let device = Default::default();
        let [layers, batch, seq, experts, k] = [2, 3, 5, 6, 2];
        let logits = Tensor::<B, 4>::random(
            [layers, batch, seq, experts],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let values: Vec<f32> = logits.to_data().to_vec().unwrap();
        let rows = (layers * batch * seq) as f64;
        let (mut share, mut mean) = (vec![0f64; experts], vec![0f64; experts]);
        for row in values.chunks(experts) {
            let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - top).exp()).collect();
            let z: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|v| v / z).collect();
            p.iter()
                .enumerate()
                .for_each(|(i, pi)| mean[i] += pi / rows);
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            order[..k].iter().for_each(|&i| share[i] += 1.0 / rows);
        }
        let want = experts as f64 * share.iter().zip(&mean).map(|(f, p)| f * p).sum::<f64>();
        let got = load_balancing_loss(logits, k).into_scalar() as f64;
        assert!((got - want).abs() < 1e-5, "{got} against {want}");
    }
}
