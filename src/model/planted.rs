//! `planted.json` of a model directory: which experts carry a behaviour that `steermoe plant` put
//! there, so that an expert-finding method can be checked against the truth on the user's own
//! model (analysis reads it and writes `recovery.json`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ExpertId, LoadError};

/// The file's name in a model directory.
const FILE: &str = "planted.json";

/// What was planted into a model, and what the plant measured afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planted {
    /// The experts that carry the behaviour, (MoE layer, expert), in (layer, expert) order.
    pub experts: Vec<ExpertId>,
    /// Whether those experts' router rows were trained too (the routers learn to send the
    /// behaviour's prompts to them).
    pub routers: bool,
    /// The behaviour, as the plant's config spells it.
    pub behaviour: serde_json::Value,
    /// The seed that drew the experts and the examples' order.
    pub seed: u64,
    /// Optimizer steps.
    pub steps: usize,
    /// The model planted into.
    pub base_model: String,
    /// What the plant measured: the behaviour's rate, the retained behaviours, which tensors
    /// changed.
    pub checks: serde_json::Value,
}

impl Planted {
    /// `planted.json` of the model directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// The record in `path` (a `planted.json`, or a file of the same format named by
    /// `analysis.truth`); `Ok(None)` where there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, LoadError> {
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let planted: Planted = serde_json::from_str(&text).map_err(|e| LoadError::Config {
            path: path.to_path_buf(),
            field: String::new(),
            reason: e.to_string(),
        })?;
        if planted.experts.is_empty() {
            return Err(LoadError::Config {
                path: path.to_path_buf(),
                field: "experts".into(),
                reason: "names no expert".into(),
            });
        }
        Ok(Some(planted))
    }

    /// Check that every expert is one of a model of `layers × experts`.
    pub fn check_shape(&self, path: &Path, layers: usize, experts: usize) -> Result<(), LoadError> {
        match self
            .experts
            .iter()
            .find(|&&[l, e]| l >= layers || e >= experts)
        {
            Some([l, e]) => Err(LoadError::Config {
                path: path.to_path_buf(),
                field: "experts".into(),
                reason: format!(
                    "names expert [{l}, {e}], but the model has {layers} MoE layers × {experts} experts"
                ),
            }),
            None => Ok(()),
        }
    }
}
