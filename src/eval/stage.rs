//! Evaluation as a stage: a model (optionally steered by a run's expert ranking) into an
//! evaluation folder — a run directory's `eval/<variant>/` or the folder `steermoe eval --out`
//! names ([`EvalDir`]). With an HTTP judge, its verdicts on the answers are added to the report
//! (`llm_judge`), asked through the folder's verdict cache (`judge_cache.jsonl`).

use burn::tensor::backend::Backend;

use super::{EvalConfig, EvalError, EvalEvent, EvalReport, EvalSets, Steering, evaluate};
use crate::analysis::select::steering_sets;
use crate::data::ChatTokenizer;
use crate::judge::{HttpJudge, Judge};
use crate::model::{MoeLm, Removal};
use crate::run_dir::{EvalDir, RunDir, SteerSetting};

/// The experts `setting` forces on and off, from the expert ranking of the analysed run `dir`
/// (the random ablation's ranking is random; see [`steering_sets`]), for a model of `layers` MoE
/// layers × `experts` experts choosing `top_k`; forced-off experts leave the routing as `removal`
/// says.
pub fn steering(
    dir: &RunDir,
    setting: SteerSetting,
    layers: usize,
    experts: usize,
    top_k: usize,
    removal: Removal,
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
        removal,
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
    /// The LLM judge asked in addition (`[judge] kind = "http"`).
    pub llm_judge: Option<&'a HttpJudge>,
    /// Where it runs.
    pub device: &'a B::Device,
}

/// Evaluate on `sets` with `steering` and write the report and every answer into `out`; with an
/// LLM judge, judge the answers again with it (through `out`'s verdict cache) and report its
/// rates beside the judge's.
pub fn evaluate_into<B: Backend>(
    e: &Evaluator<'_, B>,
    sets: &EvalSets,
    cfg: &EvalConfig,
    steering: &Steering,
    out: &EvalDir,
    progress: impl FnMut(EvalEvent),
) -> Result<EvalReport, EvalError> {
    let mut eval = evaluate(
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
    if let Some(judge) = e.llm_judge {
        let mut cache = out.open_judge_cache()?;
        let llm = super::llm_judge(judge, &eval, &mut cache);
        tracing::info!(
            "{}: LLM judge {} decided {} answers ({} from the cache, {} requests), {} unparsed, {} failed",
            e.name,
            llm.model,
            llm.judged,
            llm.cached,
            llm.requests,
            llm.unparsed,
            llm.failed
        );
        eval.report.llm_judge = Some(llm);
    }
    out.write(&eval.report, &eval.responses)?;
    Ok(eval.report)
}
