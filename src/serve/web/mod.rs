//! The web page: a playground, the inside view and the training dashboard, served at
//! `/` by `sympathy serve`.
//!
//! The page is plain HTML, CSS and JavaScript modules, embedded in the binary with
//! `include_str!` (no CDN, no build step; nothing the page loads leaves the server).
//! It talks to the OpenAI routes for completions and to the routes here for the rest:
//!
//! - `GET /`, `GET /assets/{file}`: the page itself.
//! - `GET /v1/web/info`: the model served and its vocabulary (the page maps streamed
//!   token texts to ids with it).
//! - `POST /v1/explain`: the inside view of a text ([`explain`], the same computation
//!   as the CLI's `sympathy explain`).
//! - `GET /v1/run`, `GET /v1/run/metrics` (server-sent events), `POST /v1/run/reload`:
//!   the training dashboard of `--run RUN_DIR` ([`run`]).
//! - `POST /v1/compare`: two checkpoints on the same text ([`compare`]).
//!
//! The data routes ask for the API key when the server has one (`--api-key`), as the
//! OpenAI routes do; the page asks the user for it once and sends it as a Bearer token.

pub mod compare;
pub mod explain;
pub mod run;

use super::errors::ServeError;
use super::{check_api_key, AppState};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde_json::{json, Value};

/// The page's files: name, content type, text.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("style.css"),
    ),
    ("app.js", JS, include_str!("app.js")),
    ("common.js", JS, include_str!("common.js")),
    ("playground.js", JS, include_str!("playground.js")),
    ("inside.js", JS, include_str!("inside.js")),
    ("training.js", JS, include_str!("training.js")),
];
const JS: &str = "text/javascript; charset=utf-8";
const INDEX: &str = include_str!("index.html");

/// The page's routes; the OpenAI routes live in [`crate::serve`].
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/v1/web/info", get(info))
        .route("/v1/explain", post(explain::explain))
        .route("/v1/compare", post(compare::compare))
        .route("/v1/run", get(run::summary))
        .route("/v1/run/metrics", get(run::metrics))
        .route("/v1/run/reload", post(run::reload))
}

/// No request of the page may leave the server: the policy says so to the browser too.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'";

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, text)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *text,
        )
            .into_response(),
        None => ServeError::RouteNotFound(format!("/assets/{file}")).into_response(),
    }
}

/// The model served, its context, and every token's text (`text` decoded, `display` as
/// the CLI shows it).
async fn info(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ServeError> {
    check_api_key(&state, &headers)?;
    let tok = &state.tokenizer;
    let vocab: Vec<Value> = (0..tok.vocab_size() as crate::tokenizer::TokenId)
        .map(|id| json!({"id": id, "text": tok.decode(&[id]), "display": tok.display(id)}))
        .collect();
    let params = state
        .engine
        .with_model(|model, _| model.config().clone())
        .await
        .map(|c| {
            format!(
                "{} layers × {} heads, n_embd {}",
                c.n_layer, c.n_head, c.n_embd
            )
        })
        .unwrap_or_default();
    Ok(Json(json!({
        "model": &*state.model_id,
        "checkpoint": state.checkpoint.display().to_string(),
        "context": state.block_size,
        "params": params,
        "tokenizer": tok.name(),
        "run": state.run_dir.is_some(),
        "vocab": vocab,
    })))
}
