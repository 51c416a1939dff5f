//! `steermoe eval`: one model evaluated into a folder, outside a run directory.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use steermoe::backend::Task;
use steermoe::config::Config;
use steermoe::eval::{EvalReport, table};
use steermoe::pipeline::{self, Env, Models};
use steermoe::run_dir::{EvalDir, RunDir, SteerSetting};

/// Arguments of `steermoe eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Experiment config: data, split, `[eval]` settings, judge, backend.
    #[arg(long)]
    config: PathBuf,
    /// Override a config key, e.g. `--set eval.max_goals=16` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Model directory (default: the config's `model.dir`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Steer with the expert ranking of this analysed run directory (SteerMoE): by default the
    /// config's first steering variant (`eval.variants`), else 5 safe experts forced on.
    #[arg(long, value_name = "RUN")]
    steer: Option<PathBuf>,
    /// With --steer: force this many of the most safety-linked experts into every top-k.
    #[arg(long, value_name = "N", requires = "steer")]
    activate_safe: Option<usize>,
    /// With --steer: force this many of the riskiest experts out of every top-k.
    #[arg(long, value_name = "M", requires = "steer")]
    deactivate_unsafe: Option<usize>,
    /// Output folder for eval.json and responses.jsonl (default: runs/eval/<model dir name>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Run `steermoe eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let overrides = args.device.overrides(&args.overrides);
    let mut cfg = Config::load(&args.config, &overrides)?;
    if let Some(model) = &args.model {
        cfg.model.dir = model.clone();
    }
    let steer = match &args.steer {
        Some(run) => {
            let first = cfg
                .eval
                .steer_settings()
                .first()
                .copied()
                .unwrap_or(SteerSetting {
                    activate_safe: 5,
                    deactivate_unsafe: 0,
                });
            let setting = SteerSetting {
                activate_safe: args.activate_safe.unwrap_or(first.activate_safe),
                deactivate_unsafe: args.deactivate_unsafe.unwrap_or(first.deactivate_unsafe),
            };
            anyhow::ensure!(
                setting != SteerSetting::default(),
                "--steer {}: the setting steers nothing; pass --activate-safe or --deactivate-unsafe",
                run.display()
            );
            anyhow::ensure!(
                run.is_dir(),
                "--steer {}: no such run directory",
                run.display()
            );
            Some((RunDir::new(run), setting))
        }
        None => None,
    };
    let out = EvalDir::at(args.out.clone().unwrap_or_else(|| {
        let name = cfg
            .model
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        PathBuf::from("runs/eval").join(name)
    }));
    anyhow::ensure!(
        !out.path().exists() || out.path().is_dir(),
        "--out {}: not a folder",
        out.path().display()
    );

    struct Eval<'a> {
        cfg: &'a Config,
        steer: Option<(&'a RunDir, SteerSetting)>,
        out: &'a EvalDir,
        provenance: serde_json::Value,
    }
    impl Task for Eval<'_> {
        type Output = Result<EvalReport, steermoe::Error>;
        fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
            let models = Models::<B>::default();
            let env = Env {
                device: &device,
                models: &models,
                provenance: self.provenance,
                train: Default::default(),
            };
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "eval {bar:30} {pos}/{len}  [{elapsed_precise}<{eta_precise}]",
                )
                .expect("valid template"),
            );
            let on_event = |e: pipeline::Event| match e {
                pipeline::Event::Notice(n) => bar.println(n),
                pipeline::Event::Eval(_, steermoe::eval::EvalEvent::Start { prompts, answers }) => {
                    bar.set_length((prompts + answers) as u64)
                }
                pipeline::Event::Eval(
                    _,
                    steermoe::eval::EvalEvent::Answered(n) | steermoe::eval::EvalEvent::Scored(n),
                ) => bar.inc(n as u64),
                _ => {}
            };
            let report = pipeline::evaluate(self.cfg, self.steer, self.out, &env, &on_event);
            bar.finish_and_clear();
            report
        }
    }
    let provenance = pipeline::provenance(&cfg, &args.config, &overrides, serde_json::Value::Null);
    let steer_ref = steer.as_ref().map(|(r, s)| (r, *s));
    steermoe::backend::run(
        cfg.model.backend,
        Eval {
            cfg: &cfg,
            steer: steer_ref,
            out: &out,
            provenance,
        },
    )??;
    println!("wrote {}", out.report().path().display());
    let parent = out
        .path()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    print!("{}", table(&EvalDir::reports_in(parent)));
    Ok(())
}
