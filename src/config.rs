//! The experiment configuration: one TOML file, one table per stage, every key optional with a
//! documented default, unknown keys rejected (a typo must not fall back to a default silently).
//!
//! `--set table.key=value` overrides any key before validation; the resolved configuration
//! (input plus defaults) is what a run directory records.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::data::attack::FieldMap;
use crate::data::{ChatTokenizer, DataError};
use crate::generate::Sampling;
use crate::judge::PhraseJudge;
use crate::model::Precision;

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a wrong type.
    #[error("{}: {}{reason}", path.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Parse {
        /// The file.
        path: PathBuf,
        /// The dotted key at fault.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A value that parses but cannot work.
    #[error("{}: {key}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key at fault.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seed of every random choice (sampling, shuffling, random experts).
    pub seed: u64,
    /// The model and where it runs.
    pub model: ModelConfig,
    /// The attack dataset.
    pub data: DataConfig,
    /// Generation with routing capture.
    pub collect: CollectConfig,
    /// Risk difference and unsafe experts.
    pub analysis: AnalysisConfig,
    /// Expert-only fine-tuning.
    pub train: TrainConfig,
    /// Attack success, refusals and utility on held-out goals.
    pub eval: EvalConfig,
    /// The refusal judge.
    pub judge: PhraseJudge,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 0,
            model: ModelConfig::default(),
            data: DataConfig::default(),
            collect: CollectConfig::default(),
            analysis: AnalysisConfig::default(),
            train: TrainConfig::default(),
            eval: EvalConfig::default(),
            judge: PhraseJudge::default(),
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Hub-layout model directory (config.json, safetensors, tokenizer files).
    pub dir: PathBuf,
    /// Backend to run on.
    pub backend: BackendKind,
    /// Compute precision.
    pub precision: Precision,
    /// The chat template's `enable_thinking` (Qwen3: `false` opens every assistant turn with an
    /// empty think block, which makes the prompt a prefix of the conversation with its answer, as
    /// training's loss masking needs); unset leaves it undefined, the template's default.
    pub enable_thinking: Option<bool>,
    /// The devices training runs on (indices of the backend's devices). More than one trains
    /// data-parallel (CUDA, a binary built with the `ddp` feature): each analysis batch split
    /// across them, one optimizer step per batch as on one device. Everything else runs on the
    /// first.
    pub devices: Vec<usize>,
}

impl ModelConfig {
    /// The tokenizer and chat template of the model in `dir` (the configured model, or one
    /// trained from it), rendering with this config's `enable_thinking`.
    pub fn tokenizer(&self, dir: &Path) -> Result<ChatTokenizer, DataError> {
        Ok(ChatTokenizer::from_dir(dir)?.with_enable_thinking(self.enable_thinking))
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models/olmoe-organism"),
            backend: BackendKind::Cpu,
            precision: Precision::F32,
            enable_thinking: None,
            devices: vec![0],
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// JSON array or JSONL of attack records.
    pub path: PathBuf,
    /// How record fields map onto pairs.
    pub fields: FieldMap,
    /// Optional split file (`split.json`): which records are train and which held out.
    pub split: Option<PathBuf>,
    /// Key of this dataset in the split file.
    pub split_key: String,
    /// Use at most this many goals of the train split (0 = all).
    pub max_goals: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("models/data/olmoe-fwo.json"),
            fields: FieldMap::default(),
            split: None,
            split_key: "olmoe_fwo".into(),
            max_goals: 0,
        }
    }
}

/// `[collect]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectConfig {
    /// Samples per mixed batch.
    pub batch_size: usize,
    /// Share of safe samples in a batch.
    pub safe_ratio: f64,
    /// Collect at most this many batches (0 = as many as the goals fill).
    pub max_batches: usize,
    /// Generated tokens per sample.
    pub max_new_tokens: usize,
    /// Keep only the last this many prompt tokens (0 = no limit).
    pub max_prompt_tokens: usize,
    /// Greedy or seeded sampling.
    pub sampling: Sampling,
    /// Keep a pair only if the safe prompt was refused and the unsafe one complied with.
    pub quality_filter: bool,
}

impl Default for CollectConfig {
    fn default() -> Self {
        Self {
            batch_size: 16,
            safe_ratio: 0.5,
            max_batches: 0,
            max_new_tokens: 128,
            max_prompt_tokens: 0,
            sampling: Sampling::Greedy,
            quality_filter: true,
        }
    }
}

/// `[analysis]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Which tokens count: `prompt`, `generation`, `generation_first_n`, `all`, `response`.
    pub token_scope: TokenScope,
    /// Generated tokens counted by `generation_first_n`.
    pub first_n: usize,
    /// A batch's unsafe experts have `risk_diff` above this.
    pub batch_threshold: f64,
    /// Global unsafe experts have aggregated `risk_diff` above this.
    pub global_threshold: f64,
    /// Unsafe experts kept per batch and globally.
    pub top_k: usize,
    /// `risk_diff` (the method) or `random`: the matched ablation, the risk-difference sets
    /// under a random relabelling of the experts drawn from `seed`.
    pub experts: ExpertSource,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            token_scope: TokenScope::Generation,
            first_n: 16,
            batch_threshold: 0.0,
            global_threshold: 0.05,
            top_k: 50,
            experts: ExpertSource::RiskDiff,
        }
    }
}

/// Which tokens the SFT loss counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossOn {
    /// The assistant turn only (prompt labels are -100).
    Assistant,
    /// Every token (the seeds' choice).
    All,
}

/// Which samples of a batch are restricted to the batch's unsafe experts while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskScope {
    /// Unsafe samples only; safe samples route freely.
    UnsafeSamples,
    /// Every sample.
    All,
    /// No mask (the seeds' trainer in effect).
    None,
}

/// Which expert set a batch trains and masks with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertSet {
    /// The batch's own unsafe experts.
    PerBatch,
    /// The global unsafe experts, for every batch.
    Global,
}

/// Which parameters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trainable {
    /// Gate/up/down weights of the union of the unsafe experts.
    #[serde(rename = "unsafe_experts")]
    UnsafeExperts,
    /// The routers only (the seeds' ablation).
    #[serde(rename = "routers")]
    Routers,
    /// Both.
    #[serde(rename = "unsafe_experts+routers")]
    UnsafeExpertsAndRouters,
}

/// Direction of the router-consistency KL between mean router distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// No consistency loss.
    Off,
    /// KL(unsafe ‖ safe): pull the jailbreak routing towards the plain one.
    Forward,
    /// KL(safe ‖ unsafe).
    Reverse,
    /// The mean of both.
    Symmetric,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Safe samples answer with the model's own generation, cut to this many characters.
    pub answer_chars: usize,
    /// Refusal targets of unsafe samples (sample `i` of batch `b` takes entry `(b + i) % len`).
    pub refusals: Vec<String>,
    /// Which tokens the loss counts.
    pub loss_on: LossOn,
    /// Longest example in tokens; longer ones keep their tail.
    pub max_len: usize,
    /// Shuffle the order of batches each epoch (seeded by `seed + epoch`).
    pub shuffle_batches: bool,
    /// Which samples the routing mask restricts.
    pub mask_scope: MaskScope,
    /// Which expert set trains and masks.
    pub expert_set: ExpertSet,
    /// Which parameters train.
    pub trainable: Trainable,
    /// Router-consistency loss direction.
    pub router_consistency: Consistency,
    /// Its weight.
    pub consistency_weight: f64,
    /// Add transformers' load-balancing loss times the checkpoint's `router_aux_loss_coef`
    /// (what `OlmoeForCausalLM` does when router logits are output; off in the seeds).
    pub router_aux_loss: bool,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Linear warmup steps (optimizer steps), then linear decay to zero.
    pub warmup_steps: usize,
    /// Passes over the batches.
    pub epochs: usize,
    /// Clip each parameter's gradient to this norm (0 = off).
    pub grad_clip: f64,
    /// Batches whose gradients are summed per optimizer step.
    pub grad_accumulation: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Checkpoint every this many steps (0 = once per epoch).
    pub checkpoint_every: usize,
    /// Held-out pairs whose refusal loss is measured at every checkpoint (0 = no validation; see
    /// `train::valid`).
    pub valid_pairs: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            answer_chars: 100,
            refusals: vec!["I cannot assist with that request as it may be harmful or unsafe.".into()],
            loss_on: LossOn::Assistant,
            max_len: 512,
            shuffle_batches: true,
            mask_scope: MaskScope::UnsafeSamples,
            expert_set: ExpertSet::PerBatch,
            trainable: Trainable::UnsafeExperts,
            router_consistency: Consistency::Off,
            consistency_weight: 0.1,
            router_aux_loss: false,
            lr: 5e-5,
            warmup_steps: 0,
            epochs: 1,
            grad_clip: 1.0,
            grad_accumulation: 1,
            weight_decay: 0.0,
            checkpoint_every: 0,
            valid_pairs: 16,
        }
    }
}

/// A model evaluated by `steermoe run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The model as given.
    Base,
    /// The model steered at inference (SteerMoE), once per `eval.steer` setting.
    Steered,
    /// The fine-tuned model (`final_model/`).
    Trained,
}

impl Variant {
    /// The lowercase name (directory under `eval/`).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Base => "base",
            Variant::Steered => "steered",
            Variant::Trained => "trained",
        }
    }
}

/// One inference-time steering setting (the SteerMoE paper's): experts of the run's ranking
/// forced into or out of every token's top-k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SteerSetting {
    /// Force this many of the most safety-linked experts (most negative aggregated risk
    /// difference, at most top-k per layer) into every token's top-k.
    pub activate_safe: usize,
    /// Force this many of the riskiest experts (most positive) out of every token's top-k.
    pub deactivate_unsafe: usize,
}

impl SteerSetting {
    /// The variant's name: `steer-a5`, `steer-d8`, `steer-a5-d8`.
    pub fn name(&self) -> String {
        let mut name = String::from("steer");
        if self.activate_safe > 0 {
            name += &format!("-a{}", self.activate_safe);
        }
        if self.deactivate_unsafe > 0 {
            name += &format!("-d{}", self.deactivate_unsafe);
        }
        name
    }
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Models `steermoe run` evaluates, in table order.
    pub variants: Vec<Variant>,
    /// Evaluate at most this many held-out goals (0 = all): plain prompts of the first ones,
    /// jailbreaks of those among them that pass `data.fields`' filter.
    pub max_goals: usize,
    /// Benign prompts: a JSON array or JSONL of records with `instruction` and `output`.
    pub benign_path: PathBuf,
    /// Key of the benign set in `data.split` (its `heldout_index` list is evaluated).
    pub benign_split_key: String,
    /// Evaluate at most this many benign prompts (0 = all).
    pub max_benign: usize,
    /// Prompts per generation batch.
    pub batch_size: usize,
    /// Generated tokens per answer (greedy unless `sampling` says otherwise).
    pub max_new_tokens: usize,
    /// Keep only the last this many prompt tokens (0 = no limit).
    pub max_prompt_tokens: usize,
    /// Greedy or seeded sampling.
    pub sampling: Sampling,
    /// Longest prompt + reference answer scored for the answer NLL; longer answers are cut.
    pub nll_max_len: usize,
    /// The steering settings the `steered` variant evaluates, one evaluation each.
    pub steer: Vec<SteerSetting>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            variants: vec![Variant::Base, Variant::Steered, Variant::Trained],
            max_goals: 0,
            benign_path: PathBuf::from("models/data/alpaca-eval.json"),
            benign_split_key: "alpaca_eval".into(),
            max_benign: 0,
            batch_size: 16,
            max_new_tokens: 48,
            max_prompt_tokens: 464,
            sampling: Sampling::Greedy,
            nll_max_len: 512,
            steer: vec![SteerSetting {
                activate_safe: 5,
                deactivate_unsafe: 0,
            }],
        }
    }
}

impl Config {
    /// Read a TOML file, apply `overrides` (`table.key=value`, the value in TOML syntax or a bare
    /// string), and validate. Relative paths stay relative to the working directory.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, overrides)
    }

    /// [`Config::load`] on text; `path` names the source in errors. A `[sweep]` table is refused:
    /// only `steermoe sweep` reads it ([`Config::from_table`] on the rest).
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let table = Self::table(text, path)?;
        if table.is_empty() && overrides.is_empty() {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                key: String::new(),
                reason: "the config sets nothing; name at least the model and the data (see configs/organism-cpu.toml)".into(),
            });
        }
        if table.contains_key("sweep") {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                key: "sweep".into(),
                reason: "a [sweep] table is read by `steermoe sweep`; this command runs one experiment".into(),
            });
        }
        Self::from_table(table, path, overrides)
    }

    /// The TOML table of a config file's text (syntax errors give line and column).
    pub fn table(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            key: String::new(),
            reason: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// A config from a parsed TOML table, `overrides` applied, validated.
    pub fn from_table(mut table: toml::Table, path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let parse_err = |key: String, reason: String| ConfigError::Parse {
            path: path.to_path_buf(),
            key,
            reason,
        };
        for o in overrides {
            let (key, value) = o
                .split_once('=')
                .ok_or_else(|| parse_err(o.clone(), "override must be key=value".into()))?;
            set_key(&mut table, key.trim(), value.trim()).map_err(|reason| parse_err(key.trim().into(), reason))?;
        }
        let cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| parse_err(e.path().to_string(), e.inner().to_string()))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Check values that parse but cannot work.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            reason,
        };
        let c = &self.collect;
        if c.batch_size < 2 {
            return Err(bad("collect.batch_size", format!("must be at least 2, got {}", c.batch_size)));
        }
        if !(c.safe_ratio > 0.0 && c.safe_ratio < 1.0) {
            return Err(bad("collect.safe_ratio", format!("must be in (0, 1), got {}", c.safe_ratio)));
        }
        let (s, u) = crate::data::batch::split_counts(c.batch_size, c.safe_ratio);
        if s == 0 || u == 0 {
            return Err(bad(
                "collect.safe_ratio",
                format!("{} of {} leaves no safe or no unsafe sample", c.safe_ratio, c.batch_size),
            ));
        }
        if let Sampling::Sample { temperature, top_p, .. } = c.sampling {
            if temperature <= 0.0 {
                return Err(bad("collect.sampling.temperature", format!("must be positive, got {temperature}")));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(bad("collect.sampling.top_p", format!("must be in (0, 1], got {top_p}")));
            }
        }
        if self.analysis.top_k == 0 {
            return Err(bad("analysis.top_k", "must be at least 1".into()));
        }
        if self.analysis.token_scope == TokenScope::GenerationFirstN && self.analysis.first_n == 0 {
            return Err(bad("analysis.first_n", "must be at least 1 with token_scope = \"generation_first_n\"".into()));
        }
        let t = &self.train;
        let devices = &self.model.devices;
        if devices.is_empty() {
            return Err(bad("model.devices", "needs at least one device".into()));
        }
        if let Some(d) = devices.iter().enumerate().find_map(|(i, d)| devices[..i].contains(d).then_some(d)) {
            return Err(bad("model.devices", format!("device {d} is listed twice")));
        }
        if devices.len() > 1 {
            if self.model.backend != BackendKind::Cuda {
                return Err(bad("model.devices", format!("several devices need backend \"cuda\", not \"{}\"", self.model.backend)));
            }
            if t.router_consistency != Consistency::Off || t.router_aux_loss {
                return Err(bad(
                    "model.devices",
                    "several devices cannot train train.router_consistency or train.router_aux_loss: both compare \
                     routing across the whole batch, which no device holds"
                        .into(),
                ));
            }
        }
        if t.refusals.is_empty() || t.refusals.iter().any(|r| r.trim().is_empty()) {
            return Err(bad("train.refusals", "needs at least one non-empty refusal".into()));
        }
        if t.epochs == 0 {
            return Err(bad("train.epochs", "must be at least 1".into()));
        }
        if t.grad_accumulation == 0 {
            return Err(bad("train.grad_accumulation", "must be at least 1".into()));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(bad("train.lr", format!("must be positive and finite, got {}", t.lr)));
        }
        if t.max_len < 8 {
            return Err(bad("train.max_len", format!("must be at least 8, got {}", t.max_len)));
        }
        let e = &self.eval;
        if e.batch_size == 0 {
            return Err(bad("eval.batch_size", "must be at least 1".into()));
        }
        if e.max_new_tokens == 0 {
            return Err(bad("eval.max_new_tokens", "must be at least 1".into()));
        }
        if e.nll_max_len < 8 {
            return Err(bad("eval.nll_max_len", format!("must be at least 8, got {}", e.nll_max_len)));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(v) = e.variants.iter().find(|v| !seen.insert(**v)) {
            return Err(bad("eval.variants", format!("{} is listed twice", v.name())));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in e.steer.iter().enumerate() {
            if s.activate_safe == 0 && s.deactivate_unsafe == 0 {
                return Err(bad(&format!("eval.steer[{i}]"), "steers nothing: set activate_safe or deactivate_unsafe".into()));
            }
            if !seen.insert(*s) {
                return Err(bad(&format!("eval.steer[{i}]"), format!("{} is listed twice", s.name())));
            }
        }
        if e.variants.contains(&Variant::Steered) && e.steer.is_empty() {
            return Err(bad("eval.steer", "the steered variant needs at least one setting".into()));
        }
        if !e.variants.is_empty() && !e.benign_path.is_file() {
            return Err(bad("eval.benign_path", format!("{}: no such file", e.benign_path.display())));
        }
        if !self.model.dir.is_dir() {
            return Err(bad("model.dir", format!("{}: no such directory", self.model.dir.display())));
        }
        if !self.data.path.is_file() {
            return Err(bad("data.path", format!("{}: no such file", self.data.path.display())));
        }
        if let Some(split) = &self.data.split
            && !split.is_file()
        {
            return Err(bad("data.split", format!("{}: no such file", split.display())));
        }
        Ok(())
    }

    /// The resolved configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// Set `a.b.c = value` in a TOML table, creating tables on the way.
pub(crate) fn set_key(table: &mut toml::Table, key: &str, value: &str) -> Result<(), String> {
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty()).ok_or("empty key")?;
    let mut at = table;
    for part in parts {
        at = at
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a table"))?;
    }
    at.insert(last.to_string(), parsed);
    Ok(())
}

// The analysis settings' vocabularies, defined here so that the config depends on no stage.

/// Which tokens of a sample count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Prompt tokens only.
    Prompt,
    /// Generated tokens only (the seeds' choice).
    Generation,
    /// The first `first_n` generated tokens.
    GenerationFirstN,
    /// Prompt and generated tokens.
    All,
    /// The reply tokens of each pair's teacher-forced refusal (safe) and compliance (unsafe)
    /// after its jailbreak prompt, as the forward pass routed them.
    Response,
}

impl std::fmt::Display for TokenScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenScope::Prompt => "prompt",
            TokenScope::Generation => "generation",
            TokenScope::GenerationFirstN => "generation_first_n",
            TokenScope::All => "all",
            TokenScope::Response => "response",
        })
    }
}

/// Where the expert sets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertSource {
    /// The risk difference (the method).
    RiskDiff,
    /// The matched random ablation: the risk-difference sets under a random relabelling of the
    /// experts (seed: the config's `seed`), steering sets from a random ranking.
    Random,
}

impl std::fmt::Display for ExpertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExpertSource::RiskDiff => "risk_diff",
            ExpertSource::Random => "random",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, overrides: &[&str]) -> Result<Config, ConfigError> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        // Paths that exist from the crate root.
        let base = "[model]\ndir = \"models/olmoe-organism\"\n[data]\npath = \"Cargo.toml\"\n";
        Config::parse(&format!("{base}{text}"), Path::new("exp.toml"), &o)
    }

    #[test]
    fn defaults_fill_missing_keys_and_overrides_apply() {
        let cfg = parse("[collect]\nbatch_size = 8\n", &["collect.max_new_tokens=16", "seed=3"]).unwrap();
        assert_eq!(cfg.collect.batch_size, 8);
        assert_eq!(cfg.collect.max_new_tokens, 16);
        assert_eq!(cfg.seed, 3);
        assert_eq!(cfg.collect.safe_ratio, 0.5);
        // The resolved config parses back to itself.
        let again = Config::parse(&cfg.to_toml(), Path::new("resolved.toml"), &[]).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = parse("[collect]\nbatch_sise = 8\n", &[]).unwrap_err().to_string();
        assert!(err.contains("exp.toml") && err.contains("batch_sise"), "{err}");
        let err = parse("[collect]\nsafe_ratio = 1.5\n", &[]).unwrap_err().to_string();
        assert!(err.contains("collect.safe_ratio"), "{err}");
        let err = parse("", &["collect.batch_size=\"x\""]).unwrap_err().to_string();
        assert!(err.contains("collect.batch_size"), "{err}");
        let err = parse("", &["model.dir=/nonexistent/model"]).unwrap_err().to_string();
        assert!(err.contains("model.dir: /nonexistent/model: no such directory"), "{err}");
    }
}
