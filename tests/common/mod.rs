//! Shared test helpers: the test backends, the repository's fixtures and data, and readers for
//! the fixtures' transformers references.
#![allow(dead_code)]

use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};

/// The backend the suite runs on: CPU by default, wgpu or CUDA by feature.
#[cfg(not(any(feature = "test-wgpu", feature = "test-cuda")))]
pub type TestBackend = burn::backend::NdArray<f32>;
/// The backend the suite runs on.
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
pub type TestBackend = burn::backend::Wgpu;
/// The backend the suite runs on.
#[cfg(feature = "test-cuda")]
pub type TestBackend = burn::backend::Cuda;
/// Autodiff on the test backend.
pub type TestAutodiffBackend = burn::backend::Autodiff<TestBackend>;

/// The train stage of `cfg` in the analysed run `run` alone, through the pipeline (what
/// `steermoe train` runs) on the test backend, with training's own knobs `opts`. The error is the
/// library's own, so that a test can match its variant.
#[allow(clippy::result_large_err)]
pub fn train_stage(
    cfg: &steermoe::config::Config,
    run: &std::path::Path,
    opts: steermoe::train::TrainOptions,
) -> Result<steermoe::train::TrainSummary, steermoe::Error> {
    use steermoe::pipeline::{self, Env, Event, Models, Resume};
    let device = Default::default();
    let models = Models::<TestAutodiffBackend>::default();
    let env = Env {
        device: &device,
        models: &models,
        provenance: serde_json::json!({}),
        train: opts,
    };
    let summary = std::sync::Mutex::new(None);
    let on_event = |e: Event| {
        if let Event::Trained(s) = e {
            *summary.lock().unwrap() = Some(*s);
        }
    };
    pipeline::run(
        cfg,
        &steermoe::run_dir::RunDir::new(run),
        Some(steermoe::run_dir::Stage::Train),
        &env,
        &Resume,
        &on_event,
    )?;
    Ok(summary.into_inner().unwrap().expect("the train stage ran"))
}

/// What training reads from the analysed run `run` under `cfg` (no validation pairs).
pub fn train_inputs(
    cfg: &steermoe::config::Config,
    run: &std::path::Path,
) -> steermoe::train::TrainInputs {
    let tokenizer = cfg.model.tokenizer(&cfg.model.dir).unwrap();
    let model_cfg = steermoe::model::ModelConfig::from_path(&cfg.model.dir).unwrap();
    steermoe::train::TrainInputs::read(
        &steermoe::run_dir::RunDir::new(run),
        &cfg.train,
        &tokenizer,
        model_cfg,
        Vec::new(),
    )
    .unwrap()
}

/// Write `toml` to `root/exp.toml`, then `steermoe collect` and `steermoe analyze` it into
/// `root/run`; returns (config path, run directory).
pub fn collected_and_analysed(root: &std::path::Path, toml: &str) -> (PathBuf, PathBuf) {
    let cfg = root.join("exp.toml");
    std::fs::write(&cfg, toml).unwrap();
    let run = root.join("run");
    for args in [
        vec![
            "collect",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        vec!["analyze", "--run", run.to_str().unwrap()],
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_steermoe"))
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    (cfg, run)
}

/// A path inside the repository.
pub fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The attack dataset the embedded organism is measured on (FlipAttack jailbreaks of AdvBench
/// goals, `models/data/`).
pub fn attack_data() -> PathBuf {
    repo("models/data/flipattack.json")
}

/// The benign instructions with reference answers (AlpacaEval, `models/data/`).
pub fn benign_data() -> PathBuf {
    repo("models/data/alpaca-eval.json")
}

/// The tiny OLMoE fixture made by `tests/hf/make_olmoe_fixture.py --variant main --seed 0`
/// (transformers 5.17): 2 layers of 8 experts, top-2, hidden 32, tied embeddings, hub-style
/// config, the OLMoE tokenizer and chat template.
pub fn fixture() -> PathBuf {
    repo("tests/fixtures/olmoe-tiny")
}

/// The `alt` fixture made by `tests/hf/make_olmoe_fixture.py --variant alt --seed 0`
/// (transformers 5.17): grouped-query attention, renormalised top-k, clip_qkv, 2 shards (the tied embedding fills one),
/// transformers-5 config.
pub fn alt_fixture() -> PathBuf {
    repo("tests/fixtures/olmoe-alt")
}

/// The Qwen3-MoE fixture made by `tests/hf/make_qwen3_fixture.py --seed 2` (transformers
/// 5.17): per-head q/k norms, head_dim 16 ≠ 16 / 4, MoE layers 1 and 5 of 6 (the others dense),
/// GQA, renormalised top-k, an untied LM head, 3 shards, transformers-5 config
/// (`num_local_experts`).
pub fn qwen3_fixture() -> PathBuf {
    repo("tests/fixtures/qwen3-moe-tiny")
}

/// Every fixture, named: the two OLMoE ones and the Qwen3-MoE one.
pub fn fixtures() -> [(&'static str, PathBuf); 3] {
    [
        ("main", fixture()),
        ("alt", alt_fixture()),
        ("qwen3", qwen3_fixture()),
    ]
}

/// The method at toy size on a fixture model, as TOML: 2 collect batches of 4 with 4-token
/// answers, the top 3 experts, one epoch, 4 held-out goals and 2 benign instructions, one
/// steering setting; `model_lines` go into `[model]`, `tail` after it all (e.g. a `[sweep]` table).
pub fn tiny_method_toml(model_dir: &std::path::Path, model_lines: &str, tail: &str) -> String {
    format!(
        r#"seed = 0
[model]
dir = {:?}
{model_lines}
[data]
path = {:?}
heldout = false
[collect]
batch_size = 4
max_batches = 2
max_new_tokens = 4
quality_filter = false
[analysis]
top_k = 3
[train]
epochs = 1
lr = 1e-3
[eval]
variants = ["base", "steer-a1", "trained"]
max_goals = 4
max_benign = 2
max_new_tokens = 4
benign_path = {:?}
{tail}"#,
        model_dir,
        attack_data(),
        benign_data(),
    )
}

/// `reference.json` of a fixture directory.
pub fn reference_json(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json parses")
}

/// A reference tensor: shape and values as f64 (floats and ints alike).
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl RefTensor {
    pub fn f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }
    pub fn i64(&self) -> Vec<i64> {
        self.values.iter().map(|&v| v as i64).collect()
    }
}

/// Read tensor `name` of a fixture directory's `reference.safetensors`.
pub fn reference(dir: &std::path::Path, name: &str) -> RefTensor {
    let bytes = std::fs::read(dir.join("reference.safetensors")).expect("reference.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("reference parses");
    let view = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("reference has no tensor {name}"));
    let values = match view.dtype() {
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::I64 => view
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    RefTensor {
        shape: view.shape().to_vec(),
        values,
    }
}

/// Largest absolute difference, with the index where it occurs.
pub fn max_abs_diff(actual: &[f32], expected: &[f32]) -> (f32, usize) {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .enumerate()
        .fold((0.0f32, 0usize), |(m, mi), (i, d)| {
            if d > m || d.is_nan() { (d, i) } else { (m, mi) }
        })
}

/// Assert `actual` is within `tol` of `expected` everywhere, printing the measured error.
pub fn assert_close(name: &str, actual: &[f32], expected: &[f32], tol: f32) {
    let (err, at) = max_abs_diff(actual, expected);
    eprintln!("{name}: max abs error {err:.3e} (tolerance {tol:.0e})");
    assert!(
        err <= tol,
        "{name}: max abs error {err:e} at index {at}: got {}, expected {}",
        actual[at],
        expected[at]
    );
}

/// Copy the directory `from` into `to`, recursively.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Every tensor of a safetensors file: its raw bytes by name.
pub fn tensor_bytes(path: &std::path::Path) -> std::collections::HashMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, v.data().to_vec()))
        .collect()
}

/// Run the `steermoe` binary without the dashboard; its stdout, after asserting that it
/// succeeded (its stderr in the message otherwise).
pub fn steermoe_ok(args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_steermoe"))
        .arg("--no-tui")
        .args(args)
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "steermoe {args:?}: {stderr}");
    String::from_utf8_lossy(&o.stdout).to_string()
}
