//! The serving engine: continuous batching of generation requests on one device.
//!
//! One thread owns the model and runs decode steps over a batch of sequences that share one KV
//! cache (rows of different lengths, left-padded and masked). Between steps, waiting requests
//! join: the prompts that arrived together are prefilled in one left-padded pass (an idle engine
//! waits a few milliseconds for requests sent at once, [`GATHER`]), their cache
//! padded to the batch's length (or the batch's to theirs) and appended as new rows; rows that
//! finish (a stop token or string, their token limit, or a client that went away) leave at once, and the positions no row reads any more are
//! dropped from the front. Steering applies to a whole batch, so a request whose steering
//! differs from the running batch's waits until that batch drains (requests are taken in
//! arrival order; at most one waits so).
//!
//! A row's tokens are picked on the host from its own sampler, except when every row is greedy
//! and none returns its routing: then blocks of up to [`EngineOptions::read_every`] steps run on the device with
//! each step's argmax fed back there, and the host reads the block's tokens once (the steps
//! queue without waiting for it). Text is decoded incrementally and sent as deltas; a suffix that
//! may still become a stop string, or an incomplete UTF-8 sequence, is held back until it is
//! settled.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use tokio::sync::mpsc::UnboundedSender;

use super::api::{TokenRouting, Usage};
use crate::data::ChatTokenizer;
use crate::eval::Steering;
use crate::generate::argmax::argmax_rows;
use crate::generate::{LeftPadded, Sampler, Sampling, last_logits};
use crate::model::{ExpertExecution, KvCache, LmInput, LmOutput, MoeLm, Routing};

/// One request as the engine runs it.
#[derive(Debug)]
pub struct Job {
    /// Prompt ids (chat-templated for chat requests).
    pub prompt_ids: Vec<u32>,
    /// Tokens to generate at most (≥ 1).
    pub max_tokens: usize,
    /// Greedy or seeded sampling.
    pub sampling: Sampling,
    /// Token ids that end the answer (EOS; not part of the text).
    pub stop_ids: Vec<u32>,
    /// Strings that end the answer (cut from the text).
    pub stop_strings: Vec<String>,
    /// Experts forced on and off (sorted lists).
    pub steering: Steering,
    /// Return each generated token's chosen experts.
    pub routed_experts: bool,
    /// Return each generated token's router logits.
    pub router_logits: bool,
    /// Where the engine sends what it makes; a closed channel cancels the request.
    pub events: UnboundedSender<Event>,
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or string.
    Stop,
    /// The token limit.
    Length,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the engine sends about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (possibly empty when only routing is new) and the routing of the tokens it
    /// settled.
    Delta {
        /// Text to append.
        text: String,
        /// Per token generated since the last delta (when asked for).
        routing: Vec<TokenRouting>,
    },
    /// The answer is complete.
    Done {
        /// Why it ended.
        finish: Finish,
        /// Token counts.
        usage: Usage,
    },
}

/// Counters the HTTP side reads (`GET /health`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests sent to the engine and not yet taken into a batch.
    pub queued: AtomicUsize,
    /// Sequences in the running batch.
    pub active: AtomicUsize,
    /// Requests finished (answered, or cancelled by their client).
    pub finished: AtomicUsize,
    /// Tokens generated in all.
    pub tokens: AtomicUsize,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// Positions a row may hold (prompt and answer): the batch's keys and values are written in
    /// place into buffers of up to twice this many slots.
    pub context: usize,
    /// Greedy rows without routing capture decode up to this many steps between reads of their
    /// tokens (see [`Batch::decode_block`]): a read waits for every queued kernel, so fewer reads
    /// keep the device busier, while clients get their text in blocks of this many tokens and a
    /// row that stops inside a block has the block's remaining steps computed and discarded.
    pub read_every: usize,
}

/// Run requests from `jobs` until every sender is gone and nothing is left to do.
pub fn run<B: Backend>(
    model: &MoeLm<B>,
    tokenizer: &ChatTokenizer,
    device: &B::Device,
    jobs: Receiver<Job>,
    opts: &EngineOptions,
    stats: &Arc<Stats>,
) {
    let layers = model.num_moe_layers();
    let experts = model.num_experts();
    // Decode steps run the experts densely, from the stacks the served model shares with its
    // experts (`MoeLm::share_experts`), or stacked once here for the server's life.
    let stacked = match model.execution() {
        ExpertExecution::Grouped => None,
        _ => model.stack_experts(),
    };
    let mut batch: Option<Batch<B>> = None;
    let mut waiting: Option<Job> = None;
    let mut open = true;
    loop {
        let running = batch.as_ref().map_or(0, |b| b.rows.len());
        // An idle engine gathers the requests that arrive together (see `GATHER`).
        let mut gather_until = None;
        if running == 0 && waiting.is_none() {
            if !open {
                return;
            }
            match jobs.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => {
                    stats.queued.fetch_sub(1, Ordering::Relaxed);
                    waiting = Some(job);
                    gather_until = Some(Instant::now() + GATHER_AT_MOST);
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        // Admit what fits and shares the batch's steering, prefilled together.
        let mut joining: Vec<Job> = Vec::new();
        while batch.as_ref().map_or(0, |b| b.rows.len()) + joining.len() < opts.max_batch {
            let job = match waiting.take() {
                Some(job) => job,
                None => match next_job(&jobs, gather_until) {
                    Ok(job) => {
                        stats.queued.fetch_sub(1, Ordering::Relaxed);
                        job
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                },
            };
            if job.events.is_closed() {
                stats.finished.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let steering = match (joining.first(), &batch) {
                (Some(first), _) => Some(&first.steering),
                (None, Some(b)) if !b.rows.is_empty() => Some(&b.steering),
                _ => None,
            };
            if steering.is_some_and(|s| *s != job.steering) {
                waiting = Some(job);
                break;
            }
            joining.push(job);
        }
        if !joining.is_empty() {
            let b = match &mut batch {
                Some(b) if !b.rows.is_empty() => b,
                slot => slot.insert(Batch::new(
                    model,
                    joining[0].steering.clone(),
                    [layers, experts, 2 * opts.context.max(1)],
                    stacked.clone(),
                    device,
                )),
            };
            b.admit(model, joining, tokenizer.pad_id, device);
        }
        if let Some(b) = &mut batch {
            if !b.rows.is_empty() {
                b.step(model, tokenizer, device, stats, opts.read_every);
            }
            stats.active.store(b.rows.len(), Ordering::Relaxed);
        }
    }
}

/// The next waiting request: at once, or (an idle engine gathering) within [`GATHER`] and before
/// `gather_until`.
fn next_job(jobs: &Receiver<Job>, gather_until: Option<Instant>) -> Result<Job, TryRecvError> {
    let Some(until) = gather_until else {
        return jobs.try_recv();
    };
    let wait = GATHER.min(until.saturating_duration_since(Instant::now()));
    jobs.recv_timeout(wait).map_err(|e| match e {
        RecvTimeoutError::Timeout => TryRecvError::Empty,
        RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
    })
}

/// A running batch: its rows, their shared cache and the logits of each row's next token.
struct Batch<B: Backend> {
    steering: Steering,
    routing: Routing<B>,
    cache: KvCache<B>,
    rows: Vec<Row>,
    /// `[rows, vocab]`: the logits each row picks its next token from.
    next: Option<Tensor<B, 2>>,
}

/// One sequence of the batch.
struct Row {
    job: Job,
    /// First cache position that is this row's (the ones before are padding).
    start: usize,
    /// Real tokens of this row in the cache.
    len: usize,
    new_ids: Vec<u32>,
    sampler: Sampler,
    /// Bytes of the text already sent.
    sent: usize,
    /// Routing of the pass that produced the next token, and of tokens not yet sent.
    next_routing: Option<TokenRouting>,
    unsent_routing: Vec<TokenRouting>,
}

impl<B: Backend> Batch<B> {
    fn new(
        model: &MoeLm<B>,
        steering: Steering,
        [layers, experts, capacity]: [usize; 3],
        stacked: Option<Vec<crate::model::StackedExperts<B>>>,
        device: &B::Device,
    ) -> Self {
        let routing = steering.routing(layers, experts, device);
        // Keys and values written in place (as `generate` does), not copied whole every step.
        let mut cache = KvCache::new(model.num_layers()).with_capacity(capacity);
        if let Some(stacked) = stacked {
            cache = cache.with_stacked_experts(stacked);
        }
        Self {
            steering,
            routing,
            cache,
            rows: Vec::new(),
            next: None,
        }
    }

    fn capture(&self) -> bool {
        self.rows
            .iter()
            .any(|r| r.job.routed_experts || r.job.router_logits)
    }

    /// Prefill the prompts of `jobs` in one left-padded pass and add them as rows.
    fn admit(&mut self, model: &MoeLm<B>, jobs: Vec<Job>, pad_id: u32, device: &B::Device) {
        let prompts: Vec<&[u32]> = jobs.iter().map(|j| j.prompt_ids.as_slice()).collect();
        let padded = LeftPadded::new(&prompts, pad_id, 0);
        let (width, pads) = (padded.width, padded.pads.clone());
        let input = padded.prefill_input(device);
        let capture = jobs.iter().any(|j| j.routed_experts || j.router_logits);
        let mut own = KvCache::new(model.num_layers());
        let out = forward(model, input, &mut own, &self.routing, capture);
        let routing: Vec<Option<TokenRouting>> = match capture {
            true => routings(&out, jobs.iter())
                .into_iter()
                .zip(&jobs)
                .map(|(r, j)| (j.routed_experts || j.router_logits).then_some(r))
                .collect(),
            false => vec![None; jobs.len()],
        };
        let logits = last_logits(out.logits);
        let have = self.cache.len();
        // Where the new rows' cache begins in the batch's.
        let offset = if self.rows.is_empty() {
            0
        } else if width > have {
            self.cache.pad_front(width - have);
            self.rows.iter_mut().for_each(|r| r.start += width - have);
            0
        } else {
            own.pad_front(have - width);
            have - width
        };
        self.cache.append_rows(own);
        self.next = Some(match self.next.take() {
            Some(next) => Tensor::cat(vec![next, logits], 0),
            None => logits,
        });
        for ((job, pad), routing) in jobs.into_iter().zip(pads).zip(routing) {
            let sampler = Sampler::new(job.sampling);
            self.rows.push(Row {
                start: offset + pad,
                len: job.prompt_ids.len(),
                job,
                new_ids: Vec::new(),
                sampler,
                sent: 0,
                next_routing: routing,
                unsent_routing: Vec::new(),
            });
        }
    }

    /// Steps decoded before the host reads their tokens: `read_every` (fewer where a row's token
    /// limit comes first) when every row is greedy and none captures its routing, else 1.
    fn block(&self, read_every: usize) -> usize {
        if self.capture() || !self.rows.iter().all(|r| r.sampler.is_greedy()) {
            return 1;
        }
        let left = self
            .rows
            .iter()
            .map(|r| r.job.max_tokens.saturating_sub(r.new_ids.len()))
            .min()
            .unwrap_or(1);
        left.clamp(1, read_every.max(1))
    }

    /// Pick every row's next tokens (a block of greedy steps decoded on the device, or one step),
    /// send what is settled, drop finished rows, and run one decode step for the rest after a
    /// single step.
    fn step(
        &mut self,
        model: &MoeLm<B>,
        tokenizer: &ChatTokenizer,
        device: &B::Device,
        stats: &Stats,
        read_every: usize,
    ) {
        let next = self
            .next
            .take()
            .expect("a batch with rows has next-token logits");
        let block = self.block(read_every);
        // `picked[j][i]`: row i's token at step j of the block.
        let picked = match block {
            1 => vec![pick(next, &mut self.rows)],
            n => self.decode_block(model, next, n, device),
        };
        let mut keep = Vec::with_capacity(self.rows.len());
        for (i, row) in self.rows.iter_mut().enumerate() {
            let mut going = true;
            for tokens in &picked {
                stats.tokens.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = row.next_routing.take() {
                    row.unsent_routing.push(r);
                }
                if row.advance(tokens[i], tokenizer) != Some(true) {
                    stats.finished.fetch_add(1, Ordering::Relaxed);
                    going = false;
                    break;
                }
            }
            if going {
                keep.push(i);
            }
        }
        if keep.len() < self.rows.len() {
            let mut rows: Vec<Option<Row>> = std::mem::take(&mut self.rows)
                .into_iter()
                .map(Some)
                .collect();
            self.rows = keep
                .iter()
                .map(|&i| rows[i].take().expect("once"))
                .collect();
            self.cache.select_rows(&keep);
            let front = self.rows.iter().map(|r| r.start).min().unwrap_or(0);
            self.cache.drop_front(front);
            self.rows.iter_mut().for_each(|r| r.start -= front);
            // A block has already decoded the next logits of every row, finished ones too.
            if let Some(next) = self.next.take()
                && !keep.is_empty()
            {
                let index = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(keep.iter().map(|&i| i as i64).collect(), [keep.len()]),
                    device,
                );
                self.next = Some(next.select(0, index));
            }
        }
        if self.rows.is_empty() || block > 1 {
            return;
        }
        // One decode step: each row feeds the token it just took, at its own position.
        let fed: Vec<i64> = keep.iter().map(|&i| picked[0][i] as i64).collect();
        let rows = self.rows.len();
        let (mask, positions) = self.mask_and_positions(1, device);
        let input = LmInput {
            input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(fed, [rows, 1]), device),
            attention_mask: Some(mask),
            positions: Some(positions),
        };
        let capture = self.capture();
        let out = forward(model, input, &mut self.cache, &self.routing, capture);
        if capture {
            let all = routings(&out, self.rows.iter().map(|r| &r.job));
            for (row, r) in self.rows.iter_mut().zip(all) {
                row.next_routing = Some(r);
            }
        }
        self.rows.iter_mut().for_each(|r| r.len += 1);
        self.next = Some(last_logits(out.logits));
    }

    /// The padding mask (wide enough for `steps` decode steps from here: attention takes the
    /// slots it has) and each row's next position, for decode steps.
    fn mask_and_positions(
        &self,
        steps: usize,
        device: &B::Device,
    ) -> (Tensor<B, 2, Bool>, Tensor<B, 2, Int>) {
        let rows = self.rows.len();
        let width = self.cache.len() + steps;
        let mut valid = Vec::with_capacity(rows * width);
        for r in &self.rows {
            valid.extend((0..width).map(|j| j >= r.start));
        }
        let positions: Vec<i64> = self.rows.iter().map(|r| r.len as i64).collect();
        (
            Tensor::from_data(TensorData::new(valid, [rows, width]), device),
            Tensor::from_data(TensorData::new(positions, [rows, 1]), device),
        )
    }

    /// `steps` greedy decode steps from `next` with the tokens fed back on the device, then one
    /// read of every step's tokens: the steps queue without waiting for the host (a read drains
    /// every queue), as `generate` decodes. Every row advances `steps` positions; the block's
    /// last logits become the batch's next.
    fn decode_block(
        &mut self,
        model: &MoeLm<B>,
        next: Tensor<B, 2>,
        steps: usize,
        device: &B::Device,
    ) -> Vec<Vec<u32>> {
        let rows = self.rows.len();
        let (mask, mut positions) = self.mask_and_positions(steps, device);
        let mut logits = next;
        let mut picks = Vec::with_capacity(steps);
        for _ in 0..steps {
            let picked = argmax_rows(logits);
            picks.push(picked.clone().reshape([rows]));
            let input = LmInput {
                input_ids: picked,
                attention_mask: Some(mask.clone()),
                positions: Some(positions.clone()),
            };
            positions = positions.add_scalar(1);
            let out = forward(model, input, &mut self.cache, &self.routing, false);
            logits = last_logits(out.logits);
        }
        self.rows.iter_mut().for_each(|r| r.len += steps);
        self.next = Some(logits);
        let read: Vec<u32> = Tensor::stack::<2>(picks, 0)
            .into_data()
            .iter::<i64>()
            .map(|t| t as u32)
            .collect();
        read.chunks(rows).map(<[u32]>::to_vec).collect()
    }
}

/// An idle engine that receives a request waits up to this long for another before it prefills,
/// and again after each that arrives (at most [`GATHER_AT_MOST`] in all): requests sent together
/// (a client's concurrent calls, an evaluation harness) then share one prefill and decode in step,
/// instead of the first decoding alone while the others join a step later, each with its own
/// prefill and a copy of the batch's cache. A lone request waits this long once.
const GATHER: Duration = Duration::from_millis(3);
/// The longest an idle engine gathers requests before it prefills those it has.
const GATHER_AT_MOST: Duration = Duration::from_millis(20);

impl Row {
    /// Take `token`: send the text it settles; `Some(true)` to go on, `Some(false)` when the
    /// answer is complete, `None` when the client is gone.
    fn advance(&mut self, token: u32, tokenizer: &ChatTokenizer) -> Option<bool> {
        self.new_ids.push(token);
        let stop_token = self.job.stop_ids.contains(&token);
        let text = tokenizer.decode(&self.new_ids);
        let cut = self
            .job
            .stop_strings
            .iter()
            .filter_map(|s| text[self.sent.min(text.len())..].find(s.as_str()))
            .map(|at| at + self.sent.min(text.len()))
            .min();
        let finish = if cut.is_some() || stop_token {
            Some(Finish::Stop)
        } else if self.new_ids.len() >= self.job.max_tokens {
            Some(Finish::Length)
        } else {
            None
        };
        let end = match (cut, finish) {
            (Some(at), _) => at,
            (None, Some(_)) => text.len(),
            (None, None) => settled(&text, &self.job.stop_strings),
        };
        let delta = if end > self.sent && text.is_char_boundary(end) {
            let d = text[self.sent..end].to_string();
            self.sent = end;
            d
        } else {
            String::new()
        };
        if !delta.is_empty() || !self.unsent_routing.is_empty() {
            let routing = std::mem::take(&mut self.unsent_routing);
            self.job
                .events
                .send(Event::Delta {
                    text: delta,
                    routing,
                })
                .ok()?;
        }
        match finish {
            None => Some(true),
            Some(finish) => {
                let prompt_tokens = self.job.prompt_ids.len();
                let completion_tokens = self.new_ids.len();
                self.job
                    .events
                    .send(Event::Done {
                        finish,
                        usage: Usage {
                            prompt_tokens,
                            completion_tokens,
                            total_tokens: prompt_tokens + completion_tokens,
                        },
                    })
                    .ok()?;
                Some(false)
            }
        }
    }
}

/// The end of the part of `text` that is settled: not an incomplete character (the decoder's
/// replacement character at the end) and not a suffix that could still grow into a stop string.
fn settled(text: &str, stops: &[String]) -> usize {
    let mut end = text.len();
    if text.ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    let head = &text[..end];
    let held = stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .filter(|&k| s.is_char_boundary(k) && head.ends_with(&s[..k]))
                .max()
        })
        .max()
        .unwrap_or(0);
    end - held
}

fn forward<B: Backend>(
    model: &MoeLm<B>,
    input: LmInput<B>,
    cache: &mut KvCache<B>,
    routing: &Routing<B>,
    capture: bool,
) -> LmOutput<B> {
    match capture {
        true => {
            let routing = routing.clone().with_capture(true);
            model.forward_cached_last_routed(input, cache, &routing)
        }
        false => model.forward_cached_last(input, cache, routing),
    }
}

/// Every row's routing at the last position of a captured pass (each as much as its job asked
/// for), read from the device once for the whole batch.
fn routings<'a, B: Backend>(
    out: &LmOutput<B>,
    jobs: impl Iterator<Item = &'a Job>,
) -> Vec<TokenRouting> {
    let chosen = out.chosen.as_ref().map(|c| {
        let [layers, rows, seq, k] = c.dims();
        let v: Vec<i64> = c
            .clone()
            .slice([0..layers, 0..rows, seq - 1..seq, 0..k])
            .into_data()
            .iter::<i64>()
            .collect();
        (v, [layers, rows, k])
    });
    let logits = out.router_logits.as_ref().map(|l| {
        let [layers, rows, seq, experts] = l.dims();
        let v: Vec<f32> = l
            .clone()
            .slice([0..layers, 0..rows, seq - 1..seq, 0..experts])
            .into_data()
            .iter::<f32>()
            .collect();
        (v, [layers, rows, experts])
    });
    jobs.enumerate()
        .map(|(row, job)| {
            let mut r = TokenRouting::default();
            if job.routed_experts
                && let Some((v, [layers, rows, k])) = &chosen
            {
                r.routed_experts = (0..*layers)
                    .map(|l| {
                        let at = (l * rows + row) * k;
                        v[at..at + k].iter().map(|&e| e as u16).collect()
                    })
                    .collect();
            }
            if job.router_logits
                && let Some((v, [layers, rows, experts])) = &logits
            {
                r.router_logits = (0..*layers)
                    .map(|l| {
                        let at = (l * rows + row) * experts;
                        v[at..at + experts].to_vec()
                    })
                    .collect();
            }
            r
        })
        .collect()
}

/// Each row's next token: one argmax on the device when every row is greedy, else every row's
/// logits on the host through its own sampler.
fn pick<B: Backend>(logits: Tensor<B, 2>, rows: &mut [Row]) -> Vec<u32> {
    let [n, vocab] = logits.dims();
    if rows.iter().all(|r| r.sampler.is_greedy()) {
        return argmax_rows(logits)
            .reshape([n])
            .into_data()
            .iter::<i64>()
            .map(|t| t as u32)
            .collect();
    }
    let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
    values
        .chunks(vocab)
        .zip(rows.iter_mut())
        .map(|(l, r)| r.sampler.pick(l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_possible_stop_string_is_held_back() {
        let stops = vec!["END".to_string()];
        assert_eq!(settled("hello E", &stops), 6);
        assert_eq!(settled("hello EN", &stops), 6);
        assert_eq!(settled("hello", &stops), 5);
        assert_eq!(settled("ab\u{FFFD}", &[]), 2);
    }
}
