//! Training: expert-only fine-tuning with burn-train's Learner (the seeds'
//! `train_batch_unsafe_experts.py`), except that each batch's routing mask is really applied.
//!
//! - [`config`]: the `[train]` table;
//! - [`inputs`] reads an analysed run (each batch's expert set, the SFT examples [`sft`] builds,
//!   the held-out validation groups of [`valid`]); [`loader`] serves them batch by batch with
//!   each batch's mask looked up by `batch_idx`, [`shard`] splits a batch across data-parallel
//!   ranks and [`parallel`] says what a rank's step adds;
//! - [`step`] is the model with its loss ([`step::SftModel`], burn-train's `TrainStep`);
//!   [`freeze`] decides what trains; [`schedule`] is the learning-rate schedule;
//! - [`run`] wires them into burn-train's `SupervisedTraining` ([`run::train`]): checkpoints every
//!   window (written by [`checkpoint`]'s recorder, named and picked by the run directory),
//!   validation at each checkpoint, resumption, the step reports of [`metrics`] to
//!   `metrics.jsonl`; [`devices`] checks and builds the data-parallel strategy; [`export`] writes
//!   the final model, [`curve`] the loss curve; [`control`] pauses and stops; [`synthetic`] makes
//!   up inputs for measuring and checking training without a collected run.

pub mod checkpoint;
pub mod config;
pub mod control;
pub mod curve;
pub mod devices;
pub mod export;
pub mod freeze;
pub mod inputs;
pub mod loader;
pub mod metrics;
pub mod parallel;
pub mod run;
pub mod schedule;
pub mod sft;
pub mod shard;
pub mod step;
pub mod synthetic;
pub mod valid;

use std::path::{Path, PathBuf};

pub use config::{
    Consistency, ExpertSet, LossOn, MaskScope, Phase, RouterKl, Schedule, TrainConfig, Trainable,
};
pub use control::{TrainControl, TrainPlan};
pub use devices::check_devices;
pub use export::export;
pub use inputs::{TrainInputs, batch_sets};
pub use metrics::{StepRecord, ValidRecord};
pub use run::{TrainEvent, TrainOptions, TrainSummary, train};

use crate::data::DataError;
use crate::model::LoadError;

/// What can go wrong training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An analysis or collect artifact is missing or malformed.
    #[error("{}: {reason}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading the collect run.
    #[error(transparent)]
    RunDir(#[from] crate::run_dir::RunDirError),
    /// Tokenizer or templates.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Loading or exporting the model.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Drawing the loss curve.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// A batch too small to split across `model.devices`.
    #[error(transparent)]
    Shard(#[from] shard::TooSmall),
    /// Several devices asked of a binary or backend that cannot train on them.
    #[error("model.devices = {devices:?}: {reason}")]
    Parallel {
        /// The devices asked for.
        devices: Vec<usize>,
        /// Why not.
        reason: String,
    },
    /// The loss went NaN or infinite: training stopped, nothing was exported.
    #[error("step {step}: the loss is {loss}; training stopped and exported nothing ({}; {removed} later checkpoint(s) removed). Lower train.lr or check the model's weights", kept.map(|k| format!("the last good checkpoint, window {k}, is kept")).unwrap_or_else(|| "no good checkpoint".into()))]
    NonFinite {
        /// The first step with a non-finite loss.
        step: usize,
        /// Its loss.
        loss: f64,
        /// The last checkpoint left (window), if any.
        kept: Option<usize>,
        /// Checkpoints removed (windows at or after the bad step's).
        removed: usize,
    },
}

/// What training takes besides the run directory and its inputs.
#[derive(Debug, Clone, Copy)]
pub struct TrainContext<'a> {
    /// `[train]`.
    pub cfg: &'a TrainConfig,
    /// The config's seed (batch order).
    pub seed: u64,
    /// The devices to train on (`model.devices`; several: data-parallel).
    pub devices: &'a [usize],
    /// The model trained from (its tokenizer files go with the export).
    pub base_model: &'a Path,
}
