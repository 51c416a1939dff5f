//! Parity with transformers on the CPU: every tensor of a fixture's `reference.safetensors`
//! against steermoe's OLMoE in float32, for the main fixture (`tests/fixtures/olmoe-tiny`) and
//! the alt fixture (GQA, renormalised top-k, clip_qkv, sharded, transformers-5 config). The cases
//! live in `parity_cases/`; the same cases run on wgpu (`parity_wgpu.rs`) and CUDA
//! (`cuda.rs`).

use crate::parity_cases::*;

type B = burn::backend::NdArray<f32>;

#[test]
fn forward_logits_router_logits_and_hidden_match() {
    crate::parity_cases::forward_logits_router_logits_and_hidden_match::<B>(CPU);
}

#[test]
fn forward_loss_matches() {
    crate::parity_cases::forward_loss_matches::<B>(CPU);
}

#[test]
fn free_routing_captures_nothing_by_default() {
    crate::parity_cases::free_routing_captures_nothing_by_default::<B>(CPU);
}

#[test]
fn left_padded_batch_matches_on_real_positions() {
    crate::parity_cases::left_padded_batch_matches_on_real_positions::<B>(CPU);
}

#[test]
fn masked_routing_matches_logits_router_logits_and_loss() {
    crate::parity_cases::masked_routing_matches_logits_router_logits_and_loss::<B>(CPU);
}

#[test]
fn masked_expert_gradients_of_layer0_match() {
    crate::parity_cases::masked_expert_gradients_of_layer0_match::<B>(CPU);
}

#[test]
fn cached_decoding_matches_recomputation_and_greedy_tokens() {
    crate::parity_cases::cached_decoding_matches_recomputation_and_greedy_tokens::<B>(CPU);
}

#[test]
fn shared_experts_give_the_same_model() {
    crate::parity_cases::shared_experts_give_the_same_model::<B>(CPU);
}
