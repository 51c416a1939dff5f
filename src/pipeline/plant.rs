//! `steermoe plant` as a job of the pipeline: the plant's training is the train stage's
//! (burn-train's Learner, checkpoints, resumption) in a work directory beside the output, on the
//! examples [`crate::plant`] makes; the base and the planted model are then measured and compared
//! tensor by tensor before anything is written to the output.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde_json::json;

use super::{Event, Models, Outcome, preflight};
use crate::Error;
use crate::config::Config;
use crate::model::planted::Planted;
use crate::plant::{
    PlantSummary, Sources, behaviour_dataset, behaviour_prompts, changes, check_output, choose,
    examples, groups, measure,
};
use crate::run_dir::{JsonFile, RunDir, Stage, Variant, remove_path, replace_dir};
use crate::train::{MaskScope, TrainConfig, TrainContext, TrainInputs, TrainOptions, Trainable};

/// Plant `cfg.plant`'s behaviour into the model `cfg.model` names, writing the planted model to
/// `out` (a new folder); training works in `out` + `.work` (resumable; removed at the end).
/// `None` when training was stopped (it resumes on the next call).
pub fn plant<B: AutodiffBackend>(
    cfg: &Config,
    out: &Path,
    device: &B::Device,
    models: &Models<B>,
    opts: &TrainOptions,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<Option<PlantSummary>, Error> {
    let p = &cfg.plant;
    check_output(out)?;
    let pre = preflight(cfg, &[Stage::Collect, Stage::Eval(Variant::Base)])?;
    let model_cfg = &pre.model_cfg;
    let experts = choose(
        &p.experts,
        p.seed,
        model_cfg.num_moe_layers(),
        model_cfg.num_experts,
    )?;
    let sources = Sources {
        data: &cfg.data,
        refusals: &cfg.train.refusals,
        eval: &cfg.eval,
    };
    let ex = examples(&sources, p, &pre.tokenizer)?;
    on_event(Event::Notice(format!(
        "planting into {} experts {:?}: {} behaviour and {} retain examples, {} steps of {}",
        experts.len(),
        experts,
        ex.behaviour.len(),
        ex.retain.len(),
        p.steps,
        p.batch_size
    )));
    let groups = groups(&ex, p);
    let rows: Vec<Vec<bool>> = (0..model_cfg.num_moe_layers())
        .map(|l| {
            (0..model_cfg.num_experts)
                .map(|e| experts.contains(&[l, e]))
                .collect()
        })
        .collect();
    let inputs = TrainInputs {
        sets: groups
            .iter()
            .map(|g| (g.batch_idx, experts.clone()))
            .collect(),
        trained: experts.clone(),
        num_examples: groups.iter().map(|g| g.examples.len()).sum(),
        groups: Arc::new(groups),
        valid: Arc::new(Vec::new()),
        model_cfg: model_cfg.clone(),
        pad_id: pre.tokenizer.pad_id,
        router_rows: p.routers.then(|| Arc::new(rows)),
    };
    let train_cfg = TrainConfig {
        lr: p.lr,
        warmup_steps: p.warmup_steps,
        epochs: 1,
        shuffle_batches: false,
        mask_scope: MaskScope::None,
        trainable: if p.routers {
            Trainable::UnsafeExpertsAndRouters
        } else {
            Trainable::UnsafeExperts
        },
        weight_decay: 0.0,
        max_len: p.max_len,
        checkpoint_every: (p.steps / 4).max(1),
        valid_pairs: 0,
        ..TrainConfig::default()
    };
    let work = RunDir::new(PathBuf::from(format!("{}.work", out.display())));
    let _lock = work.lock()?;
    let ctx = TrainContext {
        cfg: &train_cfg,
        seed: p.seed,
        devices: &cfg.model.devices,
        base_model: &cfg.model.dir,
    };
    on_event(Event::Started(Stage::Train));
    let start = std::time::Instant::now();
    let load = || Ok(models.get(&cfg.model, device)?);
    let summary = crate::train::train(&ctx, &work, inputs, load, device, opts, |e| {
        on_event(Event::Train(e))
    })?;
    on_event(Event::Done {
        stage: Stage::Train,
        outcome: Outcome::Ran,
        seconds: start.elapsed().as_secs_f64(),
    });
    if summary.stopped {
        return Ok(None);
    }

    // Check the work before anything goes to `out`.
    let staged = work.final_model();
    let base = models.get(&cfg.model, device)?.valid();
    let (planted_model, _) =
        crate::model::load::<B::InnerBackend>(&staged, device, cfg.model.precision)?;
    let changed = changes(&base, &planted_model, model_cfg, &experts, p.routers)?;
    let sets = pre
        .eval_sets
        .as_ref()
        .expect("pre-flight builds the held-out sets");
    let (prompts, marker) = behaviour_prompts(p, &cfg.data, cfg.eval.max_goals, &cfg.judge.phrase)?;
    on_event(Event::Notice(
        "measuring the base and the planted model on the held-out sets".into(),
    ));
    let rates = |model: &crate::model::MoeLm<B::InnerBackend>, name: String| {
        measure(
            model,
            &name,
            &cfg.eval,
            &cfg.judge.phrase,
            &pre.tokenizer,
            sets,
            &prompts,
            &*marker,
            device,
        )
    };
    let before = rates(&base, cfg.model.dir.display().to_string())?;
    let after = rates(&planted_model, out.display().to_string())?;
    let record = Planted {
        experts: experts.clone(),
        routers: p.routers,
        behaviour: serde_json::to_value(&p.behaviour).expect("the behaviour serialises"),
        seed: p.seed,
        steps: p.steps,
        base_model: cfg.model.dir.display().to_string(),
        checks: json!({
            "changed": changed,
            "everything_else_bit_identical": true,
            "base": before,
            "planted": after,
            "heldout": sets.heldout,
        }),
    };
    if let Some(records) = behaviour_dataset(p, &cfg.data)? {
        JsonFile::<Vec<serde_json::Value>>::at(staged.join("behaviour.json")).write(&records)?;
    }
    JsonFile::<Planted>::at(Planted::path(&staged)).write(&record)?;
    replace_dir(&staged, out)?;
    remove_path(work.path())?;
    Ok(Some(PlantSummary {
        experts,
        out: out.to_path_buf(),
        planted: record,
    }))
}
