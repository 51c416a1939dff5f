//! `steermoe run` end to end on the embedded organism, small: the same config run twice gives
//! the same bytes in every artifact (but wall-clock throughput and burn's checkpoint records),
//! and it runs to the end on wgpu too (ignored here; `.ci/run` runs it on lavapipe).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn steermoe(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_steermoe"))
        .args(["--no-tui"])
        .args(args)
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "steermoe {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// Two mixed batches of 4, a few new tokens, one epoch, a handful of held-out prompts.
fn config(dir: &Path, backend: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        r#"seed = 0
[model]
dir = {model:?}
backend = "{backend}"
[data]
path = {data:?}
split = {split:?}
split_key = "flipattack"
[collect]
batch_size = 4
max_batches = 2
max_new_tokens = 6
quality_filter = false
[analysis]
top_k = 4
[train]
epochs = 1
warmup_steps = 1
max_len = 96
[eval]
max_goals = 4
max_benign = 4
max_new_tokens = 6
benign_path = {benign:?}
"#,
        model = root.join("models/olmoe-organism"),
        split = root.join("models/data/split.json"),
        data = attack_data(),
        benign = benign_data(),
    );
    let path = dir.join(format!("{backend}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Every file under `dir`, by relative path.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(
                    path.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    out
}

fn run(tmp: &Path, backend: &str, name: &str) -> PathBuf {
    let cfg = config(tmp, backend);
    let out = tmp.join(name);
    let stdout = steermoe(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("jailbreak ASR"),
        "the before/after table is printed:\n{stdout}"
    );
    out
}

/// What a rerun may change: wall-clock throughput in `metrics.jsonl`, the effect rankings'
/// timings in `effects.json`, burn's checkpoints (`train/checkpoint/*.mpk`), whose records carry
/// randomly drawn parameter ids (the weights they hold are compared through `final_model/`), and
/// the lock file's pid.
fn comparable(files: BTreeMap<PathBuf, Vec<u8>>) -> BTreeMap<PathBuf, Vec<u8>> {
    files
        .into_iter()
        .filter(|(f, _)| !f.starts_with("train/checkpoint") && f != Path::new(".lock"))
        .map(|(f, bytes)| {
            if f == Path::new("effects.json") {
                let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let record = v.as_object_mut().unwrap();
                for timing in ["attribution_seconds", "ablation_seconds"] {
                    record
                        .remove(timing)
                        .unwrap_or_else(|| panic!("effects.json records {timing}"));
                }
                return (f, v.to_string().into_bytes());
            }
            if f != Path::new("metrics.jsonl") {
                return (f, bytes);
            }
            let lines: Vec<String> = String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|l| {
                    let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                    let record = v.as_object_mut().unwrap();
                    if !record.contains_key("valid_loss") {
                        record
                            .remove("tokens_per_s")
                            .expect("a step records tokens_per_s");
                    }
                    v.to_string()
                })
                .collect();
            (f, lines.join("\n").into_bytes())
        })
        .collect()
}

#[test]
fn same_config_twice_gives_identical_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    // Both runs write to the same path (the first is moved aside), as a user rerunning would.
    let out = run(tmp.path(), "cpu", "run");
    std::fs::rename(&out, tmp.path().join("first")).unwrap();
    let a = comparable(files(&tmp.path().join("first")));
    let b = comparable(files(&run(tmp.path(), "cpu", "run")));
    for f in [
        "config.toml",
        "samples.jsonl",
        "unsafe_experts.json",
        "metrics.jsonl",
        "final_model/model.safetensors",
        "eval/trained/eval.json",
    ] {
        assert!(a.contains_key(Path::new(f)), "{f} written");
    }
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same files"
    );
    let differ: Vec<_> = a
        .iter()
        .filter(|(f, bytes)| b[*f] != **bytes)
        .map(|(f, _)| f.display().to_string())
        .collect();
    println!("{} files compared byte for byte", a.len());
    assert!(
        differ.is_empty(),
        "files differ between two runs of one config: {differ:?}"
    );
}

#[test]
#[ignore = "wgpu: lavapipe in CI (.ci/run), or a GPU"]
fn run_on_wgpu_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(tmp.path(), "wgpu", "wgpu");
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval/trained/eval.json")).unwrap())
            .unwrap();
    let asr = eval["asr"].as_f64().expect("asr is a number");
    assert!((0.0..=1.0).contains(&asr), "asr {asr}");
    println!("wgpu run finished: trained asr {asr}");
}
