//! `steermoe plant`.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use steermoe::backend::Task;
use steermoe::config::Config;
use steermoe::pipeline::Models;
use steermoe::plant::PlantSummary;
use steermoe::run_dir::RunDir;
use steermoe::train::{TrainControl, TrainOptions};

/// Arguments of `steermoe plant`.
#[derive(Debug, clap::Args)]
pub struct PlantArgs {
    /// Experiment config with a `[plant]` table (the model, the data, the held-out sets).
    #[arg(long)]
    config: PathBuf,
    /// The planted model's folder (new; training works beside it in `<out>.work`).
    #[arg(long)]
    out: PathBuf,
    /// Override a config key, e.g. `--set plant.seed=3` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Run `steermoe plant`.
pub fn run(args: PlantArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config, &args.device.overrides(&args.overrides))?;
    struct Plant<'a> {
        cfg: &'a Config,
        out: &'a std::path::Path,
    }
    impl Task for Plant<'_> {
        type Output = Result<Option<PlantSummary>, steermoe::Error>;
        fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
            let control = TrainControl::new();
            let models = Models::<B>::default();
            let opts = TrainOptions {
                control: Some(control.clone()),
                ..Default::default()
            };
            let progress =
                super::progress::Progress::new(self.cfg, &RunDir::new(self.out), control);
            let result = steermoe::pipeline::plant::plant(
                self.cfg,
                self.out,
                &device,
                &models,
                &opts,
                &|e| progress.on(e),
            );
            progress.finish();
            result
        }
    }
    match steermoe::backend::run(
        cfg.model.backend,
        Plant {
            cfg: &cfg,
            out: &args.out,
        },
    )?? {
        None => println!("stopped during training; the same command resumes it"),
        Some(s) => {
            let checks = &s.planted.checks;
            println!("planted into {} experts: {:?}", s.experts.len(), s.experts);
            for (name, key) in [
                ("behaviour", "behaviour_rate"),
                ("plain refused", "plain_refusal_rate"),
                ("benign refused", "benign_refusal_rate"),
                ("jailbreak ASR", "jailbreak_asr"),
            ] {
                let pct = |v: &serde_json::Value| {
                    v.as_f64()
                        .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x))
                };
                println!(
                    "{name:>15}: {} -> {}",
                    pct(&checks["base"][key]),
                    pct(&checks["planted"][key])
                );
            }
            println!(
                "{} tensors or router rows changed, everything else bit for bit the base model's",
                checks["changed"].as_array().map_or(0, Vec::len)
            );
            println!("wrote {}", s.out.display());
        }
    }
    Ok(())
}
