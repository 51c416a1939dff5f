//! `steermoe analyze`.

use steermoe::analysis::{AnalysisSummary, analyze};
use steermoe::config::AnalysisConfig;

use super::RunDirArgs;

/// Arguments of `steermoe analyze`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The collect run and the config of its `[analysis]` table.
    #[command(flatten)]
    dir: RunDirArgs,
    /// Rows of the top-experts table.
    #[arg(long, default_value_t = 10)]
    show: usize,
}

/// Run `steermoe analyze`.
pub fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    let _lock = args.dir.lock()?;
    let (cfg, seed) = args.dir.load_for(steermoe::run_dir::Step::Analyze)?.map(|c| (c.analysis, c.seed)).unwrap_or_else(|| (AnalysisConfig::default(), 0));
    let summary = analyze(&args.dir.run, &cfg, seed)?;
    print_summary(&summary, args.show);
    println!("wrote {} in {}", steermoe::analysis::stage::OUTPUTS.join(", "), args.dir.run.display());
    Ok(())
}

/// The terminal summary: top experts, per-batch counts, overlap.
pub fn print_summary(s: &AnalysisSummary, show: usize) {
    let [layers, experts] = s.shape;
    println!(
        "analysed {} batches ({} tokens, {layers} layers x {experts} experts, scope {})",
        s.experts.batch_idx.len(),
        s.tokens,
        s.experts.params.token_scope
    );
    if !s.skipped.is_empty() {
        println!("skipped batches without both safe and unsafe samples: {:?}", s.skipped);
    }
    println!("{:>5} {:>6} {:>10} {:>10} {:>10}", "layer", "expert", "risk_diff", "a_unsafe_n", "a_safe_n");
    for r in s.top.iter().take(show) {
        println!("{:>5} {:>6} {:>+10.4} {:>10.4} {:>10.4}", r.layer, r.expert, r.risk_diff, r.a_unsafe_n, r.a_safe_n);
    }
    let (min, max, mean) = s.per_batch_counts();
    let (jaccard, common) = s.overlap();
    println!("unsafe experts per batch: min {min}, max {max}, mean {mean:.1}; union {}, global {}", s.experts.union.len(), s.experts.global.len());
    println!("overlap between batches: mean Jaccard {jaccard:.3}, {common} experts in every batch");
}
