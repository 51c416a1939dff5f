//! The train and inference steps burn-train's Learner calls: [`SftModel`] is the model with its
//! loss settings as module configuration; a step is the forward pass under the batch's routing,
//! the SFT loss (plus the optional load-balancing loss and router-consistency KL) and, in
//! training, backward.
//!
//! The experts every token chose come back from the forward pass as a tensor and are read to the
//! host in the one transaction that reads the loss ([`SftOutput::sync`]), where they are counted
//! for the dashboard: no extra host read per layer.

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData, Transaction};
use burn::train::metric::{Adaptor, ItemLazy, LossInput};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use super::config::{Consistency, Phase, RouterKl, TrainConfig, Trainable};
use super::loader::SftBatch;
use super::parallel;
use super::shard::Rank;
use crate::model::experts::{in_dtype, to_f32};
use crate::model::loss::{load_balancing_loss, targeted_lm_loss};
use crate::model::{LmInput, ModelConfig, MoeLm};
use burn::optim::GradientsParams;

/// What the training loss adds to the language-modelling loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSettings {
    /// Router-consistency KL direction.
    pub consistency: Consistency,
    /// Its weight.
    pub consistency_weight: f64,
    /// Load-balancing loss coefficient (0 = off).
    pub aux_coef: f64,
}

impl LossSettings {
    /// The settings `t` asks for on a model of `model_cfg`.
    pub fn new(t: &TrainConfig, model_cfg: &ModelConfig) -> Self {
        Self {
            consistency: t.router_consistency,
            consistency_weight: t.consistency_weight,
            aux_coef: if t.router_aux_loss {
                model_cfg.router_aux_loss_coef
            } else {
                0.0
            },
        }
    }

    /// The language-modelling loss alone.
    pub fn lm_only() -> Self {
        Self {
            consistency: Consistency::Off,
            consistency_weight: 0.0,
            aux_coef: 0.0,
        }
    }
}

/// Which rows of each MoE layer's router may change, `[moe_layer][expert]`: a planted
/// behaviour's router learns to send its prompts to the planted experts without touching how the
/// others are scored.
pub type RouterRows = Arc<Vec<Vec<bool>>>;

/// What the alternating schedule's steps need beside the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alternating {
    /// The router steps' divergence.
    pub router_kl: RouterKl,
    /// Expert steps train every parameter (`trainable = "all"`), routers included.
    pub expert_steps_move_routers: bool,
}

impl Alternating {
    /// The settings of `t`, when it alternates.
    pub fn new(t: &TrainConfig) -> Self {
        Self {
            router_kl: t.router_kl,
            expert_steps_move_routers: t.trainable == Trainable::All,
        }
    }
}

/// The model being fine-tuned, with the loss it is trained on.
#[derive(Module, Debug)]
pub struct SftModel<B: Backend> {
    /// The model.
    pub model: MoeLm<B>,
    /// The loss (configuration: not saved in checkpoints).
    #[module(skip)]
    pub loss: LossSettings,
    /// Where routers train, the rows that may (the others' gradients are zeroed before the
    /// optimizer sees them, so with no weight decay they stay bit-identical); `None`: whole
    /// routers.
    #[module(skip)]
    pub router_rows: Option<RouterRows>,
    /// The alternating schedule's settings (`None`: joint).
    #[module(skip)]
    pub alternating: Option<Alternating>,
}

impl<B: Backend> SftModel<B> {
    /// `model` trained on `loss`, whole routers (where they train).
    pub fn new(model: MoeLm<B>, loss: LossSettings) -> Self {
        Self {
            model,
            loss,
            router_rows: None,
            alternating: None,
        }
    }

    /// Train on the alternating schedule.
    pub fn alternating(self, settings: Alternating) -> Self {
        Self {
            alternating: Some(settings),
            ..self
        }
    }

    /// Only these router rows train.
    pub fn with_router_rows(self, rows: RouterRows) -> Self {
        Self {
            router_rows: Some(rows),
            ..self
        }
    }
}

impl<B: AutodiffBackend> SftModel<B> {
    /// Zero the gradient of every router row that must not change.
    fn mask_router_rows(&self, grads: &mut GradientsParams) {
        let Some(rows) = &self.router_rows else {
            return;
        };
        for (block, keep) in self.model.moe_blocks().zip(rows.iter()) {
            let id = block.gate.weight.id;
            let Some(g) = grads.remove::<B::InnerBackend, 2>(id) else {
                continue;
            };
            // burn's router weight is `[hidden, experts]`: a row of the Hub's is a column here.
            let values: Vec<f32> = keep.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
            let mask = Tensor::<B::InnerBackend, 2>::from_data(
                TensorData::new(values, [1, keep.len()]),
                &g.device(),
            );
            let dtype = g.dtype();
            grads.register(id, g * in_dtype(mask, dtype));
        }
    }

    /// Keep the gradients a step of `phase` may apply: a router step's of the routers only, an
    /// expert step's of everything but the routers (unless the expert steps train every
    /// parameter); a skipped step's none. Parameters without a gradient stay bit-identical.
    fn keep_phase(&self, grads: GradientsParams, phase: Phase, skip: bool) -> GradientsParams {
        if skip {
            return GradientsParams::new();
        }
        let move_routers = self
            .alternating
            .is_some_and(|a| a.expert_steps_move_routers);
        match phase {
            Phase::Joint => grads,
            Phase::Experts if move_routers => grads,
            Phase::Experts => {
                let mut grads = grads;
                for block in self.model.moe_blocks() {
                    grads.remove::<B::InnerBackend, 2>(block.gate.weight.id);
                }
                grads
            }
            Phase::Routers => {
                let mut grads = grads;
                let mut kept = GradientsParams::new();
                for block in self.model.moe_blocks() {
                    let id = block.gate.weight.id;
                    if let Some(g) = grads.remove::<B::InnerBackend, 2>(id) {
                        kept.register(id, g);
                    }
                }
                kept
            }
        }
    }
}

/// What one step reports.
#[derive(Debug, Clone)]
pub struct SftOutput<B: Backend> {
    /// The loss that was differentiated (`[1]`).
    pub loss: Tensor<B, 1>,
    /// The language-modelling part alone (`[1]`).
    pub lm_loss: Tensor<B, 1>,
    /// Tokens counted by the loss.
    pub tokens: usize,
    /// Real (unpadded) tokens forwarded.
    pub input_tokens: usize,
    /// The analysis batch.
    pub batch_idx: usize,
    /// `[layers, batch, seq, k]`: the experts each token chose.
    pub chosen: Tensor<B, 4, Int>,
    /// `[batch * seq]`, row-major: which tokens are real (counted in the expert counts).
    pub real: Arc<[bool]>,
    /// Experts per layer.
    pub num_experts: usize,
    /// The global step (1-based).
    pub step: usize,
    /// The rank whose part of the batch this is.
    pub rank: Rank,
    /// What the step trained.
    pub phase: Phase,
}

/// [`SftOutput`] read back to the host.
#[derive(Debug, Clone)]
pub struct SftOutputSync {
    /// The loss.
    pub loss: f64,
    /// The language-modelling part.
    pub lm_loss: f64,
    /// Tokens counted.
    pub tokens: usize,
    /// Real tokens forwarded.
    pub input_tokens: usize,
    /// The analysis batch.
    pub batch_idx: usize,
    /// `[layers][experts]` expert choices of the real tokens.
    pub expert_counts: Vec<Vec<u32>>,
    /// The global step (1-based).
    pub step: usize,
    /// The rank whose part of the batch this is.
    pub rank: Rank,
    /// What the step trained.
    pub phase: Phase,
}

impl<B: Backend> ItemLazy for SftOutput<B> {
    type ItemSync = SftOutputSync;

    fn sync(self) -> SftOutputSync {
        let [layers, _, _, k] = self.chosen.dims();
        let [loss, lm, chosen] = Transaction::default()
            .register(self.loss)
            .register(self.lm_loss)
            .register(self.chosen)
            .execute()
            .try_into()
            .expect("three tensors registered");
        let scalar = |d: TensorData| d.iter::<f64>().next().unwrap_or(f64::NAN);
        let chosen: Vec<i64> = chosen.iter::<i64>().collect();
        SftOutputSync {
            loss: scalar(loss),
            lm_loss: scalar(lm),
            tokens: self.tokens,
            input_tokens: self.input_tokens,
            batch_idx: self.batch_idx,
            expert_counts: count_experts(&chosen, layers, k, self.num_experts, &self.real),
            step: self.step,
            rank: self.rank,
            phase: self.phase,
        }
    }
}

impl<B: Backend> Adaptor<LossInput<B>> for SftOutput<B> {
    fn adapt(&self) -> LossInput<B> {
        LossInput::new(self.loss.clone())
    }
}

impl Adaptor<LossInput<burn::backend::NdArray>> for SftOutputSync {
    fn adapt(&self) -> LossInput<burn::backend::NdArray> {
        LossInput::new(Tensor::from_data(
            TensorData::new(vec![self.loss as f32], [1]),
            &Default::default(),
        ))
    }
}

/// `[layers][experts]`: how many real tokens (`real[token]`) had each expert among their top-k,
/// from the `[layers, tokens, k]` choices, row-major.
pub fn count_experts(
    chosen: &[i64],
    layers: usize,
    k: usize,
    experts: usize,
    real: &[bool],
) -> Vec<Vec<u32>> {
    let per_layer = chosen.len() / layers.max(1);
    chosen
        .chunks(per_layer.max(1))
        .map(|layer| {
            let mut c = vec![0u32; experts];
            for (flat, &e) in layer.iter().enumerate() {
                if real.get(flat / k).copied().unwrap_or(true) {
                    c[e as usize] += 1;
                }
            }
            c
        })
        .collect()
}

/// Loss of one batch under `settings`: next-token cross-entropy under the batch's routing; plus
/// `aux_coef` times the load-balancing loss when on; plus `weight * KL` between the mean router
/// distributions of its safe and unsafe samples (per layer, over real tokens, averaged over
/// layers) when consistency is on.
pub fn sft_loss<B: Backend>(
    model: &MoeLm<B>,
    settings: &LossSettings,
    batch: &SftBatch<B>,
) -> SftOutput<B> {
    let routing = batch.routing.clone().with_capture(true);
    let decoded = model.forward_hidden(
        LmInput::padded(batch.input_ids.clone(), batch.attention_mask.clone()),
        &routing,
    );
    let lm_loss = targeted_lm_loss(decoded.hidden, &model.lm_head, &batch.targets);
    let mut loss = lm_loss.clone();
    let logits = decoded.router_logits.expect("captured");
    if settings.aux_coef > 0.0 {
        let top_k = model.top_k();
        loss = loss + load_balancing_loss(logits.clone(), top_k).mul_scalar(settings.aux_coef);
    }
    if settings.consistency != Consistency::Off {
        loss = loss
            + consistency_kl(logits, batch, settings.consistency)
                .mul_scalar(settings.consistency_weight);
    }
    step_output(
        model,
        batch,
        loss,
        lm_loss,
        decoded.chosen.expect("captured"),
    )
}

/// Loss of a router step of the alternating schedule: the divergence between the routing of the
/// batch's safe samples (a fixed target: no gradient flows through it) and its unsafe samples'
/// (see [`routing_divergence`]). The language-modelling loss is measured, not trained.
pub fn router_loss<B: Backend>(
    model: &MoeLm<B>,
    kind: RouterKl,
    batch: &SftBatch<B>,
) -> SftOutput<B> {
    let routing = batch.routing.clone().with_capture(true);
    let decoded = model.forward_hidden(
        LmInput::padded(batch.input_ids.clone(), batch.attention_mask.clone()),
        &routing,
    );
    let lm_loss = targeted_lm_loss(decoded.hidden, &model.lm_head, &batch.targets).detach();
    let logits = decoded.router_logits.expect("captured");
    let loss = routing_divergence(logits, &batch.attention_mask, &batch.is_unsafe, kind);
    step_output(
        model,
        batch,
        loss,
        lm_loss,
        decoded.chosen.expect("captured"),
    )
}

/// What a step of `batch` reports, with its losses and the experts its tokens chose.
fn step_output<B: Backend>(
    model: &MoeLm<B>,
    batch: &SftBatch<B>,
    loss: Tensor<B, 1>,
    lm_loss: Tensor<B, 1>,
    chosen: Tensor<B, 4, Int>,
) -> SftOutput<B> {
    SftOutput {
        loss,
        lm_loss,
        tokens: batch.tokens,
        input_tokens: batch.input_tokens,
        batch_idx: batch.batch_idx,
        chosen,
        real: batch.real.clone(),
        num_experts: model.num_experts(),
        step: batch.step,
        rank: batch.rank,
        phase: batch.phase,
    }
}

/// RASA's routing divergence, averaged over layers: per layer, each sample's router logits
/// averaged over its real tokens and turned into a distribution (softmax), the distributions
/// averaged over the safe samples (`P`, detached) and over the unsafe ones (`Q`), each plus
/// 1e-8 and renormalised; then KL(P ‖ Q) (`forward`), KL(Q ‖ P) (`reverse`) or their mean.
/// RASA's `F.kl_div(…, reduction="batchmean")` on the 1-D distributions divides this by the
/// number of experts, a constant factor AdamW's update does not see (but for its ε); the true
/// divergence is reported here.
///
/// # Shapes
/// - `router_logits`: `[layers, batch, seq, experts]`, `attention_mask`: `[batch, seq]` → `[1]`
pub fn routing_divergence<B: Backend>(
    router_logits: Tensor<B, 4>,
    attention_mask: &Tensor<B, 2, burn::tensor::Bool>,
    is_unsafe: &[bool],
    kind: RouterKl,
) -> Tensor<B, 1> {
    let [layers, n, seq, experts] = router_logits.dims();
    let device = router_logits.device();
    let valid = attention_mask.clone().float().reshape([1, n, seq, 1]);
    let per_sample =
        (to_f32(router_logits) * valid.clone()).sum_dim(2) / valid.sum_dim(2).clamp_min(1.0);
    let probs = softmax(per_sample.reshape([layers, n, experts]), 2);
    let group = |unsafe_: bool| {
        let pick: Vec<f32> = is_unsafe
            .iter()
            .map(|&u| (u == unsafe_) as u8 as f32)
            .collect();
        let count = pick.iter().sum::<f32>().max(1.0);
        let w = Tensor::<B, 1>::from_data(TensorData::new(pick, [n]), &device).reshape([1, n, 1]);
        let mean = (probs.clone() * w).sum_dim(1).reshape([layers, experts]) / count;
        let mean = mean.add_scalar(1e-8);
        mean.clone() / mean.sum_dim(1)
    };
    let (p, q) = (group(false).detach(), group(true));
    let kl = |a: Tensor<B, 2>, b: Tensor<B, 2>| {
        (a.clone() * (a.log() - b.log()))
            .sum_dim(1)
            .mean()
            .reshape([1])
    };
    match kind {
        RouterKl::Forward => kl(p, q),
        RouterKl::Reverse => kl(q, p),
        RouterKl::Symmetric => (kl(p.clone(), q.clone()) + kl(q, p)).div_scalar(2.0),
    }
}

/// Mean over layers of the KL between mean router distributions of unsafe and safe samples.
///
/// # Shapes
/// - `router_logits`: `[layers, batch, seq, experts]` → `[1]`
fn consistency_kl<B: Backend>(
    router_logits: Tensor<B, 4>,
    batch: &SftBatch<B>,
    kind: Consistency,
) -> Tensor<B, 1> {
    let [layers, n, seq, experts] = router_logits.dims();
    let device = router_logits.device();
    let probs = softmax(to_f32(router_logits), 3);
    let valid = batch.attention_mask.clone().float().reshape([1, n, seq, 1]);
    let group = |unsafe_: bool| {
        let pick: Vec<f32> = batch
            .is_unsafe
            .iter()
            .map(|&u| (u == unsafe_) as u8 as f32)
            .collect();
        let w = Tensor::<B, 1>::from_data(TensorData::new(pick, [n]), &device)
            .reshape([1, n, 1, 1])
            * valid.clone();
        let mass = (probs.clone() * w.clone())
            .sum_dim(1)
            .sum_dim(2)
            .reshape([layers, experts]);
        let count = w.sum().reshape([1, 1]).clamp_min(1.0);
        mass / count
    };
    let (safe, unsafe_) = (group(false), group(true));
    let kl = |p: Tensor<B, 2>, q: Tensor<B, 2>| {
        let eps = 1e-8;
        (p.clone() * (p.add_scalar(eps).log() - q.add_scalar(eps).log()))
            .sum_dim(1)
            .mean()
    };
    match kind {
        Consistency::Forward => kl(unsafe_, safe),
        Consistency::Reverse => kl(safe, unsafe_),
        Consistency::Symmetric => {
            (kl(unsafe_.clone(), safe.clone()) + kl(safe, unsafe_)).div_scalar(2.0)
        }
        Consistency::Off => Tensor::zeros([1], &device),
    }
}

impl<B: AutodiffBackend> TrainStep for SftModel<B> {
    type Input = SftBatch<B>;
    type Output = SftOutput<B>;

    fn step(&self, batch: SftBatch<B>) -> TrainOutput<SftOutput<B>> {
        let out = match (batch.phase, self.alternating) {
            (Phase::Routers, Some(a)) => router_loss(&self.model, a.router_kl, &batch),
            _ => sft_loss(&self.model, &self.loss, &batch),
        };
        if batch.rank.ranks <= 1 {
            if batch.phase == Phase::Joint && self.router_rows.is_none() {
                let grads = out.loss.backward();
                return TrainOutput::new(self, grads, out);
            }
            let mut grads = GradientsParams::from_grads(out.loss.backward(), self);
            self.mask_router_rows(&mut grads);
            let grads = self.keep_phase(grads, batch.phase, batch.skip);
            return TrainOutput { grads, item: out };
        }
        // One part of a batch split across devices (see `parallel`): weighted so that the ranks'
        // mean gradient is the batch's, every trainable parameter in the graph, and after the
        // exchange no gradient for what no rank's tokens reached.
        let loss =
            parallel::with_every_trainable(self, out.loss.clone().mul_scalar(batch.loss_scale));
        let mut grads = GradientsParams::from_grads(loss.backward(), self);
        parallel::drop_zero_gradients(self, &mut grads);
        self.mask_router_rows(&mut grads);
        TrainOutput { grads, item: out }
    }
}

impl<B: Backend> InferenceStep for SftModel<B> {
    type Input = SftBatch<B>;
    type Output = SftOutput<B>;

    fn step(&self, batch: SftBatch<B>) -> SftOutput<B> {
        sft_loss(&self.model, &self.loss, &batch)
    }
}

#[cfg(test)]
mod tests {
    use super::{RouterKl, count_experts, routing_divergence};
    use burn::tensor::{Bool, Tensor, TensorData};

    #[test]
    fn routing_divergence_is_rasas_kl_of_mean_routings_with_the_safe_side_fixed() {
        type A = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
        let device = Default::default();
        // One layer, two experts; sample 0 safe (logits [0,0], [2,0] → mean [1,0]), sample 1
        // unsafe (one real token [0,1]; its padding [9,9] is left out): softmax [σ, 1-σ] and
        // [1-σ, σ] with σ = e/(1+e), whose KL either way is (2σ-1)·1.
        let logits = Tensor::<A, 4>::from_data(
            TensorData::new(
                vec![0.0f32, 0.0, 2.0, 0.0, 0.0, 1.0, 9.0, 9.0],
                [1, 2, 2, 2],
            ),
            &device,
        )
        .require_grad();
        let mask = Tensor::<A, 2, Bool>::from_data(
            TensorData::new(vec![true, true, true, false], [2, 2]),
            &device,
        );
        let sigma = std::f64::consts::E / (1.0 + std::f64::consts::E);
        for kind in [RouterKl::Forward, RouterKl::Reverse, RouterKl::Symmetric] {
            let kl = routing_divergence(logits.clone(), &mask, &[false, true], kind);
            let v = kl.clone().into_scalar() as f64;
            assert!((v - (2.0 * sigma - 1.0)).abs() < 1e-5, "{kind:?}: {v}");
            let grads = kl.backward();
            let g: Vec<f32> = logits.grad(&grads).unwrap().into_data().to_vec().unwrap();
            assert!(
                g[..4].iter().all(|&x| x == 0.0),
                "no gradient through the safe target: {g:?}"
            );
            assert!(g[4] != 0.0 && g[6..] == [0.0, 0.0], "{g:?}");
        }
    }

    #[test]
    fn counts_leave_padding_out() {
        // 2 layers, 3 tokens (the last one padding), k = 2, 4 experts.
        let chosen = [0, 1, 1, 2, 3, 3, /* layer 1 */ 2, 0, 2, 1, 0, 1];
        let counts = count_experts(&chosen, 2, 2, 4, &[true, true, false]);
        assert_eq!(counts, vec![vec![1, 2, 1, 0], vec![1, 1, 2, 0]]);
    }
}
