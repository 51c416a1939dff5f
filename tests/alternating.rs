//! RASA's alternating schedule on the fixture: an expert pass changes only the chosen experts
//! (routers bit-identical), a router pass changes only the routers, each step says its phase and
//! runs at its phase's rate, the router passes lower the routing divergence they train on, and a
//! run stopped between rounds resumes to the same model.

use std::path::{Path, PathBuf};

use crate::common::*;
use steermoe::config::Config;
use steermoe::train::{Schedule, TrainOptions, TrainSummary};

/// One collected and analysed run of the fixture (3 batches of 4, no shuffling), copied to
/// `copies` directories.
fn analysed_runs(root: &Path, copies: &[&str]) -> (PathBuf, Vec<PathBuf>) {
    let toml = format!(
        "seed = 5\n[model]\ndir = {:?}\n[data]\npath = {:?}\nheldout = false\n[collect]\nbatch_size = 4\nmax_batches = 3\nmax_new_tokens = 6\nquality_filter = false\n\
         [analysis]\ntop_k = 3\n[train]\nschedule = \"alternating\"\nlr = 0.05\nrouter_lr = 0.05\nshuffle_batches = false\nmax_len = 96\nvalid_pairs = 0\n",
        fixture(),
        attack_data(),
    );
    let (cfg, run) = collected_and_analysed(root, &toml);
    let runs = copies
        .iter()
        .map(|name| {
            let dest = root.join(name);
            copy_dir(&run, &dest);
            dest
        })
        .collect();
    (cfg, runs)
}

/// The names of the tensors of `run`'s final model that differ from the fixture's.
fn changed(run: &Path) -> Vec<String> {
    let before = tensor_bytes(&fixture().join("model.safetensors"));
    let after = tensor_bytes(&run.join("final_model/model.safetensors"));
    assert_eq!(before.len(), after.len());
    let mut names: Vec<String> = before
        .iter()
        .filter(|(k, v)| after[*k] != **v)
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    names
}

fn trained_experts(run: &Path) -> Vec<String> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("training_metadata.json")).unwrap())
            .unwrap();
    let mut names: Vec<String> = meta["unsafe_experts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            ["gate_proj", "up_proj", "down_proj"]
                .map(|w| format!("model.layers.{}.mlp.experts.{}.{w}.weight", p[0], p[1]))
        })
        .collect();
    names.sort();
    names
}

fn phases(s: &TrainSummary) -> Vec<&str> {
    s.steps.iter().map(|r| r.phase.as_str()).collect()
}

#[test]
fn expert_passes_move_only_chosen_experts_and_router_passes_only_routers() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg_path, runs) = analysed_runs(tmp.path(), &["experts", "routers", "both", "resumed"]);
    let set = |pairs: &[&str]| {
        let pairs: Vec<String> = pairs.iter().map(|s| s.to_string()).collect();
        Config::load(&cfg_path, &pairs).unwrap()
    };

    // Expert-only (one round, no router pass): the chosen experts change, nothing else.
    let cfg = set(&["train.rounds=1", "train.router_epochs=0"]);
    assert_eq!(cfg.train.schedule, Schedule::Alternating);
    let s = train_stage(&cfg, &runs[0], TrainOptions::default()).unwrap();
    assert_eq!(phases(&s), ["experts"; 3]);
    assert!(s.steps.iter().all(|r| r.lr == 0.05 && r.loss.is_finite()));
    let experts = trained_experts(&runs[0]);
    assert!(!experts.is_empty());
    assert_eq!(
        changed(&runs[0]),
        experts,
        "only the chosen experts changed"
    );

    // Router-only, two passes over the same batches in the same order: only the routers change,
    // and every batch's divergence is lower on the second pass than on the first.
    let cfg = set(&[
        "train.rounds=1",
        "train.expert_epochs=0",
        "train.router_epochs=2",
        "train.router_lr=0.01",
    ]);
    let s = train_stage(&cfg, &runs[1], TrainOptions::default()).unwrap();
    assert_eq!(phases(&s), ["routers"; 6]);
    assert!(s.steps.iter().all(|r| r.lr == 0.01));
    let routers: Vec<String> = (0..2)
        .map(|l| format!("model.layers.{l}.mlp.gate.weight"))
        .collect();
    assert_eq!(changed(&runs[1]), routers, "only the routers changed");
    let kl: Vec<f64> = s.steps.iter().map(|r| r.loss).collect();
    assert!(kl[..3].iter().all(|&k| k > 0.0), "{kl:?}");
    for b in 0..3 {
        assert_eq!(s.steps[b].batch_idx, s.steps[b + 3].batch_idx);
        assert!(
            kl[b + 3] < kl[b],
            "batch {}: divergence {} then {} ({kl:?})",
            s.steps[b].batch_idx,
            kl[b],
            kl[b + 3]
        );
    }

    // Two rounds of both: expert passes at train.lr, router passes at train.router_lr, in order;
    // experts and routers changed, nothing else.
    let cfg = set(&["train.rounds=2", "train.router_lr=0.001"]);
    let s = train_stage(&cfg, &runs[2], TrainOptions::default()).unwrap();
    let expected: Vec<&str> = ["experts", "routers", "experts", "routers"]
        .iter()
        .flat_map(|p| [*p; 3])
        .collect();
    assert_eq!(phases(&s), expected);
    for r in &s.steps {
        let lr = if r.phase == "routers" { 0.001 } else { 0.05 };
        assert_eq!(r.lr, lr, "step {}", r.step);
    }
    let mut both = trained_experts(&runs[2]);
    both.extend(routers);
    both.sort();
    assert_eq!(changed(&runs[2]), both);
    assert!(runs[2].join("loss_curve.png").is_file());

    // Stopped after the first round (one checkpoint per pass), then resumed: the same model.
    let part = train_stage(
        &cfg,
        &runs[3],
        TrainOptions {
            stop_after_windows: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(phases(&part), expected[..6]);
    let rest = train_stage(&cfg, &runs[3], TrainOptions::default()).unwrap();
    assert_eq!(
        (rest.resumed_from, phases(&rest)),
        (Some(2), expected[6..].to_vec())
    );
    assert_eq!(
        tensor_bytes(&runs[3].join("final_model/model.safetensors")),
        tensor_bytes(&runs[2].join("final_model/model.safetensors")),
        "resumed between rounds, bit-identical"
    );
}
