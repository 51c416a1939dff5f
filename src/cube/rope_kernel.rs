//! Rotary position embedding (transformers' `rotate_half` convention) as one cubecl kernel: a
//! thread an output.
//!
//! It computes what `model::rope::apply_rope` computes with burn's ops and rounds where they
//! round: cos and sin (float32) rounded to the activations' dtype `F`, then
//! `x · cos + swapped · sin` with each product and the sum in `F`.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::cube_index;

/// `out[b, s, h, i] = x[b, s, h, i] · F(cos[b, s, 0, i]) + x[b, s, h, (i + dim/2) mod dim] ·
/// F(sin[b, s, 0, i])` (the sin with `rotate_half`'s sign folded in).
///
/// Shapes: `x` `[batch, seq, heads, dim]`, `cos`, `sin` `[batch, seq, 1, dim]` float32 (any
/// strides), `out` like `x`, contiguous; thread `(y · count_x + x) · dim + unit` of the grid.
#[cube(launch)]
pub fn rope_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<f32>,
    sin: &Tensor<f32>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    let idx = cube_index() * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    if idx < out.len() {
        let dim = out.shape(3);
        let heads = out.shape(2);
        let seq = out.shape(1);
        let i = idx % dim;
        let h = (idx / dim) % heads;
        let s = (idx / (dim * heads)) % seq;
        let b = idx / (dim * heads * seq);
        let half = dim / 2;
        let partner = (i + half) % dim;
        let row = b * x.stride(0) + s * x.stride(1) + h * x.stride(2);
        let angle = b * cos.stride(0) + s * cos.stride(1) + i * cos.stride(3);
        let at = b * sin.stride(0) + s * sin.stride(1) + i * sin.stride(3);
        let c = F::cast_from(cos[angle]);
        let sn = F::cast_from(sin[at]);
        out[idx] = x[row + i * x.stride(3)] * c + x[row + partner * x.stride(3)] * sn;
    }
}
