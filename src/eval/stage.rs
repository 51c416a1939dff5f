//! Evaluation as a stage: a model (optionally steered by a run's expert ranking) into an
//! evaluation folder — a run directory's `eval/<variant>/` or the folder `steermoe eval --out`
//! names ([`EvalDir`]).

use burn::tensor::backend::Backend;

use super::{EvalConfig, EvalError, EvalEvent, EvalReport, EvalSets, Steering, evaluate};
use crate::analysis::select::steering_sets;
use crate::data::ChatTokenizer;
use crate::judge::Judge;
use crate::model::MoeLm;
use crate::run_dir::{EvalDir, RunDir, SteerSetting};

/// The experts `setting` forces on and off, from the expert ranking of the analysed run `dir`
/// (the random ablation's ranking is random; see [`steering_sets`]), for a model of `layers` MoE
/// layers × `experts` experts choosing `top_k`.
pub fn steering(
    dir: &RunDir,
    setting: SteerSetting,
    layers: usize,
    experts: usize,
    top_k: usize,
) -> Result<Steering, EvalError> {
    let file = dir.unsafe_experts();
    let analysis = file.read()?;
    analysis
        .check_shape(layers, experts)
        .map_err(|reason| EvalError::Input {
            path: file.path().to_path_buf(),
            reason,
        })?;
    let (activate, deactivate) = steering_sets(
        &analysis.ranking,
        experts,
        top_k,
        setting.activate_safe,
        setting.deactivate_unsafe,
    );
    Ok(Steering {
        activate,
        deactivate,
    })
}

/// What an evaluation works with: the model, its name in the report, its tokenizer, the judge.
pub struct Evaluator<'a, B: Backend> {
    /// The model evaluated.
    pub model: &'a MoeLm<B>,
    /// Its name in the report (its directory).
    pub name: String,
    /// Its tokenizer and chat template.
    pub tokenizer: &'a ChatTokenizer,
    /// The refusal judge.
    pub judge: &'a dyn Judge,
    /// Where it runs.
    pub device: &'a B::Device,
}

/// Evaluate on `sets` with `steering` and write the report and every answer into `out`.
pub fn evaluate_into<B: Backend>(
    e: &Evaluator<'_, B>,
    sets: &EvalSets,
    cfg: &EvalConfig,
    steering: &Steering,
    out: &EvalDir,
    progress: impl FnMut(EvalEvent),
) -> Result<EvalReport, EvalError> {
    let eval = evaluate(
        e.model,
        &e.name,
        e.tokenizer,
        sets,
        cfg,
        e.judge,
        steering,
        e.device,
        progress,
    )?;
    out.write(&eval.report, &eval.responses)?;
    Ok(eval.report)
}
