//! `POST /v1/compare`: two checkpoints on the same text.
//!
//! Body `{"prompt": "...", "a": "ckpt-best", "b": "ckpt-latest"}`. A name without a `/`
//! is a checkpoint in the run folder (`--run`, else the folder of the checkpoint
//! served); anything else is a path to a run or a checkpoint. Both are loaded on the
//! CPU in tokio's blocking pool, never on the inference thread, so the playground
//! keeps streaming meanwhile. The answer gives, per position, the probability each
//! gives the real next token and each one's first choice, and marks where those first
//! choices disagree.

use super::run::blocking;
use crate::infer::generate::prepare_prompt;
use crate::infer::sampling::ranked;
use crate::model::Gpt;
use crate::run::checkpoint::{self, Loaded};
use crate::see::explain::mean_nll;
use crate::serve::errors::ServeError;
use crate::serve::openai::fields;
use crate::serve::{check_api_key, read_json, AppState};
use crate::tokenizer::{TokenId, Tokenizer};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Deserialize)]
struct CompareRequest {
    prompt: String,
    a: String,
    b: String,
}

/// Where checkpoint `name` lives (see the module docs).
fn locate(name: &str, state: &AppState) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    let base = state.run_dir.clone().unwrap_or_else(|| {
        let served = &state.checkpoint;
        // The served path is a run folder or a checkpoint inside one.
        match served.join("state.json").is_file() {
            true => served.parent().map(Path::to_path_buf).unwrap_or_default(),
            false => served.clone(),
        }
    });
    base.join(name)
}

/// Next-token probabilities at every position of `ids`, (T, V) rows.
fn next_token_probs(model: &Gpt, ids: &[TokenId]) -> Vec<Vec<f32>> {
    let as_i64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let idx = Tensor::from_slice(&as_i64).to(model.device()).unsqueeze(0); // (1, T)
    let probs = tch::no_grad(|| model.forward(&idx, false).get(0).softmax(-1, Kind::Float)); // (T, V)
    let probs = probs.to(Device::Cpu);
    (0..ids.len() as i64)
        .map(|t| Vec::<f32>::try_from(probs.get(t)).expect("f32 row"))
        .collect()
}

/// What one checkpoint says at every position: p(real next) and its first choice.
struct Side {
    name: String,
    step: u64,
    p_next: Vec<f64>,
    top: Vec<(TokenId, f64)>,
}

fn side(loaded: &Loaded, ids: &[TokenId]) -> Side {
    let rows = next_token_probs(&loaded.model, ids);
    let first = |row: &[f32]| {
        let i = ranked(row)[0];
        (i as TokenId, row[i] as f64)
    };
    Side {
        name: loaded.dir.display().to_string(),
        step: loaded.state.step,
        p_next: ids[1..]
            .iter()
            .zip(&rows)
            .map(|(&n, row)| row[n as usize] as f64)
            .collect(),
        top: rows.iter().take(ids.len() - 1).map(|r| first(r)).collect(),
    }
}

fn load(path: &Path, field: &str) -> Result<Loaded, ServeError> {
    checkpoint::load(path, Device::Cpu).map_err(|e| ServeError::invalid(field, e.to_string()))
}

/// Both checkpoints on `text`: loads them, checks they read text alike, scores.
fn compare_blocking(a: PathBuf, b: PathBuf, text: String) -> Result<Value, ServeError> {
    let (a, b) = (load(&a, "a")?, load(&b, "b")?);
    if a.state.tokenizer != b.state.tokenizer {
        return Err(ServeError::invalid("b", "the two checkpoints use different tokenizers; compare checkpoints of runs with the same one"));
    }
    let tok: &Tokenizer = &a.state.tokenizer;
    let block = a.state.model.block_size.min(b.state.model.block_size);
    let prepared = prepare_prompt(tok, &text, block);
    let ids = prepared.ids;
    if ids.len() < 2 {
        return Err(ServeError::invalid(
            "prompt",
            "needs at least two tokens: the probabilities are of each next token",
        ));
    }
    let (sa, sb) = (side(&a, &ids), side(&b, &ids));
    let pred = |id: TokenId, p: f64| json!({"token": id, "text": tok.display(id), "prob": p});
    let positions: Vec<Value> = (0..ids.len() - 1)
        .map(|t| {
            json!({
                "pos": t,
                "next": tok.display(ids[t + 1]),
                "p_a": sa.p_next[t], "p_b": sb.p_next[t],
                "top_a": pred(sa.top[t].0, sa.top[t].1), "top_b": pred(sb.top[t].0, sb.top[t].1),
                "disagree": sa.top[t].0 != sb.top[t].0,
            })
        })
        .collect();
    let disagreements = (0..positions.len())
        .filter(|&t| sa.top[t].0 != sb.top[t].0)
        .count();
    let summary = |s: &Side| json!({"checkpoint": s.name, "step": s.step, "mean_loss": mean_nll(s.p_next.iter().copied())});
    Ok(json!({
        "tokens": ids.iter().map(|&i| tok.display(i)).collect::<Vec<_>>(),
        "a": summary(&sa), "b": summary(&sb),
        "positions": positions,
        "disagreements": disagreements,
        "notes": prepared.notes,
    }))
}

pub async fn compare(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ServeError> {
    check_api_key(&state, &headers)?;
    let request: CompareRequest = fields(&read_json(&state, &headers, body).await?)?;
    let (a, b) = (locate(&request.a, &state), locate(&request.b, &state));
    Ok(Json(
        blocking(move || compare_blocking(a, b, request.prompt)).await?,
    ))
}
