//! Training: expert-only fine-tuning with burn-train's Learner (the seeds'
//! `train_batch_unsafe_experts.py`), except that each batch's routing mask is really applied.
//!
//! - [`sft`] builds the SFT set per analysis batch and [`valid`] the held-out validation set;
//!   [`loader`] serves them batch by batch with each batch's mask looked up by `batch_idx`;
//!   [`step`] is the model with its loss ([`step::SftModel`], burn-train's `TrainStep`);
//!   [`freeze`] decides what trains; [`schedule`] is the learning-rate schedule; [`metrics`]
//!   carries each step's and each validation's numbers out of the Learner (its metrics and its
//!   renderer: the Learner owns the loop); [`checkpoint`] writes and recovers checkpoints;
//!   [`curve`] draws `loss_curve.png`; [`control`] pauses and stops; [`synthetic`] makes up
//!   inputs for measuring and checking training without a collected run.
//! - [`train`] wires them into `SupervisedTraining`, checkpoints every window of steps under
//!   `train/`, validates at each checkpoint, resumes from the latest checkpoint, and exports
//!   `final_model/` in Hub layout.

pub mod checkpoint;
pub mod control;
pub mod curve;
pub mod freeze;
pub mod loader;
pub mod metrics;
pub mod parallel;
pub mod schedule;
pub mod sft;
pub mod shard;
pub mod step;
pub mod synthetic;
pub mod valid;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use burn::module::AutodiffModule;
use burn::optim::AdamWConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::record::FullPrecisionSettings;
use checkpoint::AtomicMpkRecorder;
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::{Learner, SupervisedTraining};
use serde::Serialize;

use crate::analysis::select::{ExpertId, union};
use crate::analysis::stage::{AnalysisError, UnsafeExperts};
use crate::config::{Config, ExpertSet};
use crate::data::DataError;
use crate::run_dir::write_atomic;
use crate::model::{self, LoadError, ModelConfig};
use loader::{BatchPreservingLoader, MaskTable};
pub use control::{TrainControl, TrainPlan};
pub use metrics::{StepRecord, ValidRecord};
use step::{LossSettings, SftModel};

/// What can go wrong training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An analysis or collect artifact is missing or malformed.
    #[error("{}: {reason}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading the collect run.
    #[error(transparent)]
    RunDir(#[from] crate::run_dir::RunDirError),
    /// Reading the analysis.
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    /// Tokenizer or templates.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Loading or exporting the model.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Drawing the loss curve.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// A batch too small to split across `model.devices`.
    #[error(transparent)]
    Shard(#[from] shard::TooSmall),
    /// Several devices asked of a binary or backend that cannot train on them.
    #[error("model.devices = {devices:?}: {reason}")]
    Parallel {
        /// The devices asked for.
        devices: Vec<usize>,
        /// Why not.
        reason: String,
    },
    /// The loss went NaN or infinite: training stopped, nothing was exported.
    #[error("step {step}: the loss is {loss}; training stopped and exported nothing ({}; {removed} later checkpoint(s) removed). Lower train.lr or check the model's weights", kept.map(|k| format!("the last good checkpoint, window {k}, is kept")).unwrap_or_else(|| "no good checkpoint".into()))]
    NonFinite {
        /// The first step with a non-finite loss.
        step: usize,
        /// Its loss.
        loss: f64,
        /// The last checkpoint left (window), if any.
        kept: Option<usize>,
        /// Checkpoints removed (windows at or after the bad step's).
        removed: usize,
    },
}

/// What `metrics.jsonl` holds, in step order, the last record of a step kept (a resumed run
/// redoes the steps after its checkpoint): one line per step and one per validation.
#[derive(Debug, Clone, Default)]
pub struct MetricsHistory {
    /// Every training step.
    pub steps: Vec<StepRecord>,
    /// The validation loss at each checkpoint.
    pub valid: Vec<ValidRecord>,
}

/// Read `metrics.jsonl` (empty when missing).
pub fn read_metrics(path: &Path) -> MetricsHistory {
    let mut steps = std::collections::BTreeMap::new();
    let mut valid = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Ok(r) = serde_json::from_str::<StepRecord>(line) {
            steps.insert(r.step, r);
        } else if let Ok(v) = serde_json::from_str::<ValidRecord>(line) {
            valid.insert(v.step, v);
        }
    }
    MetricsHistory {
        steps: steps.into_values().collect(),
        valid: valid.into_values().collect(),
    }
}

/// What training reports as it goes.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// A training step.
    Step(StepRecord),
    /// The validation loss at a checkpoint.
    Valid(ValidRecord),
}

/// Each analysed batch's expert set under `set`: its own unsafe experts, or the global ones.
pub fn batch_sets(analysis: &UnsafeExperts, set: ExpertSet) -> Vec<(usize, Vec<ExpertId>)> {
    analysis
        .batch_idx
        .iter()
        .zip(&analysis.per_batch)
        .map(|(&b, own)| {
            let chosen = match set {
                ExpertSet::PerBatch => own.clone(),
                ExpertSet::Global => analysis.global.clone(),
            };
            (b, chosen)
        })
        .collect()
}

/// `training_metadata.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingMetadata {
    /// Model directory trained from.
    pub base_model: String,
    /// Experts whose weights trained, (layer, expert).
    pub unsafe_experts: Vec<ExpertId>,
    /// Number of trained experts.
    pub num_unsafe_experts: usize,
    /// Analysis batches trained on.
    pub num_batches: usize,
    /// Examples trained on per epoch.
    pub num_examples: usize,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// All parameters.
    pub total_params: usize,
    /// Optimizer steps taken (batches, counting accumulation as one each).
    pub steps: usize,
    /// Loss of the first and last step.
    pub first_loss: Option<f64>,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Validation loss at the last checkpoint (held-out pairs, see [`valid`]).
    pub last_valid_loss: Option<f64>,
    /// Held-out pairs validated on.
    pub valid_pairs: usize,
    /// The `[train]` settings used.
    pub train: crate::config::TrainConfig,
    /// Seed.
    pub seed: u64,
}

/// What a training run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Every step, in order (a resumed run reports only the steps it ran).
    pub steps: Vec<StepRecord>,
    /// Trainable and total parameter counts.
    pub params: (usize, usize),
    /// The exported model (none when stopped early or [`TrainOptions::measure_only`]).
    pub final_model: PathBuf,
    /// The window (checkpoint) the run resumed from, if any.
    pub resumed_from: Option<usize>,
    /// Stopped early (by a stop request or `stop_after_windows`): nothing exported.
    pub stopped: bool,
    /// Steps of the schedule, all epochs.
    pub total_steps: usize,
}

/// Knobs a caller sets beside the config (not part of the experiment).
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Stop after this many windows (as an interruption would) and skip the export.
    pub stop_after_windows: Option<usize>,
    /// Pause and stop requests from a UI.
    pub control: Option<TrainControl>,
    /// Write `metrics.jsonl` only (started over): no checkpoints, none resumed from or removed,
    /// and no final model. For measuring the training of a model too large to write at every
    /// window (`benches/gpu.rs --what learner`), in a directory of its own.
    pub measure_only: bool,
    /// burn's data-parallel strategy even on one device (feature `ddp`): its path (NCCL, a
    /// worker per device, the gradients exchanged) on a machine with one GPU.
    pub parallel_on_one_device: bool,
}

/// What training reads from an analysed run.
#[derive(Debug, Clone)]
pub struct TrainInputs {
    /// Each analysed batch's expert set: the experts its steps train and its routing mask.
    pub sets: Vec<(usize, Vec<ExpertId>)>,
    /// The union of the sets: every expert trained.
    pub trained: Vec<ExpertId>,
    /// The SFT examples, one group per analysed batch with kept samples (shared by the loaders).
    pub groups: Arc<Vec<sft::SftGroup>>,
    /// The validation groups: held-out pairs answered with a refusal (see [`valid`]).
    pub valid: Arc<Vec<sft::SftGroup>>,
    /// Examples in all.
    pub num_examples: usize,
    /// The model's config.
    pub model_cfg: ModelConfig,
    /// Padding token.
    pub pad_id: u32,
}

impl TrainInputs {
    /// Read the analysis and the collected samples of `run_dir` as `cfg` trains on them.
    pub fn read(cfg: &Config, run_dir: &Path) -> Result<Self, TrainError> {
        let t = &cfg.train;
        let model_cfg = ModelConfig::from_path(&cfg.model.dir)?;
        let analysis = UnsafeExperts::read(run_dir)?;
        let sets = batch_sets(&analysis, t.expert_set);
        let trained = union(&sets.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>());
        let tokenizer = cfg.model.tokenizer(&cfg.model.dir)?;
        let groups = sft::build(run_dir, &analysis.batch_idx, &tokenizer, t)?;
        if groups.is_empty() {
            return Err(TrainError::Input {
                path: run_dir.join("unsafe_experts.json"),
                reason: "no analysed batch has kept samples to train on".into(),
            });
        }
        Ok(Self {
            num_examples: groups.iter().map(|g| g.examples.len()).sum(),
            sets,
            trained,
            groups: Arc::new(groups),
            valid: Arc::new(valid::heldout_groups(cfg, &tokenizer)?),
            model_cfg,
            pad_id: tokenizer.pad_id,
        })
    }

    /// Steps per window: the steps between two checkpoints.
    pub fn window(&self, cfg: &Config) -> usize {
        if cfg.train.checkpoint_every > 0 { cfg.train.checkpoint_every } else { self.groups.len() }
    }

    /// Optimizer steps of the whole schedule.
    pub fn total_steps(&self, cfg: &Config) -> usize {
        self.groups.len() * cfg.train.epochs
    }

    /// The loader training iterates: the groups in `schedule` order from window `start_window`,
    /// each batch carrying the routing its step applies (its set's mask, written by analysis to
    /// `expert_masks.safetensors`, on the samples `train.mask_scope` restricts).
    pub fn loader<B: burn::tensor::backend::Backend>(&self, cfg: &Config, schedule: Vec<usize>, start_window: usize, device: &B::Device) -> BatchPreservingLoader<B> {
        let settings = loader::LoaderSettings {
            schedule,
            window: self.window(cfg),
            start_window,
            pad_id: self.pad_id,
            mask_scope: cfg.train.mask_scope,
            ranks: cfg.model.devices.len().max(1),
        };
        let masks = MaskTable::new(&self.sets, self.model_cfg.num_moe_layers(), self.model_cfg.num_experts, device);
        BatchPreservingLoader::new(self.groups.clone(), masks, settings, device.clone())
    }

    /// The validation loader: every validation group, under free routing, at each `iter()`.
    pub fn valid_loader<B: burn::tensor::backend::Backend>(&self, device: &B::Device) -> BatchPreservingLoader<B> {
        let n = self.valid.len();
        let settings = loader::LoaderSettings {
            schedule: (0..n).collect(),
            window: n.max(1),
            start_window: 0,
            pad_id: self.pad_id,
            mask_scope: crate::config::MaskScope::None,
            ranks: 1,
        };
        let masks = MaskTable::new(&[], self.model_cfg.num_moe_layers(), self.model_cfg.num_experts, device);
        BatchPreservingLoader::new(self.valid.clone(), masks, settings, device.clone())
    }
}

/// `metrics.jsonl` opened for appending, first cut back to the steps (and validations) that
/// checkpoint `resume` holds, so that no step is recorded twice.
fn open_metrics(path: &Path, kept_steps: usize) -> Result<std::fs::File, TrainError> {
    if path.exists() {
        let history = read_metrics(path);
        let mut text = String::new();
        let line = |v: serde_json::Result<String>| v.expect("metric records serialise") + "\n";
        for r in history.steps.iter().filter(|r| r.step <= kept_steps) {
            text.push_str(&line(serde_json::to_string(r)));
        }
        for v in history.valid.iter().filter(|v| v.step <= kept_steps) {
            text.push_str(&line(serde_json::to_string(v)));
        }
        write_atomic(path, text.as_bytes())?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| crate::run_dir::RunDirError::Io { path: path.to_path_buf(), source }.into())
}

/// Train on the analysed collect run in `run_dir` and export `run_dir/final_model`.
///
/// In order: read the inputs; load and freeze the model; find the checkpoint to resume from;
/// run burn-train's Learner (every step and validation to `metrics.jsonl` and `on_event`); stop
/// on a non-finite loss; export the model, the loss curve and `training_metadata.json`.
pub fn train<B: AutodiffBackend>(
    cfg: &Config,
    run_dir: &Path,
    device: &B::Device,
    opts: &TrainOptions,
    on_event: impl FnMut(TrainEvent) + Send,
) -> Result<TrainSummary, TrainError> {
    let inputs = TrainInputs::read(cfg, run_dir)?;
    let load = || Ok(model::load::<B>(&cfg.model.dir, device, cfg.model.precision)?.0);
    train_on(cfg, run_dir, inputs, load, device, opts, on_event)
}

/// [`train`] on `inputs` given in memory, with the model `load` returns (called once the devices
/// are known to be there): what `run_dir` gets is the same (`metrics.jsonl`, checkpoints under
/// `train/`, `final_model/`), but nothing is read from it but a checkpoint to resume from.
pub fn train_on<B: AutodiffBackend>(
    cfg: &Config,
    run_dir: &Path,
    inputs: TrainInputs,
    load: impl FnOnce() -> Result<model::MoeLm<B>, TrainError>,
    device: &B::Device,
    opts: &TrainOptions,
    on_event: impl FnMut(TrainEvent) + Send,
) -> Result<TrainSummary, TrainError> {
    let t = &cfg.train;
    let ranks = cfg.model.devices.len().max(1);
    shard::check(&inputs.groups, ranks)?;
    let strategy = match ranks > 1 || opts.parallel_on_one_device {
        true => Some(parallel_strategy::<B>(&cfg.model.devices)?),
        false => None,
    };
    let (model, params) = trainable_model::<B>(cfg, &inputs, load()?);

    let train_dir = run_dir.join("train");
    // A kill between a window's checkpoint files leaves a partial checkpoint: resume from the
    // last whole one.
    let partial = if opts.measure_only { Vec::new() } else { checkpoint::remove_partial(&train_dir) };
    if !partial.is_empty() {
        tracing::warn!("{}: removed the partial checkpoint(s) of window(s) {partial:?}", train_dir.display());
    }
    let resume = if opts.measure_only { None } else { checkpoint::latest(&train_dir) };
    let control = opts.control.clone().unwrap_or_default();
    if ranks > 1 {
        control.set_parallel();
    }
    let num_batches = inputs.groups.len();
    let total_steps = inputs.total_steps(cfg);
    let window = inputs.window(cfg);
    let loader = inputs
        .loader::<B>(cfg, loader::schedule(num_batches, t.epochs, t.shuffle_batches, cfg.seed), resume.unwrap_or(0), device)
        .with_control(control.clone());
    let windows = loader.windows();
    control.set_plan(control::TrainPlan {
        total_steps,
        params,
        trained: inputs.trained.clone(),
        batch_experts: inputs.sets.clone(),
    });
    let last_window = opts.stop_after_windows.map_or(windows, |s| s.min(windows));
    let metrics_path = run_dir.join("metrics.jsonl");
    let metrics_file = open_metrics(&metrics_path, resume.unwrap_or(0) * window)?;

    let (tx, rx) = mpsc::channel();
    let mut training = SupervisedTraining::new(&train_dir, Arc::new(loader), Arc::new(inputs.valid_loader::<B::InnerBackend>(device)))
        .metric_train(metrics::StepMetric::new(ranks))
        .metric_valid(metrics::ValidMetric::new(window, total_steps))
        .renderer(metrics::ChannelRenderer::new(tx))
        .with_metric_logger(metrics::NoLog)
        .with_application_logger(None)
        .with_interrupter(control.interrupter())
        .num_epochs(last_window);
    if !opts.measure_only {
        // After each checkpoint the training thread waits for its records (`checkpoint` says why).
        const PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);
        let taken = Arc::new(checkpoint::Taken::default());
        training = training
            .with_file_checkpointer(AtomicMpkRecorder::<FullPrecisionSettings>::reporting_to(taken.clone()))
            .with_checkpointing_strategy(KeepLastNCheckpoints::new(2))
            .early_stopping(checkpoint::RecordsTaken::new(taken, PATIENCE));
    }
    if t.grad_accumulation > 1 {
        training = training.grads_accumulation(t.grad_accumulation);
    }
    if let Some(epoch) = resume {
        training = training.checkpoint(epoch);
    }
    if let Some(strategy) = strategy {
        training = training.with_training_strategy(strategy.into());
    }
    let learner = Learner::new(model.clone(), optimizer(t).init(), schedule::WarmupLinear::new(t.lr, t.warmup_steps, total_steps).per_step(ranks));
    // The renderer's sender lives in `training`; once the Learner is done and dropped, the
    // channel closes and the consumer returns every step it saw.
    let (result, (steps, non_finite)) = std::thread::scope(|s| {
        let consumer = s.spawn(|| record_reports(rx, metrics_file, &metrics_path, &control, on_event));
        let result = if resume.is_some_and(|r| r >= last_window) {
            drop(training);
            None
        } else {
            Some(training.launch(learner).model)
        };
        (result, consumer.join().expect("step consumer"))
    });
    if let Some((step, loss)) = non_finite {
        // The loss of step `step` is computed with the weights step `step - 1` left: those, and
        // every checkpoint from the window holding that step on, are bad.
        let bad_window = (step - 1).div_ceil(window).max(1);
        let removed = checkpoint::remove_from(&train_dir, bad_window);
        return Err(TrainError::NonFinite {
            step,
            loss,
            kept: checkpoint::latest(&train_dir),
            removed,
        });
    }
    // Every window was checkpointed by an earlier run that ended before its export: the model
    // is the last checkpoint's.
    let result = match (result, resume) {
        (None, Some(r)) if r >= windows && opts.stop_after_windows.is_none_or(|s| s >= windows) => Some(restore(model, &train_dir, r, device)?.valid()),
        (result, _) => result,
    };

    let final_model = run_dir.join("final_model");
    // A stop request after the last window's checkpoint stopped nothing.
    let stopped = opts.stop_after_windows.is_some_and(|s| s < windows)
        || (control.stop_requested() && checkpoint::latest(&train_dir).is_none_or(|c| c < windows));
    if !stopped
        && !opts.measure_only
        && let Some(model) = result
    {
        finish(cfg, run_dir, &inputs, &model.model, params)?;
    }
    Ok(TrainSummary {
        steps,
        params,
        final_model,
        resumed_from: resume,
        stopped,
        total_steps,
    })
}

/// The model as `cfg` trains it: loaded, everything frozen but the trained experts (or what
/// `train.trainable` says), with its loss settings; and its (trainable, total) parameters.
fn trainable_model<B: AutodiffBackend>(cfg: &Config, inputs: &TrainInputs, model: model::MoeLm<B>) -> (SftModel<B>, (usize, usize)) {
    let model = freeze::freeze(model, &inputs.trained, cfg.train.trainable, FloatDType::F32);
    let params = freeze::param_counts(&model);
    (SftModel::new(model, LossSettings::new(cfg, &inputs.model_cfg)), params)
}

/// AdamW as the seeds configure it.
fn optimizer(t: &crate::config::TrainConfig) -> AdamWConfig {
    let optim = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(t.weight_decay as f32);
    match t.grad_clip > 0.0 {
        true => optim.with_grad_clipping(Some(GradientClippingConfig::Norm(t.grad_clip as f32))),
        false => optim,
    }
}

/// Whether this binary can train on `cfg.model.devices` (every device present, the `ddp`
/// feature built in when there are several): for the CLI to ask before any stage runs.
pub fn check_devices(cfg: &Config) -> Result<(), TrainError> {
    if cfg.model.devices.len() <= 1 {
        return Ok(());
    }
    #[cfg(feature = "ddp")]
    {
        parallel_strategy::<crate::backend::Cuda>(&cfg.model.devices).map(drop)
    }
    #[cfg(not(feature = "ddp"))]
    {
        parallel_strategy::<crate::backend::Cpu>(&cfg.model.devices).map(drop)
    }
}

/// burn's data-parallel strategy on `devices` (CUDA, feature `ddp`).
fn parallel_strategy<B: AutodiffBackend>(devices: &[usize]) -> Result<burn::train::ExecutionStrategy<B>, TrainError> {
    let fail = |reason: &str| TrainError::Parallel { devices: devices.to_vec(), reason: reason.into() };
    #[cfg(feature = "ddp")]
    {
        crate::cuda::ddp::strategy::<B>(devices).map_err(|reason| fail(&reason))
    }
    #[cfg(not(feature = "ddp"))]
    Err(fail("this binary was built without data-parallel training (cargo build --release --no-default-features --features cuda,ddp)"))
}

/// Take the renderer's reports until the Learner is done: each step and each checkpoint's
/// validation loss (the mean over its batches' counted tokens) to `metrics.jsonl` and
/// `on_event`. A non-finite loss requests a stop (at the end of its window); returns the steps
/// seen and the first non-finite (step, loss).
fn record_reports(
    rx: mpsc::Receiver<metrics::Report>,
    mut file: std::fs::File,
    path: &Path,
    control: &TrainControl,
    mut on_event: impl FnMut(TrainEvent),
) -> (Vec<StepRecord>, Option<(usize, f64)>) {
    use std::io::Write;
    let mut steps = Vec::new();
    let mut non_finite = None;
    // On several devices: the parts of each step seen so far, by step.
    let mut parts: std::collections::BTreeMap<usize, Vec<StepRecord>> = Default::default();
    // The validation batches of the current checkpoint: (step, Σ loss·tokens, Σ tokens).
    let mut pending: Option<(usize, f64, usize)> = None;
    let mut emit = |event: TrainEvent, file: &mut std::fs::File| {
        let line = match &event {
            TrainEvent::Step(r) => serde_json::to_string(r),
            TrainEvent::Valid(v) => serde_json::to_string(v),
        }
        .expect("metric records serialise");
        if let Err(e) = writeln!(file, "{line}") {
            tracing::warn!("{}: {e}", path.display());
        }
        on_event(event);
    };
    let flush = |pending: &mut Option<(usize, f64, usize)>| {
        pending.take().map(|(step, sum, tokens)| ValidRecord {
            step,
            valid_loss: sum / tokens.max(1) as f64,
            valid_tokens: tokens,
        })
    };
    for report in rx {
        match report {
            metrics::Report::Step(record) => {
                let record = if record.parts > 1 {
                    let step = record.step;
                    let seen = parts.entry(step).or_default();
                    seen.push(record);
                    if seen.len() < seen[0].parts {
                        continue;
                    }
                    StepRecord::merge(&parts.remove(&step).expect("just filled"))
                } else {
                    record
                };
                if let Some(v) = flush(&mut pending) {
                    emit(TrainEvent::Valid(v), &mut file);
                }
                if !record.loss.is_finite() && non_finite.is_none() {
                    non_finite = Some((record.step, record.loss));
                    control.request_stop();
                }
                steps.push(record.clone());
                emit(TrainEvent::Step(record), &mut file);
            }
            metrics::Report::Valid(batch) => {
                let (_, sum, tokens) = pending.get_or_insert((batch.step, 0.0, 0));
                *sum += batch.lm_loss * batch.tokens as f64;
                *tokens += batch.tokens;
            }
        }
    }
    if let Some(v) = flush(&mut pending) {
        emit(TrainEvent::Valid(v), &mut file);
    }
    (steps, non_finite)
}

/// Export the trained model (written whole beside `final_model/`, then renamed into place), the
/// loss curve and, last, `training_metadata.json`, which marks the stage finished.
fn finish<B: burn::tensor::backend::Backend>(cfg: &Config, run_dir: &Path, inputs: &TrainInputs, model: &model::MoeLm<B>, params: (usize, usize)) -> Result<(), TrainError> {
    let staged = run_dir.join("final_model.partial");
    if staged.exists() {
        std::fs::remove_dir_all(&staged).map_err(|source| crate::run_dir::RunDirError::Io { path: staged.clone(), source })?;
    }
    export(model, &inputs.model_cfg, &cfg.model.dir, &staged)?;
    crate::run_dir::replace_dir(&staged, &run_dir.join("final_model"))?;
    let history = read_metrics(&run_dir.join("metrics.jsonl"));
    write_atomic(&run_dir.join("loss_curve.png"), &curve::png(&history.steps, &history.valid)?)?;
    let meta = TrainingMetadata {
        base_model: cfg.model.dir.display().to_string(),
        num_unsafe_experts: inputs.trained.len(),
        unsafe_experts: inputs.trained.clone(),
        num_batches: inputs.groups.len(),
        num_examples: inputs.num_examples,
        trainable_params: params.0,
        total_params: params.1,
        steps: inputs.total_steps(cfg),
        first_loss: history.steps.first().map(|s| s.loss),
        last_loss: history.steps.last().map(|s| s.loss),
        last_valid_loss: history.valid.last().map(|v| v.valid_loss),
        valid_pairs: inputs.valid.iter().map(|g| g.examples.len()).sum::<usize>() / 2,
        train: cfg.train.clone(),
        seed: cfg.seed,
    };
    write_atomic(
        &run_dir.join("training_metadata.json"),
        serde_json::to_string_pretty(&meta).expect("metadata serialises").as_bytes(),
    )?;
    Ok(())
}

/// `model` with the weights of checkpoint `epoch` under `train_dir`.
fn restore<B: AutodiffBackend>(model: SftModel<B>, train_dir: &Path, epoch: usize, device: &B::Device) -> Result<SftModel<B>, TrainError> {
    use burn::module::Module;
    use burn::record::Recorder;
    let path = train_dir.join("checkpoint").join(format!("model-{epoch}"));
    let record = AtomicMpkRecorder::<FullPrecisionSettings>::new()
        .load(path.clone(), device)
        .map_err(|e| TrainError::Input { path, reason: format!("checkpoint unreadable: {e}") })?;
    Ok(model.load_record(record))
}

/// Save `model` in Hub layout with the base model's tokenizer files.
pub fn export<B: burn::tensor::backend::Backend>(model: &model::MoeLm<B>, cfg: &ModelConfig, base_dir: &Path, out: &Path) -> Result<(), LoadError> {
    model::save(model, cfg, out)?;
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"] {
        let src = base_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, out.join(f)).map_err(|source| LoadError::Io { path: src.clone(), source })?;
        }
    }
    Ok(())
}
