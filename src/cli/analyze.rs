//! `steermoe analyze`.

use steermoe::run_dir::Stage;

use super::RunDirArgs;

/// Arguments of `steermoe analyze`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The collected run and the config of its `[analysis]` table.
    #[command(flatten)]
    dir: RunDirArgs,
    /// Rows of the top-experts table.
    #[arg(long, default_value_t = 10)]
    show: usize,
}

/// Run `steermoe analyze`: the analyze stage in a collected run directory.
pub fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    args.dir.run(Stage::Analyze, args.show).map(drop)
}
