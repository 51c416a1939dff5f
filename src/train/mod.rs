//! Training: expert-only fine-tuning with burn-train's Learner (the seeds'
//! `train_batch_unsafe_experts.py`), except that each batch's routing mask is really applied.
//!
//! - [`sft`] builds the SFT set per analysis batch; [`loader`] serves it batch by batch with each
//!   batch's mask looked up by `batch_idx`; [`step`] is the `TrainStep`; [`freeze`] decides what
//!   trains; [`schedule`] is the learning-rate schedule; [`metrics`] carries each step's numbers
//!   out of the Learner (a burn-train `Metric` that forwards to a channel: the Learner owns the
//!   loop, so its metric hook is where per-step data appears).
//! - [`train`] wires them into `SupervisedTraining`, checkpoints every window of steps under
//!   `train/`, resumes from the latest checkpoint, and exports `final_model/` in Hub layout.

pub mod checkpoint;
pub mod control;
pub mod curve;
pub mod freeze;
pub mod loader;

pub mod metrics;
pub mod schedule;
pub mod sft;
pub mod step;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use burn::optim::AdamWConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::record::FullPrecisionSettings;
use checkpoint::AtomicMpkRecorder;
use burn::tensor::backend::AutodiffBackend;
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::{Learner, SupervisedTraining};
use serde::Serialize;

use crate::analysis::select::{ExpertId, union};
use crate::analysis::stage::{AnalysisError, UnsafeExperts};
use crate::config::{Config, ExpertSet};
use crate::data::{ChatTokenizer, DataError};
use crate::model::checkpoint::write_atomic;
use crate::model::{self, LoadError, OlmoeConfig};
use loader::{BatchPreservingLoader, MaskTable};
pub use control::{TrainControl, TrainPlan};
pub use metrics::StepRecord;

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

/// Every step recorded in `metrics.jsonl`, in step order, the last record of a step kept (a
/// resumed run redoes the steps after its checkpoint).
pub fn read_metrics(path: &Path) -> Vec<StepRecord> {
    let mut by_step = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Ok(r) = serde_json::from_str::<StepRecord>(line) {
            by_step.insert(r.step, r);
        }
    }
    by_step.into_values().collect()
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
    /// The exported model.
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
    /// Examples in all.
    pub num_examples: usize,
    /// MoE layers and experts per layer.
    pub shape: (usize, usize),
    /// Padding token.
    pub pad_id: u32,
    /// Load-balancing loss coefficient (0 unless `train.router_aux_loss`).
    pub aux_coef: f64,
}

impl TrainInputs {
    /// Read the analysis and the collected samples of `run_dir` as `cfg` trains on them.
    pub fn read(cfg: &Config, run_dir: &Path) -> Result<Self, TrainError> {
        let t = &cfg.train;
        let model_cfg = OlmoeConfig::from_path(&cfg.model.dir)?;
        let analysis = UnsafeExperts::read(run_dir)?;
        let sets = batch_sets(&analysis, t.expert_set);
        let trained = union(&sets.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>());
        let tokenizer = ChatTokenizer::from_dir(&cfg.model.dir)?;
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
            shape: (model_cfg.num_hidden_layers, model_cfg.num_experts),
            pad_id: tokenizer.pad_id,
            aux_coef: if t.router_aux_loss { model_cfg.router_aux_loss_coef } else { 0.0 },
        })
    }

    /// Steps per window: the steps between two checkpoints.
    pub fn window(&self, cfg: &Config) -> usize {
        if cfg.train.checkpoint_every > 0 { cfg.train.checkpoint_every } else { self.groups.len() }
    }

    /// The loader training iterates: the groups in `schedule` order from window `start_window`,
    /// each batch carrying the routing its step applies (its set's mask, written by analysis to
    /// `expert_masks.safetensors`, on the samples `train.mask_scope` restricts).
    pub fn loader<B: burn::tensor::backend::Backend>(&self, cfg: &Config, schedule: Vec<usize>, start_window: usize, device: &B::Device) -> BatchPreservingLoader<B> {
        let t = &cfg.train;
        let (layers, experts) = self.shape;
        let settings = loader::LoaderSettings {
            schedule,
            window: self.window(cfg),
            start_window,
            pad_id: self.pad_id,
            mask_scope: t.mask_scope,
            consistency: (t.router_consistency, t.consistency_weight),
            aux_coef: self.aux_coef,
        };
        BatchPreservingLoader::new(self.groups.clone(), MaskTable::new(&self.sets, layers, experts, device), settings, device.clone())
    }
}

/// Train on the analysed collect run in `run_dir` and export `run_dir/final_model`.
pub fn train<B: AutodiffBackend>(
    cfg: &Config,
    run_dir: &Path,
    device: &B::Device,
    opts: &TrainOptions,
    on_step: impl FnMut(StepRecord) + Send,
) -> Result<TrainSummary, TrainError> {
    let t = &cfg.train;
    let inputs = TrainInputs::read(cfg, run_dir)?;
    let (sets, trained, num_examples) = (&inputs.sets, &inputs.trained, inputs.num_examples);
    let num_batches = inputs.groups.len();
    let model_cfg = OlmoeConfig::from_path(&cfg.model.dir)?;

    let (model, _) = model::load::<B>(&cfg.model.dir, device, cfg.model.precision)?;
    let model = freeze::freeze(model, trained, t.trainable);
    let params = freeze::param_counts(&model);

    let train_dir = run_dir.join("train");
    // A kill between a window's checkpoint files leaves a partial checkpoint: resume from the
    // last whole one.
    let partial = checkpoint::remove_partial(&train_dir);
    if !partial.is_empty() {
        tracing::warn!("{}: removed the partial checkpoint(s) of window(s) {partial:?}", train_dir.display());
    }
    let resume = checkpoint::latest(&train_dir);
    let control = opts.control.clone().unwrap_or_default();
    let loader = inputs
        .loader::<B>(cfg, loader::schedule(num_batches, t.epochs, t.shuffle_batches, cfg.seed), resume.unwrap_or(0), device)
        .with_control(control.clone());
    let windows = loader.windows();
    let total_steps = num_batches * t.epochs;
    control.set_plan(control::TrainPlan {
        total_steps,
        params,
        trained: trained.clone(),
        batch_experts: sets.clone(),
    });
    let last_window = opts.stop_after_windows.map_or(windows, |s| s.min(windows));
    // No validation split: an empty loader on the inference backend.
    let valid = inputs.loader::<B::InnerBackend>(cfg, Vec::new(), 0, device);

    let mut optim = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(t.weight_decay as f32);
    if t.grad_clip > 0.0 {
        optim = optim.with_grad_clipping(Some(GradientClippingConfig::Norm(t.grad_clip as f32)));
    }
    let scheduler = schedule::WarmupLinear::new(t.lr, t.warmup_steps, total_steps);
    let learner = Learner::new(model.clone(), optim.init(), scheduler);

    let (tx, rx) = mpsc::channel();
    let mut training = SupervisedTraining::new(&train_dir, Arc::new(loader), Arc::new(valid))
        .metric_train(metrics::StepMetric::new(tx))
        .with_file_checkpointer(AtomicMpkRecorder::<FullPrecisionSettings>::new())
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(2))
        .renderer(metrics::QuietRenderer)
        .with_application_logger(None)
        .with_interrupter(control.interrupter())
        .num_epochs(last_window);
    if t.grad_accumulation > 1 {
        training = training.grads_accumulation(t.grad_accumulation);
    }
    if let Some(epoch) = resume {
        training = training.checkpoint(epoch);
    }
    // The metric's sender lives in `training`; once the Learner is done and dropped, the
    // channel closes and the consumer returns every step it saw.
    // Every step also goes to `metrics.jsonl` (appended: a resumed run continues the file, first
    // cut back to the steps its checkpoint holds, so that no step is recorded twice).
    let metrics_path = run_dir.join("metrics.jsonl");
    if metrics_path.exists() {
        let kept_steps = resume.unwrap_or(0) * inputs.window(cfg);
        let mut text = String::new();
        for r in read_metrics(&metrics_path).into_iter().filter(|r| r.step <= kept_steps) {
            text.push_str(&serde_json::to_string(&r).expect("step records serialise"));
            text.push('\n');
        }
        write_atomic(&metrics_path, text.as_bytes())?;
    }
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|source| LoadError::Io { path: metrics_path.clone(), source })?;
    // A non-finite loss stops training at the end of its window (burn-train checkpoints it);
    // that checkpoint and any later one are then removed, so the run keeps its last good one.
    let nan_control = control.clone();
    let (result, (steps, non_finite)) = std::thread::scope(|s| {
        let consumer = s.spawn(move || {
            use std::io::Write;
            let mut on_step = on_step;
            let mut out = Vec::new();
            let mut non_finite = None;
            for record in rx {
                if !record.loss.is_finite() && non_finite.is_none() {
                    non_finite = Some((record.step, record.loss));
                    nan_control.request_stop();
                }
                let line = serde_json::to_string(&record).expect("step records serialise");
                if let Err(e) = writeln!(metrics_file, "{line}") {
                    tracing::warn!("{}: {e}", metrics_path.display());
                }
                on_step(record.clone());
                out.push(record);
            }
            (out, non_finite)
        });
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
        let bad_window = (step - 1).div_ceil(inputs.window(cfg)).max(1);
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
        (None, Some(r)) if r >= windows && opts.stop_after_windows.is_none_or(|s| s >= windows) => Some(burn::module::AutodiffModule::valid(&restore(model, &train_dir, r, device)?)),
        (result, _) => result,
    };

    let final_model = run_dir.join("final_model");
    // A stop request after the last window's checkpoint stopped nothing.
    let stopped = opts.stop_after_windows.is_some_and(|s| s < windows)
        || (control.stop_requested() && checkpoint::latest(&train_dir).is_none_or(|c| c < windows));
    if !stopped
        && let Some(model) = result
    {
        export(&model, &model_cfg, &cfg.model.dir, &final_model)?;
        let history = read_metrics(&run_dir.join("metrics.jsonl"));
        write_atomic(&run_dir.join("loss_curve.png"), &curve::png(&history)?)?;
        let meta = TrainingMetadata {
            base_model: cfg.model.dir.display().to_string(),
            num_unsafe_experts: trained.len(),
            unsafe_experts: trained.clone(),
            num_batches,
            num_examples,
            trainable_params: params.0,
            total_params: params.1,
            steps: total_steps,
            first_loss: history.first().map(|s| s.loss),
            last_loss: history.last().map(|s| s.loss),
            train: t.clone(),
            seed: cfg.seed,
        };
        // Beside the exported model (whose directory holds only what a Hub model directory
        // holds), written last: it marks the stage finished.
        write_atomic(
            &run_dir.join("training_metadata.json"),
            serde_json::to_string_pretty(&meta).expect("metadata serialises").as_bytes(),
        )?;
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

/// `model` with the weights of checkpoint `epoch` under `train_dir`.
fn restore<B: AutodiffBackend>(model: model::Olmoe<B>, train_dir: &Path, epoch: usize, device: &B::Device) -> Result<model::Olmoe<B>, TrainError> {
    use burn::module::Module;
    use burn::record::Recorder;
    let path = train_dir.join("checkpoint").join(format!("model-{epoch}"));
    let record = AtomicMpkRecorder::<FullPrecisionSettings>::new()
        .load(path.clone(), device)
        .map_err(|e| TrainError::Input { path, reason: format!("checkpoint unreadable: {e}") })?;
    Ok(model.load_record(record))
}

/// Save `model` in Hub layout with the base model's tokenizer files.
pub fn export<B: burn::tensor::backend::Backend>(model: &model::Olmoe<B>, cfg: &OlmoeConfig, base_dir: &Path, out: &Path) -> Result<(), LoadError> {
    model::save(model, cfg, out)?;
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"] {
        let src = base_dir.join(f);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|source| LoadError::Io { path: src.clone(), source })?;
            write_atomic(&out.join(f), &bytes)?;
        }
    }
    Ok(())
}
