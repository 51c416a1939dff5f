//! `steermoe collect`.

use std::path::{Path, PathBuf};


use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use steermoe::backend::{self, Task};
use steermoe::collect::{CollectEvent, CollectSummary, stage};
use steermoe::config::Config;
use steermoe::tui::{self, RunInfo, UiEvent, View};

use super::ConfigArgs;

/// Arguments of `steermoe collect`.
#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

struct Collect<'a> {
    cfg: &'a Config,
    run_dir: &'a Path,
}

impl Task for Collect<'_> {
    type Output = anyhow::Result<CollectSummary>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        if super::tui_enabled() {
            let info = RunInfo::new(self.cfg, self.run_dir)?;
            // Every finished batch is on disk (written atomically), so quitting mid-collect
            // loses at most the batch in flight; a rerun resumes after the last finished one.
            let ui = tui::spawn(info, View::Collect, None, || {
                ratatui::restore();
                println!("collect stopped; finished batches are kept, rerun the same command to resume");
                std::process::exit(0);
            })?;
            let tx = ui.sender();
            let result = stage::run::<B::InnerBackend>(self.cfg, self.run_dir, &device, move |e| {
                let _ = tx.send(UiEvent::Collect(e));
            });
            ui.finish()?;
            return Ok(result?);
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("collect {bar:30} {pos}/{len} batches  {msg}  [{elapsed_precise}<{eta_precise}]")
                .expect("valid template"),
        );
        let start = std::time::Instant::now();
        let mut tokens = 0usize;
        let summary = stage::run::<B::InnerBackend>(self.cfg, self.run_dir, &device, |event| match event {
            CollectEvent::Start { total, done } => {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
            CollectEvent::Tokens(n) => {
                tokens += n;
                let rate = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("{tokens} tokens, {rate:.0} tok/s"));
            }
            CollectEvent::BatchDone { batch_idx, kept, dropped, .. } => {
                if dropped > 0 {
                    bar.println(format!("batch {batch_idx}: kept {kept}, quality filter dropped {dropped}"));
                }
                bar.inc(1);
            }
        })?;
        bar.finish();
        Ok(summary)
    }
}

/// Run `steermoe collect`.
pub fn run(args: CollectArgs) -> anyhow::Result<()> {
    let (cfg, run_dir, _lock) = args.config.load()?;
    run_with(&cfg, &run_dir)
}

/// The collect stage of a loaded config.
pub fn run_with(cfg: &Config, run_dir: &Path) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let s = backend::run(cfg.model.backend, Collect { cfg, run_dir })??;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "collected {} batches ({} already done), {} tokens in {secs:.1} s ({:.0} generated tokens/s, model load and first-use kernel compilation included); run directory {}",
        s.collected,
        s.resumed,
        s.tokens,
        s.tokens as f64 / secs.max(1e-9),
        run_dir.display()
    );
    if !s.skipped.is_empty() {
        println!("skipped batches (no pair left after the quality filter): {:?}", s.skipped);
    }
    Ok(())
}

/// The run directory: `--out`, else `runs/<config file stem>`.
pub fn run_dir(config: &Path, out: Option<&PathBuf>) -> PathBuf {
    out.cloned().unwrap_or_else(|| {
        PathBuf::from("runs").join(config.file_stem().unwrap_or_default())
    })
}
