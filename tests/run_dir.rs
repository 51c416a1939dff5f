//! Checks a run directory that `steermoe run` finished (CI runs the README's main command, then
//! this with `STEERMOE_CHECK_RUN=<run dir> STEERMOE_CHECK_CONFIG=<config>`): every artifact of
//! every stage is present, each `eval.json` parses with its rates equal to its counts, and the
//! recorded config is the input plus defaults.

use std::path::PathBuf;

use steermoe::config::Config;
use steermoe::run_dir::{RunDir, Stage};

fn var(name: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("set {name}"))
}

#[test]
#[ignore = "checks a finished run: STEERMOE_CHECK_RUN=DIR STEERMOE_CHECK_CONFIG=FILE cargo test --test suite run_dir:: -- --ignored"]
fn finished_run_directory_is_complete() {
    let run = var("STEERMOE_CHECK_RUN");
    let config = var("STEERMOE_CHECK_CONFIG");
    let input = Config::load(&config, &[]).expect("input config loads");
    let recorded = std::fs::read_to_string(run.join("config.toml")).expect("config.toml");
    assert_eq!(
        recorded,
        input.to_toml(),
        "recorded config is not the input plus defaults"
    );
    assert_eq!(
        Config::parse(&recorded, &run.join("config.toml"), &[]).unwrap(),
        input
    );

    let provenance: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(provenance["seed"], input.seed);
    assert!(
        provenance["git_revision"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );

    // Every stage finished: its artifacts there and read back.
    let dir = RunDir::new(&run);
    for stage in steermoe::pipeline::stages(&input) {
        assert!(
            dir.is_done(&stage),
            "{stage} is not finished in {}",
            run.display()
        );
    }
    let mut files: Vec<PathBuf> = [
        "final_model/tokenizer.json",
        "final_model/tokenizer_config.json",
        "eval/table.txt",
    ]
    .iter()
    .map(|f| run.join(f))
    .collect();
    files.extend(
        [
            dir.samples().path(),
            dir.risk_diff().path(),
            dir.unsafe_experts().path(),
            dir.metrics().path(),
            dir.loss_curve().path(),
        ]
        .map(|p| p.to_path_buf()),
    );
    let missing: Vec<_> = files.iter().filter(|f| !f.is_file()).collect();
    assert!(missing.is_empty(), "missing: {missing:?}");
    assert!(dir.is_done(&Stage::Collect) && dir.routing_index().read().unwrap().planned.is_some());

    let variants = &input.eval.variants;
    for variant in variants {
        let eval = dir.eval(variant);
        let report = eval.report().read().unwrap();
        eprintln!(
            "{}: asr {:?} plain refusal {:?} benign refusal {:?} nll {:?}",
            variant.name(),
            report.asr,
            report.plain_refusal_rate,
            report.benign_refusal_rate,
            report.benign_answer_nll
        );
        // Rates equal their counts (to JSON's float round trip).
        let fresh = report.clone().with_rates();
        for (what, got, want) in [
            ("asr", report.asr, fresh.asr),
            (
                "plain_refusal_rate",
                report.plain_refusal_rate,
                fresh.plain_refusal_rate,
            ),
            (
                "benign_refusal_rate",
                report.benign_refusal_rate,
                fresh.benign_refusal_rate,
            ),
            (
                "benign_answer_nll",
                report.benign_answer_nll,
                fresh.benign_answer_nll,
            ),
        ] {
            let (got, want) = (got.expect(what), want.expect(what));
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{}: {what} {got} vs counts {want}",
                variant.name()
            );
        }
        assert!(
            report.plain.n > 0
                && report.jailbreak.n > 0
                && report.benign.n > 0
                && report.nll.tokens > 0
        );
        let lines = eval.responses().read().unwrap().len();
        assert_eq!(lines, report.plain.n + report.jailbreak.n + report.benign.n);
    }
}
