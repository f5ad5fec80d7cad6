//! `POST /v1/explain`: the inside view of a text, as JSON.
//!
//! Body `{"prompt": "...", "top_k": 5}`. The text is prepared as `sympathy explain`
//! prepares its `--prompt` (characters outside the vocabulary become `<unk>`, a text
//! longer than the context keeps its last window, each said in `notes`), then
//! [`crate::see::explain::explain`] runs on the inference thread and
//! [`crate::see::explain_view::view`] shapes the answer: one computation, two views.

use crate::infer::generate::prepare_prompt;
use crate::see::explain::explain as compute;
use crate::see::explain_view::view;
use crate::serve::errors::ServeError;
use crate::serve::openai::{fields, in_range};
use crate::serve::{check_api_key, read_json, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

/// Alternatives per position at most (the API's `logprobs` limit).
const TOP_K_LIMIT: i64 = 20;

#[derive(Debug, Deserialize)]
struct ExplainRequest {
    prompt: String,
    top_k: Option<i64>,
}

pub async fn explain(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ServeError> {
    check_api_key(&state, &headers)?;
    let request: ExplainRequest = fields(&read_json(&state, &headers, body).await?)?;
    let k = request.top_k.unwrap_or(5);
    in_range("top_k", k, 1, TOP_K_LIMIT)?;
    let prepared = prepare_prompt(&state.tokenizer, &request.prompt, state.block_size);
    let ids = prepared.ids;
    let answer = state
        .engine
        .with_model(move |model, tokenizer| {
            compute(model, tokenizer, &ids, k as usize, None).map(|e| view(&e, tokenizer))
        })
        .await?
        .map_err(|e| ServeError::invalid("prompt", e.to_string()))?;
    let mut json = serde_json::to_value(answer).map_err(|e| ServeError::Internal(e.to_string()))?;
    json["notes"] = prepared.notes.into();
    Ok(Json(json))
}
