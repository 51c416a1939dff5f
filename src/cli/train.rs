//! `steermoe train`.

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use steermoe::backend::{self, Task};
use steermoe::config::Config;
use steermoe::train::{TrainOptions, TrainSummary, train};

use super::RunDirArgs;

/// Arguments of `steermoe train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The analysed run and the experiment config.
    #[command(flatten)]
    dir: RunDirArgs,
}

struct Train<'a> {
    cfg: &'a Config,
    run_dir: &'a Path,
}

impl Task for Train<'_> {
    type Output = anyhow::Result<TrainSummary>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("train step {pos}  {msg}  [{elapsed_precise}]").expect("valid template"));
        let summary = train::<B>(self.cfg, self.run_dir, &device, &TrainOptions::default(), |s| {
            bar.set_position(s.step as u64);
            bar.set_message(format!("loss {:.4}  lr {:.2e}  batch {}", s.loss, s.lr, s.batch_idx));
        })?;
        bar.finish();
        Ok(summary)
    }
}

/// Run `steermoe train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = args.dir.load()?.ok_or_else(|| {
        anyhow::anyhow!("{}: no config.toml; pass --config", args.dir.run.display())
    })?;
    run_with(&cfg, &args.dir.run)
}

/// The train stage of a loaded config.
pub fn run_with(cfg: &Config, run_dir: &Path) -> anyhow::Result<()> {
    let s = backend::run(cfg.model.backend, Train { cfg, run_dir })??;
    if let Some(w) = s.resumed_from {
        println!("resumed from checkpoint {w}");
    }
    let (trainable, total) = s.params;
    println!(
        "trained {} steps: {trainable} of {total} parameters trainable ({:.3}%)",
        s.steps.len(),
        100.0 * trainable as f64 / total.max(1) as f64
    );
    if let (Some(first), Some(last)) = (s.steps.first(), s.steps.last()) {
        println!("loss {:.4} -> {:.4}", first.loss, last.loss);
    }
    println!("exported {}", s.final_model.display());
    Ok(())
}
