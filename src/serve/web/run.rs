//! The training dashboard's routes: the run folder of the checkpoint served, or
//! `sympathy serve --run RUN_DIR`.
//!
//! - `GET /v1/run`: the run folder, its newest checkpoint's `state.json` and the
//!   `sympathy inspect` summary of it.
//! - `GET /v1/run/metrics`: server-sent events, one `data: {record}` per line of
//!   `RUN_DIR/metrics.jsonl`: every line once, then each new line as training appends
//!   it. The file is followed by its length: each look reads only the bytes past the
//!   last complete line sent, never the whole file again, and a line still being
//!   written waits for its newline.
//! - `POST /v1/run/reload`: loads the run's newest checkpoint (off the inference thread)
//!   and swaps it into the engine, so the playground talks to it.

use crate::run::checkpoint;
use crate::run::metrics::Record;
use crate::see::inspect;
use crate::serve::errors::ServeError;
use crate::serve::sse;
use crate::serve::{check_api_key, AppState};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the metrics file's length is looked at.
const TAIL_EVERY: Duration = Duration::from_millis(200);

/// The run folder (`--run`, else the checkpoint's own), or a 400 saying how to get one.
pub fn run_dir(state: &AppState) -> Result<PathBuf, ServeError> {
    state.run_dir.clone().ok_or_else(|| {
        ServeError::invalid(
            "run",
            "no run folder: the checkpoint served is not inside one and no --run RUN_DIR was given; restart the server with --run to follow a training run",
        )
    })
}

/// Runs blocking work (file reads, checkpoint loads) on tokio's blocking pool.
pub async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, ServeError> + Send + 'static,
) -> Result<R, ServeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServeError::Internal(format!("a background task failed: {e}")))?
}

pub async fn summary(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ServeError> {
    check_api_key(&state, &headers)?;
    let dir = run_dir(&state)?;
    blocking(move || {
        let Ok(ckpt) = checkpoint::resolve(&dir) else {
            return Ok(Json(json!({
                "run_dir": dir.display().to_string(),
                "checkpoint": null,
                "config": null,
                "inspect": "no checkpoint yet: the first one is written at the first evaluation",
            })));
        };
        let loaded = checkpoint::load(&ckpt, tch::Device::Cpu)
            .map_err(|e| ServeError::invalid("run", e.to_string()))?;
        let st = &loaded.state;
        let report = inspect::report(
            loaded.dir.display().to_string(),
            &st.model,
            &loaded.vs,
            st.train.batch_size,
            st.model.block_size,
            Some((st, loaded.dir.clone())),
        )
        .map_err(|e| ServeError::Internal(e.to_string()))?;
        Ok(Json(json!({
            "run_dir": dir.display().to_string(),
            "checkpoint": loaded.dir.display().to_string(),
            "config": st,
            "inspect": inspect::render(&report),
        })))
    })
    .await
}

pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ServeError> {
    check_api_key(&state, &headers)?;
    let path = run_dir(&state)?.join("metrics.jsonl");
    let (response, frames) = sse::response();
    tokio::spawn(async move {
        let mut tail = Tail::new(path);
        loop {
            let (lines, next) = match blocking(move || Ok(tail.read_new())).await {
                Ok(got) => got,
                Err(_) => return,
            };
            tail = next;
            for line in lines {
                if !frames.data(&line).await {
                    return;
                }
            }
            tokio::select! {
                _ = frames.closed() => return,
                _ = tokio::time::sleep(TAIL_EVERY) => {}
            }
        }
    });
    Ok(response)
}

/// Where the reading of `metrics.jsonl` stands: the byte offset after the last complete
/// line sent.
struct Tail {
    path: PathBuf,
    offset: u64,
}

impl Tail {
    fn new(path: PathBuf) -> Self {
        Tail { path, offset: 0 }
    }

    /// The records of the complete lines appended since the last call (none while the
    /// file does not exist yet; from the start again if it shrank, i.e. was replaced).
    fn read_new(mut self) -> (Vec<Value>, Self) {
        let bytes = match new_bytes(&self.path, &mut self.offset) {
            Ok(b) => b,
            Err(_) => return (Vec::new(), self),
        };
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return (Vec::new(), self);
        };
        self.offset += end as u64 + 1;
        let records = String::from_utf8_lossy(&bytes[..end])
            .lines()
            .filter_map(|line| serde_json::from_str::<Record>(line).ok())
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
        (records, self)
    }
}

/// The bytes of `path` past `offset` (resetting `offset` to 0 when the file shrank).
fn new_bytes(path: &Path, offset: &mut u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len < *offset {
        *offset = 0;
    }
    file.seek(SeekFrom::Start(*offset))?;
    let mut bytes = Vec::with_capacity((len - *offset) as usize);
    file.take(len - *offset).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Loads the run's newest checkpoint and hands it to the engine.
pub async fn reload(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ServeError> {
    check_api_key(&state, &headers)?;
    let dir = run_dir(&state)?;
    let device = state.engine.with_model(|model, _| model.device()).await?;
    let loaded = blocking(move || {
        checkpoint::load(&dir, device).map_err(|e| ServeError::invalid("run", e.to_string()))
    })
    .await?;
    let served = state
        .engine
        .with_model(|model, _| model.config().clone())
        .await?;
    if loaded.state.tokenizer != state.tokenizer || loaded.state.model != served {
        return Err(ServeError::invalid(
            "run",
            format!(
                "{} has another shape or tokenizer than the model served; restart the server with --checkpoint {}",
                loaded.dir.display(),
                loaded.dir.display()
            ),
        ));
    }
    let (ckpt, step) = (loaded.dir.display().to_string(), loaded.state.step);
    state.engine.replace_model(loaded.model).await?;
    Ok(Json(json!({"checkpoint": ckpt, "step": step})))
}
