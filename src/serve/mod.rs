//! `steermoe serve`: a model, fixed or steered, behind an OpenAI-compatible HTTP API.
//!
//! [`http`] answers `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models` and
//! `GET /health` (axum on a tokio runtime); [`engine`] runs the requests on the device with
//! continuous batching, on the thread that called [`serve`] (the model never leaves it);
//! [`steering`] resolves each request's `steering`; [`api`] is the wire format.
//!
//! Shutdown (SIGTERM or Ctrl-C): the listener stops taking connections, the requests in flight
//! are answered, then [`serve`] returns.

pub mod api;
pub mod engine;
pub mod http;
pub mod steering;

use std::net::SocketAddr;
use std::sync::Arc;

use burn::tensor::backend::Backend;

pub use api::ApiError;
pub use engine::{EngineOptions, Stats};
pub use steering::SteeringPolicy;

use crate::data::ChatTokenizer;
use crate::model::MoeLm;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind (loopback unless told otherwise).
    pub host: String,
    /// Port (0: any free one; the address bound is passed to `on_listen`).
    pub port: u16,
    /// The key requests must carry as `Authorization: Bearer …`, if any.
    pub api_key: Option<String>,
    /// The model's name in the API.
    pub served: String,
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// Requests waiting for the batch at most (beyond them: 429).
    pub queue: usize,
    /// `max_tokens` of a request that gives none (capped by the context left).
    pub default_max_tokens: usize,
    /// Positions the model handles.
    pub context: usize,
    /// Greedy steps decoded on the device between reads of their tokens (see
    /// [`EngineOptions::read_every`]).
    pub read_every: usize,
}

/// The server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The async runtime failed.
    #[error("the server's runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Serve `model` until SIGTERM or Ctrl-C; `on_listen` is told the address once it is bound.
pub fn serve<B: Backend>(
    model: &MoeLm<B>,
    tokenizer: ChatTokenizer,
    steering: SteeringPolicy,
    device: &B::Device,
    opts: &ServeOptions,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&addr))
        .map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let bound = listener.local_addr()?;
    let (jobs, queue) = std::sync::mpsc::sync_channel(opts.queue);
    let tokenizer = Arc::new(tokenizer);
    let stats = Arc::new(Stats::default());
    let state = Arc::new(http::AppState {
        jobs,
        queue: opts.queue,
        served: opts.served.clone(),
        api_key: opts.api_key.clone(),
        tokenizer: tokenizer.clone(),
        context: opts.context,
        default_max_tokens: opts.default_max_tokens,
        steering,
        stats: stats.clone(),
    });
    let app = http::router(state);
    let server = runtime.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    on_listen(bound);
    // The engine runs here until the server, and with it the queue's last sender, is gone.
    engine::run(
        model,
        &tokenizer,
        device,
        queue,
        &EngineOptions {
            max_batch: opts.max_batch,
            context: opts.context,
            read_every: opts.read_every,
        },
        &stats,
    );
    runtime
        .block_on(server)
        .map_err(|e| ServeError::Runtime(std::io::Error::other(e)))??;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
