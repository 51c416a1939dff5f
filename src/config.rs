//! The experiment configuration: one TOML file, one table per stage, every key optional with a
//! documented default, unknown keys rejected (a typo must not fall back to a default silently).
//!
//! Each stage owns its table — `[collect]` is [`crate::collect::CollectConfig`], `[analysis]`
//! [`crate::analysis::AnalysisConfig`], `[train]` [`crate::train::TrainConfig`], `[eval]`
//! [`crate::eval::EvalConfig`], `[data]` [`crate::data::DataConfig`], `[judge]`
//! [`crate::judge::JudgeConfig`] — with its enums, defaults and value checks; this module composes
//! them, applies `--set table.key=value` overrides, and checks what spans tables. Whether the
//! files a config names exist and fit is the pipeline's pre-flight (`pipeline::preflight`), not
//! parsing: a recorded config still parses after its data moved. The resolved configuration
//! (input plus defaults) is what a run directory records.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisConfig;
use crate::backend::BackendKind;
use crate::collect::CollectConfig;
use crate::data::{ChatTokenizer, DataConfig, DataError};
use crate::eval::EvalConfig;
use crate::judge::JudgeConfig;
use crate::model::Precision;
use crate::plant::PlantConfig;
use crate::train::{Consistency, TrainConfig};
use crate::validate::Invalid;

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
    /// A `--set` argument that is not `key=value`.
    #[error("--set {arg:?}: {reason}")]
    Override {
        /// The argument as given.
        arg: String,
        /// What is wrong.
        reason: String,
    },
    /// A value that parses but cannot work.
    #[error("{}: {invalid}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key and what is wrong.
        invalid: Invalid,
    },
}

/// A whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seed of every random choice (sampling, shuffling, random experts).
    pub seed: u64,
    /// The model and where it runs.
    pub model: ModelSettings,
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
    /// The refusal judges: the phrase judge, and with `kind = "http"` an LLM judge.
    pub judge: JudgeConfig,
    /// What `steermoe plant` plants (no stage reads it).
    pub plant: PlantConfig,
}

/// `[model]`: which model, and where and how it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
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

impl ModelSettings {
    /// The tokenizer and chat template of the model in `dir` (the configured model, or one
    /// trained from it), rendering with this config's `enable_thinking`.
    pub fn tokenizer(&self, dir: &Path) -> Result<ChatTokenizer, DataError> {
        Ok(ChatTokenizer::from_dir(dir)?.with_enable_thinking(self.enable_thinking))
    }
}

impl Default for ModelSettings {
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

impl Config {
    /// Read a TOML file, apply `overrides` (`table.key=value`, the value in TOML syntax or a bare
    /// string), and validate the values. Relative paths stay relative to the working directory.
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
                reason:
                    "a [sweep] table is read by `steermoe sweep`; this command runs one experiment"
                        .into(),
            });
        }
        Self::from_table(table, path, overrides)
    }

    /// The TOML table of a config file's text (syntax errors give line and column, on one line).
    pub fn table(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let at = e.span().map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                let column = s.start - text[..s.start].rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            });
            ConfigError::Parse {
                path: path.to_path_buf(),
                key: String::new(),
                reason: format!("{}{}", at.unwrap_or_default(), one_line(e.message())),
            }
        })
    }

    /// A config from a parsed TOML table, `overrides` applied, values validated.
    pub fn from_table(
        mut table: toml::Table,
        path: &Path,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let cfg: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigError::Parse {
                    path: path.to_path_buf(),
                    key: e.path().to_string(),
                    reason: one_line(&e.inner().to_string()),
                }
            })?;
        cfg.validate().map_err(|invalid| ConfigError::Invalid {
            path: path.to_path_buf(),
            invalid,
        })?;
        Ok(cfg)
    }

    /// Check values that parse but cannot work: each table's own checks, then what spans
    /// tables.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.data.validate()?;
        self.collect.validate()?;
        self.analysis.validate()?;
        self.train.validate()?;
        self.eval.validate()?;
        self.judge.validate()?;
        self.plant.validate()?;
        let devices = &self.model.devices;
        crate::validate::ensure(!devices.is_empty(), "model.devices", || {
            "needs at least one device".into()
        })?;
        if let Some(d) = devices
            .iter()
            .enumerate()
            .find_map(|(i, d)| devices[..i].contains(d).then_some(d))
        {
            return Err(Invalid::new(
                "model.devices",
                format!("device {d} is listed twice"),
            ));
        }
        if devices.len() > 1 {
            if self.model.backend != BackendKind::Cuda {
                return Err(Invalid::new(
                    "model.devices",
                    format!(
                        "several devices need backend \"cuda\", not \"{}\"",
                        self.model.backend
                    ),
                ));
            }
            if self.train.router_consistency != Consistency::Off || self.train.router_aux_loss {
                return Err(Invalid::new(
                    "model.devices",
                    "several devices cannot train train.router_consistency or train.router_aux_loss: both compare routing across the whole batch, which no device holds",
                ));
            }
        }
        crate::validate::ensure(!self.model.dir.as_os_str().is_empty(), "model.dir", || {
            "must name a model directory".into()
        })
    }

    /// The resolved configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// A TOML or serde message on one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Apply one `--set key=value` to a TOML table.
pub fn apply_override(table: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::Override {
        arg: arg.to_string(),
        reason,
    };
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| bad("must be key=value, e.g. --set train.lr=1e-4".into()))?;
    set_key(table, key.trim(), value.trim()).map_err(bad)
}

/// Set `a.b.c = value` in a TOML table, creating tables on the way.
pub(crate) fn set_key(table: &mut toml::Table, key: &str, value: &str) -> Result<(), String> {
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("{key:?} is not a dotted key such as train.lr"));
    }
    let last = parts.pop().expect("split yields one part at least");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, overrides: &[&str]) -> Result<Config, ConfigError> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let base = "[model]\ndir = \"models/olmoe-organism\"\n[data]\nsplit = \"models/data/split.json\"\n";
        Config::parse(&format!("{base}{text}"), Path::new("exp.toml"), &o)
    }

    #[test]
    fn defaults_fill_missing_keys_and_overrides_apply() {
        let cfg = parse(
            "[collect]\nbatch_size = 8\n",
            &["collect.max_new_tokens=16", "seed=3"],
        )
        .unwrap();
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
        let err = parse("[collect]\nbatch_sise = 8\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exp.toml") && err.contains("batch_sise"),
            "{err}"
        );
        let err = parse("[collect]\nsafe_ratio = 1.5\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("collect.safe_ratio"), "{err}");
        let err = parse("", &["collect.batch_size=\"x\""])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("collect.batch_size") && !err.contains('\n'),
            "{err}"
        );
        // A batch count is a number or "auto"; anything else names its key and says so.
        let err = parse("[eval]\nbatch_size = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("eval.batch_size") && err.contains("\"auto\"") && !err.contains('\n'),
            "{err}"
        );
        let err = parse("", &["collect.generate_batches=0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("collect.generate_batches"), "{err}");
        let cfg = parse(
            "[eval]\nbatch_size = \"auto\"\n",
            &["collect.generate_batches=4"],
        )
        .unwrap();
        assert_eq!(cfg.eval.batch_size, crate::generate::fit::BatchCount::Auto);
        assert_eq!(
            cfg.collect.generate_batches,
            crate::generate::fit::BatchCount::Fixed(4)
        );
        let err = parse("", &["=3"]).unwrap_err();
        assert!(
            matches!(err, ConfigError::Override { .. }) && !err.to_string().contains("exp.toml"),
            "{err}"
        );
        let err = parse("[collect]\nbatch_size = \n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 6, column 14") && !err.contains('\n'),
            "{err}"
        );
        let err = parse(
            "[collect.sampling]\nmode = \"sample\"\ntemperature = nan\ntop_p = 1.0\nseed = 0\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("collect.sampling.temperature: must be a finite number above 0"),
            "{err}"
        );
    }

    #[test]
    fn evaluating_needs_a_split_or_an_explicit_no_split() {
        let base = "[model]\ndir = \"m\"\n";
        let cfg = Config::parse(base, Path::new("e.toml"), &[]).unwrap();
        let err = cfg.data.check_heldout().unwrap_err().to_string();
        assert!(
            err.contains("data.split: is needed to evaluate on held-out goals"),
            "{err}"
        );
        let cfg = Config::parse(
            &format!("{base}[data]\nheldout = false\n"),
            Path::new("e.toml"),
            &[],
        )
        .unwrap();
        cfg.data.check_heldout().unwrap();
        let err = Config::parse(
            &format!("{base}[data]\nheldout = false\nsplit = \"s.json\"\n"),
            Path::new("e.toml"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("data.heldout: is false"), "{err}");
    }
}
