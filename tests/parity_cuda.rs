//! The parity cases on CUDA (float32 at TF32 precision, see `Target`). Build with `--features cuda`
//! and run on a machine with an NVIDIA GPU: `cargo test --features cuda --test parity_cuda --
//! --ignored` (`STEERMOE_TEST_PRECISION=bf16` for bf16).
#![cfg(feature = "cuda")]

mod common;
mod parity_cases;

use parity_cases::*;

type B = burn::backend::Cuda;

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test parity_cuda -- --ignored"]
fn forward_logits_router_logits_and_hidden_match() {
    parity_cases::forward_logits_router_logits_and_hidden_match::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test parity_cuda -- --ignored"]
fn forward_loss_matches() {
    parity_cases::forward_loss_matches::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test parity_cuda -- --ignored"]
fn free_routing_captures_nothing_by_default() {
    parity_cases::free_routing_captures_nothing_by_default::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test parity_cuda -- --ignored"]
fn left_padded_batch_matches_on_real_positions() {
    parity_cases::left_padded_batch_matches_on_real_positions::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test parity_cuda -- --ignored"]
fn masked_routing_matches_logits_router_logits_and_loss() {
    parity_cases::masked_routing_matches_logits_router_logits_and_loss::<B>(CUDA_TF32);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda --test parity_cuda -- --ignored"]
fn masked_expert_gradients_of_layer0_match() {
    parity_cases::masked_expert_gradients_of_layer0_match::<B>(CUDA_TF32);
}
