//! steermoe: find and fix the experts of a Mixture-of-Experts language model that carry unsafe
//! behaviour (SteerMoE-style), on burn.
//!
//! The pipeline is collect → analyse → train → evaluate ([`pipeline`], the one place that chains
//! them); each stage works in a run directory ([`run_dir`], the one module that knows its files)
//! and owns its config table (composed by [`config`]); everything stands on [`model`], an OLMoE
//! and Qwen3-MoE equal to transformers' whose routers can capture, mask and steer.
#![warn(missing_docs)]

pub mod analysis;
pub mod backend;
pub mod collect;
pub mod config;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod cube;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod error;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod judge;
pub mod model;
pub mod pipeline;
pub mod plant;
pub mod plot;
pub mod run_dir;
pub mod seeds;
pub mod serve;
pub mod sweep;
pub mod train;
pub mod tui;
pub mod validate;

pub use error::Error;
