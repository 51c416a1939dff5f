//! Data: tokenizer and chat template, attack datasets, mixed paired batches.

pub mod attack;
pub mod batch;
pub mod chat;
pub mod config;
pub mod split;
pub mod tokenizer;

use std::path::PathBuf;

pub use chat::Message;
pub use config::DataConfig;
pub use tokenizer::ChatTokenizer;

/// What can go wrong reading data or tokenizer files.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record or key is malformed.
    #[error(
        "{}: {}{}{reason}",
        path.display(),
        record.map(|r| format!("record {r}: ")).unwrap_or_default(),
        if field.is_empty() { String::new() } else { format!("{field}: ") }
    )]
    Field {
        /// The file.
        path: PathBuf,
        /// Index of the record, for datasets.
        record: Option<usize>,
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// `tokenizer.json` failed to load or encode.
    #[error("{}: {reason}", path.display())]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What the tokenizer said.
        reason: String,
    },
    /// The chat template failed to compile or render.
    #[error("{}: chat_template: {reason}", path.display())]
    Template {
        /// The file.
        path: PathBuf,
        /// What minijinja said.
        reason: String,
    },
}
