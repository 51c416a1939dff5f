//! Analysis: experts ranked by the risk difference of their activation rates or by the causal
//! effect of removing them, unsafe experts and per-batch expert masks.

pub mod ablation;
pub mod answers;
pub mod attribution;
pub mod config;
pub mod counts;
pub mod effects;
pub mod effects_report;
pub mod error;
pub mod heatmap;
pub mod recovery;
pub mod risk;
pub mod select;
pub mod stage;

pub use config::{AnalysisConfig, EffectScore, ExpertSource, Ranking, TokenScope};
pub use counts::TopKCounter;
pub use effects::{Effects, EffectsEvent};
pub use stage::{AnalysisError, AnalysisSummary, Truth, UnsafeExperts, analyze, answered};
