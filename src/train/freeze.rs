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
    if trainable == Trainable::All {
        return model
            .map(&mut UnfreezeAll(master))
            .map(&mut KeepDtypeOnLoad);
    }
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

/// Every float parameter trainable, kept in `master`.
struct UnfreezeAll(DType);

impl<B: AutodiffBackend> ModuleMapper<B> for UnfreezeAll {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let master = self.0;
        param.map(|w| in_dtype(w, master).detach().require_grad())
    }
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

/// Counts the elements of every float parameter and of those that train.
#[derive(Default)]
struct Counter {
    trainable: usize,
    total: usize,
}

impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Counter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.val().shape().num_elements();
        self.total += n;
        if param.val().is_require_grad() {
            self.trainable += n;
        }
    }
}

/// (trainable, total) parameter counts.
pub fn param_counts<B: AutodiffBackend>(model: &MoeLm<B>) -> (usize, usize) {
    let mut c = Counter::default();
    model.visit(&mut c);
    (c.trainable, model.num_params())
}
