//! The OpenAI-compatible wire format: request bodies as clients send them, the responses and
//! stream chunks `steermoe serve` answers with, and errors in OpenAI's JSON error shape.
//!
//! Two extensions ride in the request body: `steering` (experts forced on and off for this
//! request, or a named setting of the server's steering run) and `return_routed_experts` /
//! `return_router_logits` (per generated token, the experts each MoE layer chose and,
//! optionally, its router logits).

use serde::{Deserialize, Serialize};

use crate::data::Message;
use crate::model::ExpertId;

/// An error answered to a client: its HTTP status and OpenAI's `{"error": {...}}` body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, `authentication_error`, …).
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `invalid_api_key`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is wrong in field `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    /// 400: the body is not the JSON expected.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_json"),
        }
    }

    /// 401: no key, or a wrong one.
    pub fn unauthorized() -> Self {
        Self {
            status: 401,
            message: "missing or wrong API key: send `Authorization: Bearer <key>`".into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 404: the model named is not the one served.
    pub fn unknown_model(asked: &str, served: &str) -> Self {
        Self {
            status: 404,
            message: format!(
                "the model {asked:?} does not exist here; this server serves {served:?}"
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 429: the queue is full.
    pub fn busy(queue: usize) -> Self {
        Self {
            status: 429,
            message: format!("the server's queue is full ({queue} requests waiting); retry later"),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
        }
    }

    /// 503: the server is shutting down or its engine stopped.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: 503,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// OpenAI's error body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Up to four.
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// The `steering` extension: explicit expert lists, or a named setting (`"steer-a5-d8"`) of the
/// server's steering run, or `"none"` for the unsteered model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SteeringRequest {
    /// A named setting.
    Named(String),
    /// Explicit lists of `[layer, expert]`.
    Explicit {
        /// Forced into every token's top-k.
        #[serde(default)]
        activate: Vec<ExpertId>,
        /// Forced out of it.
        #[serde(default)]
        deactivate: Vec<ExpertId>,
        /// How the deactivated experts leave the routing: `"route"` (the default, SteerMoE's:
        /// the next expert takes the slot) or `"zero"` (routing weight 0).
        #[serde(default)]
        removal: crate::model::Removal,
    },
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage (always sent by this server; accepted for clients).
    #[serde(default)]
    pub include_usage: bool,
}

/// What both completion endpoints share.
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    /// The model asked for.
    pub model: String,
    /// Tokens to generate at most.
    pub max_tokens: Option<i64>,
    /// Its newer name in the chat API.
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature (0: greedy; default 1).
    pub temperature: Option<f64>,
    /// Nucleus mass in (0, 1] (default 1).
    pub top_p: Option<f64>,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Stop strings (not included in the output).
    pub stop: Option<Stop>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Stream options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Completions per prompt (only 1).
    pub n: Option<i64>,
    /// Extension: steering for this request.
    pub steering: Option<SteeringRequest>,
    /// Extension: each generated token's experts per MoE layer.
    #[serde(default)]
    pub return_routed_experts: bool,
    /// Extension: each generated token's router logits per MoE layer.
    #[serde(default)]
    pub return_router_logits: bool,
    /// Extension (vLLM's): keep generating after the end-of-sequence token, to `max_tokens`
    /// (throughput measurements; stop strings still apply).
    #[serde(default)]
    pub ignore_eos: bool,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Everything else.
    #[serde(flatten)]
    pub common: Common,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt (one string).
    pub prompt: serde_json::Value,
    /// Everything else.
    #[serde(flatten)]
    pub common: Common,
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
}

/// Per generated token: `[moe_layer][k]` experts chosen (the routing of the forward pass that
/// produced the token, at its last position), and optionally `[moe_layer][experts]` router
/// logits.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TokenRouting {
    /// Chosen experts per MoE layer, by descending weight.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routed_experts: Vec<Vec<u16>>,
    /// Router logits per MoE layer (before steering).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub router_logits: Vec<Vec<f32>>,
}

impl TokenRouting {
    /// Whether nothing was asked for.
    pub fn is_empty(&self) -> bool {
        self.routed_experts.is_empty() && self.router_logits.is_empty()
    }
}
