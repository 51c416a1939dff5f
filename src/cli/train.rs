//! `steermoe train`.

use steermoe::run_dir::Stage;

use super::RunDirArgs;

/// Arguments of `steermoe train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The analysed run and the experiment config.
    #[command(flatten)]
    dir: RunDirArgs,
}

/// Run `steermoe train`: the train stage in an analysed run directory.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    args.dir.run(Stage::Train, 0).map(drop)
}
