//! The models a process has loaded: a run's base model is read from disk once per process and
//! backend, and handed to every stage (collect and the base and steered evaluations run on it,
//! training starts from it) and, in a sweep, to every job that names the same model.

use std::path::PathBuf;
use std::sync::Mutex;

use burn::tensor::backend::Backend;

use crate::config::ModelSettings;
use crate::model::{self, LoadError, MoeLm, Precision};

/// Loaded models, by directory and precision.
#[derive(Debug)]
pub struct Models<B: Backend> {
    loaded: Mutex<Vec<(PathBuf, Precision, MoeLm<B>)>>,
}

impl<B: Backend> Default for Models<B> {
    fn default() -> Self {
        Self {
            loaded: Mutex::new(Vec::new()),
        }
    }
}

impl<B: Backend> Models<B> {
    /// The model `settings` names, loaded on `device` the first time it is asked for (a clone
    /// of the loaded one after that: its tensors are shared, not copied).
    pub fn get(&self, settings: &ModelSettings, device: &B::Device) -> Result<MoeLm<B>, LoadError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, m)) = loaded
            .iter()
            .find(|(d, p, _)| *d == settings.dir && *p == settings.precision)
        {
            return Ok(m.clone());
        }
        let (m, _) = model::load::<B>(&settings.dir, device, settings.precision)?;
        loaded.push((settings.dir.clone(), settings.precision, m.clone()));
        Ok(m)
    }
}
