//! Everything that needs an NVIDIA GPU, in one test binary: the parity cases on CUDA (float32 at
//! TF32 precision, see `Target`; `STEERMOE_TEST_PRECISION=bf16` for bf16), the cuBLAS grouped
//! expert GEMM and attention's batched GEMM against burn's matmuls, and mixed precision with f32
//! master weights over bf16.
//! Build with `--features cuda` and run on a machine with an NVIDIA GPU:
//! `cargo test --features cuda --test suite cuda:: -- --ignored`.
#![cfg(feature = "cuda")]

use crate::parity_cases::*;

type B = burn::backend::Cuda;

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn forward_logits_router_logits_and_hidden_match() {
    crate::parity_cases::forward_logits_router_logits_and_hidden_match::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn forward_loss_matches() {
    crate::parity_cases::forward_loss_matches::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn free_routing_captures_nothing_by_default() {
    crate::parity_cases::free_routing_captures_nothing_by_default::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn left_padded_batch_matches_on_real_positions() {
    crate::parity_cases::left_padded_batch_matches_on_real_positions::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn masked_routing_matches_logits_router_logits_and_loss() {
    crate::parity_cases::masked_routing_matches_logits_router_logits_and_loss::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn masked_expert_gradients_of_layer0_match() {
    crate::parity_cases::masked_expert_gradients_of_layer0_match::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn cached_decoding_matches_recomputation_and_greedy_tokens() {
    crate::parity_cases::cached_decoding_matches_recomputation_and_greedy_tokens::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn routing_kernels_match_burn_ops() {
    crate::parity_cases::routing_kernels_match_burn_ops::<B>();
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn decode_attention_kernel_matches_burn_ops() {
    crate::parity_cases::decode_attention_kernel_matches_burn_ops::<B>();
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn rms_norm_kernel_matches_burn_ops() {
    crate::parity_cases::rms_norm_kernel_matches_burn_ops::<B>();
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn swiglu_kernel_matches_burn_ops() {
    crate::parity_cases::swiglu_kernel_matches_burn_ops::<B>();
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn rope_kernel_matches_burn_ops() {
    crate::parity_cases::rope_kernel_matches_burn_ops::<B>();
}

/// The routing kernel reads bf16 logits as their float32 values: the same indices, weights and
/// dense weights, bit for bit, as from the logits cast to float32 first.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn routing_kernel_reads_bf16_logits_as_float32() {
    use burn::tensor::{Distribution, FloatDType, Tensor};
    let device = Default::default();
    let logits = Tensor::<B, 2>::random([300, 64], Distribution::Normal(0.0, 2.0), &device)
        .cast(FloatDType::BF16);
    for renorm in [false, true] {
        let a =
            steermoe::cube::try_route(&logits, 8, renorm).expect("CUDA runs the routing kernel");
        let b = steermoe::cube::try_route(&logits.clone().cast(FloatDType::F32), 8, renorm)
            .expect("CUDA runs the routing kernel");
        a.indices
            .into_data()
            .assert_eq(&b.indices.into_data(), true);
        a.weights
            .into_data()
            .assert_eq(&b.weights.into_data(), true);
        a.dense.into_data().assert_eq(&b.dense.into_data(), true);
    }
}

/// In bf16 the RMSNorm kernel rounds where burn's ops (the model's RMSNorm without the kernel)
/// round: only the float32 sum's order differs, so nearly every output is bit-identical; with a
/// unit weight none is more than one bf16 step away (`2⁻⁷` relative), and with a random weight
/// none more than two (a one-step difference of the normalised value, then the product's own
/// rounding: 1.19e-2 relative was seen on random inputs). The residual add fused before it gives
/// the same bits as burn's bf16 add and the kernel apart.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn rms_norm_kernel_in_bf16_rounds_as_burn_ops() {
    use burn::tensor::{Distribution, FloatDType, Tensor};
    let device = Default::default();
    let x = Tensor::<B, 2>::random([64, 2048], Distribution::Normal(0.0, 3.0), &device)
        .cast(FloatDType::BF16);
    let random = Tensor::<B, 1>::random([2048], Distribution::Uniform(0.5, 1.5), &device)
        .cast(FloatDType::BF16);
    let unit = Tensor::<B, 1>::ones([2048], &device).cast(FloatDType::BF16);
    for (w, steps) in [(unit, 1.0), (random, 2.0)] {
        let got = steermoe::cube::try_rms_norm(&x, &w, 1e-5).expect("CUDA runs the RMSNorm kernel");
        let xf = x.clone().cast(FloatDType::F32);
        let normed = xf.clone() * xf.square().mean_dim(1).add_scalar(1e-5).sqrt().recip();
        let want = w.reshape([1, 2048]) * normed.cast(FloatDType::BF16);
        let f32s = |t: Tensor<B, 2>| t.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
        let (got, want) = (f32s(got), f32s(want));
        let differ = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs() / w.abs().max(1e-6))
            .fold(0f32, f32::max);
        assert!(
            worst <= steps / 128.0,
            "max relative difference {worst:e} (more than {steps} bf16 steps)"
        );
        assert!(
            differ * 100 <= got.len(),
            "{differ} of {} outputs differ",
            got.len()
        );
    }
    // The residual add fused before the norm rounds the sum as burn's bf16 add does and then
    // gives the norm kernel's own bits.
    let y = Tensor::<B, 2>::random([64, 2048], Distribution::Normal(0.0, 3.0), &device)
        .cast(FloatDType::BF16);
    let w = Tensor::<B, 1>::random([2048], Distribution::Uniform(0.5, 1.5), &device)
        .cast(FloatDType::BF16);
    let (sum, normed) = steermoe::cube::try_add_rms_norm(&x, &y, &w, 1e-5)
        .expect("CUDA runs the add-and-RMSNorm kernel");
    let want_sum = x.clone() + y;
    let want = steermoe::cube::try_rms_norm(&want_sum, &w, 1e-5).unwrap();
    let f32s = |t: Tensor<B, 2>| t.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
    assert!(
        f32s(sum) == f32s(want_sum),
        "bf16 x + y differs from burn's add"
    );
    assert!(
        f32s(normed) == f32s(want),
        "bf16 norm(x + y) differs from the norm kernel's"
    );
}

/// The SwiGLU kernel on more than 65,535 cubes of outputs (the grid's second axis), as at 256
/// decode tokens of 64 experts × 1,024.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn swiglu_kernel_spans_the_grid_s_second_axis() {
    use burn::tensor::{Distribution, Tensor};
    let device = Default::default();
    let wide = 65_536 * 256 + 6;
    let gate_up = Tensor::<B, 2>::random([1, 2 * wide], Distribution::Normal(0.0, 3.0), &device);
    let dense = Tensor::<B, 2>::random([1, 2], Distribution::Uniform(0.0, 1.0), &device);
    crate::parity_cases::check_swiglu(gate_up, dense, wide / 2);
}

/// `got` within `rel` × max |`want`| of `want` (max abs), the ratio printed.
fn assert_close<const D: usize>(
    what: &str,
    got: burn::tensor::Tensor<burn::backend::Autodiff<B>, D>,
    want: burn::tensor::Tensor<burn::backend::Autodiff<B>, D>,
    rel: f64,
) {
    let max_abs = |t: burn::tensor::Tensor<burn::backend::Autodiff<B>, D>| -> f64 {
        t.abs().max().into_scalar().into()
    };
    let scale = max_abs(want.clone()).max(1e-12);
    let err = max_abs(got - want);
    eprintln!("{what}: max |diff| / max |want| = {:.2e}", err / scale);
    assert!(
        err <= rel * scale,
        "{what}: max |diff| {err:.3e} > {rel:e} × {scale:.3e}"
    );
}

/// The cuBLAS grouped expert GEMM against burn's own matmuls on CUDA, forward and backward, in
/// f32 (TF32 both) and bf16: rows grouped by expert, one expert without rows, trained and frozen
/// experts, f32 master weights cast to the compute dtype.
mod grouped_gemm {
    use burn::backend::{Autodiff, Cuda};
    use burn::tensor::{DType, Distribution, FloatDType, Tensor};
    use steermoe::model::experts::{grouped_linear, grouped_linear_matmul};

    use super::assert_close;

    type B = Autodiff<Cuda>;

    fn case(dtype: FloatDType, rel: f64) {
        let device = Default::default();
        assert!(
            steermoe::cuda::available(0),
            "cuBLAS did not load: the test would compare burn with itself"
        );
        let counts = [5usize, 0, 17, 1, 9];
        let trained = [true, true, true, false, false];
        let (n, width_in, width_out) = (counts.iter().sum::<usize>(), 48, 40);
        let x0 = Tensor::<B, 2>::random([n, width_in], Distribution::Normal(0.0, 1.0), &device)
            .cast(dtype);
        let r = Tensor::<B, 2>::random([n, width_out], Distribution::Normal(0.0, 1.0), &device)
            .cast(dtype);
        let masters: Vec<Tensor<B, 2>> = trained
            .iter()
            .map(|&t| {
                let w = Tensor::<B, 2>::random(
                    [width_in, width_out],
                    Distribution::Normal(0.0, 0.05),
                    &device,
                );
                if t { w.require_grad() } else { w.cast(dtype) }
            })
            .collect();
        let run = |grouped: bool| {
            let x = x0.clone().detach().require_grad();
            let weights: Vec<Tensor<B, 2>> = masters
                .iter()
                .map(|w| {
                    if w.dtype() == DType::from(dtype) {
                        w.clone()
                    } else {
                        w.clone().cast(dtype)
                    }
                })
                .collect();
            let y = match grouped {
                true => grouped_linear(x.clone(), weights, &counts),
                false => grouped_linear_matmul(x.clone(), weights, &counts),
            };
            let grads = (y.clone() * r.clone())
                .cast(FloatDType::F32)
                .sum()
                .backward();
            let dx = x.grad(&grads).map(Tensor::<B, 2>::from_inner);
            let dw: Vec<Option<Tensor<B, 2>>> = masters
                .iter()
                .map(|w| w.grad(&grads).map(Tensor::from_inner))
                .collect();
            (y, dx, dw)
        };
        let (y, dx, dw) = run(true);
        let (y_ref, dx_ref, dw_ref) = run(false);
        assert_eq!(y.dtype(), DType::from(dtype));
        assert_close("y", y, y_ref, rel);
        assert_close(
            "dx",
            dx.expect("input gradient"),
            dx_ref.expect("reference input gradient"),
            rel,
        );
        for (e, (got, want)) in dw.into_iter().zip(dw_ref).enumerate() {
            match (got, want) {
                (Some(got), Some(want)) => {
                    assert_eq!(
                        got.dtype(),
                        DType::F32,
                        "expert {e}'s gradient reaches its f32 master weight"
                    );
                    assert_close(&format!("dW[{e}]"), got, want, rel)
                }
                (None, None) => assert!(
                    !trained[e] || counts[e] == 0,
                    "expert {e} trains and has rows but got no gradient"
                ),
                (got, want) => panic!(
                    "expert {e}: gradient {} with cuBLAS, {} with burn",
                    got.is_some(),
                    want.is_some()
                ),
            }
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
    fn grouped_gemm_matches_burn_in_f32() {
        case(FloatDType::F32, 5e-3);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
    fn grouped_gemm_matches_burn_in_bf16() {
        case(FloatDType::BF16, 3e-2);
    }
}

/// The cuBLAS batched GEMM of attention against burn's matmul on CUDA, forward and both input
/// gradients, in f32 (TF32 both) and bf16: a contiguous left operand, a transposed view on the
/// right (keys as attention reads them), and a left operand flattened from a head-split layout
/// (`[batch, seq, heads, dim]` → `[batch · heads, seq, dim]`, as attention's queries).
mod batched_gemm {
    use burn::backend::{Autodiff, Cuda};
    use burn::tensor::{DType, Distribution, FloatDType, Tensor};

    use super::assert_close;

    type B = Autodiff<Cuda>;

    fn case(dtype: FloatDType, rel: f64) {
        let device = Default::default();
        assert!(
            steermoe::cuda::available(0),
            "cuBLAS did not load: the test would compare burn with itself"
        );
        let (batch, heads, m, k, p) = (2, 3, 5, 16, 7);
        let n = batch * heads;
        let normal = |shape: [usize; 3]| {
            Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device).cast(dtype)
        };
        // [batch, m, heads, k] → [batch · heads, m, k].
        let a4 = Tensor::<B, 4>::random(
            [batch, m, heads, k],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
        .cast(dtype);
        let lefts = [
            ("contiguous", normal([n, m, k])),
            ("head-split", a4.swap_dims(1, 2).reshape([n, m, k])),
        ];
        let b_t = normal([n, p, k]);
        let r = normal([n, m, p]);
        for (layout, a0) in lefts {
            let run = |cublas: bool| {
                let a = a0.clone().detach().require_grad();
                let bt = b_t.clone().detach().require_grad();
                let b = bt.clone().swap_dims(1, 2);
                let c = match cublas {
                    true => steermoe::cuda::try_batched_matmul(&a, &b).expect("CUDA tensors"),
                    false => a.clone().matmul(b),
                };
                let grads = (c.clone() * r.clone())
                    .cast(FloatDType::F32)
                    .sum()
                    .backward();
                let da = Tensor::<B, 3>::from_inner(a.grad(&grads).expect("a's gradient"));
                let db = Tensor::<B, 3>::from_inner(bt.grad(&grads).expect("b's gradient"));
                (c, da, db)
            };
            let (c, da, db) = run(true);
            let (c_ref, da_ref, db_ref) = run(false);
            assert_eq!(c.dtype(), DType::from(dtype));
            assert_close(&format!("{layout}: c"), c, c_ref, rel);
            assert_close(&format!("{layout}: da"), da, da_ref, rel);
            assert_close(&format!("{layout}: db"), db, db_ref, rel);
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
    fn batched_gemm_matches_burn_in_f32() {
        case(FloatDType::F32, 5e-3);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
    fn batched_gemm_matches_burn_in_bf16() {
        case(FloatDType::BF16, 3e-2);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn master_weights_take_the_updates_bf16_cannot_hold() {
    crate::mixed_cases::master_weights_move_as_the_reference::<burn::backend::Autodiff<B>>(
        crate::mixed_cases::CUDA,
        Default::default(),
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn a_loaded_checkpoint_keeps_bf16_and_f32_master_weights() {
    crate::mixed_cases::loaded_checkpoint_keeps_dtypes::<burn::backend::Autodiff<B>>(
        crate::mixed_cases::CUDA,
        Default::default(),
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
fn shared_experts_give_the_same_model() {
    crate::parity_cases::shared_experts_give_the_same_model::<B>(CUDA_TF32);
}

/// The routed-only experts' kernels (`steermoe::cube::try_routed_experts`) against the experts
/// computed on the host in float64 (float32 inputs) and against the stacked GEMMs' path with its
/// SwiGLU kernel (bf16, where both round at the same steps): a width that does not fill the
/// cubes' column tiles, experts chosen by no token, by one, and by more than a pass of four,
/// one token and the most a launch takes, for each cube shape in [`TILES`]; `None` past that,
/// under autodiff and for a tile the kernels do not take.
mod routed_experts {
    use burn::backend::{Autodiff, Cuda};
    use burn::tensor::{Distribution, FloatDType, Int, Tensor, TensorData};
    use steermoe::cube::routed_experts::Tile;
    use steermoe::cube::{try_routed_experts, try_routed_experts_with, try_swiglu};
    use steermoe::model::experts::grouped_linear;

    type B = Cuda;

    /// `[tokens, k]` distinct experts a token, drawn from `used` (an LCG, so the case is fixed),
    /// and weights in (0, 1).
    fn choices(tokens: usize, k: usize, used: usize, seed: u64) -> (Vec<i32>, Vec<f32>) {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut ids = Vec::new();
        let mut weights = Vec::new();
        for _ in 0..tokens {
            let mut row: Vec<i32> = Vec::new();
            while row.len() < k {
                let e = (next() % used) as i32;
                if !row.contains(&e) {
                    row.push(e);
                }
            }
            ids.extend(row);
            weights.extend((0..k).map(|_| (next() % 1000) as f32 / 1000.0 + 5e-4));
        }
        (ids, weights)
    }

    struct Case {
        x: Tensor<B, 2>,
        gate_up: Tensor<B, 2>,
        down: Tensor<B, 2>,
        indices: Tensor<B, 2, Int>,
        weights: Tensor<B, 2>,
        experts: usize,
        inter: usize,
    }

    fn case(
        tokens: usize,
        experts: usize,
        used: usize,
        inter: usize,
        hidden: usize,
        k: usize,
    ) -> Case {
        let device = Default::default();
        let normal = |shape: [usize; 2], std: f64| {
            Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, std), &device)
        };
        let (ids, w) = choices(tokens, k, used, (tokens * 31 + experts) as u64);
        Case {
            x: normal([tokens, hidden], 1.0),
            gate_up: normal([hidden, 2 * experts * inter], (hidden as f64).powf(-0.5)),
            down: normal([experts * inter, hidden], (inter as f64).powf(-0.5)),
            indices: Tensor::from_data(TensorData::new(ids, [tokens, k]), &device),
            weights: Tensor::from_data(TensorData::new(w, [tokens, k]), &device),
            experts,
            inter,
        }
    }

    fn host(t: &Tensor<B, 2>) -> Vec<f64> {
        let t = t.clone().cast(FloatDType::F32);
        t.into_data()
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// `Σ_s w[t, s] · down_e(silu(gate_e(x_t)) · up_e(x_t))` in float64.
    fn reference(c: &Case) -> Vec<f64> {
        let [tokens, hidden] = c.x.dims();
        let k = c.indices.dims()[1];
        let (x, gu, down, w) = (
            host(&c.x),
            host(&c.gate_up),
            host(&c.down),
            host(&c.weights),
        );
        let ids = c.indices.clone().into_data().to_vec::<i32>().unwrap();
        let (inter, width) = (c.inter, c.experts * c.inter);
        let mut y = vec![0f64; tokens * hidden];
        for t in 0..tokens {
            for s in 0..k {
                let e = ids[t * k + s] as usize;
                for j in 0..inter {
                    let (mut g, mut u) = (0f64, 0f64);
                    for i in 0..hidden {
                        g += x[t * hidden + i] * gu[i * 2 * width + e * inter + j];
                        u += x[t * hidden + i] * gu[i * 2 * width + width + e * inter + j];
                    }
                    let h = g / (1.0 + (-g).exp()) * u * w[t * k + s];
                    for o in 0..hidden {
                        y[t * hidden + o] += h * down[(e * inter + j) * hidden + o];
                    }
                }
            }
        }
        y
    }

    /// The default shape, lanes along the columns from 8 to 128 (a group reading from a sixteenth
    /// of a row's tile to more than the narrowest width), and passes of one, two and eight pairs.
    const TILES: [&str; 5] = ["16x16x4", "32x8x4", "128x2x2", "8x32x8", "64x4x1"];

    fn routed(c: &Case, tile: &str) -> Tensor<B, 2> {
        let tile = Tile::parse(tile).expect("a tile the kernels take");
        try_routed_experts_with(
            &c.x, &c.gate_up, &c.down, &c.indices, &c.weights, c.experts, tile,
        )
        .expect("CUDA runs the routed experts' kernels")
    }

    /// The largest `|got − want|` over both slices.
    fn max_abs_diff(got: &[f64], want: &[f64]) -> f64 {
        got.iter()
            .zip(want)
            .fold(0f64, |m, (g, w)| m.max((g - w).abs()))
    }

    /// The stacked GEMMs' path of `StackedExperts::forward`: cuBLAS, the SwiGLU kernel, cuBLAS.
    fn stacked(c: &Case) -> Tensor<B, 2> {
        let [tokens, _] = c.x.dims();
        let dense = Tensor::<B, 2>::zeros([tokens, c.experts], &c.x.device()).scatter(
            1,
            c.indices.clone().cast(burn::tensor::IntDType::I64),
            c.weights.clone(),
            burn::tensor::IndexingUpdateOp::Add,
        );
        let gate_up = grouped_linear(c.x.clone(), vec![c.gate_up.clone()], &[tokens]);
        let h = try_swiglu(&gate_up, &dense, c.inter).expect("CUDA runs the SwiGLU kernel");
        grouped_linear(h, vec![c.down.clone()], &[tokens])
    }

    /// (tokens, experts, experts used, inter, hidden, k): the width 96 leaves most lanes of a
    /// tile idle; 3 experts used by 16 tokens of k = 2 make passes of more than four pairs.
    const SHAPES: [(usize, usize, usize, usize, usize, usize); 4] = [
        (1, 64, 64, 96, 80, 8),
        (7, 64, 40, 96, 80, 8),
        (16, 8, 3, 64, 48, 2),
        (64, 128, 128, 32, 64, 8),
    ];

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
    fn routed_experts_match_float64_in_f32() {
        for (tokens, experts, used, inter, hidden, k) in SHAPES {
            let c = case(tokens, experts, used, inter, hidden, k);
            let want = reference(&c);
            let top = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for tile in TILES {
                let got = host(&routed(&c, tile));
                let worst = max_abs_diff(&got, &want);
                eprintln!(
                    "f32 {tokens} tokens, {experts} experts, tile {tile}: max |diff| / max = {:.2e}",
                    worst / top
                );
                assert!(
                    worst <= 1e-5 * top,
                    "{tokens} tokens, tile {tile}: {worst:e} of {top:e}"
                );
            }
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
    fn routed_experts_round_as_the_stacked_gemms_in_bf16() {
        for (tokens, experts, used, inter, hidden, k) in SHAPES {
            let mut c = case(tokens, experts, used, inter, hidden, k);
            c.x = c.x.cast(FloatDType::BF16);
            c.gate_up = c.gate_up.cast(FloatDType::BF16);
            c.down = c.down.cast(FloatDType::BF16);
            let want = host(&stacked(&c));
            let top = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for tile in TILES {
                let got = host(&routed(&c, tile));
                let worst = max_abs_diff(&got, &want);
                let differ = got.iter().zip(&want).filter(|(g, w)| g != w).count();
                eprintln!(
                    "bf16 {tokens} tokens, {experts} experts, tile {tile}: max |diff| / max = \
                     {:.2e}, {differ} of {}",
                    worst / top,
                    got.len()
                );
                assert!(
                    worst <= 1e-2 * top,
                    "{tokens} tokens, tile {tile}: {worst:e} of {top:e}"
                );
                assert!(
                    differ * 10 <= got.len(),
                    "tile {tile}: {differ} of {} outputs differ",
                    got.len()
                );
            }
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test suite cuda:: -- --ignored"]
    fn routed_experts_decline_what_they_do_not_run() {
        let c = case(65, 128, 128, 32, 64, 8);
        assert!(
            try_routed_experts(&c.x, &c.gate_up, &c.down, &c.indices, &c.weights, c.experts)
                .is_none(),
            "65 tokens is more than a launch holds"
        );
        let c = case(4, 8, 8, 32, 64, 2);
        let wide = Tile {
            lanes: 64,
            groups: 16,
            pass: 4,
        };
        assert!(
            try_routed_experts_with(&c.x, &c.gate_up, &c.down, &c.indices, &c.weights, 8, wide)
                .is_none(),
            "1,024 units a cube is more than the kernels take"
        );
        let c = case(4, 8, 8, 32, 64, 2);
        let ad = |t: &Tensor<B, 2>| Tensor::<Autodiff<B>, 2>::from_inner(t.clone());
        let indices = Tensor::<Autodiff<B>, 2, Int>::from_inner(c.indices.clone());
        assert!(
            try_routed_experts(
                &ad(&c.x),
                &ad(&c.gate_up),
                &ad(&c.down),
                &indices,
                &ad(&c.weights),
                8
            )
            .is_none(),
            "autodiff is burn's"
        );
    }
}
