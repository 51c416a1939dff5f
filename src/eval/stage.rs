//! Evaluation as a stage: a model directory (optionally steered by a run's expert ranking) into
//! `eval.json` + `responses.jsonl`, and the variants `steermoe run` evaluates under
//! `<run>/eval/<variant>/`: `base`, one `steer-…` per `eval.steer` setting, `trained`.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use super::{EvalError, EvalEvent, EvalReport, EvalSets, Evaluation, Steering, evaluate};
use crate::analysis::UnsafeExperts;
use crate::analysis::select::steering_sets;
use crate::config::{Config, SteerSetting, Variant};
use crate::model;
use crate::run_dir::write_atomic;

/// Files an evaluation writes into its directory.
pub use crate::run_dir::EVAL_FILES as OUTPUTS;

/// One evaluation `steermoe run` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvalVariant {
    /// The model as given.
    Base,
    /// The model steered by the run's ranking with one setting.
    Steered(SteerSetting),
    /// The fine-tuned model.
    Trained,
}

impl EvalVariant {
    /// Its name: `base`, `steer-a5`, …, `trained` (its directory under `eval/`).
    pub fn name(&self) -> String {
        match self {
            EvalVariant::Base => "base".into(),
            EvalVariant::Steered(s) => s.name(),
            EvalVariant::Trained => "trained".into(),
        }
    }

    /// The variants a config evaluates, in table order.
    pub fn all(cfg: &Config) -> Vec<EvalVariant> {
        cfg.eval
            .variants
            .iter()
            .flat_map(|v| match v {
                Variant::Base => vec![EvalVariant::Base],
                Variant::Steered => cfg.eval.steer.iter().map(|s| EvalVariant::Steered(*s)).collect(),
                Variant::Trained => vec![EvalVariant::Trained],
            })
            .collect()
    }

    /// The model it evaluates in `run_dir`, and the steering.
    pub fn model_and_steer<'a>(&self, cfg: &'a Config, run_dir: &'a Path) -> (PathBuf, Option<(&'a Path, SteerSetting)>) {
        match self {
            EvalVariant::Base => (cfg.model.dir.clone(), None),
            EvalVariant::Steered(s) => (cfg.model.dir.clone(), Some((run_dir, *s))),
            EvalVariant::Trained => (run_dir.join("final_model"), None),
        }
    }
}

/// Where `steermoe run` keeps the evaluation of `variant`.
pub fn variant_dir(run_dir: &Path, variant: &EvalVariant) -> PathBuf {
    run_dir.join("eval").join(variant.name())
}

/// Whether `dir` holds a finished evaluation.
pub fn is_done(dir: &Path) -> bool {
    OUTPUTS.iter().all(|f| dir.join(f).is_file())
}

/// The experts `setting` forces on and off, from the expert ranking of the analysed run in
/// `run_dir` (the random ablation's ranking is random; see [`steering_sets`]).
pub fn steering(run_dir: &Path, setting: SteerSetting, layers: usize, experts: usize, top_k: usize) -> Result<Steering, EvalError> {
    let analysis = UnsafeExperts::read(run_dir).map_err(|e| EvalError::Input {
        path: run_dir.join("unsafe_experts.json"),
        reason: e.to_string(),
    })?;
    if analysis.ranking.len() != layers * experts || analysis.ranking.iter().any(|&[l, e]| l >= layers || e >= experts) {
        return Err(EvalError::Input {
            path: run_dir.join("unsafe_experts.json"),
            reason: format!("its expert ranking does not rank the model's {layers} layers × {experts} experts"),
        });
    }
    let (activate, deactivate) = steering_sets(&analysis.ranking, experts, top_k, setting.activate_safe, setting.deactivate_unsafe);
    Ok(Steering { activate, deactivate })
}

/// Evaluate the model in `model_dir` on the config's held-out sets, steered by the ranking of an
/// analysed run with a setting if given, and write [`OUTPUTS`] into `out_dir`.
pub fn run<B: Backend>(
    cfg: &Config,
    model_dir: &Path,
    steer: Option<(&Path, SteerSetting)>,
    out_dir: &Path,
    device: &B::Device,
    progress: impl FnMut(EvalEvent),
) -> Result<EvalReport, EvalError> {
    let sets = EvalSets::from_config(cfg)?;
    let tokenizer = cfg.model.tokenizer(model_dir)?;
    let (model, mcfg) = model::load::<B>(model_dir, device, cfg.model.precision)?;
    let steering = match steer {
        Some((run, setting)) => steering(run, setting, mcfg.num_moe_layers(), mcfg.num_experts, mcfg.num_experts_per_tok)?,
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
    let rank = |name: &str| match name {
        "base" => 0,
        n if n.starts_with("steer") => 1,
        "trained" => 2,
        _ => 3,
    };
    found.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
    found
}
