//! Running the jobs of a sweep on one backend, `jobs` at a time (threads sharing the device: a
//! small model leaves a GPU mostly idle), each stage shared through the [`Registry`].

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::share::{self, Outcome, Registry, ShareError};
use super::spec::{Job, Sweep};
use crate::eval::stage::EvalVariant;
use crate::run_dir::{RunDir, Stage};

/// The time one job spent on one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageTime {
    /// `collect`, `analyze`, `train` or the evaluation's name.
    pub stage: String,
    /// How the job got it.
    pub outcome: Outcome,
    /// Wall-clock seconds (waiting for a sharing job included).
    pub seconds: f64,
}

/// How one job went.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Index into [`Sweep::jobs`].
    pub job: usize,
    /// Every stage it went through, in order.
    pub stages: Vec<StageTime>,
    /// Wall-clock seconds of the whole job.
    pub seconds: f64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Progress of a sweep.
#[derive(Debug, Clone)]
pub enum SweepEvent {
    /// A job started on a worker.
    Started(usize),
    /// A job began a stage.
    StageStarted {
        /// The job.
        job: usize,
        /// The stage.
        stage: String,
    },
    /// A job has the stage.
    StageDone {
        /// The job.
        job: usize,
        /// The stage and how it was got.
        time: StageTime,
    },
    /// A batch of a collect this job is doing finished.
    Collected {
        /// The job.
        job: usize,
        /// Batches finished in this call.
        done: usize,
        /// Batches left at the start.
        total: usize,
    },
    /// A job ended.
    Finished(JobReport),
}

/// The provenance recorded in each job's run directory.
fn provenance(sweep: &Sweep, job: &Job) -> serde_json::Value {
    serde_json::json!({
        "steermoe_version": env!("CARGO_PKG_VERSION"),
        "git_revision": env!("STEERMOE_GIT_REVISION"),
        "seed": job.seed,
        "config": sweep.path.display().to_string(),
        "sweep_cell": sweep.cells[job.cell].name,
        "overrides": sweep.cells[job.cell].settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
    })
}

/// Register the stages finished in the jobs' directories by an earlier run, so that a resumed
/// sweep links from them instead of redoing them.
fn register_finished(sweep: &Sweep, registry: &Registry) {
    for job in &sweep.jobs {
        let (cfg, dir) = (&job.config, RunDir::new(&job.run_dir));
        let batches = crate::collect::stage::batches(cfg).map(|b| b.len()).unwrap_or(usize::MAX);
        if dir.is_done(Stage::Collect, batches) {
            registry.found(share::collect_key(cfg), &dir);
        }
        if dir.is_done(Stage::Analyze, 0) {
            registry.found(share::analyze_key(cfg), &dir);
        }
        if dir.is_done(Stage::Train, 0) {
            registry.found(share::train_key(cfg), &dir);
        }
        for v in EvalVariant::all(cfg) {
            if dir.is_evaluated(&v.name())
                && let Ok(key) = eval_key(cfg, &dir, &v)
            {
                registry.found(key, &dir);
            }
        }
    }
}

/// The sharing key of an evaluation (a steered one reads the run's analysis).
fn eval_key(cfg: &crate::config::Config, dir: &RunDir, v: &EvalVariant) -> Result<String, crate::Error> {
    Ok(match v {
        EvalVariant::Base => share::base_eval_key(cfg),
        EvalVariant::Trained => share::trained_eval_key(cfg),
        EvalVariant::Steered(setting) => {
            let m = crate::model::ModelConfig::from_path(&cfg.model.dir)?;
            let s = crate::eval::stage::steering(dir.path(), *setting, m.num_moe_layers(), m.num_experts, m.num_experts_per_tok)?;
            share::steer_eval_key(cfg, &s.activate, &s.deactivate)
        }
    })
}

/// Run every job of `sweep` that is not finished, `workers` at a time, on backend `B`.
pub fn run<B: AutodiffBackend>(sweep: &Sweep, workers: usize, device: &B::Device, on_event: impl Fn(SweepEvent) + Sync) -> Vec<JobReport> {
    let registry = Registry::default();
    register_finished(sweep, &registry);
    let next = AtomicUsize::new(0);
    let reports = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, sweep.jobs.len().max(1)) {
            s.spawn(|| {
                loop {
                    let j = next.fetch_add(1, Ordering::SeqCst);
                    if j >= sweep.jobs.len() {
                        break;
                    }
                    on_event(SweepEvent::Started(j));
                    let report = run_job::<B>(sweep, j, &registry, device, &on_event);
                    on_event(SweepEvent::Finished(report.clone()));
                    reports.lock().expect("reports lock").push(report);
                }
            });
        }
    });
    let mut reports = reports.into_inner().expect("reports lock");
    reports.sort_by_key(|r| r.job);
    reports
}

/// One job: collect → analyze → train → every evaluation, each stage shared.
fn run_job<B: AutodiffBackend>(sweep: &Sweep, j: usize, registry: &Registry, device: &B::Device, on_event: &(impl Fn(SweepEvent) + Sync)) -> JobReport {
    let start = Instant::now();
    let mut stages = Stages { job: j, times: Vec::new(), on_event };
    let error = job_stages::<B, _>(sweep, j, registry, device, &mut stages).err().map(|e| e.to_string());
    let stages = stages.times;
    JobReport {
        job: j,
        stages,
        seconds: start.elapsed().as_secs_f64(),
        error,
    }
}

/// A job's stage times, reported as they happen.
struct Stages<'a, F> {
    job: usize,
    times: Vec<StageTime>,
    on_event: &'a F,
}

impl<F: Fn(SweepEvent) + Sync> Stages<'_, F> {
    fn timed<E>(&mut self, stage: String, f: impl FnOnce() -> Result<Outcome, E>) -> Result<(), E> {
        (self.on_event)(SweepEvent::StageStarted { job: self.job, stage: stage.clone() });
        let t = Instant::now();
        let outcome = f()?;
        let time = StageTime {
            stage,
            outcome,
            seconds: t.elapsed().as_secs_f64(),
        };
        (self.on_event)(SweepEvent::StageDone { job: self.job, time: time.clone() });
        self.times.push(time);
        Ok(())
    }
}

/// The error of a stage in one job's directory.
#[derive(Debug, thiserror::Error)]
#[error("{}: {stage}: {reason}", dir.display())]
pub struct StageFailed {
    /// The job's run directory.
    pub dir: std::path::PathBuf,
    /// The stage.
    pub stage: String,
    /// What went wrong.
    pub reason: String,
}

fn job_stages<B: AutodiffBackend, F: Fn(SweepEvent) + Sync>(sweep: &Sweep, j: usize, registry: &Registry, device: &B::Device, stages: &mut Stages<'_, F>) -> Result<(), StageFailed> {
    let job = &sweep.jobs[j];
    let (cfg, dir) = (&job.config, RunDir::new(&job.run_dir));
    let fail = |stage: &str| {
        let d = job.run_dir.clone();
        let stage = stage.to_string();
        move |e: &dyn std::fmt::Display| StageFailed {
            dir: d.clone(),
            stage: stage.clone(),
            reason: e.to_string(),
        }
    };
    let fail_share = |stage: &str| {
        let f = fail(stage);
        move |e: ShareError<crate::Error>| f(&e)
    };
    let _lock = dir.lock().map_err(|e| fail("prepare")(&e))?;
    dir.prepare(cfg, &provenance(sweep, job)).map_err(|e| fail("prepare")(&e))?;
    let batches = crate::collect::stage::batches(cfg).map_err(|e| fail("collect")(&e))?.len();
    let inner = device.clone();
    let on_event = stages.on_event;
    stages.timed("collect".into(), || {
        registry.share(&share::collect_key(cfg), &dir, dir.is_done(Stage::Collect, batches), |o| o.stage_files(Stage::Collect), || {
            let (mut done, mut total) = (0, 0);
            crate::collect::stage::run::<B::InnerBackend>(cfg, dir.path(), &inner, |e| match e {
                crate::collect::CollectEvent::Start { total: t, done: d } => total = t - d,
                crate::collect::CollectEvent::BatchDone { .. } => {
                    done += 1;
                    on_event(SweepEvent::Collected { job: j, done, total });
                }
                _ => {}
            })
            .map(|_| ())
            .map_err(crate::Error::from)
        })
    })
    .map_err(fail_share("collect"))?;
    stages.timed("analyze".into(), || {
        registry.share(&share::analyze_key(cfg), &dir, dir.is_done(Stage::Analyze, 0), |o| o.stage_files(Stage::Analyze), || {
            crate::analysis::analyze(dir.path(), &cfg.analysis, cfg.seed).map(|_| ()).map_err(crate::Error::from)
        })
    })
    .map_err(fail_share("analyze"))?;
    let trains = cfg.eval.variants.contains(&crate::config::Variant::Trained);
    if trains {
        stages.timed("train".into(), || {
            registry.share(&share::train_key(cfg), &dir, dir.is_done(Stage::Train, 0), |o| o.stage_files(Stage::Train), || {
                crate::train::train::<B>(cfg, dir.path(), device, &Default::default(), |_| {}).map(|_| ()).map_err(crate::Error::from)?;
                // The exported model is the result; a sweep of many jobs keeps no resume
                // checkpoints of finished trainings (each holds the whole model in f32).
                let _ = std::fs::remove_dir_all(dir.path().join("train/checkpoint"));
                Ok(())
            })
        })
        .map_err(fail_share("train"))?;
    }
    for v in EvalVariant::all(cfg) {
        let name = v.name();
        let key = eval_key(cfg, &dir, &v).map_err(|e| fail(&name)(&e))?;
        stages.timed(name.clone(), || {
            registry.share(&key, &dir, dir.is_evaluated(&name), |o| o.eval_files(&name), || {
                let (model, steer) = v.model_and_steer(cfg, dir.path());
                crate::eval::stage::run::<B::InnerBackend>(cfg, &model, steer, &dir.eval_dir(&name), &inner, |_| {})
                    .map(|_| ())
                    .map_err(crate::Error::from)
            })
        })
        .map_err(fail_share(&name))?;
    }
    write_table(dir.path()).map_err(|e| fail("eval")(&e))
}

/// The job's before/after table (`eval/table.txt`), as `steermoe run` writes it.
fn write_table(run_dir: &Path) -> Result<(), crate::run_dir::RunDirError> {
    let rows = crate::eval::stage::reports_in(&run_dir.join("eval"));
    if rows.is_empty() {
        return Ok(());
    }
    crate::run_dir::write_atomic(&run_dir.join("eval/table.txt"), crate::eval::table(&rows).as_bytes())
}
