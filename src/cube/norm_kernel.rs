//! RMSNorm of contiguous rows, its gradient, and a residual add followed by it, each as one
//! cubecl kernel: one cube (thread block) per row, the row's sums reduced in shared memory.
//!
//! It computes what `model::norm::RmsNorm` computes with burn's ops, rounding where they round:
//! the row taken to float32, `inv = 1 / sqrt(Σ x² / width + eps)` in float32, `x · inv` rounded
//! to the activations' dtype `F`, then times the weight in `F`. Only the order of the float32 sum
//! differs.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::{cube_index, cube_sum};

/// `out[r, i] = weight[i] · F(f32(x[r, i]) / sqrt(mean_i f32(x[r, i])² + eps))`.
///
/// Shapes: `x` and `out` contiguous, `rows × width` elements (any rank, the last axis `width`),
/// `weight` `[width]`, `width_f32` = `width`; one cube per row (row `y · count_x + x` of the
/// grid; those from `rows` on do nothing); `threads` (a power of two) = the cube's size.
#[cube(launch)]
pub fn rms_norm_kernel<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    out: &mut Tensor<F>,
    eps: f32,
    width_f32: f32,
    rows: usize,
    #[comptime] threads: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = cube_index();
    if row < rows {
        let width = weight.shape(0);
        let base = row * width;
        let t = UNIT_POS_X as usize;
        let mut acc = 0.0f32;
        let mut i = t;
        while i < width {
            let v = f32::cast_from(x[base + i]);
            acc += v * v;
            i += threads;
        }
        let inv = inverse_rms(acc, width_f32, eps, threads);

        let mut i = t;
        while i < width {
            out[base + i] = weight[i] * F::cast_from(f32::cast_from(x[base + i]) * inv);
            i += threads;
        }
    }
}

/// A residual sum and the RMSNorm of it, in one pass: `sum = x + y` (in `F`, as burn's add rounds
/// it) and `out = `[`rms_norm_kernel`]`(sum)`, with the same threads, order of the float32 sum and
/// rounding as that kernel, so the same bits as the add followed by it.
///
/// Shapes: `x`, `y`, `sum` and `out` contiguous, `rows × width` elements, the rest as
/// [`rms_norm_kernel`]'s.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm_kernel<F: Float>(
    x: &Tensor<F>,
    y: &Tensor<F>,
    weight: &Tensor<F>,
    sum: &mut Tensor<F>,
    out: &mut Tensor<F>,
    eps: f32,
    width_f32: f32,
    rows: usize,
    #[comptime] threads: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = cube_index();
    if row < rows {
        let width = weight.shape(0);
        let base = row * width;
        let t = UNIT_POS_X as usize;
        let mut acc = 0.0f32;
        let mut i = t;
        while i < width {
            let s = x[base + i] + y[base + i];
            sum[base + i] = s;
            let v = f32::cast_from(s);
            acc += v * v;
            i += threads;
        }
        let inv = inverse_rms(acc, width_f32, eps, threads);

        // Each unit reads back only what it wrote itself.
        let mut i = t;
        while i < width {
            out[base + i] = weight[i] * F::cast_from(f32::cast_from(sum[base + i]) * inv);
            i += threads;
        }
    }
}

/// The gradient of [`rms_norm_kernel`] with respect to `x`, per row, in float32:
/// `dx_i = inv · gn_i − x_i · inv³ · (Σ_j gn_j · x_j) / width`, where `gn = f32(grad) · f32(weight)`
/// and `inv = 1 / sqrt(Σ x² / width + eps)`, rounded to `F` once.
///
/// Shapes as [`rms_norm_kernel`]'s, `grad` and `dx` like `x` (contiguous).
#[cube(launch)]
pub fn rms_norm_backward_kernel<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    grad: &Tensor<F>,
    dx: &mut Tensor<F>,
    eps: f32,
    width_f32: f32,
    rows: usize,
    #[comptime] threads: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = cube_index();
    if row < rows {
        let width = weight.shape(0);
        let base = row * width;
        let t = UNIT_POS_X as usize;
        let mut squares = SharedMemory::<f32>::new(threads);
        let mut dots = SharedMemory::<f32>::new(threads);

        let mut sq = 0.0f32;
        let mut dot = 0.0f32;
        let mut i = t;
        while i < width {
            let v = f32::cast_from(x[base + i]);
            sq += v * v;
            dot += f32::cast_from(grad[base + i]) * f32::cast_from(weight[i]) * v;
            i += threads;
        }
        squares[t] = sq;
        dots[t] = dot;
        cube_sum(&mut squares);
        cube_sum(&mut dots);
        let inv = 1.0f32 / (squares[0] / width_f32 + eps).sqrt();
        let k = inv * inv * inv * dots[0] / width_f32;

        let mut i = t;
        while i < width {
            let gn = f32::cast_from(grad[base + i]) * f32::cast_from(weight[i]);
            dx[base + i] = F::cast_from(inv * gn - f32::cast_from(x[base + i]) * k);
            i += threads;
        }
    }
}

/// `1 / sqrt(Σ x² / width + eps)` of a row, from each unit's partial sum of squares `acc`
/// (summed over the cube in shared memory, [`cube_sum`]'s order); every unit calls it.
#[cube]
fn inverse_rms(acc: f32, width_f32: f32, eps: f32, #[comptime] threads: usize) -> f32 {
    let mut partial = SharedMemory::<f32>::new(threads);
    partial[UNIT_POS_X as usize] = acc;
    cube_sum(&mut partial);
    1.0f32 / (partial[0] / width_f32 + eps).sqrt()
}
