//! Exact ablation: the rise of each answer's mean NLL when one expert is removed from the
//! routing ([`Routing::without`], the path steering forces experts off by), for every candidate
//! expert and each way of removing it.
//!
//! One forward pass per (group of experts of one layer, removal) over copies of a padded batch of
//! answers, each copy without one of the experts ([`Routing::without_each`]), and only the layers
//! it reaches: the residual stream below the expert's MoE block does not change, so the
//! batch's [`Trunk`] is computed once and each ablation resumes from the expert's layer
//! ([`MoeLm::resume`]); the LM head runs at answer positions only. No randomness and a fixed
//! order of operations: bit for bit the same on every run of a CPU.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};

use super::answers::Teacher;
use crate::model::{ExpertId, MoeLm, Removal, Routing, Trunk};

/// Experts of one layer ablated in one forward pass (copies of the batch at once).
pub const AT_ONCE: usize = 8;

/// The answers' mean NLLs with nothing removed, and the batch's trunk to resume from.
pub struct Baseline<B: Backend> {
    /// The forward pass kept at every MoE block.
    pub trunk: Trunk<B>,
    /// Each answer's mean NLL.
    pub nll: Vec<f64>,
}

/// The unablated pass over `teacher`'s answers.
pub fn baseline<B: Backend>(model: &MoeLm<B>, teacher: &Teacher<B>) -> Baseline<B> {
    let trunk = model.trunk(teacher.input.clone(), &Routing::free());
    let nll = teacher.nll(model, trunk.hidden.clone());
    Baseline { trunk, nll }
}

/// The routing that removes `expert` of a model of `layers × experts`, as `how` says.
pub fn removing<B: Backend>(
    expert: ExpertId,
    how: Removal,
    layers: usize,
    experts: usize,
    device: &B::Device,
) -> Routing<B> {
    let mut off = vec![false; layers * experts];
    off[expert[0] * experts + expert[1]] = true;
    let off = Tensor::<B, 2, Bool>::from_data(TensorData::new(off, [layers, experts]), device);
    Routing::free().without(off, how)
}

/// Each answer's rise in mean NLL (ablated − `base`) with `expert` removed as `how` says.
pub fn rise<B: Backend>(
    model: &MoeLm<B>,
    teacher: &Teacher<B>,
    base: &Baseline<B>,
    expert: ExpertId,
    how: Removal,
) -> Vec<f64> {
    rises(model, teacher, base, expert[0], &[expert[1]], how).remove(0)
}

/// [`rise`] for each of `experts` (all of MoE layer `layer`), in one forward pass over
/// `experts.len()` copies of the batch: each answer's rise, per expert.
pub fn rises<B: Backend>(
    model: &MoeLm<B>,
    teacher: &Teacher<B>,
    base: &Baseline<B>,
    layer: usize,
    experts: &[usize],
    how: Removal,
) -> Vec<Vec<f64>> {
    let device = base.trunk.hidden.device();
    let [layers, width] = [model.num_moe_layers(), model.num_experts()];
    let [batch, _] = teacher.input.input_ids.dims();
    let times = experts.len();
    let mut off = vec![false; times * batch * layers * width];
    for (copy, &e) in experts.iter().enumerate() {
        for row in 0..batch {
            off[((copy * batch + row) * layers + layer) * width + e] = true;
        }
    }
    let off = Tensor::<B, 3, Bool>::from_data(
        TensorData::new(off, [times * batch, layers, width]),
        &device,
    );
    let routing = Routing::free().without_each(off, how);
    let hidden = model.resume_repeated(&base.trunk, layer, times, &routing);
    let nll = teacher.repeated(times).nll(model, hidden);
    nll.chunks(base.nll.len())
        .map(|copy| copy.iter().zip(&base.nll).map(|(a, b)| a - b).collect())
        .collect()
}
