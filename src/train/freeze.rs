//! What trains (the seeds' `freeze_model_except_unsafe_experts`): everything is frozen, then the
//! gate/up/down weights of the chosen experts and/or the routers are unfrozen. Frozen
//! parameters get no gradient, so the optimizer leaves them bit-identical.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::AutodiffBackend;

use crate::analysis::select::ExpertId;
use crate::config::Trainable;
use crate::model::Olmoe;

fn unfreeze<B: AutodiffBackend>(l: &mut Linear<B>) {
    l.weight = l.weight.clone().set_require_grad(true);
}

/// Freeze `model` except what `trainable` names among `experts`.
pub fn freeze<B: AutodiffBackend>(model: Olmoe<B>, experts: &[ExpertId], trainable: Trainable) -> Olmoe<B> {
    let mut model = model.no_grad();
    if trainable != Trainable::Routers {
        for &[l, e] in experts {
            let ex = &mut model.model.layers[l].mlp.experts[e];
            unfreeze(&mut ex.gate_proj);
            unfreeze(&mut ex.up_proj);
            unfreeze(&mut ex.down_proj);
        }
    }
    if trainable != Trainable::UnsafeExperts {
        for layer in model.model.layers.iter_mut() {
            unfreeze(&mut layer.mlp.gate);
        }
    }
    model
}

fn numel<B: AutodiffBackend>(p: &Param<burn::tensor::Tensor<B, 2>>) -> (usize, bool) {
    let [a, b] = p.dims();
    (a * b, p.val().is_require_grad())
}

/// (trainable, total) parameter counts.
pub fn param_counts<B: AutodiffBackend>(model: &Olmoe<B>) -> (usize, usize) {
    let mut trainable = 0;
    for layer in &model.model.layers {
        let mut linears: Vec<&Linear<B>> = vec![&layer.mlp.gate];
        for ex in &layer.mlp.experts {
            linears.extend([&ex.gate_proj, &ex.up_proj, &ex.down_proj]);
        }
        for l in linears {
            let (n, grad) = numel(&l.weight);
            if grad {
                trainable += n;
            }
        }
    }
    (trainable, model.num_params())
}
