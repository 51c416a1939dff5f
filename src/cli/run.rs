//! `steermoe run`: every stage of one config in one run directory, each skipped when its outputs
//! are complete (collect and train also resume part-way).

use steermoe::analysis::Ranking;
use steermoe::pipeline;
use steermoe::run_dir::Stage;

use super::ConfigArgs;

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
    serde_json::to_value(v)
        .map(|v| {
            v.as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string())
        })
        .unwrap_or_default()
}

/// `steermoe run --dry-run`: pre-flight, the resolved config and what each stage would do.
fn plan(args: &RunArgs) -> anyhow::Result<()> {
    let (cfg, dir) = args.config.load()?;
    let stages = pipeline::stages(&cfg);
    let pre = pipeline::preflight(&cfg, &stages)?;
    let samples: usize = pre.batches.iter().map(|b| b.samples.len()).sum();
    print!("# resolved config\n{}", cfg.to_toml());
    let state = |s: &Stage| {
        if dir.is_done(s) {
            " (done already)"
        } else {
            ""
        }
    };
    println!("\n# plan (nothing written)");
    println!(
        "run directory: {}{}",
        dir.path().display(),
        if dir.path().exists() { "" } else { " (new)" }
    );
    println!(
        "collect: {} batches, {samples} prompts, up to {} new tokens each, on {} ({}){}",
        pre.batches.len(),
        cfg.collect.max_new_tokens,
        cfg.model.backend,
        spelled(cfg.model.precision),
        state(&Stage::Collect)
    );
    let a = &cfg.analysis;
    let ranked_by = match a.ranking {
        Ranking::RiskDiff => format!("risk difference over {} tokens", a.token_scope),
        Ranking::Attribution => format!("attribution ({} score)", a.score),
        Ranking::AttributionAblation => format!(
            "attribution, then exact ablation of its {} best ({} score, removal {})",
            a.ablate_top, a.score, a.removal
        ),
        Ranking::Ablation => format!(
            "exact ablation of every expert ({} score, removal {})",
            a.score, a.removal
        ),
    };
    println!(
        "analyze: {ranked_by}, experts from {}, at most {} per batch{}",
        a.experts,
        a.top_k,
        state(&Stage::Analyze)
    );
    let t = &cfg.train;
    println!(
        "train: up to {} steps ({} passes × batches with a kept pair{}), lr {:e}, routing mask: {}, expert set: {}, validation on up to {} held-out pairs at each checkpoint{}",
        pre.batches.len() * t.passes(),
        t.passes(),
        match t.schedule {
            steermoe::train::Schedule::Joint => String::new(),
            steermoe::train::Schedule::Alternating => format!(
                ": {} rounds of {} expert + {} router passes, router lr {:e}",
                t.rounds, t.expert_epochs, t.router_epochs, t.router_lr
            ),
        },
        t.lr,
        spelled(t.mask_scope),
        spelled(t.expert_set),
        if cfg.data.split.is_some() {
            t.valid_pairs
        } else {
            0
        },
        state(&Stage::Train)
    );
    match &pre.eval_sets {
        None => println!("eval: none"),
        Some(sets) => {
            let names: Vec<String> = cfg.eval.variants.iter().map(|v| v.name()).collect();
            let mut extra = String::new();
            if !sets.xstest.is_empty() {
                extra.push_str(&format!(", {} XSTest prompts", sets.xstest.len()));
            }
            if !sets.strongreject.is_empty() {
                extra.push_str(&format!(
                    ", {} StrongREJECT prompts",
                    sets.strongreject.len()
                ));
            }
            if sets.families.len() > 1 {
                let each: Vec<String> = sets
                    .families
                    .iter()
                    .map(|f| format!("{} {}/{}", f.name, f.jailbreak.len(), f.plain.len()))
                    .collect();
                extra.push_str(&format!(
                    "; per family (jailbreaks/plain goals): {}",
                    each.join(", ")
                ));
            }
            println!(
                "eval: {} on {} jailbreaks, {} plain goals, {} benign prompts{extra}",
                names.join(", "),
                sets.jailbreak.len(),
                sets.plain.len(),
                sets.benign.len()
            );
        }
    }
    for n in &pre.notices {
        println!("note: {n}");
    }
    Ok(())
}

/// Run `steermoe run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.dry_run {
        return plan(&args);
    }
    let (_, dir) = args.config.load()?;
    if args.config.run(None)? == pipeline::Finished::Complete {
        println!("results in {}", dir.path().display());
    }
    Ok(())
}
