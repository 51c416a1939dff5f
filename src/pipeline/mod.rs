//! The pipeline: the one place that chains the stages. `steermoe run` runs all of a config's
//! stages, `collect`/`analyze`/`train` one of them, and every job of a sweep all of them — each
//! through [`run`]: pre-flight ([`preflight`]), the directory's lock, its reconciliation with the
//! config by stage fingerprints ([`stage`]), provenance, then each stage in order through a
//! [`Hook`] (the plain one resumes: a finished stage is kept; the sweep's links a stage another
//! job finished). The base model is loaded once per process ([`Models`]).

pub mod models;
pub mod plant;
pub mod preflight;
pub mod stage;

use std::cell::Cell;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};

pub use models::Models;
pub use preflight::{Preflight, preflight};
pub use stage::{fingerprints, stages};

use crate::Error;
use crate::analysis::{AnalysisSummary, EffectsEvent};
use crate::backend::NotCompiled;
use crate::collect::{CollectEvent, Collector};
use crate::config::Config;
use crate::data::ChatTokenizer;
use crate::eval::{EvalEvent, EvalReport, Evaluator, Steering, evaluate_into, steering, table};
use crate::model::MoeLm;
use crate::run_dir::{EvalDir, RunDir, Stage, SteerSetting, Variant};
use crate::train::{TrainContext, TrainEvent, TrainInputs, TrainOptions, TrainSummary};

/// What the pipeline itself refuses.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A stage was asked for before the stage it reads is finished.
    #[error("{}: {stage} reads what {needs} writes, which is not finished there; run `steermoe {needs}` (or `steermoe run`) first", dir.display())]
    NotDone {
        /// The run directory.
        dir: PathBuf,
        /// The stage asked for.
        stage: String,
        /// The stage it needs.
        needs: String,
    },
    /// The run directory's recorded config cannot be read by this version.
    #[error("{}: the recorded config no longer parses ({reason}); pass another --out, or remove the directory to start over", path.display())]
    Recorded {
        /// `config.toml`.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An evaluation prompt or answer does not fit the model's positions.
    #[error(
        "{what} of record {record}: {tokens} tokens, more than the model's max_position_embeddings ({limit}); lower {key}"
    )]
    TooLong {
        /// Which set.
        what: String,
        /// The record.
        record: usize,
        /// Its tokens.
        tokens: usize,
        /// The model's limit.
        limit: usize,
        /// The settings that shorten it.
        key: String,
    },
    /// A file or folder a setting names is not there.
    #[error("{key}: {}: no such {what}", path.display())]
    Missing {
        /// The setting.
        key: &'static str,
        /// What it names.
        path: PathBuf,
        /// `file` or `directory`.
        what: &'static str,
    },
    /// The backend is not compiled in.
    #[error(transparent)]
    NotCompiled(#[from] NotCompiled),
    /// A setting the stages asked for cannot work with (e.g. evaluating without a split).
    #[error("config: {0}")]
    Setting(#[from] crate::validate::Invalid),
}

/// How a run got a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was finished in the directory already.
    Done,
    /// The stage ran.
    Ran,
    /// Linked from another directory that finished it (a sweep).
    Linked,
}

impl Outcome {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Ran => "ran",
            Outcome::Linked => "linked",
        }
    }
}

/// What a run reports as it goes.
#[derive(Debug)]
pub enum Event {
    /// Something the user must know (a reconciled directory, an evaluation not held out).
    Notice(String),
    /// A stage begins (or is found finished).
    Started(Stage),
    /// Collect progress.
    Collect(CollectEvent),
    /// Progress of an effect ranking's measurements.
    Effects(EffectsEvent),
    /// The analysis, once done.
    Analyzed(Box<AnalysisSummary>),
    /// A training step or validation.
    Train(TrainEvent),
    /// Training, once done.
    Trained(Box<TrainSummary>),
    /// Evaluation progress.
    Eval(Variant, EvalEvent),
    /// An evaluation, once done.
    Evaluated(Variant, Box<EvalReport>),
    /// A stage is over.
    Done {
        /// The stage.
        stage: Stage,
        /// How it was got.
        outcome: Outcome,
        /// Wall-clock seconds (waiting for a sharing job included).
        seconds: f64,
    },
    /// The before/after table of every finished evaluation (written to `eval/table.txt`).
    Table(String),
}

/// Runs each stage, or gets it another way: what [`run`] calls around every stage.
pub trait Hook: Sync {
    /// Give `dir` the stage `stage` (fingerprint key `key`): `done` says whether it is finished
    /// there already; `work` runs it.
    fn around(
        &self,
        stage: &Stage,
        key: &str,
        dir: &RunDir,
        done: bool,
        work: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<Outcome, Error>;
}

/// The plain hook: a finished stage is kept, the others run (and resume where they can).
#[derive(Debug, Clone, Copy, Default)]
pub struct Resume;

impl Hook for Resume {
    fn around(
        &self,
        _: &Stage,
        _: &str,
        _: &RunDir,
        done: bool,
        work: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<Outcome, Error> {
        if done {
            return Ok(Outcome::Done);
        }
        work()?;
        Ok(Outcome::Ran)
    }
}

/// Where and how a run computes, beside its config.
pub struct Env<'a, B: AutodiffBackend> {
    /// The device (the first of `model.devices`).
    pub device: &'a B::Device,
    /// The process's loaded models.
    pub models: &'a Models<B>,
    /// What `provenance.json` records.
    pub provenance: serde_json::Value,
    /// Pause and stop requests, and the other knobs of training.
    pub train: TrainOptions,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Every stage asked for is finished.
    Complete,
    /// Training was stopped (a stop request): the same command resumes it.
    Stopped,
}

/// The provenance of a run: steermoe's version and git revision, the seed, the config file and
/// the overrides; `extra` adds keys (a sweep's cell).
pub fn provenance(
    cfg: &Config,
    config_path: &std::path::Path,
    overrides: &[String],
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut p = serde_json::json!({
        "steermoe_version": env!("CARGO_PKG_VERSION"),
        "git_revision": env!("STEERMOE_GIT_REVISION"),
        "seed": cfg.seed,
        "config": config_path.display().to_string(),
        "overrides": overrides,
    });
    if let (Some(p), serde_json::Value::Object(extra)) = (p.as_object_mut(), extra) {
        p.extend(extra);
    }
    p
}

/// The fingerprints recorded in `dir`: those of its `config.toml` (`None` if it has none).
fn recorded(dir: &RunDir) -> Result<Option<Vec<(Stage, serde_json::Value)>>, Error> {
    let file = dir.config();
    if !file.exists() {
        return Ok(None);
    }
    let bad = |reason: String| PipelineError::Recorded {
        path: file.path().to_path_buf(),
        reason,
    };
    let text = String::from_utf8(file.read()?).map_err(|e| bad(e.to_string()))?;
    let old = Config::parse(&text, file.path(), &[]).map_err(|e| bad(e.to_string()))?;
    Ok(Some(fingerprints(&old)))
}

/// Run `cfg`'s stages in `dir` — all of them, or `only` one — each through `hook`, reporting
/// to `on_event`. Pre-flight first (nothing is created if it fails), then the directory's lock
/// and its reconciliation with the config (a changed setting redoes its stage and those after
/// it, or is refused where it made files that are kept), provenance, and the stages in order.
pub fn run<B: AutodiffBackend>(
    cfg: &Config,
    dir: &RunDir,
    only: Option<Stage>,
    env: &Env<'_, B>,
    hook: &dyn Hook,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<Finished, Error> {
    let selected = match only {
        Some(s) => vec![s],
        None => stages(cfg),
    };
    let pre = preflight(cfg, &selected)?;
    let _lock = dir.lock()?;
    let reconciled = dir.reconcile(
        recorded(dir)?.as_deref(),
        &fingerprints(cfg),
        selected[0],
        &cfg.to_toml(),
    )?;
    if let Some(m) = reconciled.message() {
        on_event(Event::Notice(format!("{}: {m}", dir.path().display())));
    }
    for n in &pre.notices {
        on_event(Event::Notice(n.clone()));
    }
    dir.provenance().write(&env.provenance)?;
    let stopped = Cell::new(false);
    for stage in &selected {
        on_event(Event::Started(*stage));
        let start = Instant::now();
        let mut work = || run_stage(cfg, dir, stage, &pre, env, on_event, &stopped);
        let outcome = hook.around(stage, &stage.key(cfg), dir, dir.is_done(stage), &mut work)?;
        on_event(Event::Done {
            stage: *stage,
            outcome,
            seconds: start.elapsed().as_secs_f64(),
        });
        if stopped.get() {
            return Ok(Finished::Stopped);
        }
    }
    if selected.iter().any(|s| matches!(s, Stage::Eval(_))) {
        let rows = dir.eval_reports();
        if !rows.is_empty() {
            let text = table(&rows);
            dir.eval_table().write(text.as_bytes())?;
            on_event(Event::Table(text));
        }
    }
    Ok(Finished::Complete)
}

/// Fail unless `needs` is finished in `dir`.
fn require(dir: &RunDir, stage: &Stage, needs: Stage) -> Result<(), Error> {
    if dir.is_done(&needs) {
        return Ok(());
    }
    Err(PipelineError::NotDone {
        dir: dir.path().to_path_buf(),
        stage: stage.name(),
        needs: needs.name(),
    }
    .into())
}

fn run_stage<B: AutodiffBackend>(
    cfg: &Config,
    dir: &RunDir,
    stage: &Stage,
    pre: &Preflight,
    env: &Env<'_, B>,
    on_event: &(dyn Fn(Event) + Sync),
    stopped: &Cell<bool>,
) -> Result<(), Error> {
    let base = || env.models.get(&cfg.model, env.device);
    match stage {
        Stage::Collect => {
            let model = base()?.valid();
            let c = Collector {
                model: &model,
                tokenizer: &pre.tokenizer,
                judge: &cfg.judge.phrase,
                device: env.device,
            };
            crate::collect::collect(&c, &pre.batches, &cfg.collect, dir, |e| {
                on_event(Event::Collect(e))
            })?;
        }
        Stage::Analyze => {
            require(dir, stage, Stage::Collect)?;
            let effects = match cfg.analysis.ranking.is_causal() {
                true => {
                    let answers = crate::analysis::answered(dir, &cfg.analysis)?;
                    Some(crate::analysis::effects::measure(
                        &base()?,
                        &answers,
                        &cfg.analysis,
                        env.device,
                        |e| on_event(Event::Effects(e)),
                    ))
                }
                false => None,
            };
            let summary = crate::analysis::analyze(
                dir,
                &cfg.analysis,
                cfg.seed,
                pre.truth.as_ref(),
                effects.as_ref(),
            )?;
            on_event(Event::Analyzed(Box::new(summary)));
        }
        Stage::Train => {
            require(dir, stage, Stage::Analyze)?;
            let valid = crate::train::valid::heldout_groups(
                &cfg.data,
                &cfg.train,
                &pre.tokenizer,
                cfg.collect.batch_size,
            )?;
            let inputs = TrainInputs::read(
                dir,
                &cfg.train,
                &pre.tokenizer,
                pre.model_cfg.clone(),
                valid,
            )?;
            let ctx = TrainContext {
                cfg: &cfg.train,
                seed: cfg.seed,
                devices: &cfg.model.devices,
                base_model: &cfg.model.dir,
            };
            let load = || Ok(base()?);
            let summary =
                crate::train::train(&ctx, dir, inputs, load, env.device, &env.train, |e| {
                    on_event(Event::Train(e))
                })?;
            stopped.set(summary.stopped);
            on_event(Event::Trained(Box::new(summary)));
        }
        Stage::Eval(v) => {
            let sets = pre
                .eval_sets
                .as_ref()
                .expect("pre-flight builds the sets when an evaluation runs");
            let report = match v {
                Variant::Base | Variant::Steered(_) => {
                    let s = match v {
                        Variant::Steered(s) => {
                            require(dir, stage, Stage::Analyze)?;
                            steer(dir, *s, &pre.model_cfg, cfg.eval.removal)?
                        }
                        _ => Steering::default(),
                    };
                    let model = base()?.valid();
                    let e = evaluator(cfg, pre, &model, &cfg.model.dir, &pre.tokenizer, env.device);
                    evaluate_into(&e, sets, &cfg.eval, &s, &dir.eval(v), |p| {
                        on_event(Event::Eval(*v, p))
                    })?
                }
                Variant::Trained => {
                    require(dir, stage, Stage::Train)?;
                    let path = dir.final_model();
                    let (model, _) = crate::model::load::<B::InnerBackend>(
                        &path,
                        env.device,
                        cfg.model.precision,
                    )?;
                    // Only evaluated: its experts stacked once, not once a generation call.
                    let model = model.share_experts();
                    let tokenizer = cfg.model.tokenizer(&path)?;
                    let e = evaluator(cfg, pre, &model, &path, &tokenizer, env.device);
                    evaluate_into(
                        &e,
                        sets,
                        &cfg.eval,
                        &Steering::default(),
                        &dir.eval(v),
                        |p| on_event(Event::Eval(*v, p)),
                    )?
                }
            };
            on_event(Event::Evaluated(*v, Box::new(report)));
        }
    }
    Ok(())
}

/// What evaluates `model` (read from `dir`, its name in the report) with `cfg`'s judges.
fn evaluator<'a, B: Backend>(
    cfg: &'a Config,
    pre: &'a Preflight,
    model: &'a MoeLm<B>,
    dir: &std::path::Path,
    tokenizer: &'a ChatTokenizer,
    device: &'a B::Device,
) -> Evaluator<'a, B> {
    Evaluator {
        model,
        name: dir.display().to_string(),
        tokenizer,
        judge: &cfg.judge.phrase,
        llm_judge: pre.llm_judge.as_ref(),
        device,
    }
}

/// The steering `setting` takes from the analysed run `dir`, for the model of `m`, its
/// forced-off experts removed as `removal` says.
fn steer(
    dir: &RunDir,
    setting: SteerSetting,
    m: &crate::model::ModelConfig,
    removal: crate::model::Removal,
) -> Result<Steering, Error> {
    Ok(steering(
        dir,
        setting,
        m.num_moe_layers(),
        m.num_experts,
        m.num_experts_per_tok,
        removal,
    )?)
}

/// Evaluate the model `cfg.model` names, steered with `steer` (an analysed run and a setting)
/// if given, into the folder `out` (held for the evaluation): what `steermoe eval` does outside
/// a run.
pub fn evaluate<B: AutodiffBackend>(
    cfg: &Config,
    steer_by: Option<(&RunDir, SteerSetting)>,
    out: &EvalDir,
    env: &Env<'_, B>,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<EvalReport, Error> {
    let variant = steer_by.map_or(Variant::Base, |(_, s)| Variant::Steered(s));
    let pre = preflight(cfg, &[Stage::Eval(variant)])?;
    for n in &pre.notices {
        on_event(Event::Notice(n.clone()));
    }
    let s = match steer_by {
        Some((run, setting)) => steer(run, setting, &pre.model_cfg, cfg.eval.removal)?,
        None => Steering::default(),
    };
    let _lock = out.lock()?;
    let model = env.models.get(&cfg.model, env.device)?.valid();
    let e = evaluator(
        cfg,
        &pre,
        &model,
        &cfg.model.dir,
        &pre.tokenizer,
        env.device,
    );
    let sets = pre
        .eval_sets
        .as_ref()
        .expect("pre-flight builds the sets when an evaluation runs");
    Ok(evaluate_into(&e, sets, &cfg.eval, &s, out, |p| {
        on_event(Event::Eval(variant, p))
    })?)
}
