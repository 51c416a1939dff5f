//! `[collect]`: how the train goals become mixed paired batches and how the model answers them.

use serde::{Deserialize, Serialize};

use crate::data::batch::split_counts;
use crate::generate::Sampling;
use crate::generate::fit::BatchCount;
use crate::validate::{Invalid, at_least, ensure};

/// `[collect]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectConfig {
    /// Samples per mixed batch.
    pub batch_size: usize,
    /// Share of safe samples in a batch.
    pub safe_ratio: f64,
    /// Collect at most this many batches (0 = as many as the goals fill).
    pub max_batches: usize,
    /// Generated tokens per sample.
    pub max_new_tokens: usize,
    /// Keep only the last this many prompt tokens (0 = no limit).
    pub max_prompt_tokens: usize,
    /// Greedy or seeded sampling.
    pub sampling: Sampling,
    /// Keep a pair only if the safe prompt was refused and the unsafe one complied with.
    pub quality_filter: bool,
    /// Mixed batches answered by one generation call, their rows decoded together (a decode step
    /// reads the weights once for all of them: on a GPU, 4 batches of 16 answer in little more
    /// time than one). Each batch keeps its own samples, files and analysis; answers equal those
    /// of one batch at a time up to rounding (rows are padded to the call's longest prompt).
    /// `"auto"` (the default): as many as the device's free memory holds (CUDA; see
    /// `generate::fit`), one elsewhere.
    pub generate_batches: BatchCount,
}

impl Default for CollectConfig {
    fn default() -> Self {
        Self {
            batch_size: 16,
            safe_ratio: 0.5,
            max_batches: 0,
            max_new_tokens: 128,
            max_prompt_tokens: 0,
            sampling: Sampling::Greedy,
            quality_filter: true,
            generate_batches: BatchCount::Auto,
        }
    }
}

impl CollectConfig {
    /// Check the values: a batch holds at least one safe and one unsafe sample, answers have at
    /// least one token, sampling is finite.
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least("collect.batch_size", self.batch_size, 2)?;
        self.generate_batches
            .validate("collect.generate_batches", 1)?;
        let r = self.safe_ratio;
        ensure(
            r.is_finite() && r > 0.0 && r < 1.0,
            "collect.safe_ratio",
            || format!("must be in (0, 1), got {r}"),
        )?;
        let (s, u) = split_counts(self.batch_size, r);
        ensure(s > 0 && u > 0, "collect.safe_ratio", || {
            format!(
                "{r} of {} leaves no safe or no unsafe sample",
                self.batch_size
            )
        })?;
        at_least("collect.max_new_tokens", self.max_new_tokens, 1)?;
        self.sampling.validate("collect.sampling")
    }
}
