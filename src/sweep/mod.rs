//! `steermoe sweep`: one config with a `[sweep]` table becomes cells × seeds of ordinary run
//! directories, the work they share done once, and the measurements summarised with confidence
//! intervals beside the matched random-experts baseline.
//!
//! - [`spec`]: the `[sweep]` table, cells and jobs;
//! - [`share`]: the registry that does each shared stage once (stages keyed by their
//!   fingerprints, `Stage::key`), as the pipeline's hook;
//! - [`runner`]: the jobs on one backend, several at a time, each through `pipeline::run`;
//! - [`stats`]: means and Student-t intervals; [`report`]: `results.csv`, `summary.md`;
//!   [`plot`]: `asr_vs_utility.png`; [`dose`] and [`dose_plot`]: the dose-response curves
//!   (`dose_response.png`) and the ranked set's percentile among random sets; [`cross`] and
//!   [`cross_plot`]: the cross-attack table (`cross_attack.png`) of sweeps over several attack
//!   families.
//!
//! Sweep directory: `cells/<cell>/seed-<s>/` (run directories), `results.csv`, `summary.md`,
//! `asr_vs_utility.png`, `dose_response.png` (with a dose axis), `cross_attack.png` (with several
//! attack families), `timings.csv` (every job's stages: how each was got and how long it took).

pub mod cross;
pub mod cross_plot;
pub mod dose;
pub mod dose_plot;
pub mod plot;
pub mod report;
pub mod runner;
pub mod share;
pub mod spec;
pub mod stats;

use std::path::{Path, PathBuf};

pub use runner::{JobReport, SweepEvent};
pub use spec::{Cell, Job, Sweep};

use crate::run_dir::write_atomic;

/// What can go wrong in a sweep.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The `[sweep]` table or a cell's config is wrong.
    #[error("{}: {key}: {reason}", path.display())]
    Spec {
        /// The config file.
        path: PathBuf,
        /// The key at fault (dotted), or the cell.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The config file.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a job's evaluation or writing the results.
    #[error(transparent)]
    RunDir(#[from] crate::run_dir::RunDirError),
    /// Writing `results.csv`.
    #[error("{}: {source}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: csv::Error,
    },
    /// Drawing the plot.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
}

/// Files a sweep writes at its top (`dose_response.png` only with a dose axis,
/// `cross_attack.png` only with several attack families).
pub const OUTPUTS: [&str; 6] = [
    "results.csv",
    "summary.md",
    "asr_vs_utility.png",
    "dose_response.png",
    "cross_attack.png",
    "timings.csv",
];

/// Write `results.csv`, `summary.md`, `asr_vs_utility.png` (and, where they apply,
/// `dose_response.png` and `cross_attack.png`) from the jobs' evaluations, and `timings.csv` from
/// `reports` (this call's jobs; earlier ones keep their lines).
pub fn write_outputs(
    sweep: &Sweep,
    reports: &[JobReport],
) -> Result<Vec<report::Group>, SweepError> {
    let rows = report::collect_rows(sweep)?;
    let path = sweep.dir.join("results.csv");
    let csv = report::results_csv(sweep, &rows).map_err(|source| SweepError::Csv {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, &csv)?;
    let doses = dose::points(sweep, &rows);
    let mut summary = report::summary_md(sweep, &rows);
    summary.push_str(&dose::summary_section(&doses));
    let cells: Vec<String> = sweep.cells.iter().map(|c| c.name.clone()).collect();
    let cross = cross::cross_attack(&cells, &rows);
    if let Some(t) = &cross {
        summary.push_str(&cross::summary_section(t));
    }
    write_atomic(&sweep.dir.join("summary.md"), summary.as_bytes())?;
    if let Some(t) = &cross {
        write_atomic(
            &sweep.dir.join("cross_attack.png"),
            &cross_plot::cross_attack(t)?,
        )?;
    }
    let groups = report::groups(&rows);
    write_atomic(
        &sweep.dir.join("asr_vs_utility.png"),
        &plot::asr_vs_utility(sweep, &groups)?,
    )?;
    let base = groups.iter().find(|g| g.variant == "base");
    if let Some(png) = dose_plot::dose_response(&doses, base)? {
        write_atomic(&sweep.dir.join("dose_response.png"), &png)?;
    }
    write_timings(sweep, reports)?;
    Ok(groups)
}

/// `timings.csv`: cell, seed, stage, outcome, seconds. A job that did or linked something in this
/// call replaces its old lines; one that found everything done keeps them.
fn write_timings(sweep: &Sweep, reports: &[JobReport]) -> Result<(), SweepError> {
    let path = sweep.dir.join("timings.csv");
    let csv_err = |source| SweepError::Csv {
        path: path.clone(),
        source,
    };
    let worked = |r: &&JobReport| {
        r.stages
            .iter()
            .any(|s| s.outcome != crate::pipeline::Outcome::Done)
    };
    let reports: Vec<&JobReport> = reports.iter().filter(worked).collect();
    let mut lines: Vec<Vec<String>> = Vec::new();
    if let Ok(mut r) = csv::Reader::from_path(&path) {
        let redone: Vec<(String, String)> = reports
            .iter()
            .map(|r| {
                (
                    sweep.cells[sweep.jobs[r.job].cell].name.clone(),
                    sweep.jobs[r.job].seed.to_string(),
                )
            })
            .collect();
        for rec in r.records().flatten() {
            let rec: Vec<String> = rec.iter().map(String::from).collect();
            if rec.len() == 5 && !redone.contains(&(rec[0].clone(), rec[1].clone())) {
                lines.push(rec);
            }
        }
    }
    for r in &reports {
        let job = &sweep.jobs[r.job];
        for s in &r.stages {
            lines.push(vec![
                sweep.cells[job.cell].name.clone(),
                job.seed.to_string(),
                s.stage.clone(),
                s.outcome.name().into(),
                format!("{:.2}", s.seconds),
            ]);
        }
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["cell", "seed", "stage", "outcome", "seconds"])
        .map_err(csv_err)?;
    for l in &lines {
        w.write_record(l).map_err(csv_err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| csv_err(csv::Error::from(e.into_error())))?;
    write_atomic(&path, &bytes)?;
    Ok(())
}

/// The default sweep directory: `runs/<config file stem>`.
pub fn default_dir(config: &Path) -> PathBuf {
    PathBuf::from("runs").join(config.file_stem().unwrap_or_default())
}
