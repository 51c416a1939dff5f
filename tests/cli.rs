//! The `steermoe` binary: `forward` against the reference, and bad inputs that must fail with a
//! one-line error naming the file and the field or tensor, exit code 1.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;
use safetensors::SafeTensors;

fn steermoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_steermoe"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn ids_arg(dir: &Path, name: &str) -> String {
    let r = reference(dir, name);
    r.i64()
        .chunks(r.shape[1])
        .map(|row| {
            row.iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn read_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap();
    let values = v
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (v.shape().to_vec(), values)
}

#[test]
fn forward_writes_reference_logits_and_router_logits() {
    for (name, dir) in fixtures() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out.safetensors");
        let o = steermoe(&[
            "forward",
            "--model",
            dir.to_str().unwrap(),
            "--input-ids",
            &ids_arg(&dir, "forward.input_ids"),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (shape, logits) = read_f32(&out, "logits");
        let [b, s, v] = [shape[0], shape[1], shape[2]];
        let head: Vec<f32> = logits
            .chunks(v)
            .flat_map(|row| row[..256].to_vec())
            .collect();
        assert_eq!(head.len(), b * s * 256);
        assert_close(
            &format!("{name} cli logits_head"),
            &head,
            &reference(&dir, "forward.logits_head").f32(),
            1e-4,
        );
        let (_, router) = read_f32(&out, "router_logits");
        assert_close(
            &format!("{name} cli router_logits"),
            &router,
            &reference(&dir, "forward.router_logits").f32(),
            1e-5,
        );
    }
}

#[test]
fn forward_applies_a_mask_file() {
    for (name, dir) in fixtures() {
        let tmp = tempfile::tempdir().unwrap();
        let mask = reference(&dir, "masked.expert_mask");
        let bytes: Vec<u8> = mask.f32().iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            mask.shape.clone(),
            &bytes,
        )
        .unwrap();
        let mask_path = tmp.path().join("mask.safetensors");
        safetensors::serialize_to_file([("mask", view)], None, &mask_path).unwrap();
        let out = tmp.path().join("out.safetensors");
        let o = steermoe(&[
            "forward",
            "--model",
            dir.to_str().unwrap(),
            "--input-ids",
            &ids_arg(&dir, "masked.input_ids"),
            "--mask",
            mask_path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (shape, logits) = read_f32(&out, "logits");
        let head: Vec<f32> = logits
            .chunks(shape[2])
            .flat_map(|row| row[..256].to_vec())
            .collect();
        assert_close(
            &format!("{name} cli masked logits_head"),
            &head,
            &reference(&dir, "masked.logits_head").f32(),
            1e-4,
        );
    }
}

/// A copy of a fixture's checkpoint files in a temporary directory.
fn copy_fixture(dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if file.starts_with("model") || file == "config.json" {
            std::fs::copy(&path, tmp.path().join(&file)).unwrap();
        }
    }
    tmp
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "config has {from}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// Run `forward` on `dir` and return stderr, asserting exit code 1 and a single line.
fn fails(dir: &Path) -> String {
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
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "exit code 1, stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line error: {stderr}"
    );
    assert!(!out.exists(), "nothing written on error");
    stderr
}

#[test]
fn wrong_field_type_names_file_and_field() {
    let tmp = copy_fixture(&fixture());
    edit_config(tmp.path(), "\"hidden_size\": 32", "\"hidden_size\": \"32\"");
    let err = fails(tmp.path());
    assert!(
        err.contains("config.json: hidden_size: invalid type"),
        "{err}"
    );
}

#[test]
fn non_olmoe_model_type_is_refused() {
    let tmp = copy_fixture(&fixture());
    edit_config(
        tmp.path(),
        "\"model_type\": \"olmoe\"",
        "\"model_type\": \"mixtral\"",
    );
    let err = fails(tmp.path());
    assert!(
        err.contains("config.json: model_type: unsupported model_type \"mixtral\""),
        "{err}"
    );
}

#[test]
fn missing_shard_is_named() {
    let tmp = copy_fixture(&alt_fixture());
    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = fails(tmp.path());
    assert!(
        err.contains("model.safetensors.index.json: shard")
            && err.contains("model-00002-of-00002.safetensors is missing"),
        "{err}"
    );
}

#[test]
fn wrong_tensor_shape_names_tensor_and_both_shapes() {
    let tmp = copy_fixture(&fixture());
    edit_config(
        tmp.path(),
        "\"intermediate_size\": 32",
        "\"intermediate_size\": 16",
    );
    let err = fails(tmp.path());
    assert!(
        err.contains("model.safetensors: tensor model.layers.0.mlp.experts.0.gate_proj.weight has shape [32, 32], expected [16, 32]"),
        "{err}"
    );
}

#[test]
fn missing_model_dir_and_bad_ids_are_errors() {
    let err = fails(Path::new("/nonexistent/model"));
    assert!(
        err.contains("/nonexistent/model: no such model directory"),
        "{err}"
    );
    let o = steermoe(&[
        "forward",
        "--model",
        fixture().to_str().unwrap(),
        "--input-ids",
        "1,2;3",
        "--out",
        "/tmp/x.safetensors",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("row 1 has 1 ids, row 0 has 2"));
}

/// `run --dry-run` prints the resolved config and the plan and writes nothing; `--backend` and
/// `--precision` stand for the `model.` keys.
#[test]
fn run_dry_run_plans_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let o = steermoe(&[
        "run",
        "--config",
        "configs/organism-cpu.toml",
        "--out",
        out.to_str().unwrap(),
        "--dry-run",
        "--backend",
        "wgpu",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.exists(), "a dry run created {}", out.display());
    assert!(
        stdout.contains("# resolved config") && stdout.contains("backend = \"wgpu\""),
        "{stdout}"
    );
    // configs/organism-cpu.toml: 8 batches of 16, 4 epochs, the base/steered/trained evaluations
    // on 48 held-out goals (31 of them with a successful jailbreak) and 32 benign prompts.
    for line in [
        "run directory: ",
        "collect: 8 batches, 128 prompts, up to 48 new tokens each, on wgpu (f32)\n",
        "analyze: attribution (unsafe score), experts from risk_diff, at most 32 per batch",
        "train: up to 16 steps (2 passes × batches with a kept pair), lr 2e-4, routing mask: none",
        "eval: base, steer-a5, trained on 32 jailbreaks, 32 plain goals, 32 benign prompts",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    // A bad override is refused before anything is planned.
    let o = steermoe(&[
        "run",
        "--config",
        "configs/organism-cpu.toml",
        "--dry-run",
        "--set",
        "train.lr=fast",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("train.lr"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A backend that is not compiled into the binary is refused in one line before anything is
/// written: by `run` (no run directory) and by `sweep` (no sweep directory).
#[test]
fn a_backend_not_compiled_in_is_refused_before_anything_is_written() {
    let Some(missing) = [
        ("cuda", cfg!(feature = "cuda")),
        ("wgpu", cfg!(feature = "wgpu")),
    ]
    .into_iter()
    .find(|(_, built)| !built)
    .map(|(b, _)| b) else {
        return; // every backend is compiled in: nothing to refuse
    };
    let tmp = tempfile::tempdir().unwrap();
    for (command, config) in [
        ("run", "configs/organism-cpu.toml"),
        ("sweep", "configs/organism-sweep.toml"),
    ] {
        let out = tmp.path().join(command);
        let o = steermoe(&[
            command,
            "--config",
            config,
            "--out",
            out.to_str().unwrap(),
            "--backend",
            missing,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "{command} --backend {missing} succeeded"
        );
        assert!(
            err.contains(&format!(
                "backend {missing} is not compiled into this binary"
            )),
            "{command}: {err}"
        );
        assert!(
            !out.exists(),
            "{command} wrote {} before refusing",
            out.display()
        );
    }
}

/// A NaN in the weights is an error naming the file and the tensor, not a model that runs to
/// garbage.
#[test]
fn non_finite_weights_name_the_tensor() {
    let tmp = copy_fixture(&fixture());
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let t = owned
        .iter_mut()
        .find(|t| t.0 == "model.norm.weight")
        .expect("the fixture has a final norm");
    match t.1 {
        safetensors::Dtype::F32 => t.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes()),
        safetensors::Dtype::BF16 => t.3[2..4].copy_from_slice(&0x7fc0u16.to_le_bytes()),
        safetensors::Dtype::F16 => t.3[2..4].copy_from_slice(&0x7e00u16.to_le_bytes()),
        other => panic!("unexpected dtype {other:?}"),
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let err = fails(tmp.path());
    assert!(
        err.contains("model.safetensors: tensor model.norm.weight holds NaN (element 1)"),
        "{err}"
    );
}

/// A safetensors header whose shape disagrees with the bytes it gives the tensor (an edited or
/// foreign file): the error names the tensor and both sizes.
#[test]
fn a_header_shape_that_disagrees_with_its_bytes_names_the_tensor() {
    let tmp = copy_fixture(&fixture());
    let path = tmp.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let from = "\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[32]";
    assert!(header.contains(from), "the fixture's header spells {from}");
    // The same number of characters: the header's length and every offset stay as they were.
    let edited = header.replacen(
        from,
        "\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[31]",
        1,
    );
    bytes.splice(8..8 + n, edited.into_bytes());
    std::fs::write(&path, bytes).unwrap();
    let err = fails(tmp.path());
    assert!(err.contains("model.safetensors: tensor model.norm.weight: shape [31] of BF16 needs 62 bytes, but its data_offsets"), "{err}");
}

/// Two evaluations into one folder: the second is refused at once, naming the holder (here the
/// test itself holds the folder, as a first `steermoe eval` would).
#[test]
fn an_evaluation_folder_in_use_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    std::fs::write(&cfg, tiny_method_toml(&fixture(), "", "")).unwrap();
    let out = tmp.path().join("eval");
    let _held = steermoe::run_dir::EvalDir::at(&out).lock().unwrap();
    let o = steermoe(&[
        "eval",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{} is in use by another steermoe process (pid {})",
            out.display(),
            std::process::id()
        )),
        "{err}"
    );
    assert!(!out.join("eval.json").exists());
}
