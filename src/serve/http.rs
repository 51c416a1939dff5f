//! The HTTP side of `steermoe serve` (axum): routes, the API key, request checks, the bounded
//! queue to the engine, and answers whole or as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::api::{ApiError, ChatRequest, Common, CompletionRequest, TokenRouting};
use super::engine::{Event, Job, Stats};
use super::steering::SteeringPolicy;
use crate::data::ChatTokenizer;
use crate::generate::Sampling;

/// What every handler shares.
pub struct AppState {
    /// The engine's queue.
    pub jobs: SyncSender<Job>,
    /// Its capacity (for the 429's message).
    pub queue: usize,
    /// The model's name in the API.
    pub served: String,
    /// The key requests must carry, if any.
    pub api_key: Option<String>,
    /// Prompts in, text out.
    pub tokenizer: Arc<ChatTokenizer>,
    /// Positions the model handles (prompt and answer together).
    pub context: usize,
    /// `max_tokens` of a chat request that gives none (capped by the context left).
    pub default_max_tokens: usize,
    /// Steering of the requests.
    pub steering: SteeringPolicy,
    /// Engine counters.
    pub stats: Arc<Stats>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, axum::Json(self.body())).into_response()
    }
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|| async {
            ApiError {
                status: 404,
                message: "no such route: the API has GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions".into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("not_found"),
            }
        })
        .with_state(state)
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "status": "ok",
        "model": s.served,
        "active": s.stats.active.load(Ordering::Relaxed),
        "queued": s.stats.queued.load(Ordering::Relaxed),
        "finished": s.stats.finished.load(Ordering::Relaxed),
        "tokens": s.stats.tokens.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    axum::Json(json!({
        "object": "list",
        "data": [{"id": s.served, "object": "model", "created": now(), "owned_by": "steermoe"}],
    }))
    .into_response()
}

async fn chat(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        authorize(&s, &headers)?;
        let req: ChatRequest = parse(&body)?;
        if req.messages.is_empty() {
            return Err(ApiError::invalid("messages", "needs at least one message"));
        }
        let prompt_ids = s
            .tokenizer
            .encode_chat(&req.messages, true)
            .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
        Ok(submit(&s, req.common, prompt_ids, Kind::Chat).await)
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

async fn completions(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        authorize(&s, &headers)?;
        let req: CompletionRequest = parse(&body)?;
        let prompt = match &req.prompt {
            Value::String(p) if !p.is_empty() => p.clone(),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().to_string()
            }
            _ => {
                return Err(ApiError::invalid(
                    "prompt",
                    "expected one non-empty string (lists of prompts and token ids are not served)",
                ));
            }
        };
        let prompt_ids = s
            .tokenizer
            .encode(&prompt)
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
        if prompt_ids.is_empty() {
            return Err(ApiError::invalid("prompt", "encodes to no tokens"));
        }
        Ok(submit(&s, req.common, prompt_ids, Kind::Text).await)
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

/// Which endpoint answers: the chat or the text completion format.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::malformed(format!("the request body is not valid: {e}")))
}

fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if g == key => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Check the request's settings, queue it, and answer (whole or streamed).
async fn submit(s: &Arc<AppState>, c: Common, prompt_ids: Vec<u32>, kind: Kind) -> Response {
    match job(s, &c, prompt_ids) {
        Err(e) => e.into_response(),
        Ok((job, events)) => {
            match s.jobs.try_send(job) {
                Ok(()) => {
                    s.stats.queued.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_)) => return ApiError::busy(s.queue).into_response(),
                Err(TrySendError::Disconnected(_)) => {
                    return ApiError::unavailable("the server is shutting down").into_response();
                }
            }
            let id = format!(
                "{}-{:x}",
                match kind {
                    Kind::Chat => "chatcmpl",
                    Kind::Text => "cmpl",
                },
                rand::random::<u64>()
            );
            match c.stream {
                true => stream(s.served.clone(), id, kind, events),
                false => whole(&s.served, id, kind, events).await,
            }
        }
    }
}

/// The engine's job for a request, or what is wrong with it.
fn job(
    s: &AppState,
    c: &Common,
    prompt_ids: Vec<u32>,
) -> Result<(Job, mpsc::UnboundedReceiver<Event>), ApiError> {
    if c.model != s.served {
        return Err(ApiError::unknown_model(&c.model, &s.served));
    }
    if let Some(n) = c.n
        && n != 1
    {
        return Err(ApiError::invalid(
            "n",
            format!("only n = 1 is served, got {n}"),
        ));
    }
    let prompt = prompt_ids.len();
    let room = s.context.saturating_sub(prompt);
    if room == 0 {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the prompt is {prompt} tokens, the model's context is {} tokens: no room to answer",
                s.context
            ),
        ));
    }
    let (key, asked) = match (c.max_completion_tokens, c.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let max_tokens = match asked {
        None => s.default_max_tokens.min(room),
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                key,
                format!("{key} must be at least 1, got {m}"),
            ));
        }
        Some(m) if m as usize > room => {
            return Err(ApiError::invalid(
                key,
                format!(
                    "{m} tokens do not fit: the prompt is {prompt} tokens and the model's context is {} tokens, so at most {room} can be generated",
                    s.context
                ),
            ));
        }
        Some(m) => m as usize,
    };
    let temperature = c.temperature.unwrap_or(1.0);
    if !temperature.is_finite() || !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !top_p.is_finite() || top_p <= 0.0 || top_p > 1.0 {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let sampling = match temperature == 0.0 {
        true => Sampling::Greedy,
        false => Sampling::Sample {
            temperature,
            top_p,
            seed: c.seed.unwrap_or_else(rand::random),
        },
    };
    let stop_strings = c.stop.as_ref().map(|s| s.strings()).unwrap_or_default();
    if stop_strings.len() > 4 || stop_strings.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "at most 4 stop strings, none empty",
        ));
    }
    let steering = s.steering.resolve(c.steering.as_ref())?;
    let (events, rx) = mpsc::unbounded_channel();
    Ok((
        Job {
            prompt_ids,
            max_tokens,
            sampling,
            stop_ids: if c.ignore_eos {
                Vec::new()
            } else {
                vec![s.tokenizer.eos_id]
            },
            stop_strings,
            steering,
            routed_experts: c.return_routed_experts,
            router_logits: c.return_router_logits,
            events,
        },
        rx,
    ))
}

/// A choice's routing field, when tokens carried any.
fn routing_value(routing: &[TokenRouting]) -> Option<Value> {
    (!routing.is_empty() && routing.iter().any(|r| !r.is_empty()))
        .then(|| serde_json::to_value(routing).unwrap_or(Value::Null))
}

async fn whole(
    served: &str,
    id: String,
    kind: Kind,
    mut events: mpsc::UnboundedReceiver<Event>,
) -> Response {
    let mut text = String::new();
    let mut routing: Vec<TokenRouting> = Vec::new();
    while let Some(e) = events.recv().await {
        match e {
            Event::Delta {
                text: t,
                routing: r,
            } => {
                text.push_str(&t);
                routing.extend(r);
            }
            Event::Done { finish, usage } => {
                let mut choice = match kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish.reason(),
                    }),
                    Kind::Text => json!({
                        "index": 0,
                        "text": text,
                        "finish_reason": finish.reason(),
                        "logprobs": null,
                    }),
                };
                if let Some(r) = routing_value(&routing) {
                    choice["routing"] = r;
                }
                return axum::Json(json!({
                    "id": id,
                    "object": match kind { Kind::Chat => "chat.completion", Kind::Text => "text_completion" },
                    "created": now(),
                    "model": served,
                    "choices": [choice],
                    "usage": usage,
                }))
                .into_response();
            }
        }
    }
    ApiError::unavailable("the engine stopped before the answer was complete").into_response()
}

fn stream(
    served: String,
    id: String,
    kind: Kind,
    mut events: mpsc::UnboundedReceiver<Event>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let created = now();
    let object = match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Text => "text_completion",
    };
    let chunk = move |delta: Value, finish: Option<&str>, routing: Option<Value>| {
        let mut choice = match kind {
            Kind::Chat => json!({"index": 0, "delta": delta, "finish_reason": finish}),
            Kind::Text => json!({
                "index": 0,
                "text": delta.get("content").cloned().unwrap_or(json!("")),
                "finish_reason": finish,
                "logprobs": null,
            }),
        };
        if let Some(r) = routing {
            choice["routing"] = r;
        }
        json!({"id": id, "object": object, "created": created, "model": served, "choices": [choice]})
    };
    tokio::spawn(async move {
        let send = |v: Value| SseEvent::default().data(v.to_string());
        // The role first (the chat format's opening chunk).
        if kind == Kind::Chat
            && tx
                .send(Ok(send(chunk(
                    json!({"role": "assistant", "content": ""}),
                    None,
                    None,
                ))))
                .await
                .is_err()
        {
            return;
        }
        while let Some(e) = events.recv().await {
            let out = match e {
                Event::Delta { text, routing } => vec![chunk(
                    json!({"content": text}),
                    None,
                    routing_value(&routing),
                )],
                Event::Done { finish, usage } => {
                    let mut last = chunk(json!({}), Some(finish.reason()), None);
                    let mut tail = last.clone();
                    tail["choices"] = json!([]);
                    tail["usage"] = json!(usage);
                    last["usage"] = Value::Null;
                    vec![last, tail]
                }
            };
            for v in out {
                // A client that went away drops the stream: stop, which drops `events` and
                // tells the engine to free the request's row.
                if tx.send(Ok(send(v))).await.is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(rx)).into_response()
}
