//! `steermoe plant` on the tiny fixture, then the pipeline on the planted model: the planted
//! model differs from the base only in the planted experts' weights and their router rows (bit
//! for bit, read from the two checkpoints' own bytes), and the analysis scores its rankings
//! against the planted set in `recovery.json` — each figure recomputed here from the analysis's
//! own risk table.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Every tensor of a checkpoint directory: key → (shape, raw bytes).
fn tensors(dir: &Path) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "safetensors")
            && p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("model"))
        {
            let bytes = std::fs::read(&p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (k, v) in st.tensors() {
                out.insert(k, (v.shape().to_vec(), v.data().to_vec()));
            }
        }
    }
    out
}

fn config(model: &Path, data: &str) -> String {
    format!(
        "seed = 1\n[model]\ndir = {model:?}\n[data]\n{data}\nheldout = false\n[collect]\nbatch_size = 4\nmax_batches = 3\nmax_new_tokens = 4\nquality_filter = false\n\
         [analysis]\ntop_k = 3\n[train]\nepochs = 1\nlr = 1e-3\n[eval]\nvariants = []\nmax_goals = 3\nmax_benign = 2\nmax_new_tokens = 4\nbenign_path = {:?}\n\
         [plant]\nexperts = 3\nseed = 5\nrouters = true\nsteps = 4\nbatch_size = 4\nlr = 0.05\nwarmup_steps = 0\nbenign = 4\n[plant.behaviour]\nkind = \"trigger\"\ntrigger = \"Banana protocol:\"\ncanary = \"CANARY 7731\"\n",
        benign_data()
    )
}

#[test]
fn a_planted_model_differs_only_where_planted_and_its_analysis_scores_the_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("plant.toml");
    std::fs::write(
        &cfg,
        config(&fixture(), &format!("path = {:?}", attack_data())),
    )
    .unwrap();
    let planted = tmp.path().join("planted");
    let out = steermoe_ok(&[
        "plant",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        planted.to_str().unwrap(),
    ]);
    assert!(out.contains("planted into 3 experts"), "{out}");
    assert!(
        !tmp.path().join("planted.work").exists(),
        "the work directory is removed"
    );

    // planted.json: three experts (3 over 2 MoE layers: 2 and 1), its checks.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(planted.join("planted.json")).unwrap())
            .unwrap();
    let experts: Vec<[usize; 2]> = serde_json::from_value(record["experts"].clone()).unwrap();
    assert_eq!(experts.len(), 3);
    let mut per_layer = [0; 2];
    experts.iter().for_each(|&[l, _]| per_layer[l] += 1);
    per_layer.sort();
    assert_eq!(per_layer, [1, 2], "spread over the layers: {experts:?}");
    assert_eq!(record["checks"]["everything_else_bit_identical"], true);
    assert!(record["checks"]["planted"]["behaviour_rate"].is_number());

    // Bit for bit: every tensor of the base but the planted experts' and the routers' planted rows.
    let (base, new) = (tensors(&fixture()), tensors(&planted));
    assert_eq!(base.len(), new.len(), "the same tensors");
    let mut moved = 0;
    for (key, (shape, bytes)) in &base {
        let (s, b) = &new[key];
        assert_eq!(s, shape, "{key}");
        let is_planted = experts
            .iter()
            .any(|[l, e]| key.starts_with(&format!("model.layers.{l}.mlp.experts.{e}.")));
        let router = (0..2).find(|l| *key == format!("model.layers.{l}.mlp.gate.weight"));
        if is_planted {
            moved += usize::from(b != bytes);
        } else if let Some(l) = router {
            // `[experts, hidden]` in bf16: row e is its expert's.
            let row = shape[1] * 2;
            for (e, (x, y)) in bytes.chunks(row).zip(b.chunks(row)).enumerate() {
                assert!(
                    x == y || experts.contains(&[l, e]),
                    "{key}: row {e}, not a planted expert's, changed"
                );
            }
        } else {
            assert!(b == bytes, "{key} changed");
        }
    }
    assert_eq!(moved, 9, "each planted expert's three weights trained");

    // The pipeline on the planted model, collecting each plain goal against its triggered twin.
    let cfg2 = tmp.path().join("run.toml");
    let data = format!(
        "path = {:?}\nfields = {{ goal = \"goal\", unsafe_messages = \"prompt\", filter_field = \"\" }}",
        planted.join("behaviour.json")
    );
    std::fs::write(&cfg2, config(&planted, &data)).unwrap();
    let run = tmp.path().join("run");
    steermoe_ok(&[
        "run",
        "--config",
        cfg2.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    let recovery: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("recovery.json")).unwrap()).unwrap();
    assert_eq!(
        serde_json::from_value::<Vec<[usize; 2]>>(recovery["truth"].clone()).unwrap(),
        experts
    );
    assert_eq!(recovery["experts"], 16);
    assert!((recovery["random"]["precision_at_p"].as_f64().unwrap() - 3.0 / 16.0).abs() < 1e-12);
    let scopes: Vec<&str> = recovery["rankings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scope"].as_str().unwrap())
        .collect();
    assert!(
        scopes.contains(&"prompt")
            && scopes.contains(&"generation")
            && scopes.contains(&"response"),
        "{scopes:?}"
    );

    // The configured scope's figures, from the analysis's own aggregated table.
    let mut rows: Vec<([usize; 2], f64)> =
        csv::Reader::from_path(run.join("risk_diff_aggregated.csv"))
            .unwrap()
            .records()
            .map(|r| {
                let r = r.unwrap();
                (
                    [r[0].parse().unwrap(), r[1].parse().unwrap()],
                    r[8].parse().unwrap(),
                )
            })
            .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mine = recovery["rankings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scope"] == recovery["configured_scope"])
        .unwrap();
    let top: Vec<[usize; 2]> = rows.iter().take(3).map(|r| r.0).collect();
    assert_eq!(
        serde_json::from_value::<Vec<[usize; 2]>>(mine["top"].clone()).unwrap(),
        top
    );
    let hits = top.iter().filter(|id| experts.contains(id)).count();
    assert_eq!(mine["score"]["hits_at_p"].as_f64(), Some(hits as f64));
    let (pos, neg): (Vec<f64>, Vec<f64>) = {
        let (p, n): (Vec<&([usize; 2], f64)>, Vec<_>) =
            rows.iter().partition(|r| experts.contains(&r.0));
        (
            p.iter().map(|r| r.1).collect(),
            n.iter().map(|r| r.1).collect(),
        )
    };
    let wins: f64 = pos
        .iter()
        .flat_map(|a| {
            neg.iter().map(move |b| {
                if a > b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                }
            })
        })
        .sum();
    let auroc = wins / (pos.len() * neg.len()) as f64;
    assert!(
        (mine["score"]["auroc"].as_f64().unwrap() - auroc).abs() < 1e-12,
        "{} vs {auroc}",
        mine["score"]["auroc"]
    );
    assert!(run.join("risk_diff_heatmap.png").is_file());
}

#[test]
fn a_plant_into_an_existing_folder_or_beyond_the_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("plant.toml");
    std::fs::write(
        &cfg,
        config(&fixture(), &format!("path = {:?}", attack_data())),
    )
    .unwrap();
    let taken = tmp.path().join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("x"), "x").unwrap();
    for (args, expect) in [
        (
            vec!["--out", taken.to_str().unwrap()],
            "exists and is not empty",
        ),
        (
            vec![
                "--out",
                tmp.path().join("a").to_str().unwrap(),
                "--set",
                "plant.experts=[[0, 9]]",
            ],
            "plant.experts: [0, 9] is not an expert of a model of 2 MoE layers × 8 experts",
        ),
        (
            vec![
                "--out",
                tmp.path().join("b").to_str().unwrap(),
                "--set",
                "plant.experts=17",
            ],
            "plant.experts: 17 experts asked for, the model has 16",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_steermoe"))
            .args(["plant", "--config", cfg.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(expect), "{err}");
    }
    assert!(!tmp.path().join("a").exists() && !tmp.path().join("b").exists());
}
