//! Attention of one new token per sequence over its KV cache, as one cubecl kernel: one cube
//! (thread block) per (sequence, query head), the scores in shared memory.
//!
//! It rounds where the unfused path (`model::attention`) rounds, so that a decode step gives what
//! that path gives up to the order of float32 sums: `q · k` accumulated in float32 and rounded to
//! the activations' dtype `F` (a GEMM's output), times the scale in `F`, then float32 for the
//! masked softmax (`exp(s - max) / Σ exp(s - max)`), the probabilities rounded to `F`, and their
//! product with `v` accumulated in float32 and rounded to `F`. In float32 every rounding is exact.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

/// `out[b, h, 0, :] = softmax(scale · q[b, h, 0, :] · k[b, h / g, s, :]ᵀ, masked → −∞) · v[b, h / g, s, :]`
/// over the key slots `s`, `g = heads / kv_heads`; `masked` nonzero = may not attend.
///
/// Shapes: `q` `[batch, heads, 1, dim]`, `k`, `v` `[batch, kv_heads, slots, dim]`, `masked`
/// `[batch, 1, 1, slots]` (any strides), `out` `[batch, heads, 1, dim]` contiguous; one cube per
/// `(b, h)` in `b · heads + h` order; `cap` ≥ `slots` sizes the shared scores.
#[cube(launch)]
pub fn decode_attention_kernel<F: Float, M: Int>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    masked: &Tensor<M>,
    out: &mut Tensor<F>,
    scale: f32,
    neg_inf: f32,
    #[comptime] cap: usize,
    #[define(F, M)] _dtypes: [StorageType; 2],
) {
    let item = CUBE_POS_X as usize;
    let heads = q.shape(1);
    let b = item / heads;
    let h = item % heads;
    let kh = h / (heads / k.shape(1));
    let dim = q.shape(3);
    let slots = k.shape(2);
    let t = UNIT_POS_X as usize;
    let threads = CUBE_DIM_X as usize;
    let q_base = b * q.stride(0) + h * q.stride(1);
    let k_base = b * k.stride(0) + kh * k.stride(1);
    let v_base = b * v.stride(0) + kh * v.stride(1);
    let m_base = b * masked.stride(0);
    let scale = f32::cast_from(F::cast_from(scale));
    let mut p = SharedMemory::<f32>::new(cap);

    // Scores, one slot a thread at a time.
    let mut s = t;
    while s < slots {
        let mut acc = 0.0f32;
        for d in 0..dim {
            acc += f32::cast_from(q[q_base + d * q.stride(3)])
                * f32::cast_from(k[k_base + s * k.stride(2) + d * k.stride(3)]);
        }
        let mut score = f32::cast_from(F::cast_from(f32::cast_from(F::cast_from(acc)) * scale));
        if masked[m_base + s * masked.stride(3)] != M::from_int(0) {
            score = neg_inf;
        }
        p[s] = score;
        s += threads;
    }
    sync_cube();

    // The softmax's max and sum, every thread over the whole row (no further synchronisation).
    let mut max = neg_inf;
    for s in 0..slots {
        let x = p[s];
        if x > max {
            max = x;
        }
    }
    let mut sum = 0.0f32;
    for s in 0..slots {
        sum += (p[s] - max).exp();
    }
    sync_cube();
    let mut s = t;
    while s < slots {
        p[s] = f32::cast_from(F::cast_from((p[s] - max).exp() / sum));
        s += threads;
    }
    sync_cube();

    // The output, one feature a thread at a time.
    let mut d = t;
    while d < dim {
        let mut acc = 0.0f32;
        for s in 0..slots {
            acc += p[s] * f32::cast_from(v[v_base + s * v.stride(2) + d * v.stride(3)]);
        }
        out[item * dim + d] = F::cast_from(acc);
        d += threads;
    }
}
