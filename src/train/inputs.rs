//! What training reads from an analysed run directory: each batch's expert set, the SFT examples
//! of its kept samples, and the held-out validation groups; and the loaders that serve them.

use std::sync::Arc;

use super::TrainError;
use super::config::{ExpertSet, MaskScope, TrainConfig};
use super::loader::{self, BatchPreservingLoader, MaskTable};
use super::sft::{self, SftGroup};
use super::step::RouterRows;
use crate::analysis::select::union;
use crate::data::ChatTokenizer;
use crate::model::{ExpertId, ModelConfig};
use crate::run_dir::RunDir;
use crate::run_dir::analysis::UnsafeExperts;

/// Each analysed batch's expert set under `set`: its own unsafe experts, or the global ones.
pub fn batch_sets(analysis: &UnsafeExperts, set: ExpertSet) -> Vec<(usize, Vec<ExpertId>)> {
    analysis
        .batch_idx
        .iter()
        .zip(&analysis.per_batch)
        .map(|(&b, own)| {
            let chosen = match set {
                ExpertSet::PerBatch => own.clone(),
                ExpertSet::Global => analysis.global.clone(),
            };
            (b, chosen)
        })
        .collect()
}

/// What training reads from an analysed run.
#[derive(Debug, Clone)]
pub struct TrainInputs {
    /// Each analysed batch's expert set: the experts its steps train and its routing mask.
    pub sets: Vec<(usize, Vec<ExpertId>)>,
    /// The union of the sets: every expert trained.
    pub trained: Vec<ExpertId>,
    /// The SFT examples, one group per analysed batch with kept samples (shared by the loaders).
    pub groups: Arc<Vec<SftGroup>>,
    /// The validation groups: held-out pairs answered with a refusal (see [`super::valid`]).
    pub valid: Arc<Vec<SftGroup>>,
    /// Examples in all.
    pub num_examples: usize,
    /// The model's config.
    pub model_cfg: ModelConfig,
    /// Padding token.
    pub pad_id: u32,
    /// Where only some router rows may train (a planted behaviour's), which (with
    /// `train.trainable` naming the routers); `None`: whole routers.
    pub router_rows: Option<RouterRows>,
}

impl TrainInputs {
    /// Read the analysis and the collected samples of `dir` as `t` trains on them, for the model
    /// of `model_cfg` (an analysis naming experts it does not have is refused), with the
    /// validation groups `valid`.
    pub fn read(
        dir: &RunDir,
        t: &TrainConfig,
        tokenizer: &ChatTokenizer,
        model_cfg: ModelConfig,
        valid: Vec<SftGroup>,
    ) -> Result<Self, TrainError> {
        let file = dir.unsafe_experts();
        let analysis = file.read()?;
        analysis
            .check_shape(model_cfg.num_moe_layers(), model_cfg.num_experts)
            .map_err(|reason| TrainError::Input {
                path: file.path().to_path_buf(),
                reason: format!("{reason} (run `steermoe analyze` on this run directory again)"),
            })?;
        let sets = batch_sets(&analysis, t.expert_set);
        let trained = union(&sets.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>());
        let groups = sft::build(dir, &analysis.batch_idx, tokenizer, t)?;
        if groups.is_empty() {
            return Err(TrainError::Input {
                path: file.path().to_path_buf(),
                reason: "no analysed batch has kept samples to train on".into(),
            });
        }
        Ok(Self {
            num_examples: groups.iter().map(|g| g.examples.len()).sum(),
            sets,
            trained,
            groups: Arc::new(groups),
            valid: Arc::new(valid),
            model_cfg,
            pad_id: tokenizer.pad_id,
            router_rows: None,
        })
    }

    /// Steps per window: the steps between two checkpoints.
    pub fn window(&self, t: &TrainConfig) -> usize {
        if t.checkpoint_every > 0 {
            t.checkpoint_every
        } else {
            self.groups.len()
        }
    }

    /// Optimizer steps of the whole schedule.
    pub fn total_steps(&self, t: &TrainConfig) -> usize {
        self.groups.len() * t.passes()
    }

    /// The loader training iterates: the groups in `schedule` order from window `start_window`,
    /// each batch carrying the routing its step applies (its set's mask, the one analysis
    /// writes, on the samples `train.mask_scope` restricts), split across `ranks` devices.
    pub fn loader<B: burn::tensor::backend::Backend>(
        &self,
        t: &TrainConfig,
        ranks: usize,
        schedule: Vec<usize>,
        start_window: usize,
        device: &B::Device,
    ) -> BatchPreservingLoader<B> {
        let settings = loader::LoaderSettings {
            schedule,
            window: self.window(t),
            start_window,
            pad_id: self.pad_id,
            mask_scope: t.mask_scope,
            ranks: ranks.max(1),
            phases: (0..t.passes()).map(|p| t.phase(p)).collect(),
        };
        let masks = MaskTable::new(
            &self.sets,
            self.model_cfg.num_moe_layers(),
            self.model_cfg.num_experts,
            device,
        );
        BatchPreservingLoader::new(self.groups.clone(), masks, settings, device.clone())
    }

    /// The validation loader: every validation group, under free routing, at each `iter()`.
    pub fn valid_loader<B: burn::tensor::backend::Backend>(
        &self,
        device: &B::Device,
    ) -> BatchPreservingLoader<B> {
        let n = self.valid.len();
        let settings = loader::LoaderSettings {
            schedule: (0..n).collect(),
            window: n.max(1),
            start_window: 0,
            pad_id: self.pad_id,
            mask_scope: MaskScope::None,
            ranks: 1,
            phases: Vec::new(),
        };
        let masks = MaskTable::new(
            &[],
            self.model_cfg.num_moe_layers(),
            self.model_cfg.num_experts,
            device,
        );
        BatchPreservingLoader::new(self.valid.clone(), masks, settings, device.clone())
    }
}
