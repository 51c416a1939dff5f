//! The parity cases on wgpu. They need a Vulkan (or Metal/DX12) device, so they are ignored by a
//! plain `cargo test`; run them with `cargo test --test suite parity_wgpu:: -- --ignored` (CI does, on
//! Mesa's lavapipe).
#![cfg(feature = "wgpu")]

use crate::parity_cases::*;

type B = burn::backend::Wgpu;

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn forward_logits_router_logits_and_hidden_match() {
    crate::parity_cases::forward_logits_router_logits_and_hidden_match::<B>(WGPU);
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn forward_loss_matches() {
    crate::parity_cases::forward_loss_matches::<B>(WGPU);
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn free_routing_captures_nothing_by_default() {
    crate::parity_cases::free_routing_captures_nothing_by_default::<B>(WGPU);
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn left_padded_batch_matches_on_real_positions() {
    crate::parity_cases::left_padded_batch_matches_on_real_positions::<B>(WGPU);
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn masked_routing_matches_logits_router_logits_and_loss() {
    crate::parity_cases::masked_routing_matches_logits_router_logits_and_loss::<B>(WGPU);
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn masked_expert_gradients_of_layer0_match() {
    crate::parity_cases::masked_expert_gradients_of_layer0_match::<B>(WGPU);
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn cached_decoding_matches_recomputation_and_greedy_tokens() {
    crate::parity_cases::cached_decoding_matches_recomputation_and_greedy_tokens::<B>(WGPU);
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn routing_kernels_match_burn_ops() {
    crate::parity_cases::routing_kernels_match_burn_ops::<B>();
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn decode_attention_kernel_matches_burn_ops() {
    crate::parity_cases::decode_attention_kernel_matches_burn_ops::<B>();
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn rms_norm_kernel_matches_burn_ops() {
    crate::parity_cases::rms_norm_kernel_matches_burn_ops::<B>();
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn swiglu_kernel_matches_burn_ops() {
    crate::parity_cases::swiglu_kernel_matches_burn_ops::<B>();
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn rope_kernel_matches_burn_ops() {
    crate::parity_cases::rope_kernel_matches_burn_ops::<B>();
}

#[test]
#[ignore = "needs a GPU device: cargo test --test suite parity_wgpu:: -- --ignored"]
fn shared_experts_give_the_same_model() {
    crate::parity_cases::shared_experts_give_the_same_model::<B>(WGPU);
}
