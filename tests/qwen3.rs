//! Qwen3-MoE beyond the shared parity cases (which run every fixture, this one included, on the
//! CPU, wgpu and CUDA): the chat template with and without `enable_thinking`, greedy generation,
//! bad configs, and the whole method — collect → analyze → train → eval, and a sweep — through
//! the binary on the tiny Qwen3 fixture.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use safetensors::SafeTensors;
use steermoe::data::{ChatTokenizer, Message};
use steermoe::generate::{GenerateOptions, Sampling, generate};
use steermoe::model::{self, Precision, Routing};

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn chat_template_with_and_without_thinking_equals_transformers() {
    let reference = reference_json(&qwen3_fixture());
    for (key, thinking) in [
        ("chat", Some(false)),
        ("chat_train", Some(false)),
        ("chat_thinking_default", None),
    ] {
        let tok = ChatTokenizer::from_dir(qwen3_fixture())
            .unwrap()
            .with_enable_thinking(thinking);
        let entry = &reference[key];
        let msgs: Vec<Message> = serde_json::from_value(entry["messages"].clone()).unwrap();
        let text = tok
            .render(&msgs, entry["add_generation_prompt"].as_bool().unwrap())
            .unwrap();
        assert_eq!(text, entry["text"].as_str().unwrap(), "{key} text");
        assert_eq!(
            tok.encode(&text).unwrap(),
            ids_of(&entry["ids"]),
            "{key} ids"
        );
    }
    // With thinking off the prompt ends in an empty think block and begins the full conversation.
    let prompt = reference["chat"]["text"].as_str().unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    assert!(
        reference["chat_train"]["text"]
            .as_str()
            .unwrap()
            .starts_with(prompt)
    );
}

#[test]
fn greedy_tokens_equal_transformers_generate() {
    let (model, _) =
        model::load::<TestBackend>(qwen3_fixture(), &Default::default(), Precision::F32).unwrap();
    assert_eq!(model.moe_layers(), vec![1, 5]);
    let greedy = &reference_json(&qwen3_fixture())["greedy"];
    let tok = ChatTokenizer::from_dir(qwen3_fixture()).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 16,
        sampling: Sampling::Greedy,
        stop_ids: vec![],
        pad_id: tok.pad_id,
        capture: true,
    };
    let out = generate(
        &model,
        &[ids_of(&greedy["prompt_ids"])],
        &opts,
        &Routing::free(),
        &Default::default(),
        |_| {},
    );
    assert_eq!(out[0].new_ids, ids_of(&greedy["new_ids"]));
}

fn steermoe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_steermoe"))
        .args(args)
        .output()
        .expect("binary runs")
}

/// A copy of the fixture's model files with `from` replaced by `to` in config.json.
fn broken_copy(from: &str, to: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(qwen3_fixture()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(from), "config.json has {from}");
    std::fs::write(&cfg, text.replace(from, to)).unwrap();
    tmp
}

/// `steermoe forward` on a broken copy: exit 1, one line naming the key and the tensor.
fn forward_error(dir: &Path) -> String {
    let out = dir.join("out.safetensors");
    let o = steermoe(&[
        "forward",
        "--model",
        dir.to_str().unwrap(),
        "--input-ids",
        "1,2,3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists(), "nothing written");
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn bad_qwen3_configs_fail_with_one_line_naming_key_and_tensor() {
    let dense_beyond = broken_copy(
        "\"mlp_only_layers\": [\n    3\n  ]",
        "\"mlp_only_layers\": [\n    3, 7\n  ]",
    );
    let err = forward_error(dense_beyond.path());
    assert!(err.ends_with("config.json: mlp_only_layers: layer 7 is beyond the model's 6 layers (num_hidden_layers): there is no model.layers.7"), "{err}");

    let head_dim = broken_copy("\"head_dim\": 16", "\"head_dim\": 8");
    let err = forward_error(head_dim.path());
    assert!(
        err.contains("tensor model.layers.0.self_attn.q_proj.weight has shape [64, 16], expected [32, 16], from config.json's hidden_size, num_attention_heads, head_dim"),
        "{err}"
    );

    // A layer said to be MoE whose checkpoint holds a dense MLP.
    let moe_said_dense = broken_copy(
        "\"mlp_only_layers\": [\n    3\n  ]",
        "\"mlp_only_layers\": []",
    );
    let err = forward_error(moe_said_dense.path());
    assert!(
        err.contains("tensor model.layers.3.mlp.gate.weight is missing"),
        "{err}"
    );
    assert!(
        err.contains("decoder_sparse_step, mlp_only_layers"),
        "{err}"
    );
}

/// The method's config on the Qwen3 fixture (thinking off, as `configs/qwen3-30b-a3b-cuda.toml`).
fn config(dir: &Path, sweep: bool) -> std::path::PathBuf {
    let sweep_table =
        "[sweep]\nseeds = [0]\n[sweep.axes]\n\"analysis.experts\" = [\"risk_diff\", \"random\"]\n";
    let text = tiny_method_toml(
        &qwen3_fixture(),
        "enable_thinking = false",
        if sweep { sweep_table } else { "" },
    );
    let path = dir.join(if sweep { "sweep.toml" } else { "run.toml" });
    std::fs::write(&path, text).unwrap();
    path
}

/// Every tensor of a checkpoint directory's safetensors files: key → raw bytes.
fn tensors(dir: &Path) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("model") && name.ends_with(".safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            for (key, view) in SafeTensors::deserialize(&bytes).unwrap().tensors() {
                out.insert(key, view.data().to_vec());
            }
        }
    }
    out
}

#[test]
fn the_whole_method_runs_on_qwen3() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let cfg = config(tmp.path(), false);
    let o = steermoe(&[
        "--no-tui",
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "run failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );

    // Routing is recorded for the MoE layers only, and says which they are.
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("routing/index.json")).unwrap())
            .unwrap();
    assert_eq!(index["layers"], 2);
    assert_eq!(index["moe_layers"], serde_json::json!([1, 5]));
    assert_eq!(
        (index["experts"].as_u64(), index["top_k"].as_u64()),
        (Some(10), Some(3))
    );
    let risk = std::fs::read_to_string(run.join("risk_diff_aggregated.csv")).unwrap();
    assert_eq!(risk.lines().count(), 1 + 2 * 10);

    // Training changed the chosen experts of their decoder layers and nothing else.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("training_metadata.json")).unwrap())
            .unwrap();
    let moe_layers = [1, 5];
    let trained: Vec<String> = meta["unsafe_experts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "model.layers.{}.mlp.experts.{}.",
                moe_layers[p[0].as_u64().unwrap() as usize],
                p[1]
            )
        })
        .collect();
    assert!(!trained.is_empty());
    let before = tensors(&qwen3_fixture());
    let after = tensors(&run.join("final_model"));
    assert_eq!(before.len(), after.len());
    for (key, bytes) in &before {
        let is_trained = trained.iter().any(|p| key.starts_with(p.as_str()));
        assert_eq!(
            after[key] != *bytes,
            is_trained,
            "{key}: changed iff trained"
        );
    }
    // The exported model is a Qwen3-MoE checkpoint steermoe loads back.
    let (_, cfg2) =
        model::load::<TestBackend>(run.join("final_model"), &Default::default(), Precision::F32)
            .unwrap();
    assert_eq!(cfg2.moe_layers, vec![1, 5]);
    for variant in ["base", "steer-a1", "trained"] {
        assert!(
            run.join("eval").join(variant).join("eval.json").is_file(),
            "eval/{variant}"
        );
    }

    // The sweep: both expert sources, one seed.
    let out = tmp.path().join("sweep");
    let cfg = config(tmp.path(), true);
    let o = steermoe(&[
        "sweep",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--jobs",
        "2",
    ]);
    assert!(
        o.status.success(),
        "sweep failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows = csv::Reader::from_path(out.join("results.csv"))
        .unwrap()
        .records()
        .count();
    assert_eq!(rows, 2 * 3, "2 cells x (base, steer-a1, trained)");
}
