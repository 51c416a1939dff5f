//! Generation: the token sampler, greedy decoding's argmax on the device, the batched decode
//! loop with routing capture, and how many rows a call takes ([`fit`]).

pub mod argmax;
pub mod engine;
pub mod fit;
pub mod sampler;

pub use engine::{
    ChosenExperts, GenerateOptions, Generation, LeftPadded, RouterLogits, generate, last_logits,
};
pub use sampler::{Sampler, Sampling};

use burn::tensor::backend::Backend;
use serde::Serialize;

use crate::data::{ChatTokenizer, DataError, Message};
use crate::model::{MoeLm, Routing};

/// A chat answered by the model (what `steermoe generate` prints).
#[derive(Debug, Clone, Serialize)]
pub struct ChatGeneration {
    /// Chat-templated prompt ids.
    pub prompt_ids: Vec<u32>,
    /// Generated ids.
    pub new_ids: Vec<u32>,
    /// The generated text, special tokens skipped.
    pub text: String,
}

/// Apply the chat template to `messages` (opening the assistant turn) and generate an answer;
/// it stops at the tokenizer's EOS unless `ignore_eos`.
pub fn generate_chat<B: Backend>(
    model: &MoeLm<B>,
    tokenizer: &ChatTokenizer,
    messages: &[Message],
    max_new_tokens: usize,
    sampling: Sampling,
    ignore_eos: bool,
    device: &B::Device,
) -> Result<ChatGeneration, DataError> {
    let prompt_ids = tokenizer.encode_chat(messages, true)?;
    let opts = GenerateOptions {
        max_new_tokens,
        sampling,
        stop_ids: if ignore_eos {
            Vec::new()
        } else {
            vec![tokenizer.eos_id]
        },
        pad_id: tokenizer.pad_id,
        capture: false,
    };
    let g = generate(
        model,
        std::slice::from_ref(&prompt_ids),
        &opts,
        &Routing::free(),
        device,
        |_| {},
    )
    .pop()
    .expect("one prompt, one generation");
    Ok(ChatGeneration {
        text: tokenizer.decode(&g.new_ids),
        prompt_ids,
        new_ids: g.new_ids,
    })
}
