//! Expert-only fine-tuning on the fixture: the train step's gradients equal the reference's,
//! frozen tensors come out bit-identical while unsafe experts change, a seed fixes the loss
//! sequence, and an interrupted run resumed from its checkpoint ends where an uninterrupted one
//! does.

use std::path::{Path, PathBuf};

use crate::common::*;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use burn::train::TrainStep;
use safetensors::SafeTensors;
use steermoe::config::Config;
use steermoe::model::loss::Targets;
use steermoe::model::{self, Precision, Routing};
use steermoe::train::loader::SftBatch;
use steermoe::train::step::{LossSettings, SftModel};
use steermoe::train::{Consistency, MaskScope, TrainControl, TrainOptions, Trainable, freeze};

type B = TestAutodiffBackend;

#[test]
fn train_step_gradients_equal_the_reference() {
    let dir = fixture();
    let device = Default::default();
    let (model, cfg) = model::load::<B>(&dir, &device, Precision::F32).unwrap();
    let layer0: Vec<[usize; 2]> = (0..cfg.num_experts).map(|e| [0, e]).collect();
    let model = freeze::freeze(
        model,
        &layer0,
        Trainable::UnsafeExperts,
        burn::tensor::FloatDType::F32,
    );
    // The reference loss was computed with output_router_logits, which adds the aux loss.
    let loss = LossSettings {
        consistency: Consistency::Off,
        consistency_weight: 0.0,
        aux_coef: cfg.router_aux_loss_coef,
    };
    let model = SftModel::new(model, loss);
    let ids = reference(&dir, "masked.input_ids");
    let labels = reference(&dir, "masked.labels");
    let mask = reference(&dir, "masked.expert_mask");
    let n = ids.shape[1];
    let allow: Vec<bool> = mask.values.iter().map(|&v| v != 0.0).collect();
    let batch = SftBatch {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids.i64(), [1, n]), &device),
        targets: Targets::from_labels(&labels.i64(), 1, n, &device),
        attention_mask: Tensor::<B, 2, Bool>::from_data(
            TensorData::new(vec![true; n], [1, n]),
            &device,
        ),
        batch_idx: 0,
        is_unsafe: vec![true],
        routing: Routing::free().with_mask(Tensor::from_data(
            TensorData::new(allow, [mask.shape[0], mask.shape[1]]),
            &device,
        )),
        real: vec![true; n].into(),
        tokens: 0,
        input_tokens: n,
        step: 1,
        rank: steermoe::train::shard::Rank::SOLE,
        loss_scale: 1.0,
        phase: steermoe::train::Phase::Joint,
        skip: false,
    };
    let out = TrainStep::step(&model, batch);
    // Expert activation counts: k choices per token in every layer; where at least k experts
    // are allowed, masked ones are never chosen (with fewer, the top-k fills up with masked
    // experts of weight zero, as in the reference).
    let grads = out.grads;
    let counts = &burn::train::metric::ItemLazy::sync(out.item).expert_counts;
    assert_eq!(counts.len(), cfg.num_moe_layers());
    let mut checked = 0;
    for (l, layer) in counts.iter().enumerate() {
        assert_eq!(
            layer.iter().sum::<u32>() as usize,
            n * cfg.num_experts_per_tok,
            "layer {l}"
        );
        let allowed = (0..cfg.num_experts)
            .filter(|&e| mask.values[l * cfg.num_experts + e] != 0.0)
            .count();
        if allowed >= cfg.num_experts_per_tok {
            checked += 1;
            for (e, &c) in layer.iter().enumerate() {
                if mask.values[l * cfg.num_experts + e] == 0.0 {
                    assert_eq!(c, 0, "masked expert ({l}, {e}) counted");
                }
            }
        }
    }
    assert!(checked > 0, "no layer with k allowed experts to check");
    let experts = &model.model.moe_block(0).experts;
    for (pick, proj) in ["gate_proj", "up_proj", "down_proj"]
        .into_iter()
        .enumerate()
    {
        let mut got = Vec::new();
        for ex in experts {
            let w = &[&ex.gate_proj, &ex.up_proj, &ex.down_proj][pick].weight;
            let [d_in, d_out] = w.dims();
            let g: Option<Tensor<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend, 2>> =
                grads.get(w.id);
            got.extend(
                g.map(|g| g.transpose().into_data().iter::<f32>().collect())
                    .unwrap_or(vec![0.0; d_in * d_out]),
            );
        }
        let expected = reference(&dir, &format!("masked.grad.layer0.{proj}")).f32();
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (err, _) = max_abs_diff(&got, &expected);
        eprintln!("train step grad {proj}: relative error {:.3e}", err / scale);
        assert!(
            err / scale <= 1e-5,
            "{proj}: relative error {}",
            err / scale
        );
    }
}

/// A collected and analysed run of the fixture in a temporary directory.
fn analysed_run(root: &Path) -> (PathBuf, PathBuf) {
    let toml = format!(
        "seed = 3\n[model]\ndir = {:?}\n[data]\npath = {:?}\nheldout = false\n[collect]\nbatch_size = 4\nmax_batches = 3\nmax_new_tokens = 6\nquality_filter = false\n\
         [analysis]\ntop_k = 3\n[train]\nlr = 0.05\ncheckpoint_every = 1\nepochs = 2\nwarmup_steps = 1\nmax_len = 96\n",
        fixture(),
        attack_data(),
    );
    collected_and_analysed(root, &toml)
}

#[test]
fn training_changes_only_unsafe_experts_is_seeded_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg_path, run) = analysed_run(tmp.path());
    let cfg = Config::load(&cfg_path, &[]).unwrap();
    assert_eq!(cfg.train.mask_scope, MaskScope::UnsafeSamples);
    let run_b = tmp.path().join("run_b");
    let run_c = tmp.path().join("run_c");
    let run_d = tmp.path().join("run_d");
    copy_dir(&run, &run_b);
    copy_dir(&run, &run_c);
    copy_dir(&run, &run_d);
    let run_e = tmp.path().join("run_e");
    copy_dir(&run, &run_e);
    let run_f = tmp.path().join("run_f");
    copy_dir(&run, &run_f);

    let a = train_stage(&cfg, &run, TrainOptions::default()).unwrap();
    assert_eq!(a.steps.len(), 6, "3 batches x 2 epochs");
    assert!(a.steps.iter().all(|s| s.loss.is_finite()));
    let (trainable, total) = a.params;
    assert!(trainable > 0 && trainable < total);

    // Frozen tensors bit-identical, the unsafe experts changed.
    let experts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("training_metadata.json")).unwrap())
            .unwrap();
    let trained: Vec<String> = experts["unsafe_experts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("model.layers.{}.mlp.experts.{}.", p[0], p[1]))
        .collect();
    assert!(!trained.is_empty());
    let before = tensor_bytes(&fixture().join("model.safetensors"));
    let after = tensor_bytes(&run.join("final_model/model.safetensors"));
    assert_eq!(before.len(), after.len());
    let mut changed = 0;
    for (key, bytes) in &before {
        let is_trained = trained.iter().any(|p| key.starts_with(p.as_str()));
        if is_trained {
            changed += (after[key] != *bytes) as usize;
        } else {
            assert!(after[key] == *bytes, "frozen tensor {key} changed");
        }
    }
    assert_eq!(
        changed,
        trained.len() * 3,
        "every trained expert's three weights changed"
    );

    // Same seed, same loss sequence.
    let b = train_stage(&cfg, &run_b, TrainOptions::default()).unwrap();
    let losses = |s: &steermoe::train::TrainSummary| {
        s.steps
            .iter()
            .map(|r| (r.step, r.loss, r.batch_idx))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&a), losses(&b));

    // Interrupted after 2 steps, then resumed: the same final weights.
    let part = train_stage(
        &cfg,
        &run_c,
        TrainOptions {
            stop_after_windows: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(part.steps.len(), 2);
    assert!(
        !run_c.join("final_model").exists(),
        "an interrupted run exports nothing"
    );
    let rest = train_stage(&cfg, &run_c, TrainOptions::default()).unwrap();
    assert_eq!(rest.resumed_from, Some(2));
    assert_eq!(rest.steps.len(), 4);
    assert_eq!(
        rest.steps.iter().map(|s| s.loss).collect::<Vec<_>>(),
        a.steps[2..].iter().map(|s| s.loss).collect::<Vec<_>>()
    );
    assert_eq!(
        tensor_bytes(&run_c.join("final_model/model.safetensors")),
        after,
        "resumed run ends bit-identical"
    );

    // Killed after the last checkpoint, before the export (here: the export removed): the rerun
    // exports the last checkpoint's weights, runs no step, and its history is the first run's.
    std::fs::remove_dir_all(run_c.join("final_model")).unwrap();
    let again = train_stage(&cfg, &run_c, TrainOptions::default()).unwrap();
    assert!(again.steps.is_empty() && !again.stopped);
    assert_eq!(
        tensor_bytes(&run_c.join("final_model/model.safetensors")),
        after,
        "exported from the last checkpoint"
    );
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_c.join("training_metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        meta["first_loss"].as_f64(),
        Some(a.steps[0].loss),
        "first_loss is the run's first, not the resumed segment's"
    );

    // Every step went to metrics.jsonl, with expert counts for the dashboard.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[5]["step"], 6);
    let counts = lines[0]["expert_counts"].as_array().unwrap();
    let layer0: u64 = counts[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert!(
        layer0 > 0 && layer0.is_multiple_of(2),
        "{layer0}: top-2 choices of the real tokens"
    );
    assert_eq!(lines[0]["input_tokens"].as_u64().unwrap() * 2, layer0);

    // A stop request (the dashboard's `q`) pending when a window starts: no step runs, nothing is
    // exported, and a rerun trains from the start to the same weights. (That a request during a
    // window lets it finish first is `TrainControl`'s unit test.)
    let control = TrainControl::new();
    control.request_stop();
    let opts = TrainOptions {
        control: Some(control),
        ..Default::default()
    };
    let stopped = train_stage(&cfg, &run_d, opts).unwrap();
    assert!(stopped.stopped && stopped.steps.is_empty());
    assert!(!run_d.join("final_model").exists());
    let rest = train_stage(&cfg, &run_d, TrainOptions::default()).unwrap();
    assert_eq!(rest.steps.len(), 6);
    assert_eq!(
        tensor_bytes(&run_d.join("final_model/model.safetensors")),
        after
    );
    // Killed while writing a window's checkpoint: its files are partial (here: a model file of
    // window 3 without its optimizer and scheduler, and a half-written temporary). The rerun
    // removes them, resumes from window 2 and ends bit-identical.
    let part = train_stage(
        &cfg,
        &run_e,
        TrainOptions {
            stop_after_windows: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(part.steps.len(), 2);
    let ck = run_e.join("train/checkpoint");
    assert!(
        !std::fs::read_dir(&ck)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp")),
        "checkpoints are renamed into place"
    );
    std::fs::write(ck.join("model-3.mpk"), b"\x92half").unwrap();
    std::fs::write(ck.join("optim-3.mpk.tmp"), b"\x92").unwrap();
    let rest = train_stage(&cfg, &run_e, TrainOptions::default()).unwrap();
    assert_eq!(rest.resumed_from, Some(2));
    assert_eq!(
        tensor_bytes(&run_e.join("final_model/model.safetensors")),
        after,
        "resumed past a partial checkpoint, bit-identical"
    );
    assert!(!ck.join("optim-3.mpk.tmp").exists());

    // Measuring only (the benchmark's mode): the same steps, nothing written but metrics.jsonl.
    let measured = train_stage(
        &cfg,
        &run_f,
        TrainOptions {
            measure_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(losses(&measured), losses(&a));
    assert!(!measured.stopped);
    for written in [
        "final_model",
        "training_metadata.json",
        "loss_curve.png",
        "train/checkpoint",
    ] {
        assert!(
            !run_f.join(written).exists(),
            "measure_only wrote {written}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(run_f.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        6
    );
}

/// `expert_masks.safetensors` holds exactly the masks the train step applies: every batch the
/// training loader serves (the loader `train` iterates) carries its set's mask on the samples the
/// mask scope restricts and no mask on the others, and that mask is the file's `per_batch` row
/// (or `global` under `train.expert_set = "global"`).
#[test]
fn expert_masks_file_holds_the_masks_training_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg_path, run) = analysed_run(tmp.path());
    let bytes = std::fs::read(run.join("expert_masks.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let batch_idx: Vec<usize> = st
        .tensor("batch_idx")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    let per_batch = f32s("per_batch");
    let global = f32s("global");
    let device = Default::default();
    for (set, scope) in [
        ("per_batch", "unsafe_samples"),
        ("per_batch", "all"),
        ("global", "unsafe_samples"),
    ] {
        let cfg = Config::load(
            &cfg_path,
            &[
                format!("train.expert_set={set}"),
                format!("train.mask_scope={scope}"),
            ],
        )
        .unwrap();
        let inputs = train_inputs(&cfg, &run);
        let (layers, experts) = (
            inputs.model_cfg.num_moe_layers(),
            inputs.model_cfg.num_experts,
        );
        let width = layers * experts;
        let loader = inputs.loader::<B>(
            &cfg.train,
            1,
            (0..inputs.groups.len()).collect(),
            0,
            &device,
        );
        let mut unsafe_rows = 0;
        for g in 0..inputs.groups.len() {
            let batch = loader.batch(g, g + 1);
            let allow = batch
                .routing
                .allow
                .clone()
                .expect("a masked scope sets a mask");
            // `[layers, batch, experts]` → per sample `[layers * experts]`.
            let values: Vec<bool> = allow.swap_dims(0, 1).into_data().iter::<bool>().collect();
            let row = batch_idx
                .iter()
                .position(|&b| b == batch.batch_idx)
                .expect("the file has every analysed batch");
            let want: Vec<bool> = match set {
                "global" => global.iter().map(|&v| v != 0.0).collect(),
                _ => per_batch[row * width..(row + 1) * width]
                    .iter()
                    .map(|&v| v != 0.0)
                    .collect(),
            };
            assert!(
                want.iter().any(|&a| !a),
                "batch {}: the file's mask restricts nothing",
                batch.batch_idx
            );
            for (i, &is_unsafe) in batch.is_unsafe.iter().enumerate() {
                let got = &values[i * width..(i + 1) * width];
                if is_unsafe || scope == "all" {
                    assert_eq!(
                        got,
                        &want[..],
                        "{set}/{scope}: batch {} sample {i}",
                        batch.batch_idx
                    );
                    unsafe_rows += 1;
                } else {
                    assert!(
                        got.iter().all(|&a| a),
                        "{set}/{scope}: a safe sample was masked"
                    );
                }
            }
        }
        assert!(unsafe_rows > 0);
    }
}

/// A loss that goes non-finite (here: a learning rate that overflows the weights) stops training
/// with an error naming the step; nothing is exported and no checkpoint holding the broken
/// weights is left to resume from.
#[test]
fn a_non_finite_loss_stops_training_and_keeps_only_good_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg_path, run) = analysed_run(tmp.path());
    let cfg = Config::load(
        &cfg_path,
        &["train.lr=1e30".into(), "train.warmup_steps=0".into()],
    )
    .unwrap();
    let err = train_stage(&cfg, &run, TrainOptions::default()).unwrap_err();
    let text = err.to_string();
    let steermoe::Error::Train(steermoe::train::TrainError::NonFinite { step, kept, .. }) = err
    else {
        panic!("{text}")
    };
    assert!(
        step >= 2,
        "the first step's loss uses the base weights: {text}"
    );
    assert!(
        text.contains(&format!("step {step}: the loss is")),
        "{text}"
    );
    assert!(!run.join("final_model").exists() && !run.join("training_metadata.json").exists());
    // checkpoint_every = 1: the weights after step `step - 1` are bad, so is its checkpoint.
    let left: Vec<usize> = std::fs::read_dir(run.join("train/checkpoint"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("model-")?
                        .strip_suffix(".mpk")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.iter().all(|&w| w < step - 1),
        "checkpoints {left:?} left after a NaN at step {step}"
    );
    assert_eq!(kept, left.iter().max().copied());
}
