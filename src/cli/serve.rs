//! `steermoe serve`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use steermoe::backend::{self, BackendKind, Task};
use steermoe::data::ChatTokenizer;
use steermoe::model::{self, Precision};
use steermoe::run_dir::RunDir;
use steermoe::serve::{ServeOptions, SteeringPolicy, serve};

/// Arguments of `steermoe serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Hub-layout model directory with tokenizer files (a base or a fine-tuned model).
    #[arg(long)]
    model: PathBuf,
    /// Steer with the expert ranking of this analysed run directory (SteerMoE): requests
    /// without `steering` get --activate-safe / --deactivate-unsafe, and may name other settings
    /// of it (`"steering": "steer-a5-d8"`).
    #[arg(long)]
    steer: Option<PathBuf>,
    /// With --steer: force this many of the most safety-linked experts into every top-k.
    #[arg(long, default_value_t = 0, requires = "steer")]
    activate_safe: usize,
    /// With --steer: force this many of the riskiest experts out of every top-k.
    #[arg(long, default_value_t = 0, requires = "steer")]
    deactivate_unsafe: usize,
    /// Address to bind; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Name of an environment variable holding the API key requests must send as
    /// `Authorization: Bearer <key>` (none: no key needed).
    #[arg(long)]
    api_key_env: Option<String>,
    /// The model's name in the API (default: the model directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    max_batch: u32,
    /// Requests waiting at most; more are answered 429.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    queue: u32,
    /// `max_tokens` of a request that gives none (capped by the context left).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    default_max_tokens: u32,
    /// Greedy answers without routing capture are decoded this many tokens at a time on the
    /// device before their tokens are read and streamed (1: every token as it comes; more: fewer
    /// waits for the device, text in blocks).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    read_every: u32,
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// Compute precision.
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// The chat template's `enable_thinking`; left undefined when not given.
    #[arg(long)]
    enable_thinking: Option<bool>,
}

struct Serve(ServeArgs, Option<String>);

impl Task for Serve {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let Serve(a, api_key) = self;
        let tokenizer = ChatTokenizer::from_dir(&a.model)?.with_enable_thinking(a.enable_thinking);
        let cfg = model::ModelConfig::from_path(&a.model)?;
        tokenizer.check_fits(cfg.vocab_size, &a.model)?;
        let (model, _) = model::load::<B::InnerBackend>(&a.model, &device, a.precision)?;
        // Served, never trained: the dense decode path reads the experts' own weights.
        let model = model.share_experts();
        let (layers, experts, top_k) = (model.num_moe_layers(), model.num_experts(), model.top_k());
        let mut policy = SteeringPolicy::plain(layers, experts, top_k);
        if let Some(run) = &a.steer {
            let file = RunDir::new(run).unsafe_experts();
            let analysis = file
                .read()
                .with_context(|| format!("--steer {}: not an analysed run", run.display()))?;
            analysis
                .check_shape(layers, experts)
                .map_err(|reason| anyhow::anyhow!("{}: {reason}", file.path().display()))?;
            policy.ranking = Some(analysis.ranking);
            policy.default = policy
                .named(a.activate_safe, a.deactivate_unsafe)
                .expect("the ranking was just set");
        }
        let served = a.served_model_name.clone().unwrap_or_else(|| {
            a.model
                .canonicalize()
                .unwrap_or_else(|_| a.model.clone())
                .file_name()
                .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
        });
        let opts = ServeOptions {
            host: a.host.clone(),
            port: a.port,
            api_key,
            served: served.clone(),
            max_batch: a.max_batch as usize,
            queue: a.queue as usize,
            default_max_tokens: a.default_max_tokens as usize,
            context: cfg.max_position_embeddings,
            read_every: a.read_every as usize,
        };
        // Whoever reads stdout may be gone by the time the server stops: never fail on it.
        serve(&model, tokenizer, policy, &device, &opts, |addr| {
            let mut out = std::io::stdout();
            let _ = writeln!(
                out,
                "steermoe serve: {served} on http://{addr}/v1 (batch {}, queue {}{})",
                opts.max_batch,
                opts.queue,
                if opts.api_key.is_some() {
                    ", API key required"
                } else {
                    ""
                }
            );
            let _ = out.flush();
        })?;
        eprintln!("steermoe serve: stopped");
        Ok(())
    }
}

/// Run `steermoe serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let api_key = match &args.api_key_env {
        None => None,
        Some(var) => {
            let key = std::env::var(var).with_context(|| {
                format!("--api-key-env {var}: the environment variable {var} is not set")
            })?;
            anyhow::ensure!(!key.is_empty(), "--api-key-env {var}: {var} is empty");
            Some(key)
        }
    };
    backend::run(args.backend, Serve(args, api_key))?
}
