//! The training run: the model frozen but for what trains, burn-train's Learner wired to the
//! loaders, the checkpoints, the validation and the step reports, resumed from the last whole
//! checkpoint, stopped on a non-finite loss, and exported at the end.

use std::sync::Arc;
use std::sync::mpsc;

use burn::module::AutodiffModule;
use burn::optim::AdamWConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::record::FullPrecisionSettings;
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::{Learner, SupervisedTraining};

use super::checkpoint::{self, AtomicMpkRecorder};
use super::config::{Schedule, TrainConfig, Trainable};
use super::control::{self, TrainControl};
use super::devices::parallel_strategy;
use super::export::{finish, restore};
use super::inputs::TrainInputs;
use super::metrics::{self, StepRecord, ValidRecord};
use super::step::{LossSettings, SftModel};
use super::{TrainContext, TrainError, freeze, loader, schedule, shard};
use crate::model;
use crate::run_dir::RunDir;
use crate::run_dir::training::MetricsWriter;

/// What training reports as it goes.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// A training step.
    Step(StepRecord),
    /// The validation loss at a checkpoint.
    Valid(ValidRecord),
}

/// What a training run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Every step, in order (a resumed run reports only the steps it ran).
    pub steps: Vec<StepRecord>,
    /// Trainable and total parameter counts.
    pub params: (usize, usize),
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

/// Train on `inputs` with the model `load` returns (called once the devices are known to be
/// there) and export `final_model/` into `dir`.
///
/// In order: load and freeze the model; pick the checkpoint to resume from (a damaged one is set
/// aside, with a warning naming its file, for the one before); run burn-train's Learner (every
/// step and validation to `metrics.jsonl` and `on_event`); stop on a non-finite loss; export the
/// model, the loss curve and `training_metadata.json`.
pub fn train<B: AutodiffBackend>(
    ctx: &TrainContext<'_>,
    dir: &RunDir,
    inputs: TrainInputs,
    load: impl FnOnce() -> Result<model::MoeLm<B>, TrainError>,
    device: &B::Device,
    opts: &TrainOptions,
    on_event: impl FnMut(TrainEvent) + Send,
) -> Result<TrainSummary, TrainError> {
    let t = ctx.cfg;
    let ranks = ctx.devices.len().max(1);
    shard::check(&inputs.groups, ranks)?;
    if t.schedule == Schedule::Alternating && (ranks > 1 || opts.parallel_on_one_device) {
        return Err(TrainError::Parallel {
            devices: ctx.devices.to_vec(),
            reason: "train.schedule = \"alternating\" trains on one device (a router step's divergence is over the whole batch's routing): name one".into(),
        });
    }
    let strategy = match ranks > 1 || opts.parallel_on_one_device {
        true => Some(parallel_strategy::<B>(ctx.devices)?),
        false => None,
    };
    let (model, params) = trainable_model::<B>(t, &inputs, load()?);

    let checkpoints = dir.checkpoints();
    let resume = match opts.measure_only {
        true => None,
        false => {
            let (resume, damaged) = checkpoints.resumable();
            for d in damaged {
                tracing::warn!("{d}");
            }
            resume
        }
    };
    let control = opts.control.clone().unwrap_or_default();
    if ranks > 1 {
        control.set_parallel();
    }
    let num_batches = inputs.groups.len();
    let total_steps = inputs.total_steps(t);
    let window = inputs.window(t);
    let loader = inputs
        .loader::<B>(
            t,
            ranks,
            loader::schedule(num_batches, t.passes(), t.shuffle_batches, ctx.seed),
            resume.unwrap_or(0),
            device,
        )
        .with_control(control.clone());
    let windows = loader.windows();
    control.set_plan(control::TrainPlan {
        total_steps,
        params,
        trained: inputs.trained.clone(),
        batch_experts: inputs.sets.clone(),
    });
    let last_window = opts.stop_after_windows.map_or(windows, |s| s.min(windows));
    let metrics_file = dir
        .metrics()
        .open_from(resume.unwrap_or(0) * window, opts.measure_only)?;

    let (tx, rx) = mpsc::channel();
    let mut training = SupervisedTraining::new(
        checkpoints.dir(),
        Arc::new(loader),
        Arc::new(inputs.valid_loader::<B::InnerBackend>(device)),
    )
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
            .with_file_checkpointer(AtomicMpkRecorder::<FullPrecisionSettings>::reporting_to(
                taken.clone(),
            ))
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
    let mut lr_schedule =
        schedule::WarmupLinear::new(t.lr, t.warmup_steps, total_steps).per_step(ranks);
    if t.schedule == Schedule::Alternating {
        let rates = (0..t.passes()).map(|p| t.phase_lr(t.phase(p))).collect();
        lr_schedule = lr_schedule.phased(rates, num_batches);
    }
    let learner = Learner::new(model.clone(), optimizer(t).init(), lr_schedule);
    // The renderer's sender lives in `training`; once the Learner is done and dropped, the
    // channel closes and the consumer returns every step it saw.
    let (result, (steps, non_finite)) = std::thread::scope(|s| {
        let consumer = s.spawn(|| record_reports(rx, metrics_file, &control, on_event));
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
        let removed = checkpoints.remove_from(bad_window);
        return Err(TrainError::NonFinite {
            step,
            loss,
            kept: checkpoints.latest(),
            removed,
        });
    }
    // Every window was checkpointed by an earlier run that ended before its export: the model
    // is the last checkpoint's.
    let result = match (result, resume) {
        (None, Some(r)) if r >= windows && opts.stop_after_windows.is_none_or(|s| s >= windows) => {
            Some(restore(model, dir, r, device)?.valid())
        }
        (result, _) => result,
    };

    // A stop request after the last window's checkpoint stopped nothing.
    let stopped = opts.stop_after_windows.is_some_and(|s| s < windows)
        || (control.stop_requested() && checkpoints.latest().is_none_or(|c| c < windows));
    if !stopped
        && !opts.measure_only
        && let Some(model) = result
    {
        finish(ctx, dir, &inputs, &model.model, params)?;
    }
    Ok(TrainSummary {
        steps,
        params,
        resumed_from: resume,
        stopped,
        total_steps,
    })
}

/// The model as `t` trains it: everything frozen but the trained experts (or what
/// `train.trainable` says), with its loss settings; and its (trainable, total) parameters.
fn trainable_model<B: AutodiffBackend>(
    t: &TrainConfig,
    inputs: &TrainInputs,
    model: model::MoeLm<B>,
) -> (SftModel<B>, (usize, usize)) {
    // The alternating schedule's router steps train the routers besides what the expert steps do.
    let trainable = match (t.schedule, t.trainable) {
        (Schedule::Alternating, Trainable::UnsafeExperts) => Trainable::UnsafeExpertsAndRouters,
        (_, trainable) => trainable,
    };
    let model = freeze::freeze(model, &inputs.trained, trainable, FloatDType::F32);
    let params = freeze::param_counts(&model);
    let model = SftModel::new(
        model.for_gradients(),
        LossSettings::new(t, &inputs.model_cfg),
    );
    let model = match &inputs.router_rows {
        Some(rows) => model.with_router_rows(rows.clone()),
        None => model,
    };
    let model = match t.schedule {
        Schedule::Alternating => model.alternating(super::step::Alternating::new(t)),
        Schedule::Joint => model,
    };
    (model, params)
}

/// AdamW as the seeds configure it.
fn optimizer(t: &TrainConfig) -> AdamWConfig {
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

/// Take the renderer's reports until the Learner is done: each step and each checkpoint's
/// validation loss (the mean over its batches' counted tokens) to `metrics.jsonl` and
/// `on_event`. A non-finite loss requests a stop (at the end of its window); returns the steps
/// seen and the first non-finite (step, loss).
fn record_reports(
    rx: mpsc::Receiver<metrics::Report>,
    mut file: MetricsWriter,
    control: &TrainControl,
    mut on_event: impl FnMut(TrainEvent),
) -> (Vec<StepRecord>, Option<(usize, f64)>) {
    let mut steps = Vec::new();
    let mut non_finite = None;
    // On several devices: the parts of each step seen so far, by step.
    let mut parts: std::collections::BTreeMap<usize, Vec<StepRecord>> = Default::default();
    // The validation batches of the current checkpoint: (step, Σ loss·tokens, Σ tokens).
    let mut pending: Option<(usize, f64, usize)> = None;
    let mut emit = |event: TrainEvent, file: &mut MetricsWriter| {
        match &event {
            TrainEvent::Step(r) => file.push(r),
            TrainEvent::Valid(v) => file.push(v),
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
