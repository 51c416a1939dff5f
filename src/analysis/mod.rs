//! Analysis: risk difference per batch, unsafe experts and per-batch expert masks.

pub mod config;
pub mod counts;
pub mod heatmap;
pub mod recovery;
pub mod risk;
pub mod select;
pub mod stage;

pub use config::{AnalysisConfig, ExpertSource, TokenScope};
pub use counts::TopKCounter;
pub use stage::{AnalysisError, AnalysisSummary, Truth, UnsafeExperts, analyze};
