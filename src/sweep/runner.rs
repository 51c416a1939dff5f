//! Running the jobs of a sweep on one backend, `jobs` at a time (threads sharing the device: a
//! small model leaves a GPU mostly idle). Every job is `pipeline::run` in its own run directory
//! with the [`Sharing`] hook; the base model is loaded once for all of them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::share::{Registry, Sharing};
use super::spec::{Job, Sweep};
use crate::collect::CollectEvent;
use crate::pipeline::{self, Env, Event, Models, Outcome};
use crate::run_dir::RunDir;

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
    let cell = &sweep.cells[job.cell];
    let overrides: Vec<String> = cell
        .settings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pipeline::provenance(
        &job.config,
        &sweep.path,
        &overrides,
        serde_json::json!({ "sweep_cell": cell.name }),
    )
}

/// Register the stages finished in the jobs' directories by an earlier run, so that a resumed
/// sweep links from them instead of redoing them.
fn register_finished(sweep: &Sweep, registry: &Registry) {
    for job in &sweep.jobs {
        let dir = RunDir::new(&job.run_dir);
        for stage in pipeline::stages(&job.config) {
            if dir.is_done(&stage) {
                registry.found(stage.key(&job.config), &dir);
            }
        }
    }
}

/// Run every job of `sweep` that is not finished, `workers` at a time, on backend `B`.
pub fn run<B: AutodiffBackend>(
    sweep: &Sweep,
    workers: usize,
    device: &B::Device,
    on_event: impl Fn(SweepEvent) + Sync,
) -> Vec<JobReport> {
    let registry = Registry::default();
    register_finished(sweep, &registry);
    let models = Models::<B>::default();
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
                    let report = run_job::<B>(sweep, j, &registry, &models, device, &on_event);
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

/// One job: the pipeline in its run directory, its stages shared.
fn run_job<B: AutodiffBackend>(
    sweep: &Sweep,
    j: usize,
    registry: &Registry,
    models: &Models<B>,
    device: &B::Device,
    on_event: &(impl Fn(SweepEvent) + Sync),
) -> JobReport {
    let start = Instant::now();
    let job = &sweep.jobs[j];
    let times = Mutex::new(Vec::new());
    let collected = Mutex::new((0usize, 0usize));
    let env = Env {
        device,
        models,
        provenance: provenance(sweep, job),
        train: Default::default(),
    };
    let forward = |e: Event| match e {
        Event::Started(stage) => on_event(SweepEvent::StageStarted {
            job: j,
            stage: stage.name(),
        }),
        Event::Done {
            stage,
            outcome,
            seconds,
        } => {
            let time = StageTime {
                stage: stage.name(),
                outcome,
                seconds,
            };
            times.lock().expect("times lock").push(time.clone());
            on_event(SweepEvent::StageDone { job: j, time });
        }
        Event::Collect(CollectEvent::Start { total, done }) => {
            *collected.lock().expect("collect lock") = (0, total - done)
        }
        Event::Collect(CollectEvent::BatchDone { .. }) => {
            let mut c = collected.lock().expect("collect lock");
            c.0 += 1;
            on_event(SweepEvent::Collected {
                job: j,
                done: c.0,
                total: c.1,
            });
        }
        _ => {}
    };
    let result = pipeline::run(
        &job.config,
        &RunDir::new(&job.run_dir),
        None,
        &env,
        &Sharing { registry },
        &forward,
    );
    JobReport {
        job: j,
        stages: times.into_inner().expect("times lock"),
        seconds: start.elapsed().as_secs_f64(),
        error: result
            .err()
            .map(|e| format!("{}: {e}", job.run_dir.display())),
    }
}
