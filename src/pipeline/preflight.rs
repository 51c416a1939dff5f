//! Pre-flight: everything about a run that can be checked before any work, so that a bad config,
//! dataset, model directory or flag fails at once with a message naming the file and the key or
//! record — and leaves no run directory behind.
//!
//! Config parsing checks values only (`Config::validate`); this checks what the files say:
//! the backend is compiled in, the training devices exist, the model directory's config reads and
//! its tokenizer fits its embeddings, the dataset reads and its split names records of it with
//! no record both trained on and held out, the batches collect plans can be made, every prompt
//! and its answer fit the model's positions, the held-out sets can be built, and an HTTP judge's
//! API key is in the environment.

use super::PipelineError;
use crate::Error;
use crate::analysis::{ExpertSource, Truth};
use crate::collect::{check_prompt_lengths, plan};
use crate::config::Config;
use crate::data::batch::Batch;
use crate::data::{ChatTokenizer, Message};
use crate::eval::EvalSets;
use crate::model::ModelConfig;
use crate::model::planted::Planted;
use crate::run_dir::Stage;

/// What pre-flight found, kept for the stages.
#[derive(Debug)]
pub struct Preflight {
    /// The model's config.
    pub model_cfg: ModelConfig,
    /// Its tokenizer, with the config's `enable_thinking`.
    pub tokenizer: ChatTokenizer,
    /// The batches collect makes (when collect is among the stages).
    pub batches: Vec<Batch>,
    /// The held-out sets (when an evaluation is among the stages).
    pub eval_sets: Option<EvalSets>,
    /// The planted experts the analysis is scored against (`analysis.truth`, or the model's own
    /// `planted.json`), when analyze is among the stages.
    pub truth: Option<Truth>,
    /// The LLM judge evaluations ask in addition (`[judge] kind = "http"`, when an evaluation
    /// is among the stages).
    pub llm_judge: Option<crate::judge::HttpJudge>,
    /// Things the user must know although nothing is wrong (e.g. an evaluation that is not
    /// held out).
    pub notices: Vec<String>,
}

/// Check everything `stages` of `cfg` need before any of them runs.
pub fn preflight(cfg: &Config, stages: &[Stage]) -> Result<Preflight, Error> {
    let runs = |f: fn(&Stage) -> bool| stages.iter().any(f);
    if runs(|s| *s == Stage::Train) {
        crate::train::check_devices(&cfg.model.devices)?;
    }
    crate::backend::compiled(cfg.model.backend).map_err(PipelineError::from)?;
    let missing = |key, path: &std::path::Path, what| PipelineError::Missing {
        key,
        path: path.to_path_buf(),
        what,
    };
    let dir = &cfg.model.dir;
    if !dir.is_dir() {
        return Err(missing("model.dir", dir, "directory").into());
    }
    let model_cfg = ModelConfig::from_path(dir)?;
    let tokenizer = cfg.model.tokenizer(dir)?;
    tokenizer.check_fits(model_cfg.vocab_size, dir)?;
    let limit = model_cfg.max_position_embeddings;
    let mut notices = Vec::new();

    let mut batches = Vec::new();
    let evaluates = runs(|s| matches!(s, Stage::Eval(_)));
    if runs(|s| matches!(s, Stage::Collect | Stage::Train)) || evaluates {
        if !cfg.data.path.is_file() {
            return Err(missing("data.path", &cfg.data.path, "file").into());
        }
        if let Some(split) = cfg.data.split.as_deref().filter(|s| !s.is_file()) {
            return Err(missing("data.split", split, "file").into());
        }
        cfg.data.check_files()?;
    }
    if runs(|s| *s == Stage::Collect) {
        batches = plan(&cfg.data, &cfg.collect)?;
        check_prompt_lengths(&cfg.data, &cfg.collect, &batches, &tokenizer, limit)?;
    }
    let mut truth = None;
    if runs(|s| *s == Stage::Analyze) {
        let file = match &cfg.analysis.truth {
            Some(f) if !f.is_file() => return Err(missing("analysis.truth", f, "file").into()),
            Some(f) => f.clone(),
            None => Planted::path(dir),
        };
        if let Some(p) = Planted::read(&file)? {
            p.check_shape(&file, model_cfg.num_moe_layers(), model_cfg.num_experts)?;
            truth = Some(Truth {
                file,
                experts: p.experts,
            });
        }
    }
    if cfg.analysis.experts == ExpertSource::Planted
        && truth.is_none()
        && runs(|s| *s == Stage::Analyze)
    {
        return Err(PipelineError::Setting(crate::validate::Invalid::new(
            "analysis.experts",
            format!("\"planted\" needs the planted experts: {} has no planted.json and analysis.truth is not set", dir.display()),
        ))
        .into());
    }
    let mut eval_sets = None;
    let mut llm_judge = None;
    if evaluates {
        if let Some(http) = &cfg.judge.http {
            llm_judge =
                Some(crate::judge::HttpJudge::new(http).map_err(crate::eval::EvalError::from)?);
        }
        cfg.data.check_heldout().map_err(PipelineError::from)?;
        if !cfg.eval.benign_path.is_file() {
            return Err(missing("eval.benign_path", &cfg.eval.benign_path, "file").into());
        }
        for (key, path) in [
            ("eval.xstest_path", &cfg.eval.xstest_path),
            ("eval.strongreject_path", &cfg.eval.strongreject_path),
        ] {
            if let Some(p) = path.as_deref().filter(|p| !p.is_file()) {
                return Err(missing(key, p, "file").into());
            }
        }
        let sets = EvalSets::new(&cfg.data, &cfg.eval)?;
        check_eval_lengths(cfg, &sets, &tokenizer, limit)?;
        if !sets.heldout {
            notices.push(format!(
                "data.heldout = false: the evaluation answers every record of {}, the goals trained on included; its rates are not held-out rates",
                cfg.data.path.display()
            ));
        }
        eval_sets = Some(sets);
    }
    Ok(Preflight {
        model_cfg,
        tokenizer,
        batches,
        eval_sets,
        llm_judge,
        truth,
        notices,
    })
}

/// Every evaluation prompt (cut to `eval.max_prompt_tokens`) with its answer, and every scored
/// reference answer (cut to `eval.nll_max_len`), fits the model's positions.
fn check_eval_lengths(
    cfg: &Config,
    sets: &EvalSets,
    tokenizer: &ChatTokenizer,
    limit: usize,
) -> Result<(), Error> {
    let e = &cfg.eval;
    let too_long = |what: &str, record: usize, tokens: usize, key: &str| PipelineError::TooLong {
        what: what.to_string(),
        record,
        tokens,
        limit,
        key: key.to_string(),
    };
    // A family's records are numbered in its own file, so its prompts name it.
    let mut prompts: Vec<(String, &crate::eval::EvalPrompt)> = Vec::new();
    for f in &sets.families {
        prompts.extend(
            f.plain
                .iter()
                .map(|p| (format!("{} plain goal", f.name), p)),
        );
        prompts.extend(
            f.jailbreak
                .iter()
                .map(|p| (format!("{} jailbreak", f.name), p)),
        );
    }
    prompts.extend(
        sets.benign
            .iter()
            .map(|b| ("benign prompt".into(), &b.prompt)),
    );
    prompts.extend(sets.xstest.iter().map(|(p, _)| ("XSTest prompt".into(), p)));
    prompts.extend(
        sets.strongreject
            .iter()
            .map(|p| ("StrongREJECT prompt".into(), p)),
    );
    for (what, p) in prompts {
        let tokens = tokenizer
            .encode_prompt(&p.messages, e.max_prompt_tokens)?
            .len()
            + e.max_new_tokens;
        if tokens > limit {
            return Err(too_long(
                &what,
                p.record,
                tokens,
                "eval.max_prompt_tokens or eval.max_new_tokens",
            )
            .into());
        }
    }
    for b in &sets.benign {
        let mut convo = b.prompt.messages.clone();
        convo.push(Message::assistant(b.answer.clone()));
        let tokens = tokenizer
            .encode_chat(&convo, false)?
            .len()
            .min(e.nll_max_len);
        if tokens > limit {
            return Err(
                too_long("benign answer", b.prompt.record, tokens, "eval.nll_max_len").into(),
            );
        }
    }
    Ok(())
}
