//! The batch-preserving data loader (the seeds' `BatchPreservingSampler`) and the per-batch mask
//! table.
//!
//! Every loader batch is exactly one analysis batch, never mixed, its samples in `in_batch_idx`
//! order. The order of batches is shuffled per epoch (the config's seed, stream
//! [`Stream::BatchOrder`](crate::seeds::Stream::BatchOrder) of that epoch) when `shuffle_batches`
//! is on. Each batch carries its `batch_idx`, per-sample labels and the
//! [`Routing`] looked up in the [`MaskTable`] by `batch_idx`, so the router of every layer really
//! applies that batch's mask.
//!
//! burn-train checkpoints at the end of each of its epochs; to checkpoint every N steps, the
//! loader serves the whole schedule (all true epochs, concatenated) in *windows* of N steps, one
//! window per burn-train epoch. Window `w` is the `w`-th call of `iter()` counted from the window
//! the run starts at, so a resumed run continues the same schedule.
//!
//! On several devices (`ranks > 1`) every rank serves every step, each its [`shard`] of the
//! step's batch with the loss weight that makes the ranks' mean gradient the batch's. burn-train's
//! data-parallel strategy hands each device `slice(start, end)` of the loader's items; here the
//! items of a window are (rank, step) pairs, `window` per rank, so rank `r`'s slice starts at
//! `r · window`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::seq::SliceRandom;

use super::config::{MaskScope, Phase};
use super::control::TrainControl;
use super::sft::SftGroup;
use super::shard::{Rank, counted_tokens, loss_scale, shard};
use crate::analysis::select::ExpertId;
use crate::data::batch::Label;
use crate::model::Routing;
use crate::model::loss::Targets;

/// One training batch: one analysis batch, right-padded.
#[derive(Debug, Clone)]
pub struct SftBatch<B: Backend> {
    /// `[batch, seq]` token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// Where the loss counts and what it predicts there.
    pub targets: Targets<B>,
    /// `[batch, seq]`, `true` = real token.
    pub attention_mask: Tensor<B, 2, Bool>,
    /// The analysis batch it is.
    pub batch_idx: usize,
    /// Per sample: unsafe (jailbreak) or safe.
    pub is_unsafe: Vec<bool>,
    /// The routing the forward pass uses: this batch's mask, per sample.
    pub routing: Routing<B>,
    /// `[batch * seq]`, row-major: the attention mask on the host (which tokens the expert counts
    /// count).
    pub real: Arc<[bool]>,
    /// Tokens counted by the loss.
    pub tokens: usize,
    /// Real (unpadded) tokens in the batch.
    pub input_tokens: usize,
    /// The global step (1-based, counted across windows and resumes) this batch is trained at.
    pub step: usize,
    /// The rank this part of the batch is for (the whole batch on one device).
    pub rank: Rank,
    /// The weight of this part's mean loss in the ranks' mean gradient ([`loss_scale`]; 1 on
    /// one device).
    pub loss_scale: f32,
    /// What the step trains.
    pub phase: Phase,
    /// The batch has nothing its phase trains on (an expert step without unsafe samples, a
    /// router step without both kinds): the step changes nothing, as RASA skips it.
    pub skip: bool,
}

/// Per-batch expert masks on the device, `[batches, layers, experts]`, `true` = may be chosen.
#[derive(Debug, Clone)]
pub struct MaskTable<B: Backend> {
    rows: HashMap<usize, usize>,
    allow: Tensor<B, 3, Bool>,
}

impl<B: Backend> MaskTable<B> {
    /// A table from each batch's expert set. A layer where a set has no expert is left free
    /// (restricting it to nothing would route on the penalty alone).
    pub fn new(
        sets: &[(usize, Vec<ExpertId>)],
        layers: usize,
        experts: usize,
        device: &B::Device,
    ) -> Self {
        let mut values = Vec::with_capacity(sets.len() * layers * experts);
        let mut rows = HashMap::new();
        for (row, (batch_idx, set)) in sets.iter().enumerate() {
            rows.insert(*batch_idx, row);
            values.extend(crate::analysis::select::routing_mask(set, layers, experts));
        }
        let allow = Tensor::from_data(
            TensorData::new(values, [sets.len(), layers, experts]),
            device,
        );
        Self { rows, allow }
    }

    /// The `[layers, experts]` mask of `batch_idx`.
    pub fn lookup(&self, batch_idx: usize) -> Tensor<B, 2, Bool> {
        let row = *self
            .rows
            .get(&batch_idx)
            .unwrap_or_else(|| panic!("no mask for batch {batch_idx}"));
        let [_, layers, experts] = self.allow.dims();
        self.allow
            .clone()
            .slice(row..row + 1)
            .reshape([layers, experts])
    }

    /// Per-sample masks `[batch, layers, experts]` for `scope`: the batch's mask on the samples
    /// it restricts, all experts allowed on the others.
    pub fn routing(&self, batch_idx: usize, is_unsafe: &[bool], scope: MaskScope) -> Routing<B> {
        if scope == MaskScope::None {
            return Routing::free();
        }
        let mask = self.lookup(batch_idx);
        let [layers, experts] = mask.dims();
        let n = is_unsafe.len();
        let free: Vec<bool> = is_unsafe
            .iter()
            .map(|&u| scope == MaskScope::UnsafeSamples && !u)
            .collect();
        let free =
            Tensor::<B, 3, Bool>::from_data(TensorData::new(free, [n, 1, 1]), &mask.device())
                .expand([n, layers, experts]);
        let per_sample = mask
            .unsqueeze_dim::<3>(0)
            .expand([n, layers, experts])
            .bool_or(free);
        Routing::free().with_sample_masks(per_sample)
    }
}

/// How a [`BatchPreservingLoader`] serves its groups.
#[derive(Debug, Clone)]
pub struct LoaderSettings {
    /// Group positions in training order, all epochs concatenated.
    pub schedule: Vec<usize>,
    /// Steps per burn-train epoch.
    pub window: usize,
    /// The first window `iter()` serves (a resumed run's).
    pub start_window: usize,
    /// Padding token.
    pub pad_id: u32,
    /// Which samples the batch's routing mask restricts.
    pub mask_scope: MaskScope,
    /// Devices the batches are split across (1: one device).
    pub ranks: usize,
    /// What each pass over the groups trains (empty: every step is joint).
    pub phases: Vec<Phase>,
}

/// The loader. A clone shares the window counter.
#[derive(Clone)]
pub struct BatchPreservingLoader<B: Backend> {
    groups: Arc<Vec<SftGroup>>,
    masks: MaskTable<B>,
    /// Group positions in training order, all epochs concatenated.
    schedule: Arc<Vec<usize>>,
    /// Steps per burn-train epoch.
    window: usize,
    /// The next window `iter()` serves.
    next_window: Arc<AtomicUsize>,
    pad_id: u32,
    mask_scope: MaskScope,
    /// Whose part of each batch `iter()` serves.
    rank: Rank,
    /// What each pass trains.
    phases: Arc<Vec<Phase>>,
    device: B::Device,
    control: TrainControl,
}

/// Group positions in training order: `epochs` passes, each shuffled by its own seeded stream if
/// asked.
pub fn schedule(groups: usize, epochs: usize, shuffle: bool, seed: u64) -> Vec<usize> {
    (0..epochs)
        .flat_map(|epoch| {
            let mut order: Vec<usize> = (0..groups).collect();
            if shuffle {
                order.shuffle(&mut crate::seeds::rng(
                    seed,
                    crate::seeds::Stream::BatchOrder { epoch },
                ));
            }
            order
        })
        .collect()
}

impl<B: Backend> BatchPreservingLoader<B> {
    /// A loader over `groups` following `schedule`, `window` steps per `iter()`, starting at
    /// window `start_window`.
    pub fn new(
        groups: Arc<Vec<SftGroup>>,
        masks: MaskTable<B>,
        settings: LoaderSettings,
        device: B::Device,
    ) -> Self {
        let LoaderSettings {
            schedule,
            window,
            start_window,
            pad_id,
            mask_scope,
            ranks,
            phases,
        } = settings;
        Self {
            groups,
            masks,
            schedule: Arc::new(schedule),
            window: window.max(1),
            next_window: Arc::new(AtomicUsize::new(start_window)),
            pad_id,
            mask_scope,
            rank: Rank {
                rank: 0,
                ranks: ranks.max(1),
            },
            phases: Arc::new(phases),
            device,
            control: TrainControl::default(),
        }
    }

    /// Serve pause and stop requests of `control` (see [`TrainControl`]).
    pub fn with_control(mut self, control: TrainControl) -> Self {
        self.control = control;
        self
    }

    /// Number of windows (burn-train epochs) the schedule makes.
    pub fn windows(&self) -> usize {
        self.schedule.len().div_ceil(self.window)
    }

    /// Steps in one window (the whole schedule when it is shorter than a window).
    fn window_steps(&self) -> usize {
        self.window.min(self.schedule.len())
    }

    /// Assemble this loader's rank's part of the batch of group position `g`, trained at
    /// (1-based) step `step`.
    pub fn batch(&self, g: usize, step: usize) -> SftBatch<B> {
        let pass = (step - 1) / self.groups.len().max(1);
        let phase = self.phases.get(pass).copied().unwrap_or(Phase::Joint);
        let (group, skip) = phase_group(&self.groups[g], phase);
        let group = &group;
        let examples = shard(group, self.rank);
        let n = examples.len();
        let width = examples
            .iter()
            .map(|e| e.input_ids.len())
            .max()
            .unwrap_or(1);
        let mut ids = Vec::with_capacity(n * width);
        let mut labels = Vec::with_capacity(n * width);
        let mut valid = Vec::with_capacity(n * width);
        let mut tokens = 0;
        for ex in &examples {
            let pad = width - ex.input_ids.len();
            ids.extend(
                ex.input_ids
                    .iter()
                    .map(|&t| t as i64)
                    .chain(std::iter::repeat_n(self.pad_id as i64, pad)),
            );
            labels.extend(
                ex.labels
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(crate::model::loss::IGNORE_INDEX, pad)),
            );
            valid.extend(
                std::iter::repeat_n(true, ex.input_ids.len())
                    .chain(std::iter::repeat_n(false, pad)),
            );
            tokens += counted_tokens(ex);
        }
        let batch_tokens: usize = group.examples.iter().map(counted_tokens).sum();
        let is_unsafe: Vec<bool> = examples.iter().map(|e| e.label == Label::Unsafe).collect();
        let input_tokens = valid.iter().filter(|&&v| v).count();
        // Router steps learn the routing: no mask restricts it.
        let scope = match phase {
            Phase::Routers => MaskScope::None,
            Phase::Joint | Phase::Experts => self.mask_scope,
        };
        let routing = self.masks.routing(group.batch_idx, &is_unsafe, scope);
        let real: Arc<[bool]> = valid.clone().into();
        SftBatch {
            input_ids: Tensor::from_data(TensorData::new(ids, [n, width]), &self.device),
            targets: Targets::from_labels(&labels, n, width, &self.device),
            attention_mask: Tensor::from_data(TensorData::new(valid, [n, width]), &self.device),
            batch_idx: group.batch_idx,
            routing,
            is_unsafe,
            real,
            tokens,
            input_tokens,
            step,
            rank: self.rank,
            loss_scale: loss_scale(tokens, batch_tokens, self.rank.ranks),
            phase,
            skip,
        }
    }
}

/// The samples a step of `phase` forwards from `group`, and whether it has nothing to train on:
/// an expert step forwards the unsafe samples only (RASA masks the safe samples' loss by leaving
/// them out); a router step needs both kinds. A skipped step forwards the whole group.
fn phase_group(group: &SftGroup, phase: Phase) -> (std::borrow::Cow<'_, SftGroup>, bool) {
    let has = |l: Label| group.examples.iter().any(|e| e.label == l);
    match phase {
        Phase::Joint => (std::borrow::Cow::Borrowed(group), false),
        Phase::Routers => (
            std::borrow::Cow::Borrowed(group),
            !(has(Label::Safe) && has(Label::Unsafe)),
        ),
        Phase::Experts if !has(Label::Unsafe) => (std::borrow::Cow::Borrowed(group), true),
        Phase::Experts => (
            std::borrow::Cow::Owned(SftGroup {
                batch_idx: group.batch_idx,
                examples: group
                    .examples
                    .iter()
                    .filter(|e| e.label == Label::Unsafe)
                    .cloned()
                    .collect(),
            }),
            false,
        ),
    }
}

struct WindowIter<'a, B: Backend> {
    loader: &'a BatchPreservingLoader<B>,
    steps: std::ops::Range<usize>,
    done: usize,
}

impl<B: Backend> Iterator for WindowIter<'_, B> {
    type Item = SftBatch<B>;
    fn next(&mut self) -> Option<Self::Item> {
        let step = self.steps.next()?;
        self.loader.control.wait_while_paused();
        self.done += 1;
        Some(self.loader.batch(self.loader.schedule[step], step + 1))
    }
}

impl<B: Backend> DataLoaderIterator<SftBatch<B>> for WindowIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.steps.len() + self.done)
    }
}

impl<B: Backend> DataLoader<B, SftBatch<B>> for BatchPreservingLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<SftBatch<B>> + 'a> {
        // Past the last window the schedule starts over: the validation loader serves its whole
        // (one-window) schedule at every call; training never asks past its last window.
        let w = self.next_window.fetch_add(1, Ordering::SeqCst) % self.windows().max(1);
        let start = (w * self.window).min(self.schedule.len());
        let end = if self.control.window_may_start(w) {
            ((w + 1) * self.window).min(self.schedule.len())
        } else {
            start
        };
        Box::new(WindowIter {
            loader: self,
            steps: start..end,
            done: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.window_steps() * self.rank.ranks
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, SftBatch<B>>> {
        let masks = MaskTable {
            rows: self.masks.rows.clone(),
            allow: self.masks.allow.clone().to_device(device),
        };
        Arc::new(Self {
            masks,
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, SftBatch<B>>> {
        if self.rank.ranks > 1 {
            // Items are (rank, step) pairs, `window` steps per rank: this slice is one rank's.
            let per_rank = self.window_steps().max(1);
            return Arc::new(Self {
                next_window: Arc::new(AtomicUsize::new(self.next_window.load(Ordering::SeqCst))),
                rank: Rank {
                    rank: (start / per_rank).min(self.rank.ranks - 1),
                    ranks: self.rank.ranks,
                },
                ..self.clone()
            });
        }
        let schedule: Vec<usize> =
            self.schedule[start.min(self.schedule.len())..end.min(self.schedule.len())].to_vec();
        Arc::new(Self {
            schedule: Arc::new(schedule),
            next_window: Arc::new(AtomicUsize::new(0)),
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::sft::{SftExample, SftGroup};
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn groups() -> Vec<SftGroup> {
        (0..5)
            .map(|b| SftGroup {
                batch_idx: 10 + b,
                examples: (0..4)
                    .map(|i| SftExample {
                        batch_idx: 10 + b,
                        in_batch_idx: i,
                        label: if i < 2 { Label::Safe } else { Label::Unsafe },
                        input_ids: vec![5; 3 + i],
                        labels: std::iter::once(-100)
                            .chain(std::iter::repeat_n(5, 2 + i))
                            .collect(),
                    })
                    .collect(),
            })
            .collect()
    }

    fn loader(window: usize, start: usize) -> BatchPreservingLoader<B> {
        let sets: Vec<(usize, Vec<ExpertId>)> =
            (0..5).map(|b| (10 + b, vec![[0, b % 3]])).collect();
        let masks = MaskTable::new(&sets, 2, 3, &Default::default());
        let settings = LoaderSettings {
            schedule: schedule(5, 2, true, 7),
            window,
            start_window: start,
            pad_id: 1,
            mask_scope: MaskScope::UnsafeSamples,
            ranks: 1,
            phases: Vec::new(),
        };
        BatchPreservingLoader::new(Arc::new(groups()), masks, settings, Default::default())
    }

    #[test]
    fn schedule_shuffles_reproducibly_per_epoch() {
        let a = schedule(5, 2, true, 7);
        assert_eq!(a, schedule(5, 2, true, 7));
        assert_ne!(a, schedule(5, 2, true, 8));
        let mut first: Vec<usize> = a[..5].to_vec();
        first.sort();
        assert_eq!(
            first,
            vec![0, 1, 2, 3, 4],
            "each epoch visits every batch once"
        );
        assert_eq!(schedule(3, 2, false, 0), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn batches_are_never_mixed_and_windows_continue_the_schedule() {
        let l = loader(3, 0);
        assert_eq!(l.windows(), 4);
        let mut seen = Vec::new();
        for _ in 0..4 {
            for b in l.iter() {
                let ids = b.input_ids.dims();
                assert_eq!(
                    ids,
                    [4, 6],
                    "one analysis batch of 4, padded to its longest"
                );
                assert_eq!(b.is_unsafe, vec![false, false, true, true]);
                seen.push(b.batch_idx);
            }
        }
        let expected: Vec<usize> = schedule(5, 2, true, 7).iter().map(|g| 10 + g).collect();
        assert_eq!(seen, expected);
        // A loader resumed at window 2 serves the same steps from there.
        let resumed = loader(3, 2);
        let rest: Vec<usize> = resumed.iter().map(|b| b.batch_idx).collect();
        assert_eq!(rest, expected[6..9]);
    }

    #[test]
    fn mask_lookup_restricts_unsafe_samples_only() {
        let l = loader(5, 0);
        let batch = l.batch(1, 1); // batch_idx 11: expert 1 of layer 0; layer 1 has none → free
        let allow = batch.routing.allow.expect("masked"); // [layers, batch, experts]
        let v: Vec<bool> = allow.into_data().iter::<bool>().collect();
        // layer 0: safe rows all true; unsafe rows only expert 1.
        assert_eq!(
            &v[..12],
            &[
                true, true, true, true, true, true, false, true, false, false, true, false
            ]
        );
        assert!(
            v[12..].iter().all(|&a| a),
            "a layer without unsafe experts stays free"
        );
    }
}
