//! The crate's error: one variant per stage, each wrapping that stage's own error enum.

/// Any steermoe library error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a checkpoint.
    #[error(transparent)]
    Load(#[from] crate::model::LoadError),
    /// An experiment configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Datasets, tokenizer, chat template.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The collect stage.
    #[error(transparent)]
    Collect(#[from] crate::collect::CollectError),
    /// The analyze stage.
    #[error(transparent)]
    Analysis(#[from] crate::analysis::AnalysisError),
    /// The train stage.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// The eval stage.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// `forward`.
    #[error(transparent)]
    Inspect(#[from] crate::inspect::InspectError),
    /// A run directory.
    #[error(transparent)]
    RunDir(#[from] crate::run_dir::RunDirError),
    /// A sweep.
    #[error(transparent)]
    Sweep(#[from] crate::sweep::SweepError),
    /// `steermoe plant`.
    #[error(transparent)]
    Plant(#[from] crate::plant::PlantError),
    /// Another job of a sweep failed at a stage this job shares.
    #[error("the job sharing this stage failed: {0}")]
    Share(String),
    /// The pipeline: a stage asked for too early, a recorded config, pre-flight.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
}
