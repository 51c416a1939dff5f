//! The dense experts' SwiGLU weighted by routing weight, as one cubecl kernel: a thread an output.
//!
//! It computes what `model::experts::StackedExperts::forward` computes with burn's ops and
//! rounds where they round: burn's sigmoid in float32 (`exp(−ln(exp(−g) + 1))`) rounded to the
//! activations' dtype `F`, then `((g · σ) · u) · F(w)`, each product in `F`.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::cube_index;

/// `out[t, j] = silu(gate_up[t, j]) · gate_up[t, width + j] · F(weights[t, j / inter])`, where
/// `width` = `out`'s columns (every expert's `inter` side by side).
///
/// Shapes: `gate_up` `[tokens, 2 · width]`, `weights` `[tokens, experts]` float32 (any strides),
/// `out` `[tokens, width]` contiguous; a thread an output, thread `(y · count_x + x) · dim + unit`
/// of the grid (WebGPU's 65,535 cubes an axis).
#[cube(launch)]
pub fn swiglu_kernel<F: Float>(
    gate_up: &Tensor<F>,
    weights: &Tensor<f32>,
    out: &mut Tensor<F>,
    inter: usize,
    #[define(F)] _dtype: StorageType,
) {
    let idx = cube_index() * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    if idx < out.len() {
        let width = out.shape(1);
        let t = idx / width;
        let j = idx % width;
        let base = t * gate_up.stride(0);
        let g = gate_up[base + j * gate_up.stride(1)];
        let u = gate_up[base + (width + j) * gate_up.stride(1)];
        let sigmoid = F::cast_from((-((-f32::cast_from(g)).exp() + 1.0f32).ln()).exp());
        let w = F::cast_from(weights[t * weights.stride(0) + (j / inter) * weights.stride(1)]);
        out[idx] = g * sigmoid * u * w;
    }
}
