//! Rotary position embedding in transformers' `rotate_half` convention (`OlmoeRotaryEmbedding`,
//! `apply_rotary_pos_emb`), not burn-nn's interleaved pairs.
//!
//! The angles are computed as transformers does, in float32: `inv_freq = 1 / base^(2i/d)`,
//! `freqs = inv_freq ⊗ positions`, `emb = cat(freqs, freqs)`; cos/sin are then cast to the
//! activations' dtype. Positions are explicit per row, so left-padded batches can count from
//! their first real token.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Inverse frequencies of the default RoPE, `[head_dim / 2]`.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// `inv_freq = 1.0 / (base ** (arange(0, dim, 2) / dim))`, in float32.
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let base = theta as f32;
        let inv_freq = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
            .collect();
        Self { inv_freq }
    }

    /// The inverse frequencies, `[head_dim / 2]`.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// cos and sin for the given positions, the sin with `rotate_half`'s sign folded in (its
    /// first half negated): what [`apply_rope`] takes. `inv_freq` is [`Rope::inv_freq`] on the
    /// positions' device (uploaded once, see [`Constants`](super::constants::Constants)).
    ///
    /// # Shapes
    /// - `positions`: `[batch, seq]`, `inv_freq`: `[head_dim / 2]` float32 → cos, sin:
    ///   `[batch, seq, 1, head_dim]` (float32)
    pub fn cos_sin<B: Backend>(
        &self,
        positions: Tensor<B, 2, Int>,
        inv_freq: Tensor<B, 1>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, seq] = positions.dims();
        let half = self.inv_freq.len();
        assert_eq!(
            inv_freq.dims(),
            [half],
            "inverse frequencies of another head width"
        );
        let pos = positions
            .float()
            .cast(burn::tensor::FloatDType::F32)
            .reshape([batch, seq, 1]);
        let freqs = pos * inv_freq.reshape([1, 1, half]);
        let cos = freqs.clone().cos();
        let sin = freqs.sin();
        let both =
            |a: Tensor<B, 3>, b: Tensor<B, 3>| Tensor::cat(vec![a, b], 2).unsqueeze_dim::<4>(2);
        (both(cos.clone(), cos), both(sin.clone().neg(), sin))
    }
}

/// `q * cos + rotate_half(q) * sin`, with cos/sin cast to `x`'s dtype.
///
/// `rotate_half(x) = cat(-x2, x1)` is computed as the halves swapped, `[x2, x1]` (one flip of a
/// size-2 axis), times a `sin` whose first half [`Rope::cos_sin`] has negated: the same products
/// bit for bit (negation is exact), without the slices and the concatenation.
///
/// # Shapes
/// - `x`: `[batch, seq, heads, head_dim]` (heads before the swap to `[batch, heads, seq, _]`, so
///   that a contiguous projection splits its halves without a copy); `cos`, `sin` (sign folded
///   in): `[batch, seq, 1, head_dim]`
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    // For inference on a GPU backend: one kernel (see `crate::cube`).
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if let Some(y) = crate::cube::try_rope(&x, cos, sin) {
        return y;
    }
    let dtype = x.dtype();
    let [batch, seq, heads, dim] = x.dims();
    let swapped = x
        .clone()
        .reshape([batch, seq, heads, 2, dim / 2])
        .flip([3])
        .reshape([batch, seq, heads, dim]);
    x * cos.clone().cast(dtype) + swapped * sin.clone().cast(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn rotates_halves_by_position_times_frequency() {
        let device = Default::default();
        let rope = Rope::new(4, 100.0);
        // inv_freq = [1, 100^-0.5] = [1, 0.1]
        let positions = Tensor::<B, 2, Int>::from_ints([[2]], &device);
        let inv_freq = Tensor::from_floats(rope.inv_freq(), &device);
        let (cos, sin) = rope.cos_sin(positions, inv_freq);
        let x = Tensor::<B, 4>::from_floats([[[[1.0, 0.0, 0.0, 0.0]]]], &device);
        let y = apply_rope(x, &cos, &sin)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // x1 = [1, 0], x2 = [0, 0]: y = [cos(2), cos(0.2)*0, sin(2)*1, 0]
        let expected = [2f32.cos(), 0.0, 2f32.sin(), 0.0];
        for (a, b) in y.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }
}
