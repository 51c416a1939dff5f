//! Damaged run directories, repaired by a rerun of the same command: a stage counts as done only
//! when its artifacts exist and read back, so a missing or truncated artifact is redone (collect
//! redoes just the damaged batch, training resumes from its last whole checkpoint), never a
//! failure or a wrong result. A truncated checkpoint is set aside for the one before it, with a
//! warning naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("exp.toml");
    std::fs::write(
        &path,
        format!(
            "seed = 2\n[model]\ndir = {:?}\n[data]\npath = {:?}\nheldout = false\n[collect]\nbatch_size = 4\nmax_batches = 3\nmax_new_tokens = 4\nquality_filter = false\n\
             [analysis]\ntop_k = 3\n[train]\nlr = 0.05\ncheckpoint_every = 1\nepochs = 1\nmax_len = 96\n[eval]\nvariants = [\"trained\"]\nmax_goals = 2\nmax_benign = 2\nmax_new_tokens = 2\nbenign_path = {:?}\n",
            fixture(),
            attack_data(),
            benign_data(),
        ),
    )
    .unwrap();
    path
}

fn steermoe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_steermoe"))
        .arg("--no-tui")
        .args(args)
        .output()
        .expect("binary runs")
}

fn run_ok(cfg: &Path, out: &Path) -> String {
    let o = steermoe(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn truncate(p: &Path) {
    let bytes = read(p);
    std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
}

#[test]
fn every_damaged_artifact_is_redone_by_a_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path());
    let out = tmp.path().join("run");
    run_ok(&cfg, &out);
    let batch0 = out.join("routing/batch-00000.safetensors");
    let batch1 = out.join("routing/batch-00001.safetensors");
    let experts = out.join("unsafe_experts.json");
    let weights = out.join("final_model/model.safetensors");
    let eval = out.join("eval/trained/eval.json");
    let originals: Vec<(PathBuf, Vec<u8>)> = [&batch0, &batch1, &experts, &weights, &eval]
        .iter()
        .map(|p| (p.to_path_buf(), read(p)))
        .collect();

    // A deleted and a truncated routing file: collect redoes those batches, greedy and on the CPU,
    // to the same bytes; nothing after it needs redoing.
    std::fs::remove_file(&batch1).unwrap();
    truncate(&batch0);
    run_ok(&cfg, &out);
    // The exported model missing its weights (its metadata kept), and an analysis naming an
    // expert the model does not have: `train` alone refuses, naming the stage to run first…
    std::fs::remove_file(&weights).unwrap();
    let mut u: serde_json::Value = serde_json::from_slice(&read(&experts)).unwrap();
    u["union"][0] = serde_json::json!([0, 99]);
    std::fs::write(&experts, serde_json::to_vec(&u).unwrap()).unwrap();
    let o = steermoe(&["train", "--run", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("steermoe analyze") && !stderr.contains("panicked"),
        "{stderr}"
    );
    // …and `run` redoes the analysis, then the export from the last checkpoint.
    run_ok(&cfg, &out);
    for (path, bytes) in &originals {
        assert!(
            read(path) == *bytes,
            "{} differs from the undamaged run's",
            path.display()
        );
    }
}

#[test]
fn a_truncated_checkpoint_falls_back_to_the_one_before_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path());
    let (whole, damaged) = (tmp.path().join("whole"), tmp.path().join("damaged"));
    run_ok(&cfg, &whole);
    run_ok(&cfg, &damaged);
    // Undo the end of training (export and metadata) and cut the last checkpoint short: the
    // rerun resumes from the window before it and trains the last window again.
    for gone in ["final_model", "training_metadata.json", "eval"] {
        let p = damaged.join(gone);
        if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        }
        .unwrap();
    }
    let last = damaged.join("train/checkpoint/model-3.mpk");
    truncate(&last);
    let stderr = run_ok(&cfg, &damaged);
    assert!(
        stderr.contains("model-3.mpk") && stderr.contains("checkpoint 3 set aside"),
        "no warning naming the file: {stderr}"
    );
    assert!(
        !stderr.contains("format"),
        "the warning must not blame a format change: {stderr}"
    );
    assert_eq!(stderr.matches("set aside").count(), 1, "one line: {stderr}");
    let steps = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("loss").is_some())
            .map(|v| v["loss"].clone())
            .collect()
    };
    assert_eq!(
        steps(&damaged),
        steps(&whole),
        "each step once, with the uninterrupted run's losses"
    );
    assert!(
        read(&damaged.join("final_model/model.safetensors"))
            == read(&whole.join("final_model/model.safetensors")),
        "the same weights"
    );
}
