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
//!
//! Greedy decoding keeps the tokens on the device: each step feeds its argmax back (padding for
//! rows already stopped, tracked on the device too) and the host reads them every few steps, so
//! that steps queue on an asynchronous backend without a synchronisation each. Up to that many
//! steps minus one may run after the last row stops; their tokens and routing are dropped.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use half::f16;

use super::argmax::argmax_rows;
use super::sampler::{Sampler, Sampling};
use crate::model::{ExpertExecution, KvCache, LmInput, MoeLm, Routing};

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
    assert!(
        batch > 0 && prompts.iter().all(|p| !p.is_empty()),
        "prompts must be non-empty"
    );
    let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    // The mask covers every position the call can fill (generated ones are real tokens), made
    // once: the prompt, then one a decode step.
    let padded = LeftPadded::new(&rows, opts.pad_id, opts.max_new_tokens);
    let (width, pads) = (padded.width, padded.pads.clone());
    let capacity = width + opts.max_new_tokens;
    let routing = routing.clone().with_capture(opts.capture);
    let (input, mask) = padded.input(device);
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
    let mut rows = Rows::new(batch, opts);
    // Positions go on from each prompt's length, on the device (nothing is uploaded a step).
    let lengths: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
    let mut positions =
        Tensor::<B, 2, Int>::from_data(TensorData::new(lengths, [batch, 1]), device);
    // Greedy decoding feeds each step's argmax back on the device: which rows have stopped is
    // tracked there too, and the host reads the tokens only every `READ_EVERY` steps, so that the
    // steps in between queue without waiting for the device (a read drains every queue).
    let mut stopped =
        Tensor::<B, 1, Bool>::from_data(TensorData::new(vec![false; batch], [batch]), device);
    let mut unread: Vec<Tensor<B, 1, Int>> = Vec::new();
    let mut gen_caps: Vec<Tensor<B, 4>> = Vec::new();
    let mut step = 0;
    while step < opts.max_new_tokens && !rows.all_done() {
        let fed = if sampler.is_greedy() {
            let picked = argmax_rows(last).reshape([batch]);
            let fed = picked
                .clone()
                .mask_fill(stopped.clone(), opts.pad_id as i64);
            for &id in &opts.stop_ids {
                stopped = stopped.bool_or(picked.clone().equal_elem(id as i64));
            }
            unread.push(picked);
            fed
        } else {
            let (fed, produced) = rows.take(&sample(&mut sampler, last));
            on_token(produced);
            Tensor::from_data(TensorData::new(fed, [batch]), device)
        };
        step += 1;
        if unread.len() == READ_EVERY || (step == opts.max_new_tokens && !unread.is_empty()) {
            let steps = unread.len();
            let read: Vec<u32> = Tensor::stack::<2>(std::mem::take(&mut unread), 0)
                .into_data()
                .iter::<i64>()
                .map(|t| t as u32)
                .collect();
            for picked in read.chunks(batch).take(steps) {
                on_token(rows.take(picked).1);
            }
        }
        // The last token's routing is that of the pass that reads it: one more step when capturing.
        if rows.all_done() && !opts.capture {
            break;
        }
        let input = LmInput {
            input_ids: fed.reshape([batch, 1]),
            attention_mask: Some(mask.clone()),
            positions: Some(positions.clone()),
        };
        positions = positions.add_scalar(1);
        let out = model.forward_cached_last(input, &mut cache, &routing);
        if let Some(caps) = out.router_logits {
            gen_caps.push(caps);
        }
        last = last_logits(out.logits);
    }
    let mut new_ids = rows.new_ids;

    let prompt_host = prompt_caps.map(host_caps);
    let gen_host = (!gen_caps.is_empty()).then(|| host_caps(Tensor::cat(gen_caps, 2)));
    (0..batch)
        .map(|r| Generation {
            prompt_ids: prompts[r].clone(),
            prompt_routing: prompt_host
                .as_ref()
                .map(|h| h.row(r, pads[r], prompts[r].len())),
            gen_routing: gen_host.as_ref().map(|h| h.row(r, 0, new_ids[r].len())),
            new_ids: std::mem::take(&mut new_ids[r]),
        })
        .collect()
}

/// Prompts left-padded to the longest, as transformers' `generate` pads them: positions count
/// from each row's first real token (`cumsum(mask) - 1`, 1 on padding).
pub struct LeftPadded {
    /// Each row's ids, padding (`pad_id`) first: `[rows × width]`.
    pub ids: Vec<i64>,
    /// Each row's padding.
    pub pads: Vec<usize>,
    /// The longest prompt's length.
    pub width: usize,
    /// Whether each position is a real token: `[rows × (width + extra)]`, the `extra` positions
    /// after the prompt real (those the caller will decode).
    pub valid: Vec<bool>,
    /// Each prompt position's position id: `[rows × width]`.
    pub positions: Vec<i64>,
    extra: usize,
}

impl LeftPadded {
    /// `prompts` (each non-empty) padded with `pad_id`, the mask `extra` positions wider.
    pub fn new(prompts: &[&[u32]], pad_id: u32, extra: usize) -> Self {
        let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
        let rows = prompts.len();
        let mut ids = Vec::with_capacity(rows * width);
        let mut valid = Vec::with_capacity(rows * (width + extra));
        let mut positions = Vec::with_capacity(rows * width);
        for (p, &pad) in prompts.iter().zip(&pads) {
            ids.extend(std::iter::repeat_n(pad_id as i64, pad).chain(p.iter().map(|&t| t as i64)));
            valid.extend(
                std::iter::repeat_n(false, pad)
                    .chain(std::iter::repeat_n(true, width + extra - pad)),
            );
            positions.extend(std::iter::repeat_n(1i64, pad).chain(0..p.len() as i64));
        }
        Self {
            ids,
            pads,
            width,
            valid,
            positions,
            extra,
        }
    }

    /// Whether any row is padded.
    pub fn is_padded(&self) -> bool {
        self.pads.iter().any(|&p| p > 0)
    }

    /// The prefill's input (its mask and positions always given) and the mask on its own.
    pub fn input<B: Backend>(self, device: &B::Device) -> (LmInput<B>, Tensor<B, 2, Bool>) {
        let rows = self.pads.len();
        let mask = Tensor::<B, 2, Bool>::from_data(
            TensorData::new(self.valid, [rows, self.width + self.extra]),
            device,
        );
        let input = LmInput {
            input_ids: Tensor::from_data(TensorData::new(self.ids, [rows, self.width]), device),
            attention_mask: Some(mask.clone()),
            positions: Some(Tensor::from_data(
                TensorData::new(self.positions, [rows, self.width]),
                device,
            )),
        };
        (input, mask)
    }

    /// The prefill's input alone: with its mask and positions where a row is padded, without
    /// (every row real from its first position, positions from 0) where none is.
    pub fn prefill_input<B: Backend>(self, device: &B::Device) -> LmInput<B> {
        if self.is_padded() {
            return self.input(device).0;
        }
        let rows = self.pads.len();
        LmInput {
            input_ids: Tensor::from_data(TensorData::new(self.ids, [rows, self.width]), device),
            attention_mask: None,
            positions: None,
        }
    }
}

/// Logits of the last position, `[batch, vocab]`.
pub fn last_logits<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, seq, vocab] = logits.dims();
    logits
        .slice([0..batch, seq - 1..seq, 0..vocab])
        .reshape([batch, vocab])
}

/// One sampled token per row, on the host.
fn sample<B: Backend>(sampler: &mut Sampler, logits: Tensor<B, 2>) -> Vec<u32> {
    let [_, vocab] = logits.dims();
    let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
    values.chunks(vocab).map(|row| sampler.pick(row)).collect()
}

/// Greedy decoding reads the tokens back every this many steps (a row that stops in between is
/// fed padding on the device; at most this many steps minus one run after the last row stops).
const READ_EVERY: usize = 16;

/// Each row's generated ids and whether it has stopped, as the host knows them.
struct Rows<'a> {
    opts: &'a GenerateOptions,
    new_ids: Vec<Vec<u32>>,
    done: Vec<bool>,
}

impl<'a> Rows<'a> {
    fn new(batch: usize, opts: &'a GenerateOptions) -> Self {
        Self {
            opts,
            new_ids: vec![Vec::new(); batch],
            done: vec![opts.max_new_tokens == 0; batch],
        }
    }

    fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    /// Add one step's picks to the rows still going (a stop id ends a row, included). Returns the
    /// ids the step feeds (each row's pick, padding for the rows stopped before it) and how many
    /// rows took a token.
    fn take(&mut self, picked: &[u32]) -> (Vec<i64>, usize) {
        let mut fed = Vec::with_capacity(picked.len());
        let mut produced = 0;
        for (r, &tok) in picked.iter().enumerate() {
            if self.done[r] {
                fed.push(self.opts.pad_id as i64);
                continue;
            }
            fed.push(tok as i64);
            produced += 1;
            self.new_ids[r].push(tok);
            if self.opts.stop_ids.contains(&tok)
                || self.new_ids[r].len() == self.opts.max_new_tokens
            {
                self.done[r] = true;
            }
        }
        (fed, produced)
    }
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
