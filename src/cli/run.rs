//! `steermoe run`: collect → analyze → train → eval of one config in one run directory, each
//! stage skipped when its outputs are complete (collect and train also resume part-way).

use steermoe::run_dir::{RunDir, Stage};

use super::{ConfigArgs, analyze, collect, eval, train};

/// Arguments of `steermoe run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the resolved config and the plan (batches, experts, steps, evaluations); write
    /// nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A config value's name as the config spells it.
fn spelled(v: impl serde::Serialize) -> String {
    serde_json::to_value(v).map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string())).unwrap_or_default()
}

/// `steermoe run --dry-run`: the resolved config and what each stage would do.
fn plan(args: &RunArgs) -> anyhow::Result<()> {
    let (cfg, run_dir) = args.config.resolve()?;
    let batches = steermoe::collect::stage::batches(&cfg)?;
    let samples: usize = batches.iter().map(|b| b.samples.len()).sum();
    print!("# resolved config\n{}", cfg.to_toml());
    let dir = RunDir::new(&run_dir);
    let state = |done: bool| if done { " (done already)" } else { "" };
    println!("\n# plan (nothing written)");
    println!("run directory: {}{}", run_dir.display(), if run_dir.exists() { "" } else { " (new)" });
    println!(
        "collect: {} batches, {samples} prompts, up to {} new tokens each, on {} ({}){}",
        batches.len(),
        cfg.collect.max_new_tokens,
        cfg.model.backend,
        spelled(cfg.model.precision),
        state(dir.is_done(Stage::Collect, batches.len()))
    );
    let a = &cfg.analysis;
    println!(
        "analyze: risk difference over {} tokens, experts from {}, at most {} per batch{}",
        a.token_scope,
        a.experts,
        a.top_k,
        state(dir.is_done(Stage::Analyze, 0))
    );
    let t = &cfg.train;
    println!(
        "train: up to {} steps ({} epochs × batches with a kept pair), lr {}, routing mask: {}, expert set: {}, validation on up to {} held-out pairs at each checkpoint{}",
        batches.len() * t.epochs,
        t.epochs,
        t.lr,
        spelled(t.mask_scope),
        spelled(t.expert_set),
        if cfg.data.split.is_some() { t.valid_pairs } else { 0 },
        state(dir.is_done(Stage::Train, 0))
    );
    let variants: Vec<String> = steermoe::eval::stage::EvalVariant::all(&cfg).iter().map(|v| v.name()).collect();
    if variants.is_empty() {
        println!("eval: none");
    } else {
        let sets = steermoe::eval::EvalSets::from_config(&cfg)?;
        println!(
            "eval: {} on {} jailbreaks, {} plain goals, {} benign prompts",
            variants.join(", "),
            sets.jailbreak.len(),
            sets.plain.len(),
            sets.benign.len()
        );
    }
    Ok(())
}

/// Run `steermoe run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.dry_run {
        return plan(&args);
    }
    let (cfg, run_dir, _lock) = args.config.load()?;
    println!("== collect ({})", run_dir.display());
    collect::run_with(&cfg, &run_dir)?;
    let dir = RunDir::new(&run_dir);
    if dir.is_done(Stage::Analyze, 0) {
        println!("== analyze: done already");
    } else {
        println!("== analyze");
        let summary = steermoe::analysis::analyze(&run_dir, &cfg.analysis, cfg.seed)?;
        analyze::print_summary(&summary, 10);
    }
    if dir.is_done(Stage::Train, 0) {
        println!("== train: done already");
    } else {
        println!("== train");
        if !train::run_with(&cfg, &run_dir)? {
            println!("run stopped during train; `steermoe run` with the same config resumes it");
            return Ok(());
        }
    }
    if !cfg.eval.variants.is_empty() {
        println!("== eval");
        eval::run_variants(&cfg, &run_dir)?;
    }
    println!("results in {}", run_dir.display());
    Ok(())
}
