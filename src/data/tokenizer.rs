//! The checkpoint's tokenizer: `tokenizer.json` through the `tokenizers` crate, plus the special
//! tokens and chat template of `tokenizer_config.json`.
//!
//! Text is encoded without adding special tokens (the chat template writes `bos_token` itself),
//! as `tok(text, add_special_tokens=False)` does in the reference.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::DataError;
use super::chat::{ChatTemplate, Message};

/// Tokenizer, special tokens and chat template of one model directory.
#[derive(Debug)]
pub struct ChatTokenizer {
    tokenizer: tokenizers::Tokenizer,
    template: ChatTemplate,
    /// End-of-sequence id.
    pub eos_id: u32,
    /// Padding id (falls back to EOS when the checkpoint names none).
    pub pad_id: u32,
}

/// A special token as `tokenizer_config.json` writes it: a string or `{"content": ...}`.
fn token_text(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl ChatTokenizer {
    /// One more than the largest id it knows, added tokens included: every id it encodes to is
    /// below this.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1)
    }

    /// Check that every id it encodes to is one a model of `vocab_size` embeddings has (a
    /// larger tokenizer would index past the embedding).
    pub fn check_fits(&self, vocab_size: usize, dir: &Path) -> Result<(), DataError> {
        let n = self.vocab_size();
        if n > vocab_size {
            return Err(DataError::Tokenizer {
                path: dir.join("tokenizer.json"),
                reason: format!(
                    "{n} tokens, but the model has only {vocab_size} embeddings (config.json's vocab_size): ids {vocab_size} and above would index past them"
                ),
            });
        }
        Ok(())
    }

    /// Load `tokenizer.json` and `tokenizer_config.json` from a model directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| DataError::Tokenizer {
                path: tok_path.clone(),
                reason: e.to_string(),
            })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| DataError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let config: Value = serde_json::from_str(&text).map_err(|e| DataError::Field {
            path: cfg_path.clone(),
            record: None,
            field: String::new(),
            reason: e.to_string(),
        })?;
        let field_err = |field: &str, reason: &str| DataError::Field {
            path: cfg_path.clone(),
            record: None,
            field: field.to_string(),
            reason: reason.to_string(),
        };
        let source = match config.get("chat_template") {
            Some(Value::String(s)) => s.clone(),
            // A list of named templates: use "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_string)
                .ok_or_else(|| field_err("chat_template", "no template named \"default\""))?,
            _ => return Err(field_err("chat_template", "missing or not a string")),
        };
        let eos =
            token_text(&config, "eos_token").ok_or_else(|| field_err("eos_token", "missing"))?;
        let bos = token_text(&config, "bos_token").unwrap_or_default();
        let id_of = |token: &str, field: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| field_err(field, &format!("{token:?} is not in tokenizer.json")))
        };
        let eos_id = id_of(&eos, "eos_token")?;
        let pad_id = match token_text(&config, "pad_token") {
            Some(pad) => id_of(&pad, "pad_token")?,
            None => eos_id,
        };
        let template = ChatTemplate::new(&source, &bos, &eos).map_err(|e| DataError::Template {
            path: cfg_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            tokenizer,
            template,
            eos_id,
            pad_id,
        })
    }

    /// Set the template's `enable_thinking` (Qwen3: `Some(false)` opens the assistant's turn with
    /// an empty think block; `None` leaves it undefined, the template's default).
    pub fn with_enable_thinking(mut self, enable_thinking: Option<bool>) -> Self {
        self.template = self.template.with_enable_thinking(enable_thinking);
        self
    }

    /// Render messages with the chat template.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        self.template
            .render(messages, add_generation_prompt)
            .map_err(|e| DataError::Template {
                path: PathBuf::from("tokenizer_config.json"),
                reason: e.to_string(),
            })
    }

    /// Token ids of `text`, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::Tokenizer {
                path: PathBuf::from("tokenizer.json"),
                reason: e.to_string(),
            })
    }

    /// Render and encode a conversation.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, DataError> {
        self.encode(&self.render(messages, add_generation_prompt)?)
    }

    /// The ids of a prompt (the conversation with the assistant turn opened), keeping only its
    /// last `max_tokens` tokens when it is longer (0 = no limit).
    pub fn encode_prompt(
        &self,
        messages: &[Message],
        max_tokens: usize,
    ) -> Result<Vec<u32>, DataError> {
        let mut ids = self.encode_chat(messages, true)?;
        if max_tokens > 0 && ids.len() > max_tokens {
            ids.drain(..ids.len() - max_tokens);
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }
}
