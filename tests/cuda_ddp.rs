//! Data-parallel training on CUDA (feature `ddp`: burn's `distributed`, NCCL), what one GPU can
//! check of it. Apart from `tests/cuda.rs` because with `distributed` on, `Autodiff<B>` needs
//! `B: DistributedBackend`, which the generic parity cases do not ask for.
//! Build with `--no-default-features --features cuda,ddp` and run on a machine with an NVIDIA GPU
//! and NCCL: `cargo test --no-default-features --features cuda,ddp --test suite cuda_ddp:: -- --ignored`.
#![cfg(feature = "ddp")]

type Ad = burn::backend::Autodiff<burn::backend::Cuda>;

/// burn's data-parallel strategy with one rank (NCCL, a worker thread, the gradients exchanged)
/// trains as the one-device path does: the same losses, and exported weights equal up to the
/// order of float sums. The fixture is bf16 and so is the export: a small float difference can
/// round an element one bf16 step apart, so each element may differ by its bf16 step plus 5% of
/// its tensor's training update (which must not be zero); nothing more. A second one-device run
/// is held to the same bound, and the counts of differing elements are printed for both, so that
/// the log shows whether DDP differs from one device more than one device differs from itself.
/// Why 5%: CUDA's float sums run in no fixed order (atomic adds in the backward), and Adam turns a
/// gradient's small difference into a step-sized one where the gradient is small; one device
/// against itself reached 1.1% of the update beyond the bf16 step (`benches/results/
/// ddp-one-rank.jsonl`, call 8). What the check is for — a gradient lost or not averaged, a step applied
/// twice or with another rate — moves elements by a good part of the whole update.
/// The strategy on two GPUs is `benches/ddp.sh`'s check.
#[test]
#[ignore = "needs an NVIDIA GPU and NCCL (libnccl.so): cargo test --no-default-features --features cuda,ddp --test suite cuda_ddp:: -- --ignored"]
fn one_rank_through_ddp_trains_as_one_device() {
    use steermoe::model::{ModelConfig, Precision};
    use steermoe::train::{TrainConfig, TrainContext, TrainOptions, synthetic, train};

    let fixture = crate::common::fixture();
    let model_cfg = ModelConfig::from_path(&fixture).unwrap();
    let train_cfg = TrainConfig {
        lr: 0.05,
        valid_pairs: 0,
        ..TrainConfig::default()
    };
    let ctx = TrainContext {
        cfg: &train_cfg,
        seed: 0,
        devices: &[0],
        base_model: &fixture,
    };
    let trained: Vec<[usize; 2]> = (0..model_cfg.num_moe_layers())
        .flat_map(|l| [[l, 1], [l, 4]])
        .collect();
    let device = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, one_rank: bool| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let inputs = synthetic::inputs(&model_cfg, trained.clone(), 3, 4, 24, 7);
        let load = || Ok(steermoe::model::load::<Ad>(&fixture, &device, Precision::F32)?.0);
        let opts = TrainOptions {
            parallel_on_one_device: one_rank,
            ..Default::default()
        };
        let run_dir = steermoe::run_dir::RunDir::new(&dir);
        let summary = train::<Ad>(&ctx, &run_dir, inputs, load, &device, &opts, |_| {}).unwrap();
        (
            summary.steps.iter().map(|s| s.loss).collect::<Vec<_>>(),
            run_dir.final_model(),
        )
    };
    let (plain_losses, plain) = run("plain", false);
    let (ddp_losses, ddp) = run("ddp", true);
    let (again_losses, again) = run("again", false);
    assert_eq!(plain_losses.len(), 3);
    for other in [&ddp_losses, &again_losses] {
        for (p, o) in plain_losses.iter().zip(other) {
            assert!(
                (p - o).abs() <= 1e-5 * p.abs(),
                "losses {plain_losses:?} vs {other:?}"
            );
        }
    }
    // Each trained expert's three weights, as the project's loader reads the exported model.
    let weights = |dir: &std::path::Path| -> Vec<(String, Vec<f32>)> {
        let (model, _) = steermoe::model::load::<Ad>(dir, &device, Precision::F32).unwrap();
        let mut out = Vec::new();
        for &[l, e] in &trained {
            let ex = &model.moe_block(l).experts[e];
            for (proj, w) in [
                ("gate_proj", &ex.gate_proj.weight),
                ("up_proj", &ex.up_proj.weight),
                ("down_proj", &ex.down_proj.weight),
            ] {
                out.push((
                    format!("layers.{l}.experts.{e}.{proj}"),
                    w.val().into_data().to_vec::<f32>().unwrap(),
                ));
            }
        }
        out
    };
    let (base, plain, ddp, again) = (
        weights(&fixture),
        weights(&plain),
        weights(&ddp),
        weights(&again),
    );
    // The spacing of bf16 values at `x`: 2^(exponent - 7).
    let bf16_step = |x: f32| f32::from_bits(x.to_bits() & 0x7f80_0000) / 128.0;
    for (((key, base), (_, plain)), ((_, ddp), (_, again))) in
        base.iter().zip(&plain).zip(ddp.iter().zip(&again))
    {
        let (update, _) = crate::common::max_abs_diff(plain, base);
        assert!(update > 0.0, "{key} did not train");
        for (label, other) in [("one rank through DDP", ddp), ("one device again", again)] {
            let differ = other.iter().zip(plain).filter(|(o, p)| o != p).count();
            let (apart, _) = crate::common::max_abs_diff(other, plain);
            // The largest difference beyond an element's bf16 step, as a share of the update.
            let beyond = other
                .iter()
                .zip(plain)
                .map(|(o, p)| ((o - p).abs() - bf16_step(*p)).max(0.0) / update)
                .fold(0.0, f32::max);
            eprintln!(
                "{key}: update {update:.3e}; {label} vs one device: {apart:.3e} apart, {differ} of {} elements differ, at most {:.2}% of the update beyond a bf16 step",
                plain.len(),
                100.0 * beyond
            );
            for (i, (o, p)) in other.iter().zip(plain).enumerate() {
                assert!(
                    (o - p).abs() <= bf16_step(*p) + 0.05 * update,
                    "{key}[{i}], {label}: {o} vs {p}, update {update}"
                );
            }
        }
    }
}

/// Many steps of the tiny fixture through burn's learner, one rank through DDP or one device:
/// each must finish with finite losses. burn-fusion 0.21 can lose a tensor's handle when tensors
/// cross threads (`Should have handle for tensor`, burn issues #4347 and #4947, reworked after
/// 0.21.0). burn-train's checkpointer threads, reading the model while training went on, were
/// the way in; the training thread now waits for them after each checkpoint
/// (`train::checkpoint::RecordsTaken`). One run rarely meets it: run many times at once (eight
/// processes on one GPU in `benches/results/ddp-one-rank.jsonl`'s calls 7 and 8: with no wait 15
/// of 112 runs on one device and 24 of 96 through DDP lost a handle with checkpoints every 5
/// steps; calls 10 and 11: with the wait 0 of 41 and 0 of 43).
fn many_steps(one_rank: bool, checkpoint_every: Option<usize>) {
    use steermoe::model::{ModelConfig, Precision};
    use steermoe::train::{TrainConfig, TrainContext, TrainOptions, synthetic, train};

    const STEPS: usize = 120;
    let fixture = crate::common::fixture();
    let model_cfg = ModelConfig::from_path(&fixture).unwrap();
    // None: no checkpoints at all (`measure_only`).
    let train_cfg = TrainConfig {
        lr: 1e-3,
        valid_pairs: 0,
        checkpoint_every: checkpoint_every.unwrap_or(0),
        ..TrainConfig::default()
    };
    let ctx = TrainContext {
        cfg: &train_cfg,
        seed: 0,
        devices: &[0],
        base_model: &fixture,
    };
    let trained: Vec<[usize; 2]> = (0..model_cfg.num_moe_layers())
        .flat_map(|l| [[l, 1], [l, 4]])
        .collect();
    let device = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let inputs = synthetic::inputs(&model_cfg, trained, STEPS, 4, 24, 11);
    let load = || Ok(steermoe::model::load::<Ad>(&fixture, &device, Precision::F32)?.0);
    let opts = TrainOptions {
        parallel_on_one_device: one_rank,
        measure_only: checkpoint_every.is_none(),
        ..Default::default()
    };
    let summary = train::<Ad>(
        &ctx,
        &steermoe::run_dir::RunDir::new(tmp.path()),
        inputs,
        load,
        &device,
        &opts,
        |_| {},
    )
    .unwrap();
    assert_eq!(summary.steps.len(), STEPS);
    assert!(
        summary.steps.iter().all(|s| s.loss.is_finite()),
        "{:?}",
        summary.steps.iter().map(|s| s.loss).collect::<Vec<_>>()
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU and NCCL (libnccl.so): cargo test --no-default-features --features cuda,ddp --test suite cuda_ddp:: -- --ignored"]
fn many_steps_through_ddp() {
    many_steps(true, Some(40));
}

#[test]
#[ignore = "needs an NVIDIA GPU and NCCL (libnccl.so): cargo test --no-default-features --features cuda,ddp --test suite cuda_ddp:: -- --ignored"]
fn many_steps_through_ddp_checkpointing_every_5_steps() {
    many_steps(true, Some(5));
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --no-default-features --features cuda,ddp --test suite cuda_ddp:: -- --ignored"]
fn many_steps_on_one_device() {
    many_steps(false, Some(40));
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --no-default-features --features cuda,ddp --test suite cuda_ddp:: -- --ignored"]
fn many_steps_on_one_device_checkpointing_every_5_steps() {
    many_steps(false, Some(5));
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --no-default-features --features cuda,ddp --test suite cuda_ddp:: -- --ignored"]
fn many_steps_on_one_device_without_checkpoints() {
    many_steps(false, None);
}
