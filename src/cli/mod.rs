//! clap types and one function per subcommand; the backend is picked here and nowhere else.

mod analyze;
mod collect;
mod eval;
mod forward;
mod generate;
mod run;
mod sweep;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use steermoe::config::Config;

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
    /// Risk difference per batch, unsafe experts and expert masks of a collect run.
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
    /// Load and validate the config and check that its data make the batches and held-out sets
    /// it asks for; the run directory it names. Writes nothing.
    fn resolve(&self) -> anyhow::Result<(Config, PathBuf)> {
        let cfg = Config::load(&self.config, &self.device.overrides(&self.overrides))?;
        steermoe::train::check_devices(&cfg)?;
        let batches = steermoe::collect::stage::batches(&cfg)?;
        let tokenizer = cfg.model.tokenizer(&cfg.model.dir)?;
        steermoe::collect::stage::check_prompt_lengths(&cfg, &batches, &tokenizer)?;
        if !cfg.eval.variants.is_empty() {
            steermoe::eval::EvalSets::from_config(&cfg)?;
        }
        Ok((cfg, collect::run_dir(&self.config, self.out.as_ref())))
    }

    /// Load and validate the config, check that its data make the batches and held-out sets it
    /// asks for (before any work), create the run directory and record the resolved config and
    /// the code's revision. A run directory made with a different config is brought in line
    /// ([`RunDir::reconcile`](steermoe::run_dir::RunDir::reconcile)): changed later settings
    /// redo their steps, changed settings of kept files are refused by key.
    fn load(&self) -> anyhow::Result<(Config, PathBuf, steermoe::run_dir::DirLock)> {
        let (cfg, run_dir) = self.resolve()?;
        steermoe::backend::compiled(cfg.model.backend)?;
        let overrides = self.device.overrides(&self.overrides);
        let provenance = serde_json::json!({
            "steermoe_version": env!("CARGO_PKG_VERSION"),
            "git_revision": env!("STEERMOE_GIT_REVISION"),
            "seed": cfg.seed,
            "config": self.config.display().to_string(),
            "overrides": overrides,
        });
        let dir = steermoe::run_dir::RunDir::new(&run_dir);
        let lock = dir.lock()?;
        if let Some(message) = dir.prepare(&cfg, &provenance)?.message() {
            eprintln!("{}: {message}", run_dir.display());
        }
        Ok((cfg, run_dir, lock))
    }
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
    /// Hold the run directory for this process.
    fn lock(&self) -> anyhow::Result<steermoe::run_dir::DirLock> {
        anyhow::ensure!(self.run.is_dir(), "--run {}: no such run directory", self.run.display());
        Ok(steermoe::run_dir::RunDir::new(&self.run).lock()?)
    }

    /// The config for running `step` here, if one exists, with the run directory brought in line
    /// with it ([`RunDir::reconcile`](steermoe::run_dir::RunDir::reconcile): a changed setting
    /// redoes its step and those after it, or is refused where it made earlier steps' files).
    fn load_for(&self, step: steermoe::run_dir::Step) -> anyhow::Result<Option<Config>> {
        let cfg = self.load()?;
        if let Some(cfg) = &cfg
            && let Some(message) = steermoe::run_dir::RunDir::new(&self.run).reconcile(cfg, step)?.message()
        {
            eprintln!("{}: {message}", self.run.display());
        }
        Ok(cfg)
    }

    /// The config file, if one exists (`--config` or the run's `config.toml`).
    fn load(&self) -> anyhow::Result<Option<Config>> {
        let path = self.config.clone().unwrap_or_else(|| self.run.join("config.toml"));
        let overrides = self.device.overrides(&self.overrides);
        if path.is_file() {
            let cfg = Config::load(&path, &overrides)?;
            steermoe::backend::compiled(cfg.model.backend)?;
            steermoe::train::check_devices(&cfg)?;
            Ok(Some(cfg))
        } else {
            anyhow::ensure!(self.config.is_none(), "{}: no such config file", path.display());
            anyhow::ensure!(overrides.is_empty(), "--set, --backend, --precision and --devices need a config; {} does not exist", path.display());
            Ok(None)
        }
    }
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
        Command::Collect(args) => collect::run(args),
        Command::Analyze(args) => analyze::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Run(args) => run::run(args),
        Command::Sweep(args) => sweep::run(args),
    }
}
