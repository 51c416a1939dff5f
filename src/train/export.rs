//! The end of training: the trained model exported in Hub layout (written whole beside
//! `final_model/`, then renamed into place), the loss curve, and last the metadata that marks the
//! stage finished; and a model restored from a checkpoint.

use std::path::Path;

use burn::record::FullPrecisionSettings;
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::checkpoint::AtomicMpkRecorder;
use super::inputs::TrainInputs;
use super::step::SftModel;
use super::{TrainContext, TrainError, curve};
use crate::model::{self, LoadError, ModelConfig};
use crate::run_dir::training::TrainingMetadata;
use crate::run_dir::{RunDir, RunDirError, replace_dir};

/// Export the trained model, the loss curve and, last, `training_metadata.json`.
pub fn finish<B: Backend>(
    ctx: &TrainContext<'_>,
    dir: &RunDir,
    inputs: &TrainInputs,
    model: &model::MoeLm<B>,
    params: (usize, usize),
) -> Result<(), TrainError> {
    let staged = dir.final_model_staging();
    if staged.exists() {
        std::fs::remove_dir_all(&staged).map_err(|source| RunDirError::Io {
            path: staged.clone(),
            source,
        })?;
    }
    export(model, &inputs.model_cfg, ctx.base_model, &staged)?;
    replace_dir(&staged, &dir.final_model())?;
    let history = dir.metrics().read();
    dir.loss_curve()
        .write(&curve::png(&history.steps, &history.valid)?)?;
    let t = ctx.cfg;
    let meta = TrainingMetadata {
        base_model: ctx.base_model.display().to_string(),
        num_unsafe_experts: inputs.trained.len(),
        unsafe_experts: inputs.trained.clone(),
        num_batches: inputs.groups.len(),
        num_examples: inputs.num_examples,
        trainable_params: params.0,
        total_params: params.1,
        steps: inputs.total_steps(t),
        first_loss: history.steps.first().map(|s| s.loss),
        last_loss: history.steps.last().map(|s| s.loss),
        last_valid_loss: history.valid.last().map(|v| v.valid_loss),
        valid_pairs: inputs.valid.iter().map(|g| g.examples.len()).sum::<usize>() / 2,
        train: serde_json::to_value(t).expect("train settings serialise"),
        seed: ctx.seed,
    };
    dir.training_metadata().write(&meta)?;
    Ok(())
}

/// `model` with the weights of checkpoint `window` of `dir`.
pub fn restore<B: AutodiffBackend>(
    model: SftModel<B>,
    dir: &RunDir,
    window: usize,
    device: &B::Device,
) -> Result<SftModel<B>, TrainError> {
    use burn::module::Module;
    use burn::record::Recorder;
    let path = dir.checkpoints().record("model", window);
    let record = AtomicMpkRecorder::<FullPrecisionSettings>::new()
        .load(path.clone(), device)
        .map_err(|e| TrainError::Input {
            path,
            reason: format!("checkpoint unreadable: {e}"),
        })?;
    Ok(model.load_record(record))
}

/// Save `model` in Hub layout with the base model's tokenizer files.
pub fn export<B: Backend>(
    model: &model::MoeLm<B>,
    cfg: &ModelConfig,
    base_dir: &Path,
    out: &Path,
) -> Result<(), LoadError> {
    model::save(model, cfg, out)?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
    ] {
        let src = base_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, out.join(f)).map_err(|source| LoadError::Io {
                path: src.clone(),
                source,
            })?;
        }
    }
    Ok(())
}
