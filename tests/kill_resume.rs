//! `kill -9` of `steermoe run` at points spread over a run of the fixture (collect, analysis,
//! training, its checkpoints, the export), each followed by the same command: the run ends with
//! the weights, samples and step history of an uninterrupted run. Then two `run`s into one
//! directory at once: one works, the other is refused naming the holder.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("exp.toml");
    std::fs::write(
        &path,
        format!(
            "seed = 5\n[model]\ndir = {:?}\n[data]\npath = {:?}\n[collect]\nbatch_size = 4\nmax_batches = 4\nmax_new_tokens = 6\nquality_filter = false\n\
             [analysis]\ntop_k = 3\n[train]\nlr = 0.05\ncheckpoint_every = 1\nepochs = 2\nwarmup_steps = 1\nmax_len = 96\n[eval]\nvariants = []\n",
            fixture(),
            attack_data(),
        ),
    )
    .unwrap();
    path
}

fn run(cfg: &Path, out: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_steermoe"))
        .args([
            "--no-tui",
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs")
}

fn finish(cfg: &Path, out: &Path) {
    let o = run(cfg, out).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Each step's (step, loss, lr, batch) of `metrics.jsonl`.
type Steps = Vec<(u64, String, String, u64)>;

/// What must come out the same: the exported weights, the samples, and each step's
/// (step, loss, lr, batch) in `metrics.jsonl` (its timing fields differ between any two runs).
fn outcome(out: &Path) -> (Vec<u8>, Vec<u8>, Steps, serde_json::Value) {
    let steps = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].to_string(),
                v["lr"].to_string(),
                v["batch_idx"].as_u64().unwrap(),
            )
        })
        .collect();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training_metadata.json")).unwrap())
            .unwrap();
    (
        std::fs::read(out.join("final_model/model.safetensors")).unwrap(),
        std::fs::read(out.join("samples.jsonl")).unwrap(),
        steps,
        meta["first_loss"].clone(),
    )
}

#[test]
fn killed_anywhere_a_rerun_ends_as_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path());
    let reference = tmp.path().join("reference");
    let start = Instant::now();
    finish(&cfg, &reference);
    let whole = start.elapsed();
    let want = outcome(&reference);
    assert_eq!(want.2.len(), 8, "4 batches x 2 epochs, one record per step");

    // Kill points spread over an uninterrupted run's duration; each run is killed at every point
    // it reaches in turn (a kill, a rerun killed later, ...), then finished.
    let out = tmp.path().join("killed");
    let mut kills = 0;
    for frac in [0.15, 0.3, 0.45, 0.6, 0.75, 0.9] {
        let mut child = run(&cfg, &out);
        std::thread::sleep(whole.mul_f64(frac));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    finish(&cfg, &out);
    assert!(kills >= 3, "only {kills} runs were still going when killed");
    let got = outcome(&out);
    assert_eq!(got.1, want.1, "samples.jsonl");
    assert_eq!(
        got.2, want.2,
        "metrics.jsonl: steps, losses, learning rates, batches"
    );
    assert_eq!(got.3, want.3, "training_metadata.json: first_loss");
    assert!(
        got.0 == want.0,
        "final_model/model.safetensors differs from the uninterrupted run's"
    );
    let leftovers: Vec<String> = walk(&out)
        .into_iter()
        .filter(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|f| f.to_string_lossy().contains(".tmp"))
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn a_second_run_into_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path());
    let out = tmp.path().join("run");
    let mut first = run(&cfg, &out);
    // Wait until the first holds the directory.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.join(".lock").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let second = run(&cfg, &out).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    if first.try_wait().unwrap().is_none() {
        assert_eq!(second.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("is in use by another steermoe process")
                && stderr.contains(&format!("pid {}", first.id())),
            "{stderr}"
        );
    }
    assert!(first.wait().unwrap().success());
}
