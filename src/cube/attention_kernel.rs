//! Attention of one new token per sequence over its KV cache, as one cubecl kernel: one cube
//! (thread block) of [`THREADS`] units per (sequence, query head), the scores in shared memory.
//!
//! - Scores: a unit a key slot, the query in shared memory, four features' loads issued before
//!   their products.
//! - Softmax: each unit's slots, then halves over the units (`cube_max`, `cube_sum`), for the
//!   maximum and the sum.
//! - Values: [`LANES`] units along the features (each `per_lane` of them, `LANES` apart) times
//!   [`GROUPS`] groups along the slots (slot `s` in group `s % GROUPS`, two slots' loads at a
//!   time), then each feature's sum over the groups in group order.
//!
//! A unit a feature over every slot (the kernel before) waited on one load a slot; at 193 slots
//! that took ~90 µs a layer on an H100 where the values are ~6 MB (`benches/results/kernels.jsonl`).
//!
//! It rounds where the unfused path (`model::attention`) rounds, so that a decode step gives what
//! that path gives up to the order of float32 sums: `q · k` accumulated in float32 and rounded to
//! the activations' dtype `F` (a GEMM's output), times the scale in `F`, then float32 for the
//! masked softmax (`exp(s - max) / Σ exp(s - max)`), the probabilities rounded to `F`, and their
//! product with `v` accumulated in float32 and rounded to `F`. In float32 every rounding is exact.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::{cube_max, cube_sum};

/// Units along a head's features in the values' product.
pub const LANES: usize = 32;
/// Groups of key slots in the values' product.
pub const GROUPS: usize = 8;
/// Units a cube.
pub const THREADS: usize = LANES * GROUPS;

/// Float32 words of shared memory a launch takes: the scores (`cap`), the query and the
/// reductions (`per_lane` features a lane).
pub fn shared_words(cap: usize, per_lane: usize) -> usize {
    cap + LANES * per_lane + THREADS * per_lane
}

/// `out[b, h, 0, :] = softmax(scale · q[b, h, 0, :] · k[b, h / g, s, :]ᵀ, masked → −∞) · v[b, h / g, s, :]`
/// over the key slots `s`, `g = heads / kv_heads`; `masked` nonzero = may not attend.
///
/// Shapes: `q` `[batch, heads, 1, dim]`, `k`, `v` `[batch, kv_heads, slots, dim]`, `masked`
/// `[batch, 1, 1, slots]` (any strides), `out` `[batch, heads, 1, dim]` contiguous; one cube of
/// [`THREADS`] units per `(b, h)` in `b · heads + h` order; `cap` ≥ `slots` sizes the shared
/// scores, `per_lane` = `dim.div_ceil(LANES)`.
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
    #[comptime] per_lane: usize,
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
    let lane = t % LANES;
    let group = t / LANES;
    let q_base = b * q.stride(0) + h * q.stride(1);
    let k_base = b * k.stride(0) + kh * k.stride(1);
    let v_base = b * v.stride(0) + kh * v.stride(1);
    let m_base = b * masked.stride(0);
    let ks = k.stride(3);
    let vs = v.stride(3);
    let scale = f32::cast_from(F::cast_from(scale));
    let mut qs = SharedMemory::<f32>::new(LANES * per_lane);
    let mut p = SharedMemory::<f32>::new(cap);
    let mut red = SharedMemory::<f32>::new(THREADS * per_lane);

    let mut d = t;
    while d < dim {
        qs[d] = f32::cast_from(q[q_base + d * q.stride(3)]);
        d += THREADS;
    }
    sync_cube();

    // Scores, a unit a slot; the features in order (four loads, then four products).
    let mut s = t;
    while s < slots {
        let row = k_base + s * k.stride(2);
        let mut acc = 0.0f32;
        let mut d = 0usize;
        while d + 4 <= dim {
            let mut kv = Array::<f32>::new(4usize);
            #[unroll]
            for j in 0..4usize {
                kv[j] = f32::cast_from(k[row + (d + j) * ks]);
            }
            #[unroll]
            for j in 0..4usize {
                acc += qs[d + j] * kv[j];
            }
            d += 4;
        }
        while d < dim {
            acc += qs[d] * f32::cast_from(k[row + d * ks]);
            d += 1;
        }
        let mut score = f32::cast_from(F::cast_from(f32::cast_from(F::cast_from(acc)) * scale));
        if masked[m_base + s * masked.stride(3)] != M::from_int(0) {
            score = neg_inf;
        }
        p[s] = score;
        s += THREADS;
    }
    sync_cube();

    // The softmax's maximum: each unit's slots, then a tree.
    let mut m = neg_inf;
    let mut s = t;
    while s < slots {
        let x = p[s];
        if x > m {
            m = x;
        }
        s += THREADS;
    }
    red[t] = m;
    cube_max(&mut red);
    let max = red[0];
    sync_cube();

    // Its sum, the same way.
    let mut e = 0.0f32;
    let mut s = t;
    while s < slots {
        e += (p[s] - max).exp();
        s += THREADS;
    }
    red[t] = e;
    cube_sum(&mut red);
    let sum = red[0];
    sync_cube();
    let mut s = t;
    while s < slots {
        p[s] = f32::cast_from(F::cast_from((p[s] - max).exp() / sum));
        s += THREADS;
    }
    sync_cube();

    // The values: lanes along the features, groups along the slots, two slots at a time.
    let mut acc = Array::<f32>::new(per_lane);
    #[unroll]
    for i in 0..per_lane {
        acc[i] = 0.0f32;
    }
    let mut s = group;
    while s < slots {
        let next = s + GROUPS;
        let two = next < slots;
        let w1 = p[s];
        let mut w2 = 0.0f32;
        let mut s2 = s;
        if two {
            w2 = p[next];
            s2 = next;
        }
        let row1 = v_base + s * v.stride(2);
        let row2 = v_base + s2 * v.stride(2);
        let mut a = Array::<f32>::new(per_lane);
        let mut c = Array::<f32>::new(per_lane);
        #[unroll]
        for i in 0..per_lane {
            let d = select(lane + i * LANES < dim, lane + i * LANES, 0usize);
            a[i] = f32::cast_from(v[row1 + d * vs]);
            c[i] = f32::cast_from(v[row2 + d * vs]);
        }
        #[unroll]
        for i in 0..per_lane {
            acc[i] += w1 * a[i];
            if two {
                acc[i] += w2 * c[i];
            }
        }
        s += 2 * GROUPS;
    }
    #[unroll]
    for i in 0..per_lane {
        red[(group * per_lane + i) * LANES + lane] = acc[i];
    }
    sync_cube();
    let mut d = t;
    while d < dim {
        let i = d / LANES;
        let l = d % LANES;
        let mut total = 0.0f32;
        for g in 0..GROUPS {
            total += red[(g * per_lane + i) * LANES + l];
        }
        out[item * dim + d] = F::cast_from(total);
        d += THREADS;
    }
}
