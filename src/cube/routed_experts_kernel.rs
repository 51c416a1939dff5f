//! A decode step's experts, routed only, as three cubecl kernels (CUDA): each cube takes one
//! expert and a tile of its output columns, finds the (token, slot) pairs that chose that expert,
//! and exits when there are none, so only the experts the batch routed to are read from the
//! stacked weights; the rows are split among the cube's groups and summed in shared memory.
//!
//! - [`routed_gate_up_kernel`]: `h[t·k + s] = silu(x_t · G_e) · (x_t · U_e) · w[t, s]` for every
//!   pair whose slot `s` chose expert `e`, rounding as the dense path does: each product summed
//!   in float32 and rounded to `F` (the GEMM's output), then the SwiGLU kernel's own steps
//!   ([`swiglu_kernel`](super::swiglu_kernel)).
//! - [`routed_down_kernel`]: `partial[t·k + s] = h[t·k + s] · D_e` in float32.
//! - [`slot_sum_kernel`]: `out[t] = F(Σ_s partial[t·k + s])`, the slots in order.
//!
//! The dense path's GEMMs sum in cuBLAS's order; these sum in their own, so the two agree to
//! float32 rounding before the one rounding to `F`. Every sum has a fixed order (no atomics):
//! the same inputs give the same bits.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::cube_index;

/// Rows of the input held in shared memory at a time.
const CHUNK: usize = 512;
/// Tokens a launch may hold (the shared list of those that chose the cube's expert).
pub const MAX_TOKENS: usize = 64;

/// The smaller of `a` and `b`.
#[cube]
fn smaller(a: usize, b: usize) -> usize {
    select(a < b, a, b)
}

/// The (token, slot) pairs whose slot chose `expert`, as `t · k + s` in token order, into
/// `list`; returns how many. Every unit of the cube (`threads` of them) calls it.
#[cube]
fn routed_pairs(
    indices: &Tensor<i32>,
    expert: usize,
    list: &mut SharedMemory<u32>,
    slot_of: &mut SharedMemory<i32>,
    count: &mut SharedMemory<u32>,
    #[comptime] threads: usize,
) -> usize {
    let unit = UNIT_POS as usize;
    let tokens = indices.shape(0);
    let k = indices.shape(1);
    let mut u = unit;
    while u < MAX_TOKENS {
        slot_of[u] = -1i32;
        u += threads;
    }
    sync_cube();
    let mut j = unit;
    while j < tokens * k {
        let t = j / k;
        let s = j % k;
        if indices[t * indices.stride(0) + s * indices.stride(1)] == i32::cast_from(expert) {
            slot_of[t] = i32::cast_from(s);
        }
        j += threads;
    }
    sync_cube();
    if unit == 0 {
        let mut c = 0u32;
        for t in 0..tokens {
            let s = slot_of[t];
            if s >= 0i32 {
                list[c as usize] = u32::cast_from(t * k) + u32::cast_from(s);
                c += 1u32;
            }
        }
        count[0] = c;
    }
    sync_cube();
    count[0] as usize
}

/// Rows `first..first + rows` of the pass's inputs into `xs[r · per_pass + p]` as float32: input row
/// `list[pass + p] / divide` of `x` for the pass's `p < active` pairs (`per_pass` of them at most),
/// zero for the rest; a cube of `threads` units.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_rows<F: Float>(
    x: &Tensor<F>,
    list: &SharedMemory<u32>,
    pass: usize,
    active: usize,
    divide: usize,
    first: usize,
    rows: usize,
    xs: &mut SharedMemory<f32>,
    #[comptime] per_pass: usize,
    #[comptime] threads: usize,
) {
    let unit = UNIT_POS as usize;
    sync_cube();
    let mut i = unit;
    while i < rows * per_pass {
        let r = i / per_pass;
        let p = i % per_pass;
        let mut v = 0.0f32;
        if p < active {
            let row = list[pass + p] as usize / divide;
            v = f32::cast_from(x[row * x.stride(0) + (first + r) * x.stride(1)]);
        }
        xs[i] = v;
        i += threads;
    }
    sync_cube();
}

/// Σ over the cube's groups of `value` (this unit's), in group order, for group 0's lanes (the
/// others get their own value back). Every unit of the cube calls it.
#[cube]
fn sum_groups<N: Size>(
    value: Vector<f32, N>,
    red: &mut SharedMemory<Vector<f32, N>>,
    #[comptime] lanes: usize,
    #[comptime] groups: usize,
) -> Vector<f32, N> {
    let lane = UNIT_POS_X as usize;
    let group = UNIT_POS_Y as usize;
    sync_cube();
    red[group * lanes + lane] = value;
    sync_cube();
    let mut total = value;
    if group == 0 {
        for g in 1..groups {
            total += red[g * lanes + lane];
        }
    }
    total
}

/// The routed gate and up projections and their SwiGLU, weighted by routing weight (see the
/// module's documentation).
///
/// Shapes: `x` `[tokens, hidden]`; `w` the stacked `[hidden, 2 · experts · inter]` (every
/// expert's gate columns, then every expert's up columns), contiguous, in vectors of `N`;
/// `indices`, `weights` `[tokens, k]`; `h` `[tokens · k, inter]` contiguous, in vectors of `N`
/// (rows of pairs no expert wrote are left as they were). Grid: `(inter / N).div_ceil(lanes)`
/// column tiles × `experts`; cube `lanes × groups` (a [`Tile`](super::routed_experts::Tile);
/// `per_pass` its `pass`, the pairs a pass over the weights serves). Each group loads `unroll` rows' weights
/// before multiplying (more loads in flight; the sums' order is the same for any `unroll`).
#[cube(launch_unchecked)]
pub fn routed_gate_up_kernel<F: Float, N: Size>(
    x: &Tensor<F>,
    w: &Tensor<Vector<F, N>>,
    indices: &Tensor<i32>,
    weights: &Tensor<f32>,
    h: &mut Tensor<Vector<F, N>>,
    inter: usize,
    #[comptime] lanes: usize,
    #[comptime] groups: usize,
    #[comptime] per_pass: usize,
    #[comptime] unroll: usize,
    #[define(F)] _dtype: StorageType,
) {
    let expert = CUBE_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let group = UNIT_POS_Y as usize;
    let n = N::value();
    let col = (CUBE_POS_X as usize * lanes + lane) * n;
    let live = col < inter;
    let hidden = x.shape(1);
    let half = w.shape(1) / 2;
    let row_stride = w.stride(0);
    let k = indices.shape(1);

    let mut list = SharedMemory::<u32>::new(MAX_TOKENS);
    let mut slot_of = SharedMemory::<i32>::new(MAX_TOKENS);
    let mut count = SharedMemory::<u32>::new(1usize);
    let mut xs = SharedMemory::<f32>::new(CHUNK * per_pass);
    let mut red = SharedMemory::<Vector<f32, N>>::new(lanes * groups);

    let pairs = routed_pairs(
        indices,
        expert,
        &mut list,
        &mut slot_of,
        &mut count,
        lanes * groups,
    );
    let gate_at = expert * inter + col;
    let up_at = half + gate_at;
    let mut pass = 0usize;
    while pass < pairs {
        let active = smaller(pairs - pass, per_pass);
        let mut gate = Array::<Vector<f32, N>>::new(per_pass);
        let mut up = Array::<Vector<f32, N>>::new(per_pass);
        #[unroll]
        for p in 0..per_pass {
            gate[p] = Vector::new(0.0f32);
            up[p] = Vector::new(0.0f32);
        }
        let mut first = 0usize;
        while first < hidden {
            let rows = smaller(hidden - first, CHUNK);
            load_rows(
                x,
                &list,
                pass,
                active,
                k,
                first,
                rows,
                &mut xs,
                per_pass,
                lanes * groups,
            );
            if live {
                // `unroll` rows' loads issued before their products (same order of sums).
                let mut r = group;
                while r < rows {
                    let mut gs = Array::<Vector<F, N>>::new(unroll);
                    let mut us = Array::<Vector<F, N>>::new(unroll);
                    #[unroll]
                    for q in 0..unroll {
                        let rq = smaller(r + q * groups, rows - 1);
                        let at = (first + rq) * row_stride;
                        gs[q] = w[(at + gate_at) / n];
                        us[q] = w[(at + up_at) / n];
                    }
                    #[unroll]
                    for q in 0..unroll {
                        let rq = r + q * groups;
                        if rq < rows {
                            let g = Vector::<f32, N>::cast_from(gs[q]);
                            let u = Vector::<f32, N>::cast_from(us[q]);
                            #[unroll]
                            for p in 0..per_pass {
                                let v = Vector::new(xs[rq * per_pass + p]);
                                gate[p] += g * v;
                                up[p] += u * v;
                            }
                        }
                    }
                    r += unroll * groups;
                }
            }
            first += CHUNK;
        }
        #[unroll]
        for p in 0..per_pass {
            if p < active {
                let g = sum_groups(gate[p], &mut red, lanes, groups);
                let u = sum_groups(up[p], &mut red, lanes, groups);
                if group == 0 && live {
                    let pair = list[pass + p] as usize;
                    let t = pair / k;
                    let s = pair % k;
                    let route =
                        F::cast_from(weights[t * weights.stride(0) + s * weights.stride(1)]);
                    let mut out = Vector::<F, N>::new(F::new(0.0));
                    #[unroll]
                    for i in 0..n {
                        let gf = F::cast_from(g[i]);
                        let uf = F::cast_from(u[i]);
                        let sigmoid =
                            F::cast_from((-((-f32::cast_from(gf)).exp() + 1.0f32).ln()).exp());
                        out[i] = gf * sigmoid * uf * route;
                    }
                    h[(pair * inter + col) / n] = out;
                }
            }
        }
        pass += per_pass;
    }
}

/// The routed down projection of [`routed_gate_up_kernel`]'s output, one float32 row a pair.
///
/// Shapes: `h` `[tokens · k, inter]`; `w` the stacked `[experts · inter, hidden]`, contiguous,
/// in vectors of `N`; `indices` `[tokens, k]`; `partial` `[tokens · k, hidden]` float32,
/// contiguous, in vectors of `N`. Grid: `(hidden / N).div_ceil(lanes)` column tiles ×
/// `experts`; cube `lanes × groups`; `per_pass` and `unroll` as [`routed_gate_up_kernel`]'s.
#[cube(launch_unchecked)]
pub fn routed_down_kernel<F: Float, N: Size>(
    h: &Tensor<F>,
    w: &Tensor<Vector<F, N>>,
    indices: &Tensor<i32>,
    partial: &mut Tensor<Vector<f32, N>>,
    #[comptime] lanes: usize,
    #[comptime] groups: usize,
    #[comptime] per_pass: usize,
    #[comptime] unroll: usize,
    #[define(F)] _dtype: StorageType,
) {
    let expert = CUBE_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let group = UNIT_POS_Y as usize;
    let n = N::value();
    let col = (CUBE_POS_X as usize * lanes + lane) * n;
    let hidden = w.shape(1);
    let live = col < hidden;
    let inter = h.shape(1);
    let row_stride = w.stride(0);

    let mut list = SharedMemory::<u32>::new(MAX_TOKENS);
    let mut slot_of = SharedMemory::<i32>::new(MAX_TOKENS);
    let mut count = SharedMemory::<u32>::new(1usize);
    let mut xs = SharedMemory::<f32>::new(CHUNK * per_pass);
    let mut red = SharedMemory::<Vector<f32, N>>::new(lanes * groups);

    let pairs = routed_pairs(
        indices,
        expert,
        &mut list,
        &mut slot_of,
        &mut count,
        lanes * groups,
    );
    let base = expert * inter;
    let mut pass = 0usize;
    while pass < pairs {
        let active = smaller(pairs - pass, per_pass);
        let mut acc = Array::<Vector<f32, N>>::new(per_pass);
        #[unroll]
        for p in 0..per_pass {
            acc[p] = Vector::new(0.0f32);
        }
        let mut first = 0usize;
        while first < inter {
            let rows = smaller(inter - first, CHUNK);
            load_rows(
                h,
                &list,
                pass,
                active,
                1usize,
                first,
                rows,
                &mut xs,
                per_pass,
                lanes * groups,
            );
            if live {
                let mut r = group;
                while r < rows {
                    let mut ds = Array::<Vector<F, N>>::new(unroll);
                    #[unroll]
                    for q in 0..unroll {
                        let rq = smaller(r + q * groups, rows - 1);
                        ds[q] = w[((base + first + rq) * row_stride + col) / n];
                    }
                    #[unroll]
                    for q in 0..unroll {
                        let rq = r + q * groups;
                        if rq < rows {
                            let d = Vector::<f32, N>::cast_from(ds[q]);
                            #[unroll]
                            for p in 0..per_pass {
                                acc[p] += d * Vector::new(xs[rq * per_pass + p]);
                            }
                        }
                    }
                    r += unroll * groups;
                }
            }
            first += CHUNK;
        }
        #[unroll]
        for p in 0..per_pass {
            if p < active {
                let total = sum_groups(acc[p], &mut red, lanes, groups);
                if group == 0 && live {
                    let pair = list[pass + p] as usize;
                    partial[(pair * hidden + col) / n] = total;
                }
            }
        }
        pass += per_pass;
    }
}

/// `out[t, c] = F(Σ_{s < k} partial[t · k + s, c])`, the slots in order; a thread an output.
///
/// Shapes: `partial` `[tokens · k, hidden]` float32 contiguous, `out` `[tokens, hidden]`
/// contiguous; thread `cube_index() · 256 + UNIT_POS_X`.
#[cube(launch)]
pub fn slot_sum_kernel<F: Float>(
    partial: &Tensor<f32>,
    out: &mut Tensor<F>,
    k: usize,
    #[define(F)] _dtype: StorageType,
) {
    let idx = cube_index() * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    if idx < out.len() {
        let hidden = out.shape(1);
        let t = idx / hidden;
        let c = idx % hidden;
        let mut total = 0.0f32;
        for s in 0..k {
            total += partial[(t * k + s) * hidden + c];
        }
        out[idx] = F::cast_from(total);
    }
}
