//! The stages on the fixture model through the binary: `collect` writes a complete run
//! directory and resumes, `analyze` writes every artifact, byte-identically on a rerun.

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn steermoe(args: &[&str]) -> std::process::Output {
    let o = Command::new(env!("CARGO_BIN_EXE_steermoe"))
        .args(args)
        .output()
        .expect("binary runs");
    assert!(
        o.status.success(),
        "steermoe {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A collect config for the fixture with paths that work from any directory.
fn config(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        "seed = 0\n[model]\ndir = {:?}\n[data]\npath = {:?}\n[collect]\nbatch_size = 4\nmax_batches = 2\nmax_new_tokens = 5\nquality_filter = false\n[analysis]\ntop_k = 4\n",
        fixture(),
        attack_data(),
    );
    let path = dir.join("exp.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn collect_resume_and_analyze() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let run = tmp.path().join("run");
    let (cfg_s, run_s) = (cfg.to_str().unwrap(), run.to_str().unwrap());
    steermoe(&["collect", "--config", cfg_s, "--out", run_s]);
    for f in [
        "config.toml",
        "samples.jsonl",
        "routing/index.json",
        "routing/batch-00000.safetensors",
        "routing/batch-00001.json",
    ] {
        assert!(run.join(f).is_file(), "{f} written");
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8, "2 batches of 4");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["batch_idx"], i / 4);
        assert_eq!(l["in_batch_idx"], i % 4);
        assert_eq!(l["label"], if i % 4 < 2 { "safe" } else { "unsafe" });
        assert_eq!(l["new_ids"].as_array().unwrap().len(), 5);
    }
    assert_eq!(lines[0]["goal"], lines[2]["goal"], "a pair shares its goal");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("routing/index.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            index["layers"].as_u64(),
            index["experts"].as_u64(),
            index["top_k"].as_u64()
        ),
        (Some(2), Some(8), Some(2))
    );

    // A second run finds every batch finished and generates nothing.
    let before = std::fs::read(run.join("routing/batch-00000.safetensors")).unwrap();
    let out = steermoe(&["collect", "--config", cfg_s, "--out", run_s]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("collect: done already"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        before,
        std::fs::read(run.join("routing/batch-00000.safetensors")).unwrap()
    );

    let out = steermoe(&["analyze", "--run", run_s]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("analysed 2 batches"));
    let outputs = [
        "risk_diff.csv",
        "risk_diff_aggregated.csv",
        "unsafe_experts.json",
        "expert_masks.safetensors",
        "risk_diff_heatmap.png",
    ];
    let first: Vec<Vec<u8>> = outputs
        .iter()
        .map(|f| std::fs::read(run.join(f)).unwrap())
        .collect();
    let header = String::from_utf8(first[1].clone()).unwrap();
    assert!(header.starts_with(
        "layer,expert,a_safe,d_safe,a_unsafe,d_unsafe,a_safe_n,a_unsafe_n,risk_diff,risk_diff_abs\n"
    ));
    assert_eq!(header.lines().count(), 1 + 2 * 8);
    let experts: serde_json::Value = serde_json::from_slice(&first[2]).unwrap();
    assert_eq!(experts["per_batch"].as_array().unwrap().len(), 2);
    assert!(experts["per_batch"][0].as_array().unwrap().len() <= 4);
    assert_eq!(experts["params"]["token_scope"], "generation");
    // The heatmap is a PNG (2 layers x 8 experts, 48-pixel cells, with axes and a colour bar).
    let decoder = png::Decoder::new(std::io::Cursor::new(first[4].clone()));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (8 * 48 + 260, 2 * 48 + 150));
    // A finished analysis is kept; redone (its files removed), the same inputs give the same bytes.
    assert!(
        String::from_utf8_lossy(&steermoe(&["analyze", "--run", run_s]).stdout)
            .contains("analyze: done already")
    );
    for f in outputs {
        std::fs::remove_file(run.join(f)).unwrap();
    }
    steermoe(&["analyze", "--run", run_s]);
    for (f, bytes) in outputs.iter().zip(&first) {
        assert_eq!(
            &std::fs::read(run.join(f)).unwrap(),
            bytes,
            "{f} is byte-identical on a rerun"
        );
    }
}

/// `collect.generate_batches = 2` answers the two batches in one generation call: each batch
/// keeps its own samples, with the answers (and routed experts) of one batch at a time.
#[test]
fn batches_answered_together_give_the_same_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let together = tmp.path().join("together.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[collect]\n", "[collect]\ngenerate_batches = 2\n");
    std::fs::write(&together, text).unwrap();
    let samples = |cfg: &Path, name: &str| {
        let run = tmp.path().join(name);
        let (c, r) = (cfg.to_str().unwrap(), run.to_str().unwrap());
        steermoe(&["collect", "--config", c, "--out", r]);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("samples.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let batches = std::fs::read_dir(run.join("routing"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".safetensors")
            })
            .count();
        (lines, batches)
    };
    let (one, one_files) = samples(&cfg, "one");
    let (two, two_files) = samples(&together, "two");
    assert_eq!(one.len(), 8);
    assert_eq!((one_files, two_files), (2, 2), "a routing file per batch");
    assert_eq!(one, two);
}
