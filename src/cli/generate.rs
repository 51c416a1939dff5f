//! `steermoe generate`.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use steermoe::backend::{self, BackendKind, Task};
use steermoe::data::{ChatTokenizer, Message};
use steermoe::generate::{ChatGeneration, Sampling, generate_chat};
use steermoe::model::{self, Precision};

/// Arguments of `steermoe generate`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "messages"])))]
pub struct GenerateArgs {
    /// Hub-layout model directory with tokenizer files.
    #[arg(long)]
    model: PathBuf,
    /// A plain user prompt.
    #[arg(long)]
    prompt: Option<String>,
    /// A JSON file holding a list of {role, content} messages.
    #[arg(long)]
    messages: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_new_tokens: u32,
    /// Sampling temperature; greedy decoding when absent.
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus mass for sampling.
    #[arg(long, default_value_t = 1.0, requires = "temperature")]
    top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0, requires = "temperature")]
    seed: u64,
    /// Keep generating after EOS, to exactly --max-new-tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// Compute precision.
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// The chat template's `enable_thinking` (Qwen3: `false` opens the answer with an empty think
    /// block); left undefined when not given.
    #[arg(long)]
    enable_thinking: Option<bool>,
}

struct Generate(GenerateArgs, Vec<Message>, Sampling);

impl Task for Generate {
    type Output = anyhow::Result<ChatGeneration>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let Generate(a, messages, sampling) = self;
        let tokenizer = ChatTokenizer::from_dir(&a.model)?.with_enable_thinking(a.enable_thinking);
        let cfg = model::ModelConfig::from_path(&a.model)?;
        tokenizer.check_fits(cfg.vocab_size, &a.model)?;
        let new = a.max_new_tokens as usize;
        let prompt = tokenizer.encode_chat(&messages, true)?.len();
        anyhow::ensure!(
            prompt + new <= cfg.max_position_embeddings,
            "the prompt is {prompt} tokens; with --max-new-tokens {new} that is more than the model's max_position_embeddings ({})",
            cfg.max_position_embeddings
        );
        let (model, _) = model::load::<B::InnerBackend>(&a.model, &device, a.precision)?;
        let model = model.share_experts();
        Ok(generate_chat(
            &model,
            &tokenizer,
            &messages,
            new,
            sampling,
            a.ignore_eos,
            &device,
        )?)
    }
}

/// Run `steermoe generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let messages = match (&args.prompt, &args.messages) {
        (Some(p), _) => vec![Message::user(p.clone())],
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: expected a JSON list of {{role, content}} messages",
                    path.display()
                )
            })?
        }
        (None, None) => unreachable!("clap requires one input"),
    };
    let sampling = match args.temperature {
        None => Sampling::Greedy,
        Some(temperature) => Sampling::Sample {
            temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
    };
    sampling.validate("--sampling").map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.to_string()
                .replace("--sampling.", "--")
                .replace("top_p", "top-p")
        )
    })?;
    let out = backend::run(args.backend, Generate(args, messages, sampling))??;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
