//! `steermoe collect`.

use steermoe::run_dir::Stage;

use super::ConfigArgs;

/// Arguments of `steermoe collect`.
#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// Run `steermoe collect`: the collect stage of the config, into its run directory.
pub fn run(args: CollectArgs) -> anyhow::Result<()> {
    args.config.run(Some(Stage::Collect)).map(drop)
}
