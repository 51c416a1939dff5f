//! The OLMoE configuration: a Hub `config.json` (transformers' `OlmoeConfig`) read as written,
//! then resolved into the validated [`OlmoeConfig`] the model is built from.
//!
//! Checkpoints spell the same facts two ways: hub style (`rope_theta`, `rope_scaling`,
//! `torch_dtype`, transformers 4) and transformers-5 style (`rope_parameters: {rope_theta,
//! rope_type}`, `dtype`). Both are accepted; where a file carries both, the transformers-5 key
//! wins, as it does in transformers. Defaults are transformers' own for keys a checkpoint may
//! leave out; the shape-defining keys are required.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::LoadError;

/// A Hub `config.json` for `model_type: olmoe`, under the Hub's key names.
#[derive(Debug, Clone, Deserialize)]
pub struct HubConfig {
    /// Must be `"olmoe"`.
    pub model_type: Option<String>,
    /// Rows of the embedding and LM head (may exceed the tokenizer's ids).
    pub vocab_size: Option<usize>,
    /// Model width.
    pub hidden_size: Option<usize>,
    /// Width of one expert's MLP.
    pub intermediate_size: Option<usize>,
    /// Decoder layers.
    pub num_hidden_layers: Option<usize>,
    /// Query heads.
    pub num_attention_heads: Option<usize>,
    /// Key/value heads (grouped-query attention); defaults to `num_attention_heads`.
    pub num_key_value_heads: Option<usize>,
    /// Experts per MoE layer.
    pub num_experts: Option<usize>,
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

/// The validated configuration every module is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct OlmoeConfig {
    /// Rows of the embedding and LM head.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of one expert's MLP.
    pub intermediate_size: usize,
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

impl OlmoeConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.head_dim() * self.num_key_value_heads
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
        let hub: HubConfig = serde_path_to_error::deserialize(raw.clone()).map_err(|e| {
            LoadError::Config {
                path: path.to_path_buf(),
                field: e.path().to_string(),
                reason: e.inner().to_string(),
            }
        })?;
        hub.resolve(raw, path)
    }
}

impl HubConfig {
    /// Check the file's facts and fill in transformers' defaults.
    pub fn resolve(self, raw: Value, path: &Path) -> Result<OlmoeConfig, LoadError> {
        let invalid = |field: &str, reason: String| LoadError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let required = |value: Option<usize>, field: &str| {
            value.ok_or_else(|| invalid(field, "missing required field".into()))
        };
        match self.model_type.as_deref() {
            Some("olmoe") => {}
            Some(other) => {
                return Err(invalid(
                    "model_type",
                    format!("unsupported model_type {other:?}, expected \"olmoe\""),
                ));
            }
            None => return Err(invalid("model_type", "missing required field".into())),
        }
        let hidden_size = required(self.hidden_size, "hidden_size")?;
        let num_attention_heads = required(self.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = self.num_key_value_heads.unwrap_or(num_attention_heads);
        let num_experts = required(self.num_experts, "num_experts")?;
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
            return Err(invalid("attention_bias", "attention biases are not supported".into()));
        }
        if let Some(act) = self.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(invalid(
                "hidden_act",
                format!("unsupported activation {act:?}, expected \"silu\""),
            ));
        }
        let cfg = OlmoeConfig {
            vocab_size: required(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: required(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers: required(self.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            num_experts,
            num_experts_per_tok,
            norm_topk_prob: self.norm_topk_prob.unwrap_or(false),
            clip_qkv: self.clip_qkv,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-5),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            rope_theta,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(4096),
            router_aux_loss_coef: self.router_aux_loss_coef.unwrap_or(0.01),
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
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(invalid(
                "num_attention_heads",
                format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    cfg.hidden_size, cfg.num_attention_heads
                ),
            ));
        }
        if cfg.head_dim() % 2 != 0 {
            return Err(invalid(
                "num_attention_heads",
                format!("head dimension {} must be even for RoPE", cfg.head_dim()),
            ));
        }
        if cfg.num_attention_heads % cfg.num_key_value_heads != 0 {
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
            && clip <= 0.0
        {
            return Err(invalid("clip_qkv", format!("must be positive, got {clip}")));
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

    fn parse(text: &str) -> Result<OlmoeConfig, LoadError> {
        OlmoeConfig::from_json_str(text, Path::new("config.json"))
    }

    #[test]
    fn hub_style_resolves_with_defaults() {
        let cfg = parse(HUB).unwrap();
        assert_eq!(cfg.num_key_value_heads, 4);
        assert_eq!(cfg.rope_theta, 500000.0);
        assert_eq!(cfg.dtype.as_deref(), Some("bfloat16"));
        assert_eq!(cfg.eos_token_ids, vec![0]);
        assert!(!cfg.norm_topk_prob);
        assert_eq!(cfg.head_dim(), 4);
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

    #[test]
    fn errors_name_the_field() {
        let err = parse(&HUB.replace("\"hidden_size\":16", "\"hidden_size\":\"wide\"")).unwrap_err();
        assert!(err.to_string().contains("hidden_size"), "{err}");
        let err = parse(&HUB.replace("\"num_experts\":4,", "")).unwrap_err();
        assert!(err.to_string().contains("num_experts: missing required field"), "{err}");
        let err = parse(&HUB.replace("olmoe", "llama")).unwrap_err();
        assert!(err.to_string().contains("model_type"), "{err}");
        let err = parse(&HUB.replace("\"num_experts_per_tok\":2", "\"num_experts_per_tok\":9"))
            .unwrap_err();
        assert!(err.to_string().contains("num_experts_per_tok"), "{err}");
    }
}
