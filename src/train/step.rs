//! The train and inference steps burn-train's Learner calls: forward with the batch's routing,
//! the SFT loss (plus the optional router-consistency KL), backward.

use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, Transaction};
use burn::train::metric::{Adaptor, ItemLazy, LossInput};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use super::loader::SftBatch;
use crate::model::loss::{load_balancing_loss, targeted_lm_loss};
use crate::config::Consistency;
use crate::model::routing::to_f32;
use crate::model::{Olmoe, OlmoeInput};

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
    /// `[layers][experts]`: real tokens that had each expert in their top-k.
    pub expert_counts: Vec<Vec<u32>>,
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
}

impl<B: Backend> ItemLazy for SftOutput<B> {
    type ItemSync = SftOutputSync;

    fn sync(self) -> SftOutputSync {
        let [loss, lm] = Transaction::default()
            .register(self.loss)
            .register(self.lm_loss)
            .execute()
            .try_into()
            .expect("two tensors registered");
        let scalar = |d: TensorData| d.iter::<f64>().next().unwrap_or(f64::NAN);
        SftOutputSync {
            loss: scalar(loss),
            lm_loss: scalar(lm),
            tokens: self.tokens,
            input_tokens: self.input_tokens,
            batch_idx: self.batch_idx,
            expert_counts: self.expert_counts,
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
        LossInput::new(Tensor::from_data(TensorData::new(vec![self.loss as f32], [1]), &Default::default()))
    }
}

/// Loss of one batch: next-token cross-entropy under the batch's routing; plus `aux_coef`
/// times the load-balancing loss when on; plus `weight * KL` between the mean router
/// distributions of its safe and unsafe samples (per layer, over real tokens, averaged over
/// layers) when consistency is on.
pub fn sft_loss<B: Backend>(model: &Olmoe<B>, batch: &SftBatch<B>) -> SftOutput<B> {
    let (kind, weight) = batch.consistency;
    let capture = kind != Consistency::Off || batch.aux_coef > 0.0;
    let routing = batch.routing.clone().with_capture(capture);
    let decoded = model.forward_hidden(
        OlmoeInput::padded(batch.input_ids.clone(), batch.attention_mask.clone()),
        &routing,
    );
    let lm_loss = targeted_lm_loss(decoded.hidden, &model.lm_head, &batch.targets);
    let mut loss = lm_loss.clone();
    if let Some(logits) = decoded.router_logits {
        if batch.aux_coef > 0.0 {
            let top_k = model.model.layers[0].mlp.top_k();
            loss = loss + load_balancing_loss(logits.clone(), top_k).mul_scalar(batch.aux_coef);
        }
        if kind != Consistency::Off {
            loss = loss + consistency_kl(logits, batch, kind).mul_scalar(weight);
        }
    }
    SftOutput {
        loss,
        lm_loss,
        tokens: batch.tokens,
        input_tokens: batch.input_tokens,
        batch_idx: batch.batch_idx,
        expert_counts: decoded.expert_counts,
    }
}

/// Mean over layers of the KL between mean router distributions of unsafe and safe samples.
///
/// # Shapes
/// - `router_logits`: `[layers, batch, seq, experts]` → `[1]`
fn consistency_kl<B: Backend>(router_logits: Tensor<B, 4>, batch: &SftBatch<B>, kind: Consistency) -> Tensor<B, 1> {
    let [layers, n, seq, experts] = router_logits.dims();
    let device = router_logits.device();
    let probs = softmax(to_f32(router_logits), 3);
    let valid = batch.attention_mask.clone().float().reshape([1, n, seq, 1]);
    let group = |unsafe_: bool| {
        let pick: Vec<f32> = batch.is_unsafe.iter().map(|&u| (u == unsafe_) as u8 as f32).collect();
        let w = Tensor::<B, 1>::from_data(TensorData::new(pick, [n]), &device).reshape([1, n, 1, 1]) * valid.clone();
        let mass = (probs.clone() * w.clone()).sum_dim(1).sum_dim(2).reshape([layers, experts]);
        let count = w.sum().reshape([1, 1]).clamp_min(1.0);
        mass / count
    };
    let (safe, unsafe_) = (group(false), group(true));
    let kl = |p: Tensor<B, 2>, q: Tensor<B, 2>| {
        let eps = 1e-8;
        (p.clone() * (p.add_scalar(eps).log() - q.add_scalar(eps).log())).sum_dim(1).mean()
    };
    match kind {
        Consistency::Forward => kl(unsafe_, safe),
        Consistency::Reverse => kl(safe, unsafe_),
        Consistency::Symmetric => (kl(unsafe_.clone(), safe.clone()) + kl(safe, unsafe_)).div_scalar(2.0),
        Consistency::Off => Tensor::zeros([1], &device),
    }
}

impl<B: AutodiffBackend> TrainStep for Olmoe<B> {
    type Input = SftBatch<B>;
    type Output = SftOutput<B>;

    fn step(&self, batch: SftBatch<B>) -> TrainOutput<SftOutput<B>> {
        let out = sft_loss(self, &batch);
        let grads = out.loss.backward();
        TrainOutput::new(self, grads, out)
    }
}

impl<B: Backend> InferenceStep for Olmoe<B> {
    type Input = SftBatch<B>;
    type Output = SftOutput<B>;

    fn step(&self, batch: SftBatch<B>) -> SftOutput<B> {
        sft_loss(self, &batch)
    }
}
