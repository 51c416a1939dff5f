//! What can go wrong analysing.

use std::path::PathBuf;

use crate::run_dir::RunDirError;

/// What can go wrong analysing.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// A collect artifact is missing or malformed.
    #[error("{}: {reason}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No batch has both safe and unsafe samples.
    #[error("{}: no batch has both safe and unsafe samples with routing", run_dir.display())]
    Empty {
        /// The run directory.
        run_dir: PathBuf,
    },
    /// Reading the collected run or writing the outputs.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// Drawing the heatmap.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
}
