//! `steermoe train`.

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use steermoe::backend::{self, Task};
use steermoe::config::Config;
use steermoe::train::{TrainControl, TrainEvent, TrainOptions, TrainSummary, train};
use steermoe::tui::{self, RunInfo, UiEvent, View};

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
        let control = TrainControl::new();
        let opts = TrainOptions {
            control: Some(control.clone()),
            ..TrainOptions::default()
        };
        if super::tui_enabled() {
            let info = RunInfo::new(self.cfg, self.run_dir)?;
            let ui = tui::spawn(info, View::Train, Some(control.clone()), || {})?;
            let tx = ui.sender();
            let result = train::<B>(self.cfg, self.run_dir, &device, &opts, move |event| {
                let _ = tx.send(UiEvent::Train(event));
            });
            ui.finish()?;
            return Ok(result?);
        }
        // Headless: a progress line per step (a bar on a terminal, plain lines otherwise).
        let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("train {bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]")
                .expect("valid template"),
        );
        let summary = train::<B>(self.cfg, self.run_dir, &device, &opts, |event| {
            let s = match event {
                TrainEvent::Step(s) => s,
                TrainEvent::Valid(v) => {
                    let line = format!("validation at step {}: loss {:.4} over {} held-out tokens", v.step, v.valid_loss, v.valid_tokens);
                    match plain {
                        true => eprintln!("{line}"),
                        false => bar.println(line),
                    }
                    return;
                }
            };
            if bar.length() == Some(0)
                && let Some(plan) = control.plan()
            {
                bar.set_length(plan.total_steps as u64);
            }
            bar.set_position(s.step as u64);
            let msg = format!("loss {:.4}  lr {:.2e}  {:.0} tok/s  batch {}", s.loss, s.lr, s.tokens_per_s, s.batch_idx);
            if plain {
                eprintln!("train step {}  {msg}", s.step);
            }
            bar.set_message(msg);
        })?;
        bar.finish();
        Ok(summary)
    }
}

/// Run `steermoe train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let _lock = args.dir.lock()?;
    let cfg = args.dir.load_for(steermoe::run_dir::Step::Train)?.ok_or_else(|| {
        anyhow::anyhow!("{}: no config.toml; pass --config", args.dir.run.display())
    })?;
    run_with(&cfg, &args.dir.run).map(|_| ())
}

/// The train stage of a loaded config; `false` if it was stopped before the end (nothing
/// exported).
pub fn run_with(cfg: &Config, run_dir: &Path) -> anyhow::Result<bool> {
    let s = backend::run(cfg.model.backend, Train { cfg, run_dir })??;
    if let Some(w) = s.resumed_from {
        println!("resumed from checkpoint {w}");
    }
    if s.stopped {
        println!(
            "stopped after step {} of {}; run the same command again to resume from the last checkpoint",
            s.steps.last().map_or(0, |r| r.step),
            s.total_steps
        );
        return Ok(false);
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
    Ok(true)
}
