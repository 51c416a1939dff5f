//! What trains (the seeds' `freeze_model_except_unsafe_experts`), and in which dtype.
//!
//! Everything is frozen, then the gate/up/down weights of the chosen experts and/or the routers
//! are unfrozen. Frozen parameters get no gradient, so the optimizer leaves them bit-identical.
//!
//! Mixed precision: the unfrozen parameters are kept as *master weights* in `master` (f32) while
//! the model computes in its own dtype (bf16 on a GPU). The forward pass casts them to the
//! activations' dtype ([`model::experts::linear`](crate::model::experts::linear)); autodiff casts
//! their gradients back, and AdamW updates (and keeps its moments in) the f32 copy, so that updates
//! far below a bf16 step accumulate instead of rounding away. With an f32 model this is a no-op.
//! Every parameter also keeps its dtype when a checkpoint is loaded into it (burn's records load
//! as the backend's default float type, f32, which would silently turn a resumed bf16 model into
//! an f32 one).

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::Linear;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, FloatDType, Tensor};

use super::config::Trainable;
use crate::analysis::select::ExpertId;
use crate::model::MoeLm;
use crate::model::experts::in_dtype;

fn unfreeze<B: AutodiffBackend>(l: &mut Linear<B>, master: DType) {
    l.weight = l
        .weight
        .clone()
        .map(|w| in_dtype(w, master).detach().require_grad());
}

/// Freeze `model` except what `trainable` names among `experts`, which are kept in `master`
/// (training passes f32; a float type wider than the model's).
pub fn freeze<B: AutodiffBackend>(
    model: MoeLm<B>,
    experts: &[ExpertId],
    trainable: Trainable,
    master: FloatDType,
) -> MoeLm<B> {
    let master = DType::from(master);
    let mut model = model.no_grad();
    if trainable != Trainable::Routers {
        for &[l, e] in experts {
            let ex = &mut model.moe_block_mut(l).experts[e];
            unfreeze(&mut ex.gate_proj, master);
            unfreeze(&mut ex.up_proj, master);
            unfreeze(&mut ex.down_proj, master);
        }
    }
    if trainable != Trainable::UnsafeExperts {
        for l in 0..model.num_moe_layers() {
            unfreeze(&mut model.moe_block_mut(l).gate, master);
        }
    }
    model.map(&mut KeepDtypeOnLoad)
}

/// Gives every float parameter a load mapper that casts what a record holds to the dtype the
/// parameter has now.
struct KeepDtypeOnLoad;

impl<B: Backend> ModuleMapper<B> for KeepDtypeOnLoad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = param.val().dtype();
        // Detached: a cast is not a leaf, and the load marks the result as requiring a gradient.
        param.load_mapper(move |t| in_dtype(t, dtype).detach())
    }
}

fn numel<B: AutodiffBackend>(p: &Param<burn::tensor::Tensor<B, 2>>) -> (usize, bool) {
    let [a, b] = p.dims();
    (a * b, p.val().is_require_grad())
}

/// (trainable, total) parameter counts.
pub fn param_counts<B: AutodiffBackend>(model: &MoeLm<B>) -> (usize, usize) {
    let mut trainable = 0;
    for block in model.moe_blocks() {
        let mut linears: Vec<&Linear<B>> = vec![&block.gate];
        for ex in &block.experts {
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
