//! The model configuration: a Hub `config.json` (transformers' `OlmoeConfig` or
//! `Qwen3MoeConfig`, told apart by `model_type`) read as written, then resolved into the
//! validated [`ModelConfig`] the model is built from.
//!
//! Checkpoints spell the same facts two ways: hub style (`rope_theta`, `rope_scaling`,
//! `torch_dtype`, `num_experts`, transformers 4) and transformers-5 style (`rope_parameters:
//! {rope_theta, rope_type}`, `dtype`, and for Qwen3-MoE `num_local_experts`). Both are accepted;
//! where a file carries both, the transformers-5 key wins, as it does in transformers. Defaults
//! are transformers' own for keys a checkpoint may leave out; the shape-defining keys are
//! required.
//!
//! What the two architectures mean by the same key differs in one place: Qwen3-MoE's
//! `intermediate_size` is the width of its dense layers and `moe_intermediate_size` that of an
//! expert, where OLMoE's `intermediate_size` is the expert's. [`ModelConfig`] names them
//! `intermediate_size` (an expert, both) and `dense_intermediate_size`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::LoadError;

/// A Hub `config.json` for `model_type` `olmoe` or `qwen3_moe`, under the Hub's key names.
#[derive(Debug, Clone, Deserialize)]
pub struct HubConfig {
    /// `"olmoe"` or `"qwen3_moe"`.
    pub model_type: Option<String>,
    /// Rows of the embedding and LM head (may exceed the tokenizer's ids).
    pub vocab_size: Option<usize>,
    /// Model width.
    pub hidden_size: Option<usize>,
    /// OLMoE: width of one expert's MLP. Qwen3-MoE: width of a dense layer's MLP.
    pub intermediate_size: Option<usize>,
    /// Qwen3-MoE: width of one expert's MLP.
    pub moe_intermediate_size: Option<usize>,
    /// Width of one attention head (Qwen3-MoE; default `hidden_size / num_attention_heads`).
    pub head_dim: Option<usize>,
    /// Qwen3-MoE: a layer is MoE when `(layer + 1) % decoder_sparse_step == 0` ...
    pub decoder_sparse_step: Option<usize>,
    /// ... and it is not listed here (Qwen3-MoE).
    pub mlp_only_layers: Option<Vec<usize>>,
    /// Qwen3-MoE sliding-window attention; only `false` is supported.
    pub use_sliding_window: Option<bool>,
    /// Decoder layers.
    pub num_hidden_layers: Option<usize>,
    /// Query heads.
    pub num_attention_heads: Option<usize>,
    /// Key/value heads (grouped-query attention); defaults to `num_attention_heads`.
    pub num_key_value_heads: Option<usize>,
    /// Experts per MoE layer (hub style).
    pub num_experts: Option<usize>,
    /// Experts per MoE layer (transformers-5 Qwen3-MoE).
    pub num_local_experts: Option<usize>,
    /// Experts chosen per token (k).
    pub num_experts_per_tok: Option<usize>,
    /// Renormalise the top-k routing weights to sum to one.
    pub norm_topk_prob: Option<bool>,
    /// Clamp q, k and v to `[-clip_qkv, clip_qkv]` after their norms.
    pub clip_qkv: Option<f64>,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: Option<f64>,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: Option<bool>,
    /// RoPE base (hub style).
    pub rope_theta: Option<f64>,
    /// RoPE scaling (hub style); only `null` or the default type is supported.
    pub rope_scaling: Option<Value>,
    /// RoPE parameters (transformers-5 style).
    pub rope_parameters: Option<RopeParameters>,
    /// Longest sequence the checkpoint was trained for.
    pub max_position_embeddings: Option<usize>,
    /// Weight of the load-balancing loss transformers adds when router logits are output.
    pub router_aux_loss_coef: Option<f64>,
    /// Bias on the attention projections; OLMoE has none.
    pub attention_bias: Option<bool>,
    /// Expert activation; OLMoE uses `silu`.
    pub hidden_act: Option<String>,
    /// Storage dtype (hub style).
    pub torch_dtype: Option<String>,
    /// Storage dtype (transformers-5 style).
    pub dtype: Option<String>,
    /// End-of-sequence id(s).
    pub eos_token_id: Option<TokenIds>,
    /// Padding id.
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<u32>,
}

/// transformers-5 `rope_parameters`.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    /// RoPE base.
    pub rope_theta: Option<f64>,
    /// `"default"` is the only type OLMoE checkpoints use and the only one supported.
    pub rope_type: Option<String>,
}

/// One token id or several (`eos_token_id` may be a list).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// The architectures steermoe runs, by `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// `olmoe`: allenai's OLMoE.
    Olmoe,
    /// `qwen3_moe`: Qwen3-MoE (Qwen3-30B-A3B, ...).
    Qwen3Moe,
}

impl Arch {
    /// The `model_type` of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Olmoe => "olmoe",
            Arch::Qwen3Moe => "qwen3_moe",
        }
    }
}

/// Where attention's q/k RMSNorms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    /// Over the whole query (key) projection, before the split into heads (OLMoE).
    Full,
    /// Over each head's `head_dim` values, after the split (Qwen3-MoE).
    PerHead,
}

/// The validated configuration every module is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The architecture (`model_type`).
    pub arch: Arch,
    /// Rows of the embedding and LM head.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of one expert's MLP (OLMoE `intermediate_size`, Qwen3 `moe_intermediate_size`).
    pub intermediate_size: usize,
    /// Width of a dense layer's MLP (Qwen3 `intermediate_size`; OLMoE has no dense layers).
    pub dense_intermediate_size: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Where the q/k norms sit.
    pub qk_norm: QkNorm,
    /// Decoder index of every MoE layer, ascending; the others are dense.
    pub moe_layers: Vec<usize>,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Experts per MoE layer.
    pub num_experts: usize,
    /// Experts chosen per token.
    pub num_experts_per_tok: usize,
    /// Renormalise the top-k routing weights.
    pub norm_topk_prob: bool,
    /// Clamp of q, k and v, if any.
    pub clip_qkv: Option<f64>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// LM head tied to the embedding.
    pub tie_word_embeddings: bool,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest trained sequence.
    pub max_position_embeddings: usize,
    /// Weight of the load-balancing loss (transformers adds it when router logits are output).
    pub router_aux_loss_coef: f64,
    /// Storage dtype named by the checkpoint (`bfloat16`, `float32`, ...), if any.
    pub dtype: Option<String>,
    /// End-of-sequence ids (may be empty).
    pub eos_token_ids: Vec<u32>,
    /// Padding id, if any.
    pub pad_token_id: Option<u32>,
    /// The file as read, so that a saved checkpoint keeps every key transformers wrote.
    pub raw: Value,
}

impl ModelConfig {
    /// Width of the query projection (and of the attention output).
    pub fn q_dim(&self) -> usize {
        self.head_dim * self.num_attention_heads
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.head_dim * self.num_key_value_heads
    }

    /// Number of MoE layers: what routing masks, steering and captures are indexed by.
    pub fn num_moe_layers(&self) -> usize {
        self.moe_layers.len()
    }

    /// Whether decoder layer `layer` is MoE.
    pub fn is_moe(&self, layer: usize) -> bool {
        self.moe_layers.binary_search(&layer).is_ok()
    }

    /// Read and validate `config.json` in a model directory (or the file itself).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let path: PathBuf = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json_str(&text, &path)
    }

    /// Parse and validate the text of a `config.json`; `path` is only used in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, LoadError> {
        let raw: Value = serde_json::from_str(text).map_err(|e| LoadError::Config {
            path: path.to_path_buf(),
            field: String::new(),
            reason: e.to_string(),
        })?;
        let hub: HubConfig =
            serde_path_to_error::deserialize(raw.clone()).map_err(|e| LoadError::Config {
                path: path.to_path_buf(),
                field: e.path().to_string(),
                reason: e.inner().to_string(),
            })?;
        hub.resolve(raw, path)
    }
}

impl HubConfig {
    /// Check the file's facts and fill in transformers' defaults.
    pub fn resolve(self, raw: Value, path: &Path) -> Result<ModelConfig, LoadError> {
        let invalid = |field: &str, reason: String| LoadError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let required = |value: Option<usize>, field: &str| {
            value.ok_or_else(|| invalid(field, "missing required field".into()))
        };
        let arch = match self.model_type.as_deref() {
            Some("olmoe") => Arch::Olmoe,
            Some("qwen3_moe") => Arch::Qwen3Moe,
            Some(other) => {
                return Err(invalid(
                    "model_type",
                    format!(
                        "unsupported model_type {other:?}, expected \"olmoe\" or \"qwen3_moe\""
                    ),
                ));
            }
            None => return Err(invalid("model_type", "missing required field".into())),
        };
        let hidden_size = required(self.hidden_size, "hidden_size")?;
        let num_attention_heads = required(self.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = self.num_key_value_heads.unwrap_or(num_attention_heads);
        let num_hidden_layers = required(self.num_hidden_layers, "num_hidden_layers")?;
        let num_experts = match arch {
            Arch::Olmoe => required(self.num_experts, "num_experts")?,
            Arch::Qwen3Moe => self.num_local_experts.or(self.num_experts).ok_or_else(|| {
                invalid(
                    "num_experts",
                    "missing required field (or num_local_experts)".into(),
                )
            })?,
        };
        if num_attention_heads == 0 {
            return Err(invalid("num_attention_heads", "must be at least 1".into()));
        }
        let head_dim = match (arch, self.head_dim) {
            (Arch::Olmoe, Some(_)) => {
                return Err(invalid(
                    "head_dim",
                    "OLMoE takes its head width from hidden_size / num_attention_heads".into(),
                ));
            }
            (_, Some(d)) => d,
            (_, None) => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(invalid(
                        "num_attention_heads",
                        format!(
                            "hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        let intermediate = required(self.intermediate_size, "intermediate_size")?;
        let (intermediate_size, dense_intermediate_size, moe_layers) = match arch {
            Arch::Olmoe => (
                intermediate,
                intermediate,
                (0..num_hidden_layers).collect::<Vec<_>>(),
            ),
            Arch::Qwen3Moe => {
                let step = self.decoder_sparse_step.unwrap_or(1);
                if step == 0 {
                    return Err(invalid("decoder_sparse_step", "must be at least 1".into()));
                }
                let dense = self.mlp_only_layers.clone().unwrap_or_default();
                if let Some(&bad) = dense.iter().find(|&&l| l >= num_hidden_layers) {
                    return Err(invalid(
                        "mlp_only_layers",
                        format!(
                            "layer {bad} is beyond the model's {num_hidden_layers} layers (num_hidden_layers): there is no model.layers.{bad}"
                        ),
                    ));
                }
                let moe: Vec<usize> = (0..num_hidden_layers)
                    .filter(|l| !dense.contains(l) && (l + 1) % step == 0)
                    .collect();
                if moe.is_empty() && num_hidden_layers > 0 {
                    return Err(invalid(
                        "mlp_only_layers",
                        format!(
                            "no MoE layer is left (decoder_sparse_step {step}, mlp_only_layers {dense:?}): nothing to route"
                        ),
                    ));
                }
                (
                    required(self.moe_intermediate_size, "moe_intermediate_size")?,
                    intermediate,
                    moe,
                )
            }
        };
        if self.use_sliding_window == Some(true) {
            return Err(invalid(
                "use_sliding_window",
                "sliding-window attention is not supported".into(),
            ));
        }
        if arch == Arch::Qwen3Moe && self.clip_qkv.is_some() {
            return Err(invalid("clip_qkv", "Qwen3-MoE has no qkv clamp".into()));
        }
        let num_experts_per_tok = required(self.num_experts_per_tok, "num_experts_per_tok")?;
        let rope_theta = match &self.rope_parameters {
            Some(params) => {
                if let Some(kind) = params.rope_type.as_deref()
                    && kind != "default"
                {
                    return Err(invalid(
                        "rope_parameters.rope_type",
                        format!("unsupported rope_type {kind:?}, only \"default\" is supported"),
                    ));
                }
                params.rope_theta.or(self.rope_theta)
            }
            None => self.rope_theta,
        }
        .unwrap_or(10000.0);
        if let Some(scaling) = &self.rope_scaling
            && !scaling.is_null()
        {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(Value::as_str);
            if kind != Some("default") {
                return Err(invalid(
                    "rope_scaling",
                    format!("unsupported rope scaling {scaling}, only null or \"default\""),
                ));
            }
        }
        if self.attention_bias == Some(true) {
            return Err(invalid(
                "attention_bias",
                "attention biases are not supported".into(),
            ));
        }
        if let Some(act) = self.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(invalid(
                "hidden_act",
                format!("unsupported activation {act:?}, expected \"silu\""),
            ));
        }
        let cfg = ModelConfig {
            arch,
            vocab_size: required(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size,
            dense_intermediate_size,
            head_dim,
            qk_norm: match arch {
                Arch::Olmoe => QkNorm::Full,
                Arch::Qwen3Moe => QkNorm::PerHead,
            },
            moe_layers,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            num_experts,
            num_experts_per_tok,
            norm_topk_prob: self.norm_topk_prob.unwrap_or(false),
            clip_qkv: self.clip_qkv,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(match arch {
                Arch::Olmoe => 1e-5,
                Arch::Qwen3Moe => 1e-6,
            }),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            rope_theta,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(4096),
            router_aux_loss_coef: self.router_aux_loss_coef.unwrap_or(match arch {
                Arch::Olmoe => 0.01,
                Arch::Qwen3Moe => 0.001,
            }),
            dtype: self.dtype.or(self.torch_dtype),
            eos_token_ids: self.eos_token_id.map(|t| t.to_vec()).unwrap_or_default(),
            pad_token_id: self.pad_token_id,
            raw,
        };
        // Shape facts transformers checks at construction (`OlmoeAttention.__init__`).
        for (field, value) in [
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size),
            ("dense_intermediate_size", cfg.dense_intermediate_size),
            ("head_dim", cfg.head_dim),
            ("num_hidden_layers", cfg.num_hidden_layers),
            ("num_attention_heads", cfg.num_attention_heads),
            ("num_key_value_heads", cfg.num_key_value_heads),
            ("num_experts", cfg.num_experts),
            ("num_experts_per_tok", cfg.num_experts_per_tok),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1".into()));
            }
        }
        if !cfg.head_dim.is_multiple_of(2) {
            let field = if self.head_dim.is_some() {
                "head_dim"
            } else {
                "num_attention_heads"
            };
            return Err(invalid(
                field,
                format!("head dimension {} must be even for RoPE", cfg.head_dim),
            ));
        }
        if !cfg
            .num_attention_heads
            .is_multiple_of(cfg.num_key_value_heads)
        {
            return Err(invalid(
                "num_key_value_heads",
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    cfg.num_attention_heads, cfg.num_key_value_heads
                ),
            ));
        }
        if cfg.num_experts_per_tok > cfg.num_experts {
            return Err(invalid(
                "num_experts_per_tok",
                format!(
                    "{} experts per token but only {} experts",
                    cfg.num_experts_per_tok, cfg.num_experts
                ),
            ));
        }
        if let Some(clip) = cfg.clip_qkv
            && !(clip.is_finite() && clip > 0.0)
        {
            return Err(invalid(
                "clip_qkv",
                format!("must be a finite number above 0, got {clip}"),
            ));
        }
        // A negative or NaN epsilon gives NaN logits everywhere; a non-positive theta breaks RoPE.
        for (field, value) in [
            ("rms_norm_eps", cfg.rms_norm_eps),
            ("rope_theta", cfg.rope_theta),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(invalid(
                    field,
                    format!("must be a finite number above 0, got {value}"),
                ));
            }
        }
        if !(cfg.router_aux_loss_coef.is_finite() && cfg.router_aux_loss_coef >= 0.0) {
            return Err(invalid(
                "router_aux_loss_coef",
                format!(
                    "must be a finite number of at least 0, got {}",
                    cfg.router_aux_loss_coef
                ),
            ));
        }
        if cfg.max_position_embeddings == 0 {
            return Err(invalid(
                "max_position_embeddings",
                "must be at least 1".into(),
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = r#"{"model_type":"olmoe","vocab_size":100,"hidden_size":16,
        "intermediate_size":8,"num_hidden_layers":2,"num_attention_heads":4,"num_experts":4,
        "num_experts_per_tok":2,"rope_theta":500000.0,"rope_scaling":null,"torch_dtype":"bfloat16",
        "eos_token_id":0,"pad_token_id":1}"#;

    fn parse(text: &str) -> Result<ModelConfig, LoadError> {
        ModelConfig::from_json_str(text, Path::new("config.json"))
    }

    #[test]
    fn hub_style_resolves_with_defaults() {
        let cfg = parse(HUB).unwrap();
        assert_eq!(cfg.num_key_value_heads, 4);
        assert_eq!(cfg.rope_theta, 500000.0);
        assert_eq!(cfg.dtype.as_deref(), Some("bfloat16"));
        assert_eq!(cfg.eos_token_ids, vec![0]);
        assert!(!cfg.norm_topk_prob);
        assert_eq!(cfg.head_dim, 4);
        assert_eq!(cfg.moe_layers, vec![0, 1]);
        assert_eq!(cfg.qk_norm, QkNorm::Full);
    }

    #[test]
    fn transformers5_style_resolves() {
        let text = r#"{"model_type":"olmoe","vocab_size":100,"hidden_size":12,
            "intermediate_size":8,"num_hidden_layers":3,"num_attention_heads":6,
            "num_key_value_heads":2,"num_experts":12,"num_experts_per_tok":3,"norm_topk_prob":true,
            "clip_qkv":8.0,"rope_parameters":{"rope_theta":1234.0,"rope_type":"default"},
            "dtype":"float32","eos_token_id":[0,5]}"#;
        let cfg = parse(text).unwrap();
        assert_eq!(cfg.rope_theta, 1234.0);
        assert_eq!(cfg.kv_dim(), 4);
        assert_eq!(cfg.clip_qkv, Some(8.0));
        assert_eq!(cfg.eos_token_ids, vec![0, 5]);
    }

    /// Qwen/Qwen3-30B-A3B's config.json, as published (hub style: `num_experts`, `rope_theta`).
    const QWEN3_30B_A3B: &str = r#"{"architectures":["Qwen3MoeForCausalLM"],"attention_bias":false,
        "attention_dropout":0.0,"bos_token_id":151643,"decoder_sparse_step":1,"eos_token_id":151645,
        "head_dim":128,"hidden_act":"silu","hidden_size":2048,"initializer_range":0.02,
        "intermediate_size":6144,"max_position_embeddings":40960,"max_window_layers":48,
        "mlp_only_layers":[],"model_type":"qwen3_moe","moe_intermediate_size":768,
        "norm_topk_prob":true,"num_attention_heads":32,"num_experts":128,"num_experts_per_tok":8,
        "num_hidden_layers":48,"num_key_value_heads":4,"output_router_logits":false,
        "rms_norm_eps":1e-06,"rope_scaling":null,"rope_theta":1000000.0,"router_aux_loss_coef":0.001,
        "sliding_window":null,"tie_word_embeddings":false,"torch_dtype":"bfloat16",
        "transformers_version":"4.51.0","use_cache":true,"use_sliding_window":false,"vocab_size":151936}"#;

    #[test]
    fn qwen3_hub_config_resolves() {
        let cfg = parse(QWEN3_30B_A3B).unwrap();
        assert_eq!(cfg.arch, Arch::Qwen3Moe);
        assert_eq!((cfg.head_dim, cfg.q_dim(), cfg.kv_dim()), (128, 4096, 512));
        assert_eq!(
            (cfg.intermediate_size, cfg.dense_intermediate_size),
            (768, 6144)
        );
        assert_eq!(cfg.moe_layers, (0..48).collect::<Vec<_>>());
        assert_eq!((cfg.num_experts, cfg.num_experts_per_tok), (128, 8));
        assert_eq!(cfg.qk_norm, QkNorm::PerHead);
        assert!(cfg.norm_topk_prob);
    }

    #[test]
    fn qwen3_dense_layers_follow_sparse_step_and_mlp_only_layers() {
        let text = QWEN3_30B_A3B
            .replace("\"decoder_sparse_step\":1", "\"decoder_sparse_step\":2")
            .replace("\"mlp_only_layers\":[]", "\"mlp_only_layers\":[3]")
            .replace("\"num_hidden_layers\":48", "\"num_hidden_layers\":6")
            .replace("\"num_experts\":128", "\"num_local_experts\":16");
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.moe_layers, vec![1, 5]);
        assert!(cfg.is_moe(5) && !cfg.is_moe(3) && !cfg.is_moe(0));
        assert_eq!(cfg.num_experts, 16, "transformers-5 spelling");
    }

    #[test]
    fn qwen3_bad_configs_name_the_key() {
        let err =
            parse(&QWEN3_30B_A3B.replace("\"mlp_only_layers\":[]", "\"mlp_only_layers\":[2, 48]"))
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.json: mlp_only_layers: layer 48 is beyond the model's 48 layers (num_hidden_layers): there is no model.layers.48"
        );
        let err =
            parse(&QWEN3_30B_A3B.replace("\"decoder_sparse_step\":1", "\"decoder_sparse_step\":0"))
                .unwrap_err();
        assert!(err.to_string().contains("decoder_sparse_step"), "{err}");
        let err = parse(&QWEN3_30B_A3B.replace(
            "\"use_sliding_window\":false",
            "\"use_sliding_window\":true",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("use_sliding_window"), "{err}");
        let err = parse(&QWEN3_30B_A3B.replace("\"moe_intermediate_size\":768,", "")).unwrap_err();
        assert!(
            err.to_string()
                .contains("moe_intermediate_size: missing required field"),
            "{err}"
        );
        let err =
            parse(&QWEN3_30B_A3B.replace("\"head_dim\":128", "\"head_dim\":127")).unwrap_err();
        assert!(err.to_string().contains("head_dim"), "{err}");
    }

    #[test]
    fn impossible_floats_name_the_field() {
        for (key, value) in [
            ("rms_norm_eps", "-1e-5"),
            ("rope_theta", "0"),
            ("router_aux_loss_coef", "-1"),
        ] {
            let text = HUB.replacen('{', &format!("{{\"{key}\":{value},"), 1);
            let text = text.replacen(&format!(",\"{key}\":"), ",\"unused\":", 1);
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{key}: must be a finite number")),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        let err =
            parse(&HUB.replace("\"hidden_size\":16", "\"hidden_size\":\"wide\"")).unwrap_err();
        assert!(err.to_string().contains("hidden_size"), "{err}");
        let err = parse(&HUB.replace("\"num_experts\":4,", "")).unwrap_err();
        assert!(
            err.to_string()
                .contains("num_experts: missing required field"),
            "{err}"
        );
        let err = parse(&HUB.replace("olmoe", "llama")).unwrap_err();
        assert!(err.to_string().contains("model_type"), "{err}");
        let err = parse(&HUB.replace("\"num_experts_per_tok\":2", "\"num_experts_per_tok\":9"))
            .unwrap_err();
        assert!(err.to_string().contains("num_experts_per_tok"), "{err}");
    }
}
