//! Data-parallel training on CUDA (feature `ddp`: burn's `distributed`, NCCL), what one GPU can
//! check of it. Apart from `tests/cuda.rs` because with `distributed` on, `Autodiff<B>` needs
//! `B: DistributedBackend`, which the generic parity cases do not ask for.
//! Build with `--no-default-features --features cuda,ddp` and run on a machine with an NVIDIA GPU
//! and NCCL: `cargo test --no-default-features --features cuda,ddp --test cuda_ddp -- --ignored`.
#![cfg(feature = "ddp")]

mod common;

type Ad = burn::backend::Autodiff<burn::backend::Cuda>;

/// burn's data-parallel strategy with one rank (NCCL, a worker thread, the gradients exchanged)
/// trains as the one-device path does: the same losses, and exported weights equal up to the
/// order of float sums (each trained tensor within 1% of its own training update, which must not
/// be zero). The strategy on two GPUs is `benches/ddp.sh`'s check.
#[test]
#[ignore = "needs an NVIDIA GPU and NCCL (libnccl.so): cargo test --no-default-features --features cuda,ddp --test cuda_ddp -- --ignored"]
fn one_rank_through_ddp_trains_as_one_device() {
    use std::collections::HashMap;

    use steermoe::config::Config;
    use steermoe::model::ModelConfig;
    use steermoe::train::{TrainOptions, synthetic, train_on};

    let fixture = common::fixture();
    let model_cfg = ModelConfig::from_path(&fixture).unwrap();
    let mut cfg = Config::default();
    cfg.model.dir = fixture.clone();
    cfg.train.lr = 0.05;
    cfg.train.valid_pairs = 0;
    let trained: Vec<[usize; 2]> = (0..model_cfg.num_moe_layers()).flat_map(|l| [[l, 1], [l, 4]]).collect();
    let device = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, one_rank: bool| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let inputs = synthetic::inputs(&model_cfg, trained.clone(), 3, 4, 24, 7);
        let load = || Ok(steermoe::model::load::<Ad>(&fixture, &device, cfg.model.precision)?.0);
        let opts = TrainOptions { parallel_on_one_device: one_rank, ..Default::default() };
        let summary = train_on::<Ad>(&cfg, &dir, inputs, load, &device, &opts, |_| {}).unwrap();
        (summary.steps.iter().map(|s| s.loss).collect::<Vec<_>>(), dir.join("final_model/model.safetensors"))
    };
    let (plain_losses, plain) = run("plain", false);
    let (ddp_losses, ddp) = run("ddp", true);
    assert_eq!(plain_losses.len(), 3);
    for (p, d) in plain_losses.iter().zip(&ddp_losses) {
        assert!((p - d).abs() <= 1e-5 * p.abs(), "losses {plain_losses:?} vs {ddp_losses:?}");
    }
    let read = |path: &std::path::Path| -> HashMap<String, Vec<f32>> {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(k, v)| {
                let values = match v.dtype() {
                    safetensors::Dtype::BF16 => v.data().chunks(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect(),
                    safetensors::Dtype::F32 => v.data().chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                    other => panic!("{k}: {other:?}"),
                };
                (k, values)
            })
            .collect()
    };
    let (base, plain, ddp) = (read(&fixture.join("model.safetensors")), read(&plain), read(&ddp));
    let mut checked = 0;
    for &[l, e] in &trained {
        for proj in ["gate_proj", "up_proj", "down_proj"] {
            let key = format!("model.layers.{l}.mlp.experts.{e}.{proj}.weight");
            let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            let update = max_diff(&plain[&key], &base[&key]);
            let apart = max_diff(&ddp[&key], &plain[&key]);
            eprintln!("{key}: update {update:.3e}, one rank through DDP vs one device {apart:.3e}");
            assert!(update > 0.0, "{key} did not train");
            assert!(apart <= 0.01 * update, "{key}: {apart} apart, update {update}");
            checked += 1;
        }
    }
    assert_eq!(checked, trained.len() * 3);
}
