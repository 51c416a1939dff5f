//! `steermoe eval`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use steermoe::backend::{self, Task};
use steermoe::config::{Config, SteerSetting};
use steermoe::eval::stage::EvalVariant;
use steermoe::eval::{EvalEvent, EvalReport, stage, table};

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
    /// first `eval.steer` setting.
    #[arg(long, value_name = "RUN")]
    steer: Option<PathBuf>,
    /// With --steer: force this many of the most safety-linked experts into every top-k.
    #[arg(long, value_name = "N", requires = "steer")]
    activate_safe: Option<usize>,
    /// With --steer: force this many of the riskiest experts out of every top-k.
    #[arg(long, value_name = "M", requires = "steer")]
    deactivate_unsafe: Option<usize>,
    /// Output directory for eval.json and responses.jsonl (default: runs/eval/<model dir name>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The eval of one model, reporting progress on a bar.
struct Eval<'a> {
    cfg: &'a Config,
    model: &'a Path,
    steer: Option<(&'a Path, SteerSetting)>,
    out: &'a Path,
    label: &'a str,
}

impl Task for Eval<'_> {
    type Output = anyhow::Result<EvalReport>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let bar = ProgressBar::new(0);
        let template = format!("eval {:<8} {{bar:30}} {{pos}}/{{len}}  {{msg}}  [{{elapsed_precise}}<{{eta_precise}}]", self.label);
        bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
        let start = std::time::Instant::now();
        let mut tokens = 0usize;
        let report = stage::run::<B::InnerBackend>(self.cfg, self.model, self.steer, self.out, &device, |e| match e {
            EvalEvent::Start { prompts, answers } => bar.set_length((prompts + answers) as u64),
            EvalEvent::Answered(n) | EvalEvent::Scored(n) => bar.inc(n as u64),
            EvalEvent::Tokens(n) => {
                tokens += n;
                let rate = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("{tokens} tokens, {rate:.0} tok/s"));
            }
        })?;
        bar.finish_and_clear();
        Ok(report)
    }
}

fn eval_one(cfg: &Config, model: &Path, steer: Option<(&Path, SteerSetting)>, out: &Path, label: &str) -> anyhow::Result<EvalReport> {
    let report = backend::run(cfg.model.backend, Eval {
        cfg,
        model,
        steer,
        out,
        label,
    })??;
    Ok(report)
}

/// Run `steermoe eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(&args.config, &args.device.overrides(&args.overrides))?;
    if let Some(model) = args.model {
        anyhow::ensure!(model.is_dir(), "--model {}: no such directory", model.display());
        cfg.model.dir = model;
    }
    let steer = match &args.steer {
        Some(run) => {
            let experts = run.join("unsafe_experts.json");
            anyhow::ensure!(experts.is_file(), "--steer {}: no unsafe_experts.json (run `steermoe analyze` first)", run.display());
            let first = cfg.eval.steer.first().copied().unwrap_or_default();
            let setting = SteerSetting {
                activate_safe: args.activate_safe.unwrap_or(first.activate_safe),
                deactivate_unsafe: args.deactivate_unsafe.unwrap_or(first.deactivate_unsafe),
            };
            anyhow::ensure!(
                setting.activate_safe + setting.deactivate_unsafe > 0,
                "--steer {}: the setting steers nothing; pass --activate-safe or --deactivate-unsafe",
                run.display()
            );
            Some((run.as_path(), setting))
        }
        None => None,
    };
    let out = args.out.unwrap_or_else(|| {
        let name = cfg.model.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        PathBuf::from("runs/eval").join(name)
    });
    // Before any work: the output directory must be one that can be written.
    let probe = out.join(".steermoe-write-check");
    std::fs::create_dir_all(&out)
        .and_then(|_| std::fs::write(&probe, b""))
        .and_then(|_| std::fs::remove_file(&probe))
        .with_context(|| format!("--out {}: cannot write there", out.display()))?;
    let label = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    eval_one(&cfg, &cfg.model.dir, steer, &out, &label)?;
    println!("wrote {}", out.join("eval.json").display());
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    print!("{}", table(&stage::reports_in(parent)));
    Ok(())
}

/// The eval stage of `steermoe run`: every configured variant not evaluated yet, then the table.
pub fn run_variants(cfg: &Config, run_dir: &Path) -> anyhow::Result<()> {
    for variant in EvalVariant::all(cfg) {
        let dir = stage::variant_dir(run_dir, &variant);
        let name = variant.name();
        if stage::is_done(&dir) {
            println!("   {name}: done already");
            continue;
        }
        let (model, steer) = variant.model_and_steer(cfg, run_dir);
        eval_one(cfg, &model, steer, &dir, &name).with_context(|| format!("evaluating {name}"))?;
    }
    let rows = stage::reports_in(&run_dir.join("eval"));
    if !rows.is_empty() {
        let text = table(&rows);
        steermoe::run_dir::write_atomic(&run_dir.join("eval/table.txt"), text.as_bytes())?;
        print!("{text}");
    }
    Ok(())
}
