//! Evaluation as a stage: a model directory (optionally steered by a run's unsafe experts) into
//! `eval.json` + `responses.jsonl`, and the variants `steermoe run` evaluates under
//! `<run>/eval/<variant>/`.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use super::{EvalError, EvalEvent, EvalReport, EvalSets, Evaluation, Steering, evaluate};
use crate::analysis::select::random_experts;
use crate::config::{Config, ExpertSet, Variant};
use crate::data::ChatTokenizer;
use crate::model::{self, checkpoint::write_atomic};
use crate::train::AnalysisResult;

/// Files an evaluation writes into its directory.
pub const OUTPUTS: [&str; 2] = ["eval.json", "responses.jsonl"];

/// Where `steermoe run` keeps the evaluation of `variant`.
pub fn variant_dir(run_dir: &Path, variant: Variant) -> PathBuf {
    run_dir.join("eval").join(variant.name())
}

/// Whether `dir` holds a finished evaluation.
pub fn is_done(dir: &Path) -> bool {
    OUTPUTS.iter().all(|f| dir.join(f).is_file())
}

/// The experts an analysed run deactivates when steering: the global unsafe experts, or, when
/// the run trains random experts (`train.expert_set = "random"`), as many random ones (seed
/// `analysis.random_seed`), so the ablation is matched in size.
pub fn steering(cfg: &Config, run_dir: &Path, layers: usize, experts: usize) -> Result<Steering, EvalError> {
    let analysis = AnalysisResult::read(run_dir)?;
    if let Some(&[l, e]) = analysis.global.iter().find(|&&[l, e]| l >= layers || e >= experts) {
        return Err(EvalError::Input {
            path: run_dir.join("unsafe_experts.json"),
            reason: format!("expert ({l}, {e}) is outside the model's {layers} layers × {experts} experts"),
        });
    }
    let experts = match cfg.train.expert_set {
        ExpertSet::Random => random_experts(layers, experts, analysis.global.len(), cfg.analysis.random_seed),
        ExpertSet::PerBatch | ExpertSet::Global => analysis.global,
    };
    Ok(Steering {
        experts,
        bias: cfg.eval.steer_bias,
    })
}

/// Evaluate the model in `model_dir` on the config's held-out sets, steered by the unsafe experts
/// of `steer_run` if given, and write [`OUTPUTS`] into `out_dir`.
pub fn run<B: Backend>(
    cfg: &Config,
    model_dir: &Path,
    steer_run: Option<&Path>,
    out_dir: &Path,
    device: &B::Device,
    progress: impl FnMut(EvalEvent),
) -> Result<EvalReport, EvalError> {
    let sets = EvalSets::from_config(cfg)?;
    let tokenizer = ChatTokenizer::from_dir(model_dir)?;
    let (model, mcfg) = model::load::<B>(model_dir, device, cfg.model.precision)?;
    let steering = match steer_run {
        Some(run) => steering(cfg, run, mcfg.num_hidden_layers, mcfg.num_experts)?,
        None => Steering::default(),
    };
    let name = model_dir.display().to_string();
    let eval = evaluate(&model, &name, &tokenizer, &sets, &cfg.eval, &cfg.judge, &steering, device, progress)?;
    write(out_dir, &eval)?;
    Ok(eval.report)
}

/// Write `eval.json` and `responses.jsonl` into `dir` (each file atomically; `eval.json` last,
/// so its presence means the evaluation is complete).
pub fn write(dir: &Path, eval: &Evaluation) -> Result<(), EvalError> {
    let io = |path: PathBuf| move |source| EvalError::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let mut lines = String::new();
    for r in &eval.responses {
        lines.push_str(&serde_json::to_string(r).expect("responses serialise"));
        lines.push('\n');
    }
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        write_atomic(&path, bytes).map_err(|e| EvalError::Input {
            path,
            reason: e.to_string(),
        })
    };
    write("responses.jsonl", lines.as_bytes())?;
    let mut json = serde_json::to_string_pretty(&eval.report).expect("report serialises");
    json.push('\n');
    write("eval.json", json.as_bytes())
}

/// Read a directory's `eval.json`.
pub fn read_report(dir: &Path) -> Result<EvalReport, EvalError> {
    let path = dir.join("eval.json");
    std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|reason| EvalError::Input { path, reason })
}

/// The finished evaluations among the subdirectories of `dir` (e.g. `<run>/eval`), named by
/// subdirectory: `steermoe run`'s variants in their order first, then the rest by name.
pub fn reports_in(dir: &Path) -> Vec<(String, EvalReport)> {
    let mut found: Vec<(String, EvalReport)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), read_report(&e.path()).ok()?)))
        .collect();
    let rank = |name: &str| ["base", "steered", "trained"].iter().position(|v| *v == name).unwrap_or(usize::MAX);
    found.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
    found
}
