//! The MoE language models (OLMoE and Qwen3-MoE, one code path): configuration, architecture,
//! routing, RoPE, KV cache and Hub checkpoints.
//!
//! Leaves first: `experts` (one SwiGLU MLP, grouped and dense execution), `norm`, `rope`,
//! `constants` (the index and RoPE frequencies a forward pass uploads once), `cache`; `routing` (logits → top-k, masks, steering) and `attention` on top of them; `moe`
//! (router + experts); `lm` (the decoder stack and LM head); `checkpoint` (Hub directories in and
//! out) and `loss` last.

pub mod attention;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod constants;
pub mod experts;
pub mod lm;
pub mod loss;
pub mod moe;
pub mod norm;
pub mod planted;
pub mod rope;
pub mod routing;

use std::path::PathBuf;

pub use cache::KvCache;
pub use checkpoint::{Precision, load, random, save};
pub use config::{Arch, ModelConfig};
pub use experts::{Choice, Expert, ExpertExecution, StackedExperts};
pub use lm::{Decoded, FeedForward, LmInput, LmOutput, MoeLm, Trunk};
pub use routing::{Removal, Routing};

/// A (MoE layer, expert) pair: MoE layers counted in order, dense layers skipped.
pub type ExpertId = [usize; 2];

/// What can go wrong reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The model directory does not exist.
    #[error("{}: no such model directory", dir.display())]
    NoModelDir {
        /// The directory.
        dir: PathBuf,
    },
    /// `config.json` (or the shard index) is malformed.
    #[error("{}: {field}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The key, dotted (empty when the whole file is unreadable).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Neither `model.safetensors` nor an index.
    #[error("{}: no model.safetensors or model.safetensors.index.json", dir.display())]
    NoWeights {
        /// The directory.
        dir: PathBuf,
    },
    /// A shard named by the index is absent.
    #[error("{}: shard {} is missing", index.display(), shard.display())]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The absent shard.
        shard: PathBuf,
    },
    /// A safetensors file is corrupt.
    #[error("{}: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A tensor the model needs is absent.
    #[error("{}: tensor {key} is missing (expected shape {expected:?}{implied_by})", dir.display())]
    MissingTensor {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Hub key.
        key: String,
        /// The shape it should have.
        expected: Vec<usize>,
        /// `", from config.json's ..."`: the keys that imply the tensor and its shape.
        implied_by: String,
    },
    /// A tensor in the files that the model has no place for.
    #[error("{}: unexpected tensor {key}", path.display())]
    UnexpectedTensor {
        /// The file holding it.
        path: PathBuf,
        /// Hub key.
        key: String,
    },
    /// A tensor of the wrong shape.
    #[error("{}: tensor {key} has shape {found:?}, expected {expected:?}{implied_by}", path.display())]
    ShapeMismatch {
        /// The file holding it.
        path: PathBuf,
        /// Hub key.
        key: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// `" from config.json's ..."`: the keys that imply the shape.
        implied_by: String,
    },
    /// A tensor holds NaN or an infinity: a broken checkpoint, which would run to garbage.
    #[error("{}: tensor {key} holds {value} (element {at}); the checkpoint is broken", path.display())]
    NonFinite {
        /// The file holding it.
        path: PathBuf,
        /// Hub key.
        key: String,
        /// The first non-finite value.
        value: f32,
        /// Its flat index.
        at: usize,
    },
    /// A tensor stored in a dtype other than bf16, f16 or f32.
    #[error("{}: tensor {key} is stored as {dtype}, expected bf16, f16 or f32", path.display())]
    UnsupportedDtype {
        /// The file holding it.
        path: PathBuf,
        /// Hub key.
        key: String,
        /// The stored dtype.
        dtype: String,
    },
}
