//! The routers' kernels, written in cubecl: one thread per row (a token's router scores), so a
//! MoE layer's routing is one launch instead of burn's ~20 small kernels (see [`super`]).
//!
//! Both select like a stable descending sort: slot `s` holds the entry that comes first among
//! those after slot `s - 1`'s, where `a` comes before `b` when it is larger, or equal at a lower
//! index; NaN is ranked as −∞ (`neg_inf`, passed in at launch because WGSL has no infinity
//! literal). `O(k · n)` per row: nothing at router widths (64 or 128 experts, k = 8).

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::cube_index;

/// The value an entry is ranked by: NaN as −∞.
#[cube]
fn key(raw: f32, neg_inf: f32) -> f32 {
    select(raw.is_nan(), neg_inf, raw)
}

/// Whether entry `(v, j)` (`v` its [`key`]) takes the slot being filled from the best so far
/// (`best_v`; `none`: no entry yet): it must come after the previous slot's entry `(prev_v,
/// prev_j)` — smaller, or equal at a higher index; anything does for the first slot — and before
/// the best so far, i.e. be larger (the scan runs up the indices, so an equal one comes after).
#[cube]
#[allow(clippy::too_many_arguments)]
fn takes(
    v: f32,
    j: usize,
    first: bool,
    prev_v: f32,
    prev_j: usize,
    best_v: f32,
    none: bool,
) -> bool {
    let after = first || v < prev_v || (v == prev_v && j > prev_j);
    after && (none || v > best_v)
}

/// `indices[r, s]` = the index of row `r`'s entry of rank `s` in `x` `[rows, n]` (any strides),
/// for `s` in `0..k`.
#[cube(launch)]
pub fn top_k_kernel(
    x: &Tensor<f32>,
    indices: &mut Tensor<i32>,
    neg_inf: f32,
    #[comptime] k: usize,
) {
    let row = ABSOLUTE_POS;
    if row >= indices.shape(0) {
        terminate!();
    }
    let n = x.shape(1);
    let base = row * x.stride(0);
    let step = x.stride(1);
    let out = row * indices.stride(0);
    let mut prev_v = neg_inf;
    let mut prev_j = n;
    for slot in 0..k {
        let mut best_v = neg_inf;
        let mut best_j = n;
        for j in 0..n {
            let v = key(x[base + j * step], neg_inf);
            if takes(v, j, slot == 0, prev_v, prev_j, best_v, best_j == n) {
                best_v = v;
                best_j = j;
            }
        }
        indices[out + slot * indices.stride(1)] = i32::cast_from(best_j);
        prev_v = best_v;
        prev_j = best_j;
    }
}

/// A router's whole decision for inference, as the model's routing computes it (see
/// `model::routing`): `p = softmax(scores)` over each row of `scores` `[rows, n]` (in float32,
/// whatever `F`: `exp(s - max) / Σ exp(s - max)`); `indices [rows, k]` the top-k of `p` as [`top_k_kernel`]
/// ranks them; `weights [rows, k]` their probabilities, divided by their sum when `renorm`; and
/// `dense [rows, n]` the same weights at their experts' columns, zero elsewhere.
#[cube(launch)]
pub fn route_kernel<F: Float>(
    scores: &Tensor<F>,
    indices: &mut Tensor<i32>,
    weights: &mut Tensor<f32>,
    dense: &mut Tensor<f32>,
    neg_inf: f32,
    #[comptime] k: usize,
    #[comptime] renorm: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = ABSOLUTE_POS;
    if row >= indices.shape(0) {
        terminate!();
    }
    let n = scores.shape(1);
    let base = row * scores.stride(0);
    let step = scores.stride(1);
    let mut max = f32::cast_from(scores[base]);
    for j in 1..n {
        let s = f32::cast_from(scores[base + j * step]);
        if s > max {
            max = s;
        }
    }
    let mut sum = 0.0f32;
    for j in 0..n {
        sum += (f32::cast_from(scores[base + j * step]) - max).exp();
    }
    // Each probability's rank key once, kept in the row of `dense` while the slots are chosen
    // (an exponential and a division an entry, not one per entry and slot), then the row zeroed.
    let dense_row = row * dense.stride(0);
    let dense_step = dense.stride(1);
    for j in 0..n {
        dense[dense_row + j * dense_step] = key(
            (f32::cast_from(scores[base + j * step]) - max).exp() / sum,
            neg_inf,
        );
    }
    let out = row * indices.stride(0);
    let w_out = row * weights.stride(0);
    let mut prev_v = neg_inf;
    let mut prev_j = n;
    let mut total = 0.0f32;
    for slot in 0..k {
        let mut best_v = neg_inf;
        let mut best_j = n;
        for j in 0..n {
            let v = dense[dense_row + j * dense_step];
            if takes(v, j, slot == 0, prev_v, prev_j, best_v, best_j == n) {
                best_v = v;
                best_j = j;
            }
        }
        let p = (f32::cast_from(scores[base + best_j * step]) - max).exp() / sum;
        indices[out + slot * indices.stride(1)] = i32::cast_from(best_j);
        weights[w_out + slot * weights.stride(1)] = p;
        total += p;
        prev_v = best_v;
        prev_j = best_j;
    }
    for j in 0..n {
        dense[dense_row + j * dense_step] = 0.0f32;
    }
    for slot in 0..k {
        let at = w_out + slot * weights.stride(1);
        let mut w = weights[at];
        if renorm {
            w /= total;
            weights[at] = w;
        }
        let j = usize::cast_from(indices[out + slot * indices.stride(1)]);
        dense[dense_row + j * dense.stride(1)] = w;
    }
}

/// [`route_kernel`]'s decision, bit for bit, with a cube (thread block) a row instead of a thread:
/// what a decode step wants, whose few rows would leave all but a handful of threads idle.
///
/// The row goes to shared memory; every unit computes the max and the sum of the exponentials
/// itself, over the whole row in index order (the same operations in the same order as
/// [`route_kernel`], so the same bits, and no unit waits for another's); each unit then ranks its
/// own entries, and each slot's entry is found by reducing the units' best candidates by halves
/// under [`route_kernel`]'s order (larger first, ties to the lower index, NaN as −∞), leaving out
/// those already chosen. One cube a row (row [`cube_index`]; those from `rows`
/// on do nothing); `width` = the row's length; `threads` (a power of two) = the cube's size.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn route_cube_kernel<F: Float>(
    scores: &Tensor<F>,
    indices: &mut Tensor<i32>,
    weights: &mut Tensor<f32>,
    dense: &mut Tensor<f32>,
    neg_inf: f32,
    rows: usize,
    #[comptime] width: usize,
    #[comptime] threads: usize,
    #[comptime] k: usize,
    #[comptime] renorm: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = cube_index();
    if row < rows {
        let t = UNIT_POS_X as usize;
        let base = row * scores.stride(0);
        let step = scores.stride(1);
        // The row in float32, then each entry's rank key (its probability, NaN as −∞).
        let mut vals = SharedMemory::<f32>::new(width);
        // 0: not chosen; s + 1: chosen for slot s.
        let mut chosen = SharedMemory::<u32>::new(width);
        let mut cand_v = SharedMemory::<f32>::new(threads);
        let mut cand_j = SharedMemory::<u32>::new(threads);
        let mut slot_j = SharedMemory::<u32>::new(k);
        let mut slot_w = SharedMemory::<f32>::new(k);
        // "No entry": read at run time, as a comptime value could not be assigned to below.
        let none = u32::cast_from(scores.shape(1));
        let mut j = t;
        while j < width {
            vals[j] = f32::cast_from(scores[base + j * step]);
            chosen[j] = 0;
            j += threads;
        }
        sync_cube();
        let mut max = vals[0];
        for j in 1..width {
            let s = vals[j];
            if s > max {
                max = s;
            }
        }
        let mut sum = 0.0f32;
        for j in 0..width {
            sum += (vals[j] - max).exp();
        }
        sync_cube();
        let mut j = t;
        while j < width {
            vals[j] = key((vals[j] - max).exp() / sum, neg_inf);
            j += threads;
        }
        for slot in 0..k {
            sync_cube();
            // This unit's best entry not yet chosen (its entries in index order, so `>` keeps
            // the lower index of a tie), then the cube's, by halves.
            let mut v = neg_inf;
            let mut b = none;
            let mut j = t;
            while j < width {
                let x = vals[j];
                if chosen[j] == 0 && (b == none || x > v) {
                    v = x;
                    b = u32::cast_from(j);
                }
                j += threads;
            }
            cand_v[t] = v;
            cand_j[t] = b;
            sync_cube();
            let mut half = CUBE_DIM_X as usize / 2;
            while half > 0 {
                if t < half {
                    let ov = cand_v[t + half];
                    let ob = cand_j[t + half];
                    let mv = cand_v[t];
                    let mb = cand_j[t];
                    if ob != none && (mb == none || ov > mv || (ov == mv && ob < mb)) {
                        cand_v[t] = ov;
                        cand_j[t] = ob;
                    }
                }
                sync_cube();
                half /= 2;
            }
            if t == 0 {
                let b = cand_j[0];
                slot_j[slot] = b;
                chosen[usize::cast_from(b)] = u32::cast_from(slot) + 1;
            }
        }
        sync_cube();
        if t == 0 {
            // The chosen probabilities in slot order, as `route_kernel` computes and sums them.
            let out = row * indices.stride(0);
            let w_out = row * weights.stride(0);
            let mut total = 0.0f32;
            for slot in 0..k {
                let at = usize::cast_from(slot_j[slot]);
                let p = (f32::cast_from(scores[base + at * step]) - max).exp() / sum;
                indices[out + slot * indices.stride(1)] = i32::cast_from(at);
                slot_w[slot] = p;
                total += p;
            }
            for slot in 0..k {
                let mut w = slot_w[slot];
                if renorm {
                    w /= total;
                }
                weights[w_out + slot * weights.stride(1)] = w;
                slot_w[slot] = w;
            }
        }
        sync_cube();
        let dense_row = row * dense.stride(0);
        let mut j = t;
        while j < width {
            let c = chosen[j];
            let mut w = 0.0f32;
            if c > 0 {
                w = slot_w[usize::cast_from(c - 1)];
            }
            dense[dense_row + j * dense.stride(1)] = w;
            j += threads;
        }
    }
}
