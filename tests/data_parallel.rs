//! Data-parallel training without GPUs: the loader that burn's DDP strategy splits hands each
//! rank its part of every analysis batch (the safe/unsafe share kept, every step on every rank),
//! and the ranks' weighted losses average to the one-device gradient and loss of the whole batch.
//! The NCCL exchange itself needs two CUDA devices (`model.devices = [0, 1]`, feature `ddp`).

use std::process::Command;
use std::sync::Arc;

use crate::common::*;
use burn::data::dataloader::DataLoader;
use burn::data::dataloader::split::split_dataloader;
use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::{FloatDType, Tensor};
use burn::train::TrainStep;
use burn::train::metric::ItemLazy;
use steermoe::config::Config;
use steermoe::model::{self, Precision};
use steermoe::train::loader::{BatchPreservingLoader, LoaderSettings, MaskTable, SftBatch};
use steermoe::train::shard::Rank;
use steermoe::train::step::{LossSettings, SftModel};
use steermoe::train::{TrainInputs, Trainable, freeze};

type B = TestAutodiffBackend;
type Inner = TestBackend;

/// A collected and analysed run on the fixture: 3 batches of 8 (4 safe + 4 unsafe).
fn analysed(root: &std::path::Path) -> (Config, std::path::PathBuf) {
    let toml = format!(
        "seed = 5\n[model]\ndir = {:?}\n[data]\npath = {:?}\n[collect]\nbatch_size = 8\nmax_batches = 3\nmax_new_tokens = 6\nquality_filter = false\n\
         [analysis]\ntop_k = 4\n[train]\nmask_scope = \"unsafe_samples\"\nmax_len = 96\n",
        fixture(),
        attack_data(),
    );
    let (cfg, run) = collected_and_analysed(root, &toml);
    (Config::load(&cfg, &[]).unwrap(), run)
}

fn loader(inputs: &TrainInputs, cfg: &Config, ranks: usize) -> BatchPreservingLoader<B> {
    let device = Default::default();
    let masks = MaskTable::new(
        &inputs.sets,
        inputs.model_cfg.num_moe_layers(),
        inputs.model_cfg.num_experts,
        &device,
    );
    let settings = LoaderSettings {
        schedule: (0..inputs.groups.len()).collect(),
        window: inputs.groups.len(),
        start_window: 0,
        pad_id: inputs.pad_id,
        mask_scope: cfg.train.mask_scope,
        ranks,
        phases: Vec::new(),
    };
    BatchPreservingLoader::new(inputs.groups.clone(), masks, settings, device)
}

/// Every trained expert weight's gradient (zeros where the step left none).
fn expert_grads(
    model: &SftModel<B>,
    grads: &GradientsParams,
    trained: &[[usize; 2]],
) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for &[l, e] in trained {
        let ex = &model.model.moe_block(l).experts[e];
        for (name, w) in [
            ("gate", &ex.gate_proj.weight),
            ("up", &ex.up_proj.weight),
            ("down", &ex.down_proj.weight),
        ] {
            let id: ParamId = w.id;
            let g: Tensor<Inner, 2> = grads
                .get::<Inner, 2>(id)
                .unwrap_or_else(|| w.val().inner().zeros_like());
            out.push((
                format!("({l}, {e}) {name}"),
                g.into_data().convert::<f32>().to_vec().unwrap(),
            ));
        }
    }
    out
}

#[test]
fn two_ranks_average_to_the_one_device_gradient_of_each_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, run) = analysed(tmp.path());
    let inputs = train_inputs(&cfg, &run);
    let device = Default::default();
    let (base, _) = model::load::<B>(&cfg.model.dir, &device, Precision::F32).unwrap();
    let model = SftModel::new(
        freeze::freeze(
            base,
            &inputs.trained,
            Trainable::UnsafeExperts,
            FloatDType::F32,
        ),
        LossSettings::lm_only(),
    );

    // What burn's DDP strategy does with the train loader: split it over the devices.
    let whole: Vec<SftBatch<B>> = loader(&inputs, &cfg, 1).iter().collect();
    let parts: Vec<Arc<dyn DataLoader<B, SftBatch<B>>>> =
        split_dataloader(Arc::new(loader(&inputs, &cfg, 2)), &[device, device]);
    let per_rank: Vec<Vec<SftBatch<B>>> = parts.iter().map(|l| l.iter().collect()).collect();
    assert_eq!(per_rank.len(), 2);
    let mut checked = 0;
    for (s, full) in whole.into_iter().enumerate() {
        let shards: Vec<SftBatch<B>> = per_rank.iter().map(|r| r[s].clone()).collect();
        for (r, shard) in shards.iter().enumerate() {
            assert_eq!(shard.rank, Rank { rank: r, ranks: 2 });
            assert_eq!(
                (shard.step, shard.batch_idx),
                (full.step, full.batch_idx),
                "every rank runs every step"
            );
            let unsafe_ = shard.is_unsafe.iter().filter(|&&u| u).count();
            assert_eq!(
                (shard.is_unsafe.len(), unsafe_),
                (4, 2),
                "rank {r}: half of 4 + 4, the share kept"
            );
        }
        assert_eq!(shards.iter().map(|b| b.tokens).sum::<usize>(), full.tokens);
        let scales: f32 = shards.iter().map(|b| b.loss_scale).sum();
        assert!(
            (scales - 2.0).abs() < 1e-5,
            "the scales average to one: {scales}"
        );

        let one = TrainStep::step(&model, full);
        let one_grads = expert_grads(&model, &one.grads, &inputs.trained);
        let one_loss = one.item.sync();
        let mut mean: Vec<Vec<f32>> = one_grads.iter().map(|(_, g)| vec![0.0; g.len()]).collect();
        let mut loss = 0.0;
        for shard in shards {
            let scale = shard.loss_scale as f64;
            let out = TrainStep::step(&model, shard);
            for (acc, (_, g)) in
                mean.iter_mut()
                    .zip(expert_grads(&model, &out.grads, &inputs.trained))
            {
                acc.iter_mut().zip(g).for_each(|(a, v)| *a += v / 2.0);
            }
            loss += scale * out.item.sync().lm_loss / 2.0;
        }
        assert!(
            (loss - one_loss.lm_loss).abs() < 1e-5 * one_loss.lm_loss.abs().max(1.0),
            "step {}: loss {loss} vs {}",
            s + 1,
            one_loss.lm_loss
        );
        let largest = one_grads
            .iter()
            .flat_map(|(_, g)| g.iter())
            .fold(0f32, |m, v| m.max(v.abs()));
        assert!(largest > 0.0);
        for ((name, want), got) in one_grads.iter().zip(&mean) {
            let (err, at) = max_abs_diff(got, want);
            assert!(
                err <= 1e-5 * largest,
                "step {}, expert {name}: the ranks' mean gradient is {err:e} off at {at} (largest {largest:e})",
                s + 1
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn several_devices_are_refused_where_they_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    std::fs::write(&cfg, format!("[model]\ndir = {:?}\n", fixture())).unwrap();
    let check = |sets: &[&str]| {
        Config::load(
            &cfg,
            &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    assert!(check(&["model.devices=[0]"]).is_ok());
    let e = check(&["model.devices=[0, 1]"]).unwrap_err();
    assert!(e.contains("model.devices") && e.contains("cuda"), "{e}");
    let e = check(&["model.devices=[1, 1]", "model.backend=\"cuda\""]).unwrap_err();
    assert!(e.contains("device 1 is listed twice"), "{e}");
    let e = check(&[
        "model.devices=[0, 1]",
        "model.backend=\"cuda\"",
        "train.router_aux_loss=true",
    ])
    .unwrap_err();
    assert!(e.contains("router_aux_loss"), "{e}");
    // The CLI flag is the same key.
    let o = Command::new(env!("CARGO_BIN_EXE_steermoe"))
        .args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            tmp.path().join("r").to_str().unwrap(),
            "--devices",
            "0,1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("model.devices"),
        "{err}"
    );
    assert!(!tmp.path().join("r").exists(), "nothing written");
    // A valid multi-device config on a binary without the `ddp` feature: refused before any stage.
    let o = Command::new(env!("CARGO_BIN_EXE_steermoe"))
        .args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            tmp.path().join("r").to_str().unwrap(),
            "--backend",
            "cuda",
            "--devices",
            "0,1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    if cfg!(not(feature = "ddp")) {
        assert!(
            !o.status.success() && err.contains("built without data-parallel training"),
            "{err}"
        );
        assert!(!tmp.path().join("r").exists(), "nothing written");
    }
}
