//! clap types and one function per subcommand; the backend is picked here and nowhere else.

mod analyze;
mod collect;
mod forward;
mod generate;
mod run;
mod train;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use steermoe::config::Config;

/// Find and fix the experts of a Mixture-of-Experts model that carry unsafe behaviour.
#[derive(Debug, Parser)]
#[command(name = "steermoe", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// collect → analyze → train in one run directory, skipping finished stages.
    Run(run::RunArgs),
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
}

impl ConfigArgs {
    /// Load and validate the config, create the run directory and record the resolved config.
    fn load(&self) -> anyhow::Result<(Config, PathBuf)> {
        let cfg = Config::load(&self.config, &self.overrides)?;
        let run_dir = collect::run_dir(&self.config, self.out.as_ref());
        std::fs::create_dir_all(&run_dir).with_context(|| format!("{}", run_dir.display()))?;
        steermoe::model::checkpoint::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        Ok((cfg, run_dir))
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
}

impl RunDirArgs {
    /// The config file, if one exists (`--config` or the run's `config.toml`).
    fn load(&self) -> anyhow::Result<Option<Config>> {
        let path = self.config.clone().unwrap_or_else(|| self.run.join("config.toml"));
        if path.is_file() {
            Ok(Some(Config::load(&path, &self.overrides)?))
        } else {
            anyhow::ensure!(self.config.is_none(), "{}: no such config file", path.display());
            anyhow::ensure!(self.overrides.is_empty(), "--set needs a config; {} does not exist", path.display());
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
    match cli.command {
        Command::Forward(args) => forward::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Collect(args) => collect::run(args),
        Command::Analyze(args) => analyze::run(args),
        Command::Train(args) => train::run(args),
        Command::Run(args) => run::run(args),
    }
}
