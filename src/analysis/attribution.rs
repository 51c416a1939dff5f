//! Attribution patching: the first-order estimate of exact ablation, for every expert at once.
//!
//! Every expert's routing weight is multiplied by a scale `s` ([`Routing::with_weight_scale`]);
//! at `s = 1` the forward pass is the model's own. Zeroing an expert moves its scale from 1 to 0,
//! so the rise of a loss `L` is `L(s_e = 0) − L(1) ≈ −∂L/∂s_e`: the sum over the tokens routed to
//! the expert of gradient × routing weight. One backward pass per batch and side gives it for
//! all experts.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use super::answers::{Answered, Teacher};
use crate::model::loss::token_nll;
use crate::model::{MoeLm, Routing};

/// `[layers × experts]` (row-major): each expert's first-order rise in the mean over `items`
/// (the answers of one side) of each answer's mean NLL, were its routing weight zeroed.
pub fn attribute<B: AutodiffBackend>(
    model: &MoeLm<B>,
    items: &[Answered],
    device: &B::Device,
) -> Vec<f64> {
    let [layers, experts] = [model.num_moe_layers(), model.num_experts()];
    if items.is_empty() {
        return vec![0.0; layers * experts];
    }
    // Only the scale's gradient is wanted: the weights are constants.
    let model = model.clone().no_grad().for_gradients();
    let teacher = Teacher::<B>::new(items, device);
    let scale = Tensor::<B, 2>::ones([layers, experts], device).require_grad();
    let routing = Routing::free().with_weight_scale(scale.clone());
    let hidden = model.forward_hidden(teacher.input.clone(), &routing).hidden;
    let weights = teacher.mean_weights(device);
    let loss = (token_nll(hidden, &model.lm_head, &teacher.targets) * weights).sum();
    let grads = loss.backward();
    let grad: Vec<f32> = scale
        .grad(&grads)
        .expect("the scale takes part in the loss")
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("float32 gradient");
    grad.iter().map(|&g| -(g as f64)).collect()
}
