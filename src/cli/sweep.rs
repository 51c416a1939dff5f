//! `steermoe sweep`.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use steermoe::backend::{self, Task};
use steermoe::sweep::{JobReport, Sweep, SweepEvent, runner};

/// Arguments of `steermoe sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Experiment config with a `[sweep]` table.
    #[arg(long)]
    config: PathBuf,
    /// Sweep directory (default: runs/<config file stem>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Jobs (cell × seed) run at once, as threads sharing the device.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    /// Override a config key in every cell, e.g. `--set eval.max_goals=16` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Run only the cells whose name contains this text (repeatable).
    #[arg(long = "cells", value_name = "TEXT")]
    cells: Vec<String>,
    /// Print the cells and jobs, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run nothing: write the results of the jobs finished so far.
    #[arg(long, conflicts_with = "dry_run")]
    report: bool,
}

struct RunSweep<'a> {
    sweep: &'a Sweep,
    jobs: usize,
}

impl Task for RunSweep<'_> {
    type Output = Vec<JobReport>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let total = self.sweep.jobs.len() as u64;
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "sweep {bar:30} {pos}/{len} jobs  {msg}  [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template"),
        );
        let sweep = self.sweep;
        // Off a terminal the bar is hidden (and so are its lines): print plain lines instead.
        let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
        let start = std::time::Instant::now();
        let say = |line: String| {
            if plain {
                eprintln!("[{:7.1}s] {line}", start.elapsed().as_secs_f64());
            } else {
                bar.println(line);
            }
        };
        let job_name = |j: usize| {
            format!(
                "{} seed {}",
                sweep.cells[sweep.jobs[j].cell].name, sweep.jobs[j].seed
            )
        };
        let reports = runner::run::<B>(sweep, self.jobs, &device, |event| match event {
            SweepEvent::Started(j) => bar.set_message(format!("started {}", job_name(j))),
            SweepEvent::StageStarted { job, stage } if plain => {
                say(format!("{}: {stage} …", job_name(job)))
            }
            SweepEvent::StageDone { job, time } if plain => say(format!(
                "{}: {} {} in {:.1} s",
                job_name(job),
                time.stage,
                time.outcome.name(),
                time.seconds
            )),
            SweepEvent::Collected { job, done, total } => {
                let line = format!("{}: collected batch {done}/{total}", job_name(job));
                if plain {
                    say(line)
                } else {
                    bar.set_message(line)
                }
            }
            SweepEvent::StageStarted { .. } | SweepEvent::StageDone { .. } => {}
            SweepEvent::Finished(r) => {
                let job = &sweep.jobs[r.job];
                let stages: Vec<String> = r
                    .stages
                    .iter()
                    .map(|s| format!("{} {} {:.1}s", s.stage, s.outcome.name(), s.seconds))
                    .collect();
                let status = match &r.error {
                    Some(e) => format!("FAILED: {e}"),
                    None => format!("{:.1} s ({})", r.seconds, stages.join(", ")),
                };
                say(format!(
                    "{} seed {}: {status}",
                    sweep.cells[job.cell].name, job.seed
                ));
                bar.inc(1);
            }
        });
        bar.finish_and_clear();
        reports
    }
}

/// Run `steermoe sweep`.
pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| steermoe::sweep::default_dir(&args.config));
    let mut sweep = Sweep::load(&args.config, &dir, &args.device.overrides(&args.overrides))?;
    sweep.retain_cells(&args.cells)?;
    let backend = sweep.jobs[0].config.model.backend;
    steermoe::backend::compiled(backend)?;
    if let Some(j) = sweep
        .jobs
        .iter()
        .find(|j| j.config.model.backend != backend)
    {
        anyhow::bail!(
            "{}: cell {} runs on {}, the others on {backend}: one sweep runs on one backend",
            args.config.display(),
            sweep.cells[j.cell].name,
            j.config.model.backend
        );
    }
    // burn's data-parallel training keeps one gradient exchange per process: one job at a time.
    if args.jobs > 1
        && let Some(j) = sweep.jobs.iter().find(|j| j.config.model.devices.len() > 1)
    {
        anyhow::bail!(
            "{}: cell {} trains on devices {:?}: a sweep that trains on several devices runs one job at a time (--jobs 1)",
            args.config.display(),
            sweep.cells[j.cell].name,
            j.config.model.devices
        );
    }
    if args.report {
        anyhow::ensure!(
            dir.is_dir(),
            "--report {}: no such sweep directory (nothing has run there)",
            dir.display()
        );
    } else {
        // Every cell's files must make its batches and held-out sets before any work (cells
        // that read the same files are checked once).
        let mut checked: Vec<serde_json::Value> = Vec::new();
        for job in &sweep.jobs {
            let reads = serde_json::json!([
                job.config.model.dir,
                job.config.data,
                job.config.collect,
                job.config.eval
            ]);
            if checked.contains(&reads) {
                continue;
            }
            let cell = &sweep.cells[job.cell].name;
            steermoe::pipeline::preflight(&job.config, &steermoe::pipeline::stages(&job.config))
                .map_err(|e| anyhow::anyhow!("cell {cell}: {e}"))?;
            checked.push(reads);
        }
    }
    let cells: Vec<usize> = {
        let mut c: Vec<usize> = sweep.jobs.iter().map(|j| j.cell).collect();
        c.dedup();
        c
    };
    println!(
        "{} cells × {} seeds = {} jobs on {backend}, {} at a time, in {}",
        cells.len(),
        sweep.spec.seeds.len(),
        sweep.jobs.len(),
        args.jobs,
        dir.display()
    );
    if args.dry_run {
        for cell in cells.iter().map(|&c| &sweep.cells[c]) {
            let settings: Vec<String> = cell
                .settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("  {}: {}", cell.name, settings.join(" "));
        }
        return Ok(());
    }
    let _lock = steermoe::run_dir::RunDir::new(&dir).lock()?;
    let start = std::time::Instant::now();
    let reports = if args.report {
        Vec::new()
    } else {
        backend::run(
            backend,
            RunSweep {
                sweep: &sweep,
                jobs: args.jobs as usize,
            },
        )?
    };
    let secs = start.elapsed().as_secs_f64();
    steermoe::sweep::write_outputs(&sweep, &reports)?;
    print!("{}", std::fs::read_to_string(dir.join("summary.md"))?);
    let finished = steermoe::sweep::report::finished_jobs(&sweep);
    println!(
        "\n{} of {} jobs finished ({} run in {secs:.1} s); {} in {}",
        finished,
        sweep.jobs.len(),
        reports.len(),
        steermoe::sweep::OUTPUTS
            .iter()
            .filter(|f| dir.join(f).exists())
            .copied()
            .collect::<Vec<_>>()
            .join(", "),
        dir.display()
    );
    let failed: Vec<&JobReport> = reports.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        for r in &failed {
            eprintln!("failed: {}", r.error.as_deref().unwrap_or_default());
        }
        anyhow::bail!(
            "{} of {} jobs failed; the same command resumes them",
            failed.len(),
            reports.len()
        );
    }
    Ok(())
}
