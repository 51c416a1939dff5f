//! `steermoe run`: collect → analyze → train → eval of one config in one run directory, each
//! stage skipped when its outputs are complete (collect and train also resume part-way).

use steermoe::run_dir::{RunDir, Stage};

use super::{ConfigArgs, analyze, collect, eval, train};

/// Arguments of `steermoe run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// Run `steermoe run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
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
