//! clap types and one short function per subcommand calling the library; the backend is picked
//! here ([`steermoe::backend::run`]) and nowhere else.

mod analyze;
mod collect;
mod eval;
mod forward;
mod generate;
mod plant;
mod progress;
mod run;
mod serve;
mod sweep;
mod train;

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, Subcommand};
use steermoe::backend::Task;
use steermoe::config::Config;
use steermoe::pipeline::{self, Env, Finished, Models, Resume};
use steermoe::run_dir::{RunDir, Stage};
use steermoe::train::{TrainControl, TrainOptions};

/// Find and fix the experts of a Mixture-of-Experts model that carry unsafe behaviour.
#[derive(Debug, Parser)]
#[command(name = "steermoe", version, about)]
pub struct Cli {
    /// Print progress lines instead of the terminal dashboard (the default when stdout is not a
    /// terminal).
    #[arg(long, global = true)]
    no_tui: bool,
    #[command(subcommand)]
    command: Command,
}

static NO_TUI: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether stages draw the dashboard: stdout is a terminal and `--no-tui` was not given.
pub fn tui_enabled() -> bool {
    use std::io::IsTerminal;
    !NO_TUI.load(std::sync::atomic::Ordering::Relaxed) && std::io::stdout().is_terminal()
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One forward pass over token ids: logits and every layer's router logits to safetensors.
    Forward(forward::ForwardArgs),
    /// Answer a chat (or a plain prompt) and print {prompt_ids, new_ids, text} as JSON.
    Generate(generate::GenerateArgs),
    /// Generate answers to mixed safe/unsafe batches with routing capture into a run directory.
    Collect(collect::CollectArgs),
    /// Risk difference per batch, unsafe experts and expert masks of a collected run.
    Analyze(analyze::AnalyzeArgs),
    /// Fine-tune the unsafe experts of an analysed run and export the model in Hub layout.
    Train(train::TrainArgs),
    /// Attack success, refusals and benign utility of a model (base, steered or fine-tuned).
    Eval(eval::EvalArgs),
    /// collect → analyze → train → eval in one run directory, skipping finished stages.
    Run(run::RunArgs),
    /// Many runs of one config: cells (axes × variants) × seeds, shared work done once,
    /// results with confidence intervals beside the random-experts baseline.
    Sweep(sweep::SweepArgs),
    /// Plant a behaviour into known experts (the inverse of the fix), for checking an
    /// expert-finding method against the truth.
    Plant(plant::PlantArgs),
    /// A model, fixed or steered, behind an OpenAI-compatible HTTP API (continuous batching,
    /// per-request steering, routed experts).
    Serve(serve::ServeArgs),
}

/// `--backend`, `--precision` and `--devices`: shorthands for `--set model.backend=…`,
/// `--set model.precision=…` and `--set model.devices=[…]` on the subcommands that read a config.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Backend to run on (overrides the config's `model.backend`).
    #[arg(long, value_enum)]
    backend: Option<steermoe::backend::BackendKind>,
    /// Compute precision (overrides the config's `model.precision`).
    #[arg(long, value_enum)]
    precision: Option<steermoe::model::Precision>,
    /// Devices to train on, e.g. `--devices 0,1` (overrides the config's `model.devices`; more
    /// than one trains data-parallel on CUDA).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    devices: Option<Vec<usize>>,
}

impl DeviceArgs {
    /// `overrides` followed by the `--set` entries these flags stand for.
    pub fn overrides(&self, overrides: &[String]) -> Vec<String> {
        use clap::ValueEnum;
        let mut out = overrides.to_vec();
        if let Some(b) = self.backend.and_then(|b| b.to_possible_value()) {
            out.push(format!("model.backend={}", b.get_name()));
        }
        if let Some(p) = self.precision.and_then(|p| p.to_possible_value()) {
            out.push(format!("model.precision={}", p.get_name()));
        }
        if let Some(d) = &self.devices {
            let list: Vec<String> = d.iter().map(usize::to_string).collect();
            out.push(format!("model.devices=[{}]", list.join(", ")));
        }
        out
    }
}

/// The experiment config file, its overrides and the run directory.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Experiment config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Run directory (default: runs/<config file stem>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a config key, e.g. `--set collect.max_new_tokens=32` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[command(flatten)]
    device: DeviceArgs,
}

impl ConfigArgs {
    /// The config (values validated) and the run directory it names. Reads nothing else.
    fn load(&self) -> anyhow::Result<(Config, RunDir)> {
        let cfg = Config::load(&self.config, &self.overrides())?;
        Ok((
            cfg,
            RunDir::new(default_dir(&self.config, self.out.as_ref())),
        ))
    }

    fn overrides(&self) -> Vec<String> {
        self.device.overrides(&self.overrides)
    }

    /// Run `only` one stage, or all, of this config.
    fn run(&self, only: Option<Stage>) -> anyhow::Result<Finished> {
        let (cfg, dir) = self.load()?;
        let provenance = pipeline::provenance(
            &cfg,
            &self.config,
            &self.overrides(),
            serde_json::Value::Null,
        );
        run_pipeline(&cfg, &dir, only, provenance, 10)
    }
}

/// `--out`, else `runs/<config file stem>`.
pub fn default_dir(config: &Path, out: Option<&PathBuf>) -> PathBuf {
    out.cloned()
        .unwrap_or_else(|| PathBuf::from("runs").join(config.file_stem().unwrap_or_default()))
}

/// A run directory and the config to read its stage settings from.
#[derive(Debug, clap::Args)]
pub struct RunDirArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// Experiment config (default: the run's `config.toml`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set train.lr=1e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[command(flatten)]
    device: DeviceArgs,
}

impl RunDirArgs {
    /// Run `stage` in the run directory with its config (`--config`, else the run's recorded
    /// `config.toml`, with the overrides); `show` rows of an analysis summary.
    fn run(&self, stage: Stage, show: usize) -> anyhow::Result<Finished> {
        let dir = RunDir::new(&self.run);
        anyhow::ensure!(
            self.run.is_dir(),
            "--run {}: no such run directory",
            self.run.display()
        );
        let recorded = dir.config().path().to_path_buf();
        let path = self.config.clone().unwrap_or(recorded);
        anyhow::ensure!(
            path.is_file(),
            "{}: no such config file; pass --config",
            path.display()
        );
        let overrides = self.device.overrides(&self.overrides);
        let cfg = Config::load(&path, &overrides)?;
        let provenance = pipeline::provenance(&cfg, &path, &overrides, serde_json::Value::Null);
        run_pipeline(&cfg, &dir, Some(stage), provenance, show)
    }
}

/// `pipeline::run` on the config's backend, shown by [`progress::Progress`].
fn run_pipeline(
    cfg: &Config,
    dir: &RunDir,
    only: Option<Stage>,
    provenance: serde_json::Value,
    show: usize,
) -> anyhow::Result<Finished> {
    struct Run<'a> {
        cfg: &'a Config,
        dir: &'a RunDir,
        only: Option<Stage>,
        provenance: serde_json::Value,
        show: usize,
    }
    impl Task for Run<'_> {
        type Output = Result<Finished, steermoe::Error>;
        fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
            let control = TrainControl::new();
            let models = Models::<B>::default();
            let env = Env {
                device: &device,
                models: &models,
                provenance: self.provenance,
                train: TrainOptions {
                    control: Some(control.clone()),
                    ..Default::default()
                },
            };
            let mut progress = progress::Progress::new(self.cfg, self.dir, control);
            progress.show = self.show;
            let result = pipeline::run(self.cfg, self.dir, self.only, &env, &Resume, &|e| {
                progress.on(e)
            });
            progress.finish();
            result
        }
    }
    // Several devices ask for a `ddp` build before any backend is picked (pre-flight asks again).
    if only.is_none_or(|s| s == Stage::Train) {
        steermoe::train::check_devices(&cfg.model.devices)?;
    }
    let finished = steermoe::backend::run(
        cfg.model.backend,
        Run {
            cfg,
            dir,
            only,
            provenance,
            show,
        },
    )??;
    if finished == Finished::Stopped {
        println!("stopped during train; the same command resumes it");
    }
    Ok(finished)
}

/// Log to stderr, filtered by `RUST_LOG` (default `warn`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    NO_TUI.store(cli.no_tui, std::sync::atomic::Ordering::Relaxed);
    match cli.command {
        Command::Forward(args) => forward::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Collect(args) => collect::run(args),
        Command::Analyze(args) => analyze::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Run(args) => run::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Plant(args) => plant::run(args),
    }
}
