//! RMSNorm computed in float32, as transformers' `OlmoeRMSNorm` and `Qwen3MoeRMSNorm` do.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::experts::to_f32;

/// `weight * (x / sqrt(mean(x²) + eps))` over the last axis.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Scale; Hub key `weight`.
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A norm with the given scale.
    pub fn new(weight: Param<Tensor<B, 1>>, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// The normalisation in float32, the scale applied in `x`'s dtype.
    ///
    /// # Shapes
    /// - `x`: `[..., width]` → same
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // On a GPU backend, with or without autodiff: one kernel (see `crate::cube`).
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        if let Some(y) = crate::cube::try_rms_norm(&x, &self.weight.val(), self.eps) {
            return y;
        }
        let dtype = x.dtype();
        let x = to_f32(x);
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x * (variance.add_scalar(self.eps)).sqrt().recip();
        let [width] = self.weight.dims();
        let mut shape = [1; D];
        shape[D - 1] = width;
        self.weight.val().reshape(shape) * normed.cast(dtype)
    }

    /// A residual stream and its norm: `(x + add, forward(x + add))`, or `(x, forward(x))` with
    /// nothing to add. In inference on a GPU backend the sum and the norm are one kernel (see
    /// `crate::cube::try_add_rms_norm`; the same bits as the add and then [`Self::forward`]).
    ///
    /// # Shapes
    /// - `x`, `add`: `[..., width]` → both the same
    pub fn forward_residual<const D: usize>(
        &self,
        x: Tensor<B, D>,
        add: Option<Tensor<B, D>>,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        let Some(add) = add else {
            return (x.clone(), self.forward(x));
        };
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        if let Some(both) = crate::cube::try_add_rms_norm(&x, &add, &self.weight.val(), self.eps) {
            return both;
        }
        let x = x + add;
        (x.clone(), self.forward(x))
    }
}
