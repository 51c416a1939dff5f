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

pub mod control;
pub mod curve;
pub mod freeze;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod schedule;
pub mod sft;
pub mod step;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use burn::optim::AdamWConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::{Learner, SupervisedTraining};
use serde::Serialize;

use crate::analysis::select::{ExpertId, union};
use crate::analysis::stage::{AnalysisError, UnsafeExperts};
use crate::collect::CollectError;
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
    Collect(#[from] CollectError),
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

/// Latest checkpoint epoch under `dir/checkpoint` (`model-{n}.mpk`).
fn latest_checkpoint(dir: &Path) -> Option<usize> {
    std::fs::read_dir(dir.join("checkpoint"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("model-")?.strip_suffix(".mpk")?.parse().ok()
        })
        .max()
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
    let model_cfg = OlmoeConfig::from_path(&cfg.model.dir)?;
    let (layers, experts) = (model_cfg.num_hidden_layers, model_cfg.num_experts);
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
    let num_examples = groups.iter().map(|g| g.examples.len()).sum();
    let num_batches = groups.len();

    let (model, _) = model::load::<B>(&cfg.model.dir, device, cfg.model.precision)?;
    let model = freeze::freeze(model, &trained, t.trainable);
    let params = freeze::param_counts(&model);

    let aux_coef = if t.router_aux_loss { model_cfg.router_aux_loss_coef } else { 0.0 };
    let window = if t.checkpoint_every > 0 { t.checkpoint_every } else { num_batches };
    let train_dir = run_dir.join("train");
    let resume = latest_checkpoint(&train_dir);
    let control = opts.control.clone().unwrap_or_default();
    let loader = BatchPreservingLoader::<B>::new(
        groups.clone(),
        MaskTable::new(&sets, layers, experts, device),
        loader::schedule(num_batches, t.epochs, t.shuffle_batches, cfg.seed),
        window,
        resume.unwrap_or(0),
        tokenizer.pad_id,
        t.mask_scope,
        (t.router_consistency, t.consistency_weight),
        aux_coef,
        device.clone(),
    )
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
    let valid = BatchPreservingLoader::<B::InnerBackend>::new(
        groups,
        MaskTable::new(&sets, layers, experts, device),
        Vec::new(),
        window,
        0,
        tokenizer.pad_id,
        t.mask_scope,
        (t.router_consistency, t.consistency_weight),
        aux_coef,
        device.clone(),
    );

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
        .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new())
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
    // Every step also goes to `metrics.jsonl` (appended: a resumed run continues the file).
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|source| LoadError::Io { path: metrics_path.clone(), source })?;
    let (result, steps) = std::thread::scope(|s| {
        let consumer = s.spawn(move || {
            use std::io::Write;
            let mut on_step = on_step;
            let mut out = Vec::new();
            for record in rx {
                let line = serde_json::to_string(&record).expect("step records serialise");
                if let Err(e) = writeln!(metrics_file, "{line}") {
                    tracing::warn!("{}: {e}", metrics_path.display());
                }
                on_step(record.clone());
                out.push(record);
            }
            out
        });
        let result = if resume.is_some_and(|r| r >= last_window) {
            drop(training);
            None
        } else {
            Some(training.launch(learner).model)
        };
        (result, consumer.join().expect("step consumer"))
    });
    // Every window was checkpointed by an earlier run that ended before its export: the model
    // is the last checkpoint's.
    let result = match (result, resume) {
        (None, Some(r)) if r >= windows && opts.stop_after_windows.is_none_or(|s| s >= windows) => Some(burn::module::AutodiffModule::valid(&restore(model, &train_dir, r, device)?)),
        (result, _) => result,
    };

    let final_model = run_dir.join("final_model");
    // A stop request after the last window's checkpoint stopped nothing.
    let stopped = opts.stop_after_windows.is_some_and(|s| s < windows)
        || (control.stop_requested() && latest_checkpoint(&train_dir).is_none_or(|c| c < windows));
    if !stopped
        && let Some(model) = result
    {
        export(&model, &model_cfg, &cfg.model.dir, &final_model)?;
        let history = read_metrics(&run_dir.join("metrics.jsonl"));
        write_atomic(&run_dir.join("loss_curve.png"), &curve::png(&history)?)?;
        let meta = TrainingMetadata {
            base_model: cfg.model.dir.display().to_string(),
            num_unsafe_experts: trained.len(),
            unsafe_experts: trained,
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
        write_atomic(
            &final_model.join("training_metadata.json"),
            serde_json::to_string_pretty(&meta).expect("metadata serialises").as_bytes(),
        )?;
        let masks = run_dir.join("expert_masks.safetensors");
        if masks.is_file() {
            let bytes = std::fs::read(&masks).map_err(|source| LoadError::Io { path: masks.clone(), source })?;
            write_atomic(&final_model.join("expert_masks.safetensors"), &bytes)?;
        }
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
    let record = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
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
