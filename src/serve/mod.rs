//! `sympathy serve`: an OpenAI-compatible HTTP server (axum + tokio) in front of one
//! inference thread.
//!
//! - [`engine`]: the thread that owns the model, its bounded queue and the continuous
//!   batcher; [`openai`]: request fields and their limits; [`completions`]: the two
//!   generating endpoints and their responses; [`sse`]: stream framing; [`chat`]: the
//!   chat template; [`errors`]: OpenAI's error shape; [`web`]: the web page's routes.
//! - Here: the shared [`AppState`], the [`router`] (auth, body limits, JSON 404/405),
//!   the small endpoints (`/v1/models`, `/health`, `/tokenize`, `/detokenize`,
//!   `/metrics`) and [`serve`], which binds, prints the URL and stops on Ctrl-C.

pub mod chat;
pub mod completions;
pub mod engine;
pub mod errors;
pub mod openai;
pub mod sse;
pub mod web;

use crate::tokenizer::{TokenId, Tokenizer};
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::EngineHandle;
use errors::ServeError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Request bodies above this are refused with 413 (a prompt past the context is cut to
/// its last window anyway).
pub const BODY_LIMIT: usize = 1 << 20;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The inference thread: generation jobs and [`EngineHandle::with_model`].
    pub engine: EngineHandle,
    pub tokenizer: Tokenizer,
    /// The model's context, `block_size`.
    pub block_size: i64,
    /// The id `/v1/models` lists and requests must name (or leave out).
    pub model_id: Arc<str>,
    /// The checkpoint folder served.
    pub checkpoint: PathBuf,
    /// The run folder the web page's dashboard reads (`--run`).
    pub run_dir: Option<PathBuf>,
    /// Bearer token required on the API routes (`--api-key`).
    pub api_key: Option<Arc<str>>,
    /// How long a request may take, reading its body included (`--timeout-s`).
    pub timeout: Duration,
    /// Unix time the server started (`created` of the model object).
    pub started: u64,
}

impl AppState {
    /// A 404 unless `model` is absent or names the model served.
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ServeError> {
        match model {
            Some(m) if m != &*self.model_id => Err(ServeError::ModelNotFound(m.to_string())),
            _ => Ok(()),
        }
    }

    fn model_object(&self) -> Value {
        json!({"id": &*self.model_id, "object": "model", "created": self.started, "owned_by": "sympathy"})
    }
}

/// Every route: the API (behind the API key when one is set) and the web page.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .merge(web::routes())
        .fallback(|uri: Uri| async move { ServeError::RouteNotFound(uri.path().to_string()) })
        .method_not_allowed_fallback(|method: Method| async move {
            ServeError::MethodNotAllowed(method.to_string())
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// `Authorization: Bearer KEY` when the server has a key.
async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match check_api_key(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// `Authorization: Bearer KEY` when the server has a key (the API routes' middleware;
/// the web page's data routes call it themselves).
pub fn check_api_key(state: &AppState, headers: &HeaderMap) -> Result<(), ServeError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Err(ServeError::Unauthorized(
            "missing API key: send Authorization: Bearer KEY".into(),
        )),
        Some(k) if k != &**key => Err(ServeError::Unauthorized("incorrect API key".into())),
        Some(_) => Ok(()),
    }
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let m = &state.engine.metrics;
    m.http_requests.fetch_add(1, Relaxed);
    if response.status().is_client_error() || response.status().is_server_error() {
        m.http_errors.fetch_add(1, Relaxed);
    }
    response
}

/// Reads a JSON body within [`BODY_LIMIT`] and `--timeout-s` (a client that sends
/// slowly is cut off): 413 over the limit, 400 when it is not JSON.
pub async fn read_json(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ServeError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(ServeError::TooLarge(BODY_LIMIT));
    }
    let bytes = tokio::time::timeout(state.timeout, axum::body::to_bytes(body, BODY_LIMIT))
        .await
        .map_err(|_| ServeError::Timeout(state.timeout.as_secs()))?
        .map_err(|e| {
            let over = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if over {
                ServeError::TooLarge(BODY_LIMIT)
            } else {
                ServeError::MalformedJson(format!("the body could not be read: {e}"))
            }
        })?;
    serde_json::from_slice(&bytes).map_err(|e| ServeError::MalformedJson(e.to_string()))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [state.model_object()]}))
}

async fn model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ServeError> {
    state.check_model(Some(&id))?;
    Ok(Json(state.model_object()))
}

#[derive(Deserialize)]
struct TokenizeRequest {
    content: String,
    #[serde(default)]
    with_pieces: bool,
}

/// `{content, with_pieces}` -> `{tokens: [id…]}` or `{tokens: [{id, piece}…]}` (llama.cpp's shape).
async fn tokenize(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ServeError> {
    let req: TokenizeRequest = openai::fields(&read_json(&state, &headers, body).await?)?;
    let ids = state.tokenizer.encode(&req.content).ids;
    let tokens: Vec<Value> = ids
        .iter()
        .map(|&id| match req.with_pieces {
            true => json!({"id": id, "piece": state.tokenizer.decode(&[id])}),
            false => json!(id),
        })
        .collect();
    Ok(Json(json!({"tokens": tokens})))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<i64>,
}

async fn detokenize(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ServeError> {
    let req: DetokenizeRequest = openai::fields(&read_json(&state, &headers, body).await?)?;
    let ids = check_ids(&req.tokens, &state.tokenizer, "tokens")?;
    Ok(Json(json!({"content": state.tokenizer.decode(&ids)})))
}

/// Ids from a request: each within the vocabulary, else a 400 naming `param`.
pub fn check_ids(
    ids: &[i64],
    tokenizer: &Tokenizer,
    param: &str,
) -> Result<Vec<TokenId>, ServeError> {
    let v = tokenizer.vocab_size();
    ids.iter()
        .map(|&id| match id {
            0.. if id < v => Ok(id as TokenId),
            _ => Err(ServeError::invalid(
                param,
                format!("token id {id} is outside the vocabulary 0..{v}"),
            )),
        })
        .collect()
}

/// Prometheus' text format.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let m = &state.engine.metrics;
    let rows = [
        (
            "http_requests_total",
            "counter",
            "HTTP requests answered",
            m.http_requests.load(Relaxed),
        ),
        (
            "http_errors_total",
            "counter",
            "HTTP requests answered with a 4xx or 5xx",
            m.http_errors.load(Relaxed),
        ),
        (
            "completions_total",
            "counter",
            "completions finished",
            m.completions.load(Relaxed),
        ),
        (
            "cancelled_total",
            "counter",
            "completions stopped because the client went away",
            m.cancelled.load(Relaxed),
        ),
        (
            "prompt_tokens_total",
            "counter",
            "prompt tokens prefilled",
            m.prompt_tokens.load(Relaxed),
        ),
        (
            "completion_tokens_total",
            "counter",
            "tokens generated",
            m.completion_tokens.load(Relaxed),
        ),
        (
            "decode_steps_total",
            "counter",
            "batched decode steps",
            m.decode_steps.load(Relaxed),
        ),
        (
            "decode_microseconds_total",
            "counter",
            "time spent in batched decode steps",
            m.decode_us.load(Relaxed),
        ),
        (
            "queue_depth",
            "gauge",
            "jobs waiting for a batch row",
            state.engine.queue_depth() as u64,
        ),
        (
            "batch_size",
            "gauge",
            "rows in the last decode step",
            m.batch_size.load(Relaxed),
        ),
    ];
    let mut text = String::new();
    for (name, kind, help, value) in rows {
        text.push_str(&format!("# HELP sympathy_{name} {help}\n# TYPE sympathy_{name} {kind}\nsympathy_{name} {value}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// How to run the server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub engine: engine::EngineConfig,
    pub timeout: Duration,
    pub run_dir: Option<PathBuf>,
    /// The model's id in the API.
    pub model_id: String,
}

/// Binds `opts.host:opts.port`, prints the URL, serves until Ctrl-C (or `stop`
/// resolves), then ends in-flight streams with a final event and returns.
pub async fn serve(
    loaded: crate::run::checkpoint::Loaded,
    opts: ServeOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(std::net::SocketAddr),
) -> crate::Result<()> {
    let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| {
            crate::Error::config(
                "--host/--port",
                format!("cannot listen on {}:{}: {e}", opts.host, opts.port),
            )
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| crate::Error::config("--port", e.to_string()))?;
    let model_id: Arc<str> = opts.model_id.as_str().into();
    let tokenizer = loaded.state.tokenizer.clone();
    let block_size = loaded.state.model.block_size;
    let checkpoint = loaded.dir.clone();
    let (engine, thread) = engine::start(loaded.model, tokenizer.clone(), opts.engine);
    let state = AppState {
        engine: engine.clone(),
        tokenizer,
        block_size,
        model_id,
        checkpoint,
        run_dir: opts.run_dir.clone(),
        api_key: opts.api_key.map(Into::into),
        timeout: opts.timeout,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    ready(addr);
    let shutdown = async move {
        stop.await;
        engine.shutdown().await; // streams get their final event before the server stops
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| crate::Error::config("serve", e.to_string()))?;
    let _ = thread.join();
    Ok(())
}
