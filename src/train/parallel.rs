//! What a data-parallel step adds to a one-device step, so that the replicas stay equal and
//! take the one-device update.
//!
//! burn's DDP all-reduces a parameter's gradient among the ranks whose graph holds it. An expert
//! that gets tokens on one rank and none on another would be reduced on one rank only (a mean over
//! itself) and updated there alone: the replicas would drift. So every rank puts every trainable
//! parameter in its graph ([`with_every_trainable`]: `+ 0 · Σ p`, an exact zero gradient). After
//! the exchange, a gradient that is exactly zero belongs to a parameter no rank's tokens reached:
//! on one device it would have had no gradient at all (AdamW then leaves it, moments and weight
//! decay included), so [`drop_zero_gradients`] removes it.

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, Transaction};

struct Trainable<B: Backend> {
    terms: Vec<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Trainable<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let p = param.val();
        if p.is_require_grad() {
            self.terms
                .push(p.cast(burn::tensor::DType::F32).sum().mul_scalar(0.0));
        }
    }
}

/// `loss + 0 · Σ p` over every trainable parameter `p` of `module`: the same value and the same
/// gradients, with every trainable parameter in the graph.
pub fn with_every_trainable<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    loss: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let mut v = Trainable { terms: Vec::new() };
    module.visit(&mut v);
    let dtype = loss.dtype();
    v.terms.into_iter().fold(loss, |acc, t| acc + t.cast(dtype))
}

type Remove = Box<dyn FnOnce(&mut GradientsParams)>;

struct Largest<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    found: Vec<(Tensor<B::InnerBackend, 1>, Remove)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Largest<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let id: ParamId = param.id;
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(id) {
            let remove: Remove = Box::new(move |grads: &mut GradientsParams| {
                grads.remove::<B::InnerBackend, D>(id);
            });
            self.found.push((g.abs().max().reshape([1]), remove));
        }
    }
}

/// Remove every gradient of `module`'s parameters that is exactly zero (one read of one number
/// per gradient, in one transaction).
pub fn drop_zero_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
) {
    let mut v = Largest::<B> {
        grads,
        found: Vec::new(),
    };
    module.visit(&mut v);
    let (largest, removes): (Vec<_>, Vec<_>) = v.found.into_iter().unzip();
    if largest.is_empty() {
        return;
    }
    let data = largest
        .into_iter()
        .fold(Transaction::default(), |t, x| t.register(x))
        .execute();
    for (d, remove) in data.into_iter().zip(removes) {
        if d.iter::<f64>().next() == Some(0.0) {
            remove(grads);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};

    type B = Autodiff<NdArray<f32>>;

    #[derive(Module, Debug)]
    struct Two<B: Backend> {
        used: Linear<B>,
        unused: Linear<B>,
        frozen: Linear<B>,
    }

    fn model() -> Two<B> {
        let device = Default::default();
        let linear = || LinearConfig::new(3, 2).with_bias(false).init::<B>(&device);
        Two {
            used: linear(),
            unused: linear(),
            frozen: linear().no_grad(),
        }
    }

    #[test]
    fn every_trainable_parameter_gets_a_gradient_and_the_zero_ones_are_dropped() {
        let m = model();
        // A fresh graph for each backward pass (backward consumes it).
        let loss = || {
            let x = Tensor::<B, 2>::ones([4, 3], &Default::default());
            m.used.forward(x.clone()).sum() + m.frozen.forward(x).sum()
        };
        let value = loss().into_scalar();

        let plain = GradientsParams::from_grads(loss().backward(), &m);
        assert!(
            plain.get::<NdArray<f32>, 2>(m.unused.weight.id).is_none(),
            "untouched: no gradient"
        );

        let touched = with_every_trainable(&m, loss());
        assert_eq!(
            touched.clone().into_scalar(),
            value,
            "the loss is unchanged"
        );
        let mut grads = GradientsParams::from_grads(touched.backward(), &m);
        let zero = grads
            .get::<NdArray<f32>, 2>(m.unused.weight.id)
            .expect("touched: a gradient");
        assert_eq!(zero.abs().max().into_scalar(), 0.0);
        assert!(
            grads.get::<NdArray<f32>, 2>(m.frozen.weight.id).is_none(),
            "frozen stays out"
        );
        let used = grads
            .get::<NdArray<f32>, 2>(m.used.weight.id)
            .expect("used");
        plain
            .get::<NdArray<f32>, 2>(m.used.weight.id)
            .unwrap()
            .into_data()
            .assert_eq(&used.into_data(), true);

        drop_zero_gradients(&m, &mut grads);
        assert!(
            grads.get::<NdArray<f32>, 2>(m.unused.weight.id).is_none(),
            "zero: dropped"
        );
        assert!(
            grads.get::<NdArray<f32>, 2>(m.used.weight.id).is_some(),
            "non-zero: kept"
        );
    }
}
