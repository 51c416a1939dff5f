//! Everything that needs an NVIDIA GPU, in one test binary: the parity cases on CUDA (float32 at
//! TF32 precision, see `Target`; `STEERMOE_TEST_PRECISION=bf16` for bf16), the cuBLAS grouped
//! expert GEMM against burn's matmuls, and mixed precision with f32 master weights over bf16.
//! Build with `--features cuda` and run on a machine with an NVIDIA GPU:
//! `cargo test --features cuda --test cuda -- --ignored`.
#![cfg(feature = "cuda")]

mod common;
mod mixed_cases;
mod parity_cases;

use parity_cases::*;

type B = burn::backend::Cuda;

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test cuda -- --ignored"]
fn forward_logits_router_logits_and_hidden_match() {
    parity_cases::forward_logits_router_logits_and_hidden_match::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test cuda -- --ignored"]
fn forward_loss_matches() {
    parity_cases::forward_loss_matches::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test cuda -- --ignored"]
fn free_routing_captures_nothing_by_default() {
    parity_cases::free_routing_captures_nothing_by_default::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test cuda -- --ignored"]
fn left_padded_batch_matches_on_real_positions() {
    parity_cases::left_padded_batch_matches_on_real_positions::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test cuda -- --ignored"]
fn masked_routing_matches_logits_router_logits_and_loss() {
    parity_cases::masked_routing_matches_logits_router_logits_and_loss::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test cuda -- --ignored"]
fn masked_expert_gradients_of_layer0_match() {
    parity_cases::masked_expert_gradients_of_layer0_match::<B>(CUDA_TF32);
}

/// The cuBLAS grouped expert GEMM against burn's own matmuls on CUDA, forward and backward, in
/// f32 (TF32 both) and bf16: rows grouped by expert, one expert without rows, trained and frozen
/// experts, f32 master weights cast to the compute dtype.
mod grouped_gemm {
    use burn::backend::{Autodiff, Cuda};
    use burn::tensor::{DType, Distribution, FloatDType, Tensor};
    use steermoe::model::experts::{grouped_linear, grouped_linear_matmul};

    type B = Autodiff<Cuda>;

    fn max_abs(t: Tensor<B, 2>) -> f64 {
        t.abs().max().into_scalar().into()
    }

    fn assert_close(what: &str, got: Tensor<B, 2>, want: Tensor<B, 2>, rel: f64) {
        let scale = max_abs(want.clone()).max(1e-12);
        let err = max_abs(got - want);
        eprintln!("{what}: max |diff| / max |want| = {:.2e}", err / scale);
        assert!(err <= rel * scale, "{what}: max |diff| {err:.3e} > {rel:e} × {scale:.3e}");
    }

    fn case(dtype: FloatDType, rel: f64) {
        let device = Default::default();
        assert!(steermoe::cuda::available(0), "cuBLAS did not load: the test would compare burn with itself");
        let counts = [5usize, 0, 17, 1, 9];
        let trained = [true, true, true, false, false];
        let (n, width_in, width_out) = (counts.iter().sum::<usize>(), 48, 40);
        let x0 = Tensor::<B, 2>::random([n, width_in], Distribution::Normal(0.0, 1.0), &device).cast(dtype);
        let r = Tensor::<B, 2>::random([n, width_out], Distribution::Normal(0.0, 1.0), &device).cast(dtype);
        let masters: Vec<Tensor<B, 2>> = trained
            .iter()
            .map(|&t| {
                let w = Tensor::<B, 2>::random([width_in, width_out], Distribution::Normal(0.0, 0.05), &device);
                if t { w.require_grad() } else { w.cast(dtype) }
            })
            .collect();
        let run = |grouped: bool| {
            let x = x0.clone().detach().require_grad();
            let weights: Vec<Tensor<B, 2>> = masters.iter().map(|w| if w.dtype() == DType::from(dtype) { w.clone() } else { w.clone().cast(dtype) }).collect();
            let y = match grouped {
                true => grouped_linear(x.clone(), weights, &counts),
                false => grouped_linear_matmul(x.clone(), weights, &counts),
            };
            let grads = (y.clone() * r.clone()).cast(FloatDType::F32).sum().backward();
            let dx = x.grad(&grads).map(|g| Tensor::<B, 2>::from_inner(g));
            let dw: Vec<Option<Tensor<B, 2>>> = masters.iter().map(|w| w.grad(&grads).map(Tensor::from_inner)).collect();
            (y, dx, dw)
        };
        let (y, dx, dw) = run(true);
        let (y_ref, dx_ref, dw_ref) = run(false);
        assert_eq!(y.dtype(), DType::from(dtype));
        assert_close("y", y, y_ref, rel);
        assert_close("dx", dx.expect("input gradient"), dx_ref.expect("reference input gradient"), rel);
        for (e, (got, want)) in dw.into_iter().zip(dw_ref).enumerate() {
            match (got, want) {
                (Some(got), Some(want)) => {
                    assert_eq!(got.dtype(), DType::F32, "expert {e}'s gradient reaches its f32 master weight");
                    assert_close(&format!("dW[{e}]"), got, want, rel)
                }
                (None, None) => assert!(!trained[e] || counts[e] == 0, "expert {e} trains and has rows but got no gradient"),
                (got, want) => panic!("expert {e}: gradient {} with cuBLAS, {} with burn", got.is_some(), want.is_some()),
            }
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test cuda -- --ignored"]
    fn grouped_gemm_matches_burn_in_f32() {
        case(FloatDType::F32, 5e-3);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test cuda -- --ignored"]
    fn grouped_gemm_matches_burn_in_bf16() {
        case(FloatDType::BF16, 3e-2);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test cuda -- --ignored"]
fn master_weights_take_the_updates_bf16_cannot_hold() {
    mixed_cases::master_weights_move_as_the_reference::<burn::backend::Autodiff<B>>(mixed_cases::CUDA, Default::default());
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test cuda -- --ignored"]
fn a_loaded_checkpoint_keeps_bf16_and_f32_master_weights() {
    mixed_cases::loaded_checkpoint_keeps_dtypes::<burn::backend::Autodiff<B>>(mixed_cases::CUDA, Default::default());
}
