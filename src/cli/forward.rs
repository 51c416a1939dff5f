//! `steermoe forward`.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use steermoe::backend::{self, BackendKind, Task};
use steermoe::inspect::{ForwardSummary, InspectError, forward_to_file};
use steermoe::model::Precision;

/// Arguments of `steermoe forward`.
#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// Hub-layout model directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Token ids: comma-separated, rows separated by `;`, rows of equal length.
    #[arg(long)]
    input_ids: String,
    /// safetensors file with a tensor `mask` `[moe_layers, experts]`, 1 = may be chosen.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// Compute precision.
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// Output safetensors file (`logits`, `router_logits` of the MoE layers, f32).
    #[arg(long)]
    out: PathBuf,
}

struct Forward(ForwardArgs);

impl Task for Forward {
    type Output = Result<ForwardSummary, InspectError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let a = self.0;
        forward_to_file::<B::InnerBackend>(
            &a.model,
            &a.input_ids,
            a.mask.as_deref(),
            a.precision,
            &a.out,
            &device,
        )
    }
}

/// Run `steermoe forward`.
pub fn run(args: ForwardArgs) -> anyhow::Result<()> {
    let out = args.out.clone();
    let summary = backend::run(args.backend, Forward(args))??;
    let [layers, batch, seq, experts] = summary.router_shape;
    let which = summary
        .moe_layers
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "wrote {}: logits [{batch}, {seq}, vocab], router_logits [{layers}, {batch}, {seq}, {experts}] \
         (MoE layers {which} of {})",
        out.display(),
        summary.num_layers
    );
    Ok(())
}
