//! The decode loop: batched generation with a KV cache, left padding, per-sequence stopping and
//! optional capture of router logits, split into prompt and generated tokens.
//!
//! Semantics follow transformers' `generate` with left padding: positions count from each
//! row's first real token (`cumsum(attention_mask) - 1`), a sequence stops at its first stop id
//! (included in its output), finished rows are fed padding until the batch is done.
//!
//! Router logits of a token are those of the forward pass that *reads* it, so a generation's
//! routing covers every generated token, the last one included (one extra decode step when
//! capturing): they equal the router logits of a plain forward over prompt + generated ids.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use half::f16;

use super::sampler::{Sampler, Sampling};
use crate::model::{ExpertExecution, KvCache, MoeLm, LmInput, Routing};

/// Settings of one generation call.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Upper bound on generated tokens per sequence.
    pub max_new_tokens: usize,
    /// Greedy or seeded sampling.
    pub sampling: Sampling,
    /// A sequence ends after emitting one of these (empty: never).
    pub stop_ids: Vec<u32>,
    /// Id fed as left padding and after a sequence ends.
    pub pad_id: u32,
    /// Capture router logits of prompt and generated tokens.
    pub capture: bool,
}

/// Router logits of some tokens of one sequence, `[layers, tokens, experts]`, stored as f16.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterLogits {
    /// Layers.
    pub layers: usize,
    /// Tokens.
    pub tokens: usize,
    /// Experts.
    pub experts: usize,
    /// Row-major values.
    pub values: Vec<f16>,
}

impl RouterLogits {
    /// Values as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|v| v.to_f32()).collect()
    }
}

/// The experts a forward pass chose for some tokens of one sequence, `[layers, tokens, k]`, by
/// descending routing weight.
#[derive(Debug, Clone, PartialEq)]
pub struct ChosenExperts {
    /// Layers.
    pub layers: usize,
    /// Tokens.
    pub tokens: usize,
    /// Experts per token.
    pub k: usize,
    /// Row-major expert indices.
    pub values: Vec<u16>,
}

/// One generated sequence.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompt, unpadded.
    pub prompt_ids: Vec<u32>,
    /// Generated ids, the stop id included if one was emitted.
    pub new_ids: Vec<u32>,
    /// Router logits of the prompt tokens (if captured).
    pub prompt_routing: Option<RouterLogits>,
    /// Router logits of the generated tokens (if captured).
    pub gen_routing: Option<RouterLogits>,
}

/// Generate continuations of `prompts` (of any lengths) in one batch.
///
/// `routing` may carry a mask or steering bias; its capture flag is set from `opts.capture`.
/// `on_token` is called after every decode step with the number of tokens produced in it.
pub fn generate<B: Backend>(
    model: &MoeLm<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    routing: &Routing<B>,
    device: &B::Device,
    mut on_token: impl FnMut(usize),
) -> Vec<Generation> {
    let batch = prompts.len();
    assert!(batch > 0 && prompts.iter().all(|p| !p.is_empty()), "prompts must be non-empty");
    let width = prompts.iter().map(Vec::len).max().expect("non-empty batch");
    let pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    let routing = routing.clone().with_capture(opts.capture);

    // Every position the call can fill: the prompt, then one a decode step.
    let capacity = width + opts.max_new_tokens;
    // Left-padded prompt and positions (cumsum(mask) - 1, 1 on padding as transformers); the
    // mask covers every position the call can fill (generated ones are real tokens), made once.
    let mut ids = Vec::with_capacity(batch * width);
    let mut valid = Vec::with_capacity(batch * capacity);
    let mut positions = Vec::with_capacity(batch * width);
    for (p, &pad) in prompts.iter().zip(&pads) {
        ids.extend(std::iter::repeat_n(opts.pad_id as i64, pad).chain(p.iter().map(|&t| t as i64)));
        valid.extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, capacity - pad)));
        positions.extend(std::iter::repeat_n(1i64, pad).chain(0..p.len() as i64));
    }
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(valid, [batch, capacity]), device);
    let input = LmInput {
        input_ids: Tensor::from_data(TensorData::new(ids, [batch, width]), device),
        attention_mask: Some(mask.clone()),
        positions: Some(Tensor::from_data(TensorData::new(positions, [batch, width]), device)),
    };
    // Keys and values written in place, into buffers that double when full (up to `capacity`).
    let mut cache = KvCache::new(model.num_layers()).with_capacity(capacity);
    if model.execution() != ExpertExecution::Grouped
        && let Some(stacked) = model.stack_experts()
    {
        // Decode steps run the experts densely: stack them once for the whole call.
        cache = cache.with_stacked_experts(stacked);
    }
    let out = model.forward_cached_last(input, &mut cache, &routing);
    let prompt_caps = out.router_logits;
    let mut last = last_logits(out.logits);

    let mut sampler = Sampler::new(opts.sampling);
    let mut new_ids: Vec<Vec<u32>> = vec![Vec::new(); batch];
    let mut done = vec![opts.max_new_tokens == 0; batch];
    let mut next_pos: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
    let mut gen_caps: Vec<Tensor<B, 4>> = Vec::new();
    let mut step = 0;
    while step < opts.max_new_tokens && !done.iter().all(|&d| d) {
        let picked = pick(&mut sampler, last);
        let mut fed = Vec::with_capacity(batch);
        let mut produced = 0;
        for (r, &tok) in picked.iter().enumerate() {
            if done[r] {
                fed.push(opts.pad_id as i64);
                continue;
            }
            produced += 1;
            new_ids[r].push(tok);
            fed.push(tok as i64);
            if opts.stop_ids.contains(&tok) || new_ids[r].len() == opts.max_new_tokens {
                done[r] = true;
            }
        }
        on_token(produced);
        step += 1;
        // Read the new tokens: needed to continue, and to capture the last token's routing.
        if done.iter().all(|&d| d) && !opts.capture {
            break;
        }
        let input = LmInput {
            input_ids: Tensor::from_data(TensorData::new(fed, [batch, 1]), device),
            attention_mask: Some(mask.clone()),
            positions: Some(Tensor::from_data(TensorData::new(next_pos.clone(), [batch, 1]), device)),
        };
        next_pos.iter_mut().for_each(|p| *p += 1);
        let out = model.forward_cached_last(input, &mut cache, &routing);
        if let Some(caps) = out.router_logits {
            gen_caps.push(caps);
        }
        last = last_logits(out.logits);
    }

    let prompt_host = prompt_caps.map(host_caps);
    let gen_host = (!gen_caps.is_empty()).then(|| host_caps(Tensor::cat(gen_caps, 2)));
    (0..batch)
        .map(|r| Generation {
            prompt_ids: prompts[r].clone(),
            prompt_routing: prompt_host.as_ref().map(|h| h.row(r, pads[r], prompts[r].len())),
            gen_routing: gen_host.as_ref().map(|h| h.row(r, 0, new_ids[r].len())),
            new_ids: std::mem::take(&mut new_ids[r]),
        })
        .collect()
}

/// Logits of the last position, `[batch, vocab]`.
fn last_logits<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, seq, vocab] = logits.dims();
    logits.slice([0..batch, seq - 1..seq, 0..vocab]).reshape([batch, vocab])
}

/// One token per row: argmax on the device for greedy decoding, else the sampler on the host.
fn pick<B: Backend>(sampler: &mut Sampler, logits: Tensor<B, 2>) -> Vec<u32> {
    if sampler.is_greedy() {
        return logits.argmax(1).into_data().iter::<i64>().map(|t| t as u32).collect();
    }
    let [_, vocab] = logits.dims();
    let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
    values.chunks(vocab).map(|row| sampler.pick(row)).collect()
}

/// Captured router logits `[layers, batch, seq, experts]` on the host.
struct HostCaps {
    dims: [usize; 4],
    values: Vec<f16>,
}

fn host_caps<B: Backend>(t: Tensor<B, 4>) -> HostCaps {
    let dims = t.dims();
    let values = t.into_data().iter::<f32>().map(f16::from_f32).collect();
    HostCaps { dims, values }
}

impl HostCaps {
    /// `[layers, len, experts]` of row `r` from sequence position `start`.
    fn row(&self, r: usize, start: usize, len: usize) -> RouterLogits {
        let [layers, _, seq, experts] = self.dims;
        let mut values = Vec::with_capacity(layers * len * experts);
        for l in 0..layers {
            let base = ((l * self.dims[1] + r) * seq + start) * experts;
            values.extend_from_slice(&self.values[base..base + len * experts]);
        }
        RouterLogits {
            layers,
            tokens: len,
            experts,
            values,
        }
    }
}
