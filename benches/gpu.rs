//! GPU benchmarks at the OLMoE-1B-7B shape (16 layers, hidden 2048, 64 experts, top-8, expert
//! width 1024, vocab 50304), random bf16 weights, the figures `benches/hf_anchor.py`
//! measures for transformers:
//!
//! - `gemm`: burn's plain matmul at the expert shapes (tokens-per-expert × 2048 × 1024 and back)
//!   and at 8192³, TFLOP/s;
//! - `train`: forward + backward + AdamW, batch 16 × 512, 50 experts trainable (the rest frozen),
//!   tokens/s and MFU against 800 TFLOP/s counted as `hf_anchor.py` counts it;
//! - `learner`: the same batches through `steermoe train`'s own path (burn-train's Learner, the
//!   batch-preserving loader with routing masks, AdamW) on `--devices`, several of them through
//!   burn's data-parallel strategy (a `--features cuda,ddp` build), tokens/s from the run's step
//!   metrics; not in the default `--what`;
//! - `generate`: greedy generation with router-logit capture, batch 16, 64-token prompts, 128 new
//!   tokens, new tokens/s, first run (kernel compilation included) and again;
//! - `decode-ops`: a decode step's MoE block at `--gen-batch` tokens, op by op (one layer of the
//!   shape, random weights): the stacked gate/up and down GEMMs, the down GEMM split by expert,
//!   router logits, top-k routing, the SwiGLU kernel, the stacked experts, the whole block dense
//!   and grouped; microseconds, the host's microseconds to queue them, and the weight bytes read
//!   per second. Not in the default `--what`;
//! - `effects`: the effect rankings' cost (issue 43): `--ranking` (default `ablation`: every
//!   expert removed both ways) over `--pairs` answered pairs, seconds per phase;
//! - `check`: a random model at the full width (`--check-layers` layers) saved in Hub layout with
//!   its logits, router logits, loss and the trainable experts' gradients on fixed ids, for
//!   `benches/hf_check.py` to recompute in transformers (the same computation, bf16 tolerance).
//!
//! ```text
//! cargo bench --features cuda --bench gpu -- --backend cuda [--what gemm,train,generate] [--check-dir DIR]
//! ```
//!
//! `--model-config FILE` measures another shape, a Hub `config.json` (e.g.
//! `benches/qwen3-30b-a3b.json`, Qwen3-30B-A3B's), with `--layers` layers if given.
//!
//! One JSON line per figure on stdout. `benches/gpu.sh` runs it with the transformers anchor on
//! the device; the latest results are in `benches/results/*.jsonl` (`benches/README.md`).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{
    Bool, DType, Distribution, ElementConversion, FloatDType, Int, Tensor, TensorData,
};
use clap::Parser;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use steermoe::backend::{self, BackendKind, Task};
use steermoe::generate::{GenerateOptions, Sampling, generate};
use steermoe::model::loss::{Targets, causal_lm_loss};
use steermoe::model::{self, ExpertExecution, LmInput, ModelConfig, MoeLm, Precision, Routing};
use steermoe::train::freeze::freeze;
use steermoe::train::loader::SftBatch;
use steermoe::train::step::{LossSettings, sft_loss};
use steermoe::train::{TrainConfig, TrainContext, TrainEvent, TrainOptions, Trainable};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Backend to measure.
    #[arg(long, default_value = "cuda")]
    backend: BackendKind,
    /// Compute precision.
    #[arg(long, default_value = "bf16")]
    precision: Precision,
    /// Figures to measure, comma-separated: gemm, train, generate.
    #[arg(long, value_delimiter = ',', default_value = "gemm,train,generate")]
    what: Vec<String>,
    /// Decoder layers (default: 16, OLMoE-1B-7B's, or the `--model-config`'s).
    #[arg(long)]
    layers: Option<usize>,
    /// A Hub `config.json` whose shape to measure instead of OLMoE-1B-7B's (`--hidden` and
    /// `--inter` then do not apply).
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// Width (2048 at the real shape; smaller for a smoke test on the CPU).
    #[arg(long, default_value_t = 2048)]
    hidden: usize,
    /// Expert width (1024 at the real shape).
    #[arg(long, default_value_t = 1024)]
    inter: usize,
    /// Train batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Train sequence length.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Train steps; the first `warmup_steps` are not in the median (burn compiles kernels for
    /// new shapes during the first few: 33 s, 10 s, 1.3 s, then 0.37 s measured at 2 layers).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Train steps left out of the median.
    #[arg(long, default_value_t = 4)]
    warmup_steps: usize,
    /// Time the train step's forward pass, backward pass and optimizer step apart (a device
    /// synchronisation after each).
    #[arg(long)]
    phases: bool,
    /// Trainable experts, spread over layers at random.
    #[arg(long, default_value_t = 50)]
    trainable: usize,
    /// `learner`: the devices it trains on (several: burn's data-parallel strategy, a binary
    /// built with `--features cuda,ddp`).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    devices: Vec<usize>,
    /// `learner` on one device through burn's data-parallel strategy all the same (NCCL, one
    /// worker): what that path costs, and a check of it on a machine with one GPU.
    #[arg(long)]
    ddp_one_rank: bool,
    /// Generation prompt length.
    #[arg(long, default_value_t = 64)]
    prompt: usize,
    /// Generated tokens per sequence.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Generation batch (sequences decoded together).
    #[arg(long, default_value_t = 16)]
    gen_batch: usize,
    /// `generate`: stack the experts once per generation call beside the weights, as before
    /// `MoeLm::share_experts` (twice the experts' memory), instead of sharing them.
    #[arg(long)]
    stack_per_call: bool,
    /// The device's dense bf16 peak in TFLOP/s, for the standard MFU (H100/H200 SXM: 989).
    #[arg(long, default_value_t = 989.0)]
    peak_tflops: f64,
    /// `generate`: also save its random model here in Hub layout (what `benches/serve.sh` serves).
    #[arg(long)]
    save_model: Option<PathBuf>,
    /// `effects`: answered pairs (a jailbreak and a plain goal, each with an answer) ablated.
    #[arg(long, default_value_t = 64)]
    pairs: usize,
    /// `effects`: pairs per collected batch (a batch of 16 at `safe_ratio` 0.5 holds 8).
    #[arg(long, default_value_t = 8)]
    pairs_per_batch: usize,
    /// `effects`: the ranking measured (`ablation`: every expert, both removals;
    /// `attribution`; `attribution+ablation`).
    #[arg(long, default_value = "ablation")]
    ranking: String,
    /// `effects`: which removals exact ablation measures: `both`, `zero` or `route`.
    #[arg(long, default_value = "both")]
    removal: String,
    /// Write the transformers cross-check (model, inputs, outputs, gradients) here.
    #[arg(long)]
    check_dir: Option<PathBuf>,
    /// Layers of the cross-check model.
    #[arg(long, default_value_t = 2)]
    check_layers: usize,
    /// How MoE layers run their experts.
    #[arg(long, value_enum, default_value_t = ExpertExecution::Auto)]
    execution: ExpertExecution,
    /// Sample every thread's stack while the measured train steps and the last generation run
    /// (build with `--features profile`), and write them as folded stacks
    /// (`DIR/train.folded`, `DIR/generate.folded`: `thread;root;…;leaf count` per line).
    #[arg(long)]
    cpu_profile: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Decoder layers measured.
fn layers(a: &Args) -> usize {
    a.layers.unwrap_or_else(|| match &a.model_config {
        Some(_) => config(a, None).num_hidden_layers,
        None => 16,
    })
}

/// The OLMoE-1B-7B shape (`hf_anchor.py`'s config), or `--model-config`'s, with `layers` layers
/// (`None`: the file's).
fn config(a: &Args, layers: Option<usize>) -> ModelConfig {
    if let Some(path) = &a.model_config {
        let text = std::fs::read_to_string(path).expect("read --model-config");
        let mut raw: serde_json::Value =
            serde_json::from_str(&text).expect("--model-config is JSON");
        if let Some(l) = layers {
            raw["num_hidden_layers"] = json!(l);
        }
        return ModelConfig::from_json_str(&raw.to_string(), path).expect("--model-config");
    }
    let layers = layers.unwrap_or(16);
    let heads = (a.hidden / 128).max(1);
    let raw = json!({
        "model_type": "olmoe", "architectures": ["OlmoeForCausalLM"],
        "vocab_size": 50304, "hidden_size": a.hidden, "intermediate_size": a.inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
        "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": false, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "router_aux_loss_coef": 0.01, "eos_token_id": 50279, "pad_token_id": 1, "torch_dtype": "bfloat16",
    });
    ModelConfig::from_json_str(&raw.to_string(), std::path::Path::new("<bench>"))
        .expect("bench config")
}

/// FLOPs of one token through the active parameters (as `hf_anchor.py` counts them: attention
/// projections, the k chosen experts and the router of MoE layers, dense MLPs, embedding and head).
fn active_params(cfg: &ModelConfig) -> f64 {
    let (h, i, v) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.vocab_size as f64,
    );
    let (q, kv) = (cfg.q_dim() as f64, cfg.kv_dim() as f64);
    let k = cfg.num_experts_per_tok as f64;
    let moe = cfg.num_moe_layers() as f64;
    let dense = (cfg.num_hidden_layers - cfg.num_moe_layers()) as f64;
    cfg.num_hidden_layers as f64 * 2.0 * h * (q + kv)
        + moe * (k * 3.0 * h * i + cfg.num_experts as f64 * h)
        + dense * 3.0 * h * cfg.dense_intermediate_size as f64
        + 2.0 * v * h
}

/// Model FLOPs utilisation counted the standard way (PaLM, appendix B): training FLOPs per token
/// 6·N (N: the active parameters, [`active_params`]) plus 12·L·d·s for attention (L layers, d the
/// attention width, s the sequence length), times tokens/s, over the device's dense bf16 peak
/// (`--peak-tflops`; 989 for an H100 or H200 SXM). The formula goes out with the figure.
fn mfu_standard(a: &Args, cfg: &ModelConfig, seq: usize, tokens_per_s: f64) -> serde_json::Value {
    let attention = 12.0 * cfg.num_hidden_layers as f64 * cfg.q_dim() as f64 * seq as f64;
    let per_token = 6.0 * active_params(cfg) + attention;
    json!({"mfu": round3(per_token * tokens_per_s / (a.peak_tflops * 1e12)),
        "formula": "(6*N_active + 12*L*d_attn*s) * tokens_per_s / peak",
        "n_active": active_params(cfg), "l": cfg.num_hidden_layers, "d_attn": cfg.q_dim(), "s": seq,
        "flops_per_token": per_token, "peak_tflops": a.peak_tflops})
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}

/// Time spent in cuBLAS since the last call (calls, GEMMs, seconds waiting for burn's kernels,
/// seconds in the GEMMs); null without the `cuda` feature.
fn cublas_stats() -> serde_json::Value {
    #[cfg(feature = "cuda")]
    return serde_json::to_value(steermoe::cuda::cublas::take_stats()).expect("stats serialise");
    #[cfg(not(feature = "cuda"))]
    serde_json::Value::Null
}

fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("device sync");
}

fn random_ids(rng: &mut ChaCha8Rng, n: usize) -> Vec<i64> {
    (0..n).map(|_| rng.random_range(2..50000) as i64).collect()
}

struct Bench(Args);

impl Task for Bench {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let a = self.0;
        B::seed(&device, 0);
        for what in &a.what {
            match what.as_str() {
                "gemm" => gemm::<B::InnerBackend>(&a, &device),
                "train" => train::<B>(&a, &device),
                "learner" => learner::<B>(&a, &device),
                "generate" => generation::<B::InnerBackend>(&a, &device),
                "decode-ops" => decode_ops::<B::InnerBackend>(&a, &device),
                "effects" => effects::<B>(&a, &device),
                "" => {}
                other => {
                    panic!(
                        "unknown figure {other:?} (gemm, train, learner, generate, decode-ops, effects)"
                    )
                }
            }
        }
        if let Some(dir) = &a.check_dir {
            check::<B>(&a, dir, &device);
        }
    }
}

/// burn's matmul at the expert shapes of a train step and at 8192³.
fn gemm<B: Backend>(a: &Args, device: &B::Device) {
    let dtype = a.precision.dtype();
    let per_expert = a.batch * a.seq * 8 / 64;
    let shapes = [
        ("expert up/gate", per_expert, a.hidden, a.inter),
        ("expert down", per_expert, a.inter, a.hidden),
        ("square 8192", 8192, 8192, 8192),
    ];
    for (name, m, k, n) in shapes {
        let x = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), (device, dtype));
        let w = Tensor::<B, 2>::random([k, n], Distribution::Normal(0.0, 1.0), (device, dtype));
        for _ in 0..5 {
            let _ = x.clone().matmul(w.clone());
        }
        sync::<B>(device);
        let iters = if m * k * n > 1 << 32 { 20 } else { 200 };
        let t = Instant::now();
        for _ in 0..iters {
            let _ = x.clone().matmul(w.clone());
        }
        sync::<B>(device);
        let s = t.elapsed().as_secs_f64() / iters as f64;
        let tflops = 2.0 * (m * k * n) as f64 / s / 1e12;
        emit(
            json!({"what": "gemm", "impl": "steermoe", "shape": name, "m": m, "k": k, "n": n,
            "dtype": format!("{dtype:?}"), "us": (s * 1e6 * 10.0).round() / 10.0, "tflops": (tflops * 10.0).round() / 10.0}),
        );
    }
}

/// The seeds' setup: `n` experts over all MoE layers, picked at random.
fn trainable_experts(cfg: &ModelConfig, n: usize) -> Vec<[usize; 2]> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let experts = cfg.num_experts;
    let mut all: Vec<[usize; 2]> = (0..cfg.num_moe_layers())
        .flat_map(|l| (0..experts).map(move |e| [l, e]))
        .collect();
    for i in 0..all.len() {
        let j = rng.random_range(i..all.len());
        all.swap(i, j);
    }
    all.truncate(n);
    all
}

fn lm_batch<B: Backend>(
    ids: Vec<i64>,
    batch: usize,
    seq: usize,
    routing: Routing<B>,
    device: &B::Device,
) -> SftBatch<B> {
    let targets = Targets::from_labels(&ids, batch, seq, device);
    SftBatch {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, seq]), device),
        tokens: targets.len(),
        targets,
        attention_mask: Tensor::<B, 2, Bool>::from_data(
            TensorData::new(vec![true; batch * seq], [batch, seq]),
            device,
        ),
        batch_idx: 0,
        is_unsafe: vec![false; batch],
        routing,
        real: vec![true; batch * seq].into(),
        input_tokens: batch * seq,
        step: 1,
        rank: steermoe::train::shard::Rank::SOLE,
        loss_scale: 1.0,
        phase: steermoe::train::Phase::Joint,
        skip: false,
    }
}

/// Forward + backward + AdamW with only the trainable experts' MLPs unfrozen.
fn train<B: AutodiffBackend>(a: &Args, device: &B::Device) {
    let cfg = config(a, Some(layers(a)));
    let t0 = Instant::now();
    let model = model::random::<B>(&cfg, device, a.precision).with_execution(a.execution);
    let mut model = freeze(
        model,
        &trainable_experts(&cfg, a.trainable),
        Trainable::UnsafeExperts,
        FloatDType::F32,
    );
    sync::<B>(device);
    let init_s = t0.elapsed().as_secs_f64();
    let mut optim = AdamWConfig::new().init::<B, MoeLm<B>>();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let batch = lm_batch::<B>(
        random_ids(&mut rng, a.batch * a.seq),
        a.batch,
        a.seq,
        routing(a),
        device,
    );
    let mut times = Vec::new();
    let mut losses = Vec::new();
    // With --phases: the device is synchronised after the forward pass and after the backward
    // pass too, and each phase timed (forward, backward, optimizer).
    let mut phases = Vec::new();
    let mut cublas = Vec::new();
    let mark = |t: &mut Instant| {
        sync::<B>(device);
        let s = t.elapsed().as_secs_f64();
        *t = Instant::now();
        s
    };
    let mut profile = None;
    for step in 0..a.steps {
        if step == a.warmup_steps {
            profile = Profile::start(a);
        }
        let t = Instant::now();
        let mut phase = Instant::now();
        let out = sft_loss(&model, &LossSettings::lm_only(), &batch);
        let loss = out.loss.clone();
        let forward = a.phases.then(|| mark(&mut phase));
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let backward = a.phases.then(|| mark(&mut phase));
        model = optim.step(5e-5, model, grads);
        losses.push(loss.into_scalar().elem::<f64>());
        sync::<B>(device);
        if let (Some(f), Some(b)) = (forward, backward) {
            phases.push([f, b, phase.elapsed().as_secs_f64()].map(round3));
        }
        times.push(t.elapsed().as_secs_f64());
        cublas.push(cublas_stats());
        eprintln!(
            "train step {}/{}: {:.3} s, loss {:.4}",
            times.len(),
            a.steps,
            times[times.len() - 1],
            losses[losses.len() - 1]
        );
    }
    Profile::finish(profile, a, "train");
    if a.phases {
        emit(
            json!({"what": "train_phases", "execution": a.execution, "forward_backward_optimizer_s": phases}),
        );
    }
    let median = median_after(&times, a.warmup_steps);
    let tok = (a.batch * a.seq) as f64 / median;
    emit(
        json!({"what": "train_step", "impl": "steermoe", "execution": a.execution, "B": a.batch, "T": a.seq, "layers": layers(a), "model_type": cfg.arch.model_type(),
        "trainable_experts": a.trainable, "init_s": round3(init_s), "first_step_s": round3(times[0]), "warmup_steps": a.warmup_steps, "step_s": times.iter().map(|t| round3(*t)).collect::<Vec<_>>(),
        "median_s": round3(median), "tokens_per_s": tok.round(), "mfu_vs_800T": round3(6.0 * active_params(&cfg) * tok / 800e12),
        "mfu_standard": mfu_standard(a, &cfg, a.seq, tok),
        "losses": losses.iter().map(|l| round3(*l)).collect::<Vec<_>>(), "cublas_last_step": cublas.last(),
        "cublas": std::env::var("STEERMOE_CUBLAS").map_or("on".to_string(), |v| if v == "0" { "off".into() } else { v })}),
    );
}

/// Training as `steermoe train` runs it: burn-train's Learner, the batch-preserving loader with
/// each batch's routing mask (the default recipe's `mask_scope`), AdamW, on `--devices` (several:
/// burn's data-parallel strategy); nothing written but `metrics.jsonl`. Tokens/s are the
/// metrics' (each step's real tokens over the wall time since the step before, the ranks' parts
/// added), the median after `--warmup-steps`.
fn learner<B: AutodiffBackend>(a: &Args, device: &B::Device) {
    let model_cfg = config(a, Some(layers(a)));
    let train_cfg = TrainConfig {
        valid_pairs: 0,
        shuffle_batches: false,
        ..TrainConfig::default()
    };
    let ctx = TrainContext {
        cfg: &train_cfg,
        seed: 0,
        devices: &a.devices,
        base_model: std::path::Path::new("<random weights>"),
    };
    let tmp = tempfile::tempdir().expect("a temporary run directory");
    let dir = steermoe::run_dir::RunDir::new(tmp.path());
    let inputs = steermoe::train::synthetic::inputs(
        &model_cfg,
        trainable_experts(&model_cfg, a.trainable),
        a.steps,
        a.batch,
        a.seq,
        1,
    );
    let t0 = Instant::now();
    let load =
        || Ok(model::random::<B>(&model_cfg, device, a.precision).with_execution(a.execution));
    let opts = TrainOptions {
        measure_only: true,
        parallel_on_one_device: a.ddp_one_rank,
        ..Default::default()
    };
    let summary = steermoe::train::train::<B>(&ctx, &dir, inputs, load, device, &opts, |e| {
        if let TrainEvent::Step(r) = e {
            eprintln!(
                "learner step {}/{}: {:.0} tokens/s, loss {:.4}",
                r.step, a.steps, r.tokens_per_s, r.loss
            );
        }
    })
    .expect("training");
    let wall_s = t0.elapsed().as_secs_f64();
    let tps: Vec<f64> = summary.steps.iter().map(|r| r.tokens_per_s).collect();
    let median = median_after(&tps, a.warmup_steps);
    emit(
        json!({"what": "learner_train", "impl": "steermoe", "devices": a.devices, "ddp": a.devices.len() > 1 || a.ddp_one_rank,
        "execution": a.execution, "B": a.batch, "T": a.seq, "layers": layers(a), "model_type": model_cfg.arch.model_type(),
        "trainable_experts": a.trainable, "mask_scope": train_cfg.mask_scope, "steps": tps.len(), "warmup_steps": a.warmup_steps,
        "tokens_per_s_each": tps.iter().map(|t| t.round()).collect::<Vec<_>>(), "median_tokens_per_s": median.round(),
        "mfu_vs_800T_per_device": round3(6.0 * active_params(&model_cfg) * median / 800e12 / a.devices.len() as f64),
        "mfu_standard_per_device": mfu_standard(a, &model_cfg, a.seq, median / a.devices.len() as f64),
        "losses": summary.steps.iter().map(|r| round3(r.loss)).collect::<Vec<_>>(), "wall_s": round3(wall_s)}),
    );
}

/// Greedy generation with router capture, run twice (the first compiles kernels).
fn generation<B: Backend>(a: &Args, device: &B::Device) {
    let cfg = config(a, Some(layers(a)));
    let model = model::random::<B>(&cfg, device, a.precision).with_execution(a.execution);
    if let Some(dir) = &a.save_model {
        model::save(&model, &cfg, dir).expect("save the generation model");
    }
    memory::<B>(device, "model made");
    let model = match a.stack_per_call {
        true => model,
        false => model.share_experts(),
    };
    memory::<B>(device, "experts shared");
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let prompts: Vec<Vec<u32>> = (0..a.gen_batch)
        .map(|_| {
            random_ids(&mut rng, a.prompt)
                .into_iter()
                .map(|t| t as u32)
                .collect()
        })
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: a.new_tokens,
        sampling: Sampling::Greedy,
        stop_ids: Vec::new(),
        pad_id: 1,
        capture: true,
    };
    for (i, run) in ["first", "again", "again"].into_iter().enumerate() {
        sync::<B>(device);
        let profile = if i == 2 { Profile::start(a) } else { None };
        let t = Instant::now();
        let out = generate(&model, &prompts, &opts, &routing(a), device, |_| {});
        let s = t.elapsed().as_secs_f64();
        Profile::finish(profile, a, "generate");
        let new: usize = out.iter().map(|g| g.new_ids.len()).sum();
        let captured = out.iter().all(|g| {
            g.gen_routing
                .as_ref()
                .is_some_and(|r| r.tokens == g.new_ids.len())
        });
        emit(
            json!({"what": "generate_router_capture", "impl": "steermoe", "run": run, "batch": a.gen_batch,
            "experts_shared": !a.stack_per_call,
            "prompt": a.prompt, "new": a.new_tokens, "execution": a.execution, "layers": layers(a), "seconds": round3(s),
            "new_tokens_per_s": (new as f64 / s).round(), "captured": captured}),
        );
    }
    memory::<B>(device, "after generation");
}

/// Seconds per run of `op` over `reps` runs queued back to back (outputs kept until the device
/// has run them all), after three warm-up runs: (queued, done). `queued` is the host's time to
/// issue them; where it comes near `done`, the host, not the device, sets the pace.
fn time_op<B: Backend, T>(
    device: &B::Device,
    reps: usize,
    mut op: impl FnMut() -> T,
) -> (f64, f64) {
    let mut keep: Vec<T> = (0..3).map(|_| op()).collect();
    sync::<B>(device);
    keep.clear();
    let t = Instant::now();
    keep.extend((0..reps).map(|_| op()));
    let queued = t.elapsed().as_secs_f64() / reps as f64;
    sync::<B>(device);
    (queued, t.elapsed().as_secs_f64() / reps as f64)
}

/// A decode step's MoE block op by op: what each costs against the bytes it must read.
fn decode_ops<B: Backend>(a: &Args, device: &B::Device) {
    use steermoe::model::experts::grouped_linear;
    let cfg = config(a, Some(1));
    let dtype = a.precision.dtype();
    let model = model::random::<B>(&cfg, device, a.precision);
    let layer = model.moe_layers()[0];
    let block = model.moe_block(layer);
    let stack = model::StackedExperts::stack(&block.experts, dtype).expect("no biases");
    let (h, e, i, t) = (
        cfg.hidden_size,
        cfg.num_experts,
        cfg.intermediate_size,
        a.gen_batch,
    );
    let elem = dtype.size();
    let normal = Distribution::Normal(0.0, 0.02);
    let gate_up = Tensor::<B, 2>::random([h, 2 * e * i], normal, (device, dtype));
    let down = Tensor::<B, 2>::random([e * i, h], normal, (device, dtype));
    let x = Tensor::<B, 2>::random([t, h], Distribution::Normal(0.0, 1.0), (device, dtype));
    let mid = Tensor::<B, 2>::random([t, e * i], Distribution::Normal(0.0, 1.0), (device, dtype));
    let expert_bytes = (3 * h * e * i * elem) as f64;
    let reps = 50;
    let figure = |op: &str, (queued, s): (f64, f64), bytes: f64| {
        emit(
            json!({"what": "decode_op", "op": op, "tokens": t, "hidden": h, "experts": e,
            "inter": i, "dtype": format!("{dtype:?}"), "us": (s * 1e7).round() / 10.0,
            "queued_us": (queued * 1e7).round() / 10.0,
            "bytes": bytes, "GB_per_s": (bytes / s / 1e9).round()}),
        );
    };
    let s = time_op::<B, _>(device, reps, || {
        grouped_linear(x.clone(), vec![gate_up.clone()], &[t])
    });
    figure(
        "gate/up GEMM, all experts",
        s,
        (2 * h * e * i * elem) as f64,
    );
    let s = time_op::<B, _>(device, reps, || {
        grouped_linear(mid.clone(), vec![down.clone()], &[t])
    });
    figure("down GEMM, all experts", s, (h * e * i * elem) as f64);
    #[cfg(feature = "cuda")]
    {
        let split = || {
            let parts = steermoe::cuda::try_batched_matmul(
                &mid.clone().reshape([t, e, i]).swap_dims(0, 1),
                &down.clone().reshape([e, i, h]),
            )
            .expect("CUDA batched matmul");
            parts.sum_dim(0)
        };
        let s = time_op::<B, _>(device, reps, split);
        figure(
            "down GEMM split by expert, summed",
            s,
            (h * e * i * elem) as f64,
        );
    }
    let xs = x.clone().reshape([1, t, h]);
    let free = Routing::<B>::default().layer(0);
    // The dense block's steps apart: router logits, top-k routing, the stacked experts.
    let logits = || steermoe::model::experts::dense_linear(&block.gate, x.clone());
    figure("router logits", time_op::<B, _>(device, reps, logits), 0.0);
    let scores = logits();
    let choose = || free.choose(scores.clone(), 1, block.top_k(), cfg.norm_topk_prob);
    figure(
        "top-k routing",
        time_op::<B, _>(device, reps, || choose().weights),
        0.0,
    );
    let choice = choose();
    let s = time_op::<B, _>(device, reps, || stack.forward(x.clone(), choice.clone()));
    figure("stacked experts (gate/up, SwiGLU, down)", s, expert_bytes);
    #[cfg(feature = "cuda")]
    if let Some(dense) = &choice.dense {
        let gu = grouped_linear(x.clone(), vec![gate_up.clone()], &[t]);
        let s = time_op::<B, _>(device, reps, || {
            steermoe::cube::try_swiglu(&gu, dense, i).expect("the SwiGLU kernel")
        });
        figure("SwiGLU kernel", s, 0.0);
    }
    for (name, execution, stacked) in [
        ("MoE block, dense", ExpertExecution::Dense, Some(&stack)),
        ("MoE block, grouped", ExpertExecution::Grouped, None),
    ] {
        let s = time_op::<B, _>(device, reps, || {
            block
                .forward(xs.clone(), &free, execution, stacked, false)
                .hidden
        });
        figure(name, s, expert_bytes);
    }
}

/// cubecl's memory pools on a CUDA device (in use, reserved) as a JSON line, after the queued
/// work has run.
fn memory<B: Backend>(device: &B::Device, at: &str) {
    #[cfg(feature = "cuda")]
    {
        sync::<B>(device);
        if let Some((used, reserved)) = steermoe::cuda::memory_usage(device) {
            let mib = |b: u64| b / (1 << 20);
            emit(
                json!({"what": "device_memory", "at": at, "in_use_MiB": mib(used), "reserved_MiB": mib(reserved)}),
            );
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (device, at);
}

/// The effect rankings' cost (issue 43): `--pairs` answered pairs in batches of
/// `--pairs-per-batch`, jailbreaks of 256 prompt tokens and plain goals of 48 (FlipAttack's and
/// its goals' lengths under OLMoE's template), 16 answer tokens each, on a random model.
fn effects<B: AutodiffBackend>(a: &Args, device: &B::Device) {
    use steermoe::analysis::answers::{Answered, AnsweredBatch};
    use steermoe::analysis::{AnalysisConfig, EffectsEvent, effects};
    let cfg = config(a, Some(layers(a)));
    let model = model::random::<B>(&cfg, device, a.precision).with_execution(a.execution);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut answered = |prompt: usize, is_unsafe: bool| Answered {
        ids: random_ids(&mut rng, prompt + 16)
            .into_iter()
            .map(|t| t as u32)
            .collect(),
        prompt_len: prompt,
        is_unsafe,
    };
    let batches: Vec<AnsweredBatch> = (0..a.pairs.div_ceil(a.pairs_per_batch))
        .map(|b| {
            let n = a.pairs_per_batch.min(a.pairs - b * a.pairs_per_batch);
            let mut items: Vec<Answered> = (0..n).map(|_| answered(256, true)).collect();
            items.extend((0..n).map(|_| answered(48, false)));
            AnsweredBatch {
                batch_idx: b,
                items,
            }
        })
        .collect();
    let both = a.removal == "both";
    let mut settings = json!({"ranking": a.ranking, "ablate_both": both});
    if !both {
        settings["removal"] = json!(a.removal);
    }
    let analysis: AnalysisConfig = serde_json::from_value(settings).expect(
        "--ranking: ablation, attribution or attribution+ablation; --removal: both, zero or route",
    );
    // A line every 1,024 passes: a rate even where a time limit stops the figure.
    let (mut passes, mut total) = (0usize, 0usize);
    sync::<B>(device);
    let t = Instant::now();
    let e = effects::measure(&model, &batches, &analysis, device, |ev| match ev {
        EffectsEvent::Start(n) => total = n,
        EffectsEvent::Pass => {
            passes += 1;
            if passes % 1024 == 0 {
                emit(
                    json!({"what": "effects_progress", "passes": passes, "of": total,
                    "seconds": round3(t.elapsed().as_secs_f64())}),
                );
            }
        }
    });
    sync::<B>(device);
    let wall = t.elapsed().as_secs_f64();
    emit(
        json!({"what": "effects", "impl": "steermoe", "ranking": a.ranking, "removal": a.removal, "layers": layers(a),
        "experts": e.layers * e.experts, "ablated": e.ablated.len(), "removals": e.ablation.len(),
        "pairs": a.pairs, "pairs_per_batch": a.pairs_per_batch, "passes": passes,
        "attribution_seconds": round3(e.seconds.0), "ablation_seconds": round3(e.seconds.1),
        "wall_s": round3(wall), "execution": a.execution}),
    );
}

/// Save a random model and what steermoe computes on it, for `hf_check.py`.
fn check<B: AutodiffBackend>(a: &Args, dir: &std::path::Path, device: &B::Device) {
    let cfg = config(a, Some(a.check_layers));
    let model = model::random::<B>(&cfg, device, a.precision).with_execution(a.execution);
    let experts: Vec<[usize; 2]> = vec![[0, 0], [0, 1], [a.check_layers - 1, 5]];
    let model = freeze(model, &experts, Trainable::UnsafeExperts, FloatDType::F32);
    model::save(&model.valid(), &cfg, dir.join("model")).expect("save the check model");
    let (batch, seq) = (2, 64);
    let ids = random_ids(&mut ChaCha8Rng::seed_from_u64(3), batch * seq);
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [batch, seq]), device);
    let out = model.forward(LmInput::ids(input.clone()), &Routing::capturing());
    let loss = causal_lm_loss(out.logits.clone(), input);
    let grads = loss.backward();
    let mut tensors = vec![
        (
            "input_ids".to_string(),
            TensorData::new(
                ids.iter().map(|&i| i as f32).collect::<Vec<_>>(),
                [batch, seq],
            ),
        ),
        (
            "logits".to_string(),
            out.logits.cast(DType::F32).into_data(),
        ),
        (
            "router_logits".to_string(),
            out.router_logits
                .expect("captured")
                .cast(DType::F32)
                .into_data(),
        ),
        (
            "loss".to_string(),
            loss.clone().cast(DType::F32).into_data(),
        ),
    ];
    for &[l, e] in &experts {
        let ex = &model.moe_block(l).experts[e];
        for (proj, lin) in [
            ("gate_proj", &ex.gate_proj),
            ("up_proj", &ex.up_proj),
            ("down_proj", &ex.down_proj),
        ] {
            let g = lin
                .weight
                .val()
                .grad(&grads)
                .expect("trainable expert has a gradient");
            // Hub orientation [out, in].
            tensors.push((
                format!("grad.{l}.{e}.{proj}"),
                g.transpose().cast(DType::F32).into_data(),
            ));
        }
    }
    steermoe::inspect::write_f32(&dir.join("steermoe.safetensors"), tensors)
        .expect("write the check file");
    emit(
        json!({"what": "check_written", "dir": dir, "layers": a.check_layers, "loss": loss.into_scalar().elem::<f64>(),
        "experts": experts}),
    );
}

/// A CPU profile of the whole process (every thread), with `--cpu-profile` and `--features profile`.
#[cfg(feature = "profile")]
struct Profile(pprof::ProfilerGuard<'static>);
#[cfg(not(feature = "profile"))]
struct Profile;

impl Profile {
    fn start(a: &Args) -> Option<Self> {
        a.cpu_profile.as_ref()?;
        #[cfg(feature = "profile")]
        {
            // Samples landing in the unwinder's and libc's own code are dropped (pprof's advice:
            // unwinding from there can deadlock), so time inside libc does not show.
            let guard = pprof::ProfilerGuardBuilder::default()
                .frequency(999)
                .blocklist(&["libc", "libgcc", "pthread", "vdso"])
                .build()
                .expect("start the CPU profiler");
            Some(Self(guard))
        }
        #[cfg(not(feature = "profile"))]
        panic!("--cpu-profile needs a build with `--features profile`")
    }

    #[cfg_attr(not(feature = "profile"), allow(unused_variables))]
    fn finish(profile: Option<Self>, a: &Args, name: &str) {
        #[cfg(feature = "profile")]
        if let (Some(Self(guard)), Some(dir)) = (profile, &a.cpu_profile) {
            use std::fmt::Write as _;
            let report = guard.report().build().expect("build the CPU profile");
            let mut folded = String::new();
            let mut samples = 0;
            for (frames, count) in &report.data {
                let stack: Vec<String> = frames
                    .frames
                    .iter()
                    .rev()
                    .flat_map(|f| f.iter().rev().map(|s| s.name().replace(';', ":")))
                    .collect();
                let _ = writeln!(
                    folded,
                    "{};{} {count}",
                    frames.thread_name_or_id(),
                    stack.join(";")
                );
                samples += count;
            }
            std::fs::create_dir_all(dir).expect("create the profile folder");
            let path = dir.join(format!("{name}.folded"));
            std::fs::write(&path, folded).expect("write the CPU profile");
            emit(
                json!({"what": "cpu_profile", "of": name, "samples": samples, "seconds": round3(report.timing.duration.as_secs_f64()), "file": path}),
            );
        }
    }
}

fn routing<B: Backend>(_: &Args) -> Routing<B> {
    Routing::free()
}

/// The median of `values` after the first `skip` (the upper one of an even count; NaN if none).
fn median_after(values: &[f64], skip: usize) -> f64 {
    let mut steady: Vec<f64> = values.iter().skip(skip).copied().collect();
    steady.sort_by(f64::total_cmp);
    steady.get(steady.len() / 2).copied().unwrap_or(f64::NAN)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn main() {
    let args = Args::parse();
    emit(
        json!({"what": "setup", "impl": "steermoe", "backend": args.backend.to_string(),
        "precision": format!("{:?}", args.precision), "version": env!("CARGO_PKG_VERSION")}),
    );
    backend::run(args.backend, Bench(args.clone())).expect("backend compiled in");
}
