//! OpenAI's request fields, read and checked: what `/v1/completions` and
//! `/v1/chat/completions` accept, with OpenAI's names, defaults and limits, turned into
//! the engine's [`GenParams`]. Every rejection is a 400 whose `param` names the field.
//!
//! A body is read twice from one parsed JSON value: once for the fields both endpoints
//! share ([`Common`]) and once for its own ([`CompletionFields`], [`ChatFields`]). Unknown
//! fields are ignored, as OpenAI's clients send some a small model has no use for.

use super::engine::GenParams;
use super::errors::ServeError;
use crate::infer::sampling::SamplingConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::time::{Duration, Instant};

/// `max_tokens` above this is refused.
pub const MAX_TOKENS_LIMIT: i64 = 4096;
/// `n` above this is refused.
pub const N_LIMIT: i64 = 16;
/// Prompts in one `/v1/completions` request at most.
pub const PROMPTS_LIMIT: usize = 64;
/// `logprobs` / `top_logprobs` above this are refused (OpenAI allows 5 and 20).
pub const LOGPROBS_LIMIT: i64 = 20;
/// Stop strings at most, as OpenAI allows.
pub const STOP_LIMIT: usize = 4;

/// A string or a list of strings (`stop`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The four forms of `prompt` OpenAI accepts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<i64>),
    IdLists(Vec<Vec<i64>>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    /// The chat endpoint's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// sympathy's own: keep the k most likely tokens (as `generate --top-k`).
    pub top_k: Option<i64>,
    /// sympathy's own: CTRL's repetition penalty (as `generate --repetition-penalty`).
    pub repetition_penalty: Option<f64>,
    /// sympathy's own (llama.cpp's name): never end at `<eos>`.
    pub ignore_eos: Option<bool>,
}

/// `/v1/completions`' own fields.
#[derive(Debug, Deserialize)]
pub struct CompletionFields {
    pub prompt: Option<Prompt>,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
}

/// One chat message; `content` is a string or a list of `{type: "text", text}` parts.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `/v1/chat/completions`' own fields.
#[derive(Debug, Deserialize)]
pub struct ChatFields {
    pub messages: Option<Vec<Message>>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
}

/// Reads `T` from `body`; a field of the wrong type is a 400 naming it.
pub fn fields<T: DeserializeOwned>(body: &serde_json::Value) -> Result<T, ServeError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ServeError::invalid(param.clone(), format!("{param}: {}", e.into_inner()))
    })
}

/// What both endpoints decided from [`Common`].
#[derive(Debug)]
pub struct Decided {
    pub n: usize,
    pub seed: u64,
    pub stream: bool,
    pub include_usage: bool,
    pub params: GenParams,
}

/// Checks the shared fields and fills in OpenAI's defaults (`max_tokens` falls back to
/// `default_max_tokens`, `temperature` to 1, `n` to 1, a random seed when none).
pub fn decide(
    c: &Common,
    default_max_tokens: i64,
    timeout: Duration,
) -> Result<Decided, ServeError> {
    let max_tokens = c
        .max_completion_tokens
        .or(c.max_tokens)
        .unwrap_or(default_max_tokens);
    let field = if c.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    in_range(field, max_tokens, 0, MAX_TOKENS_LIMIT)?;
    let n = c.n.unwrap_or(1);
    in_range("n", n, 1, N_LIMIT)?;
    let sampling = sampling(c)?;
    let stop = stops(c.stop.as_ref())?;
    let stream = c.stream.unwrap_or(false);
    let include_usage = c
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    if c.stream_options.is_some() && !stream {
        return Err(ServeError::invalid(
            "stream_options",
            "stream_options needs stream: true",
        ));
    }
    Ok(Decided {
        n: n as usize,
        // Negative seeds (OpenAI's are signed) wrap, as `as u64` does.
        seed: c.seed.map_or_else(random_seed, |s| s as u64),
        stream,
        include_usage,
        params: GenParams {
            max_tokens: max_tokens as usize,
            sampling,
            stop,
            ignore_eos: c.ignore_eos.unwrap_or(false),
            logprobs: None,
            score_prompt: false,
            deadline: Instant::now() + timeout,
            timeout_s: timeout.as_secs(),
        },
    })
}

/// The sampling fields, checked: OpenAI's ranges, and the penalties we do not have
/// refused unless neutral.
fn sampling(c: &Common) -> Result<SamplingConfig, ServeError> {
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ServeError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    if let Some(p) = c.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ServeError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {p}"),
            ));
        }
    }
    if let Some(k) = c.top_k {
        in_range("top_k", k, 1, i64::from(u32::MAX))?;
    }
    let repetition_penalty = c.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
        return Err(ServeError::invalid(
            "repetition_penalty",
            format!("repetition_penalty must be positive, got {repetition_penalty}"),
        ));
    }
    for (name, v) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ServeError::invalid(
                name,
                format!("{name} is not supported; use repetition_penalty"),
            ));
        }
    }
    if c.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ServeError::invalid(
            "logit_bias",
            "logit_bias is not supported",
        ));
    }
    Ok(SamplingConfig {
        temperature,
        top_k: c.top_k.map(|k| k as usize),
        top_p: c.top_p,
        repetition_penalty,
    })
}

/// `v` must lie in `lo..=hi`; otherwise a 400 naming `field`.
pub fn in_range(field: &str, v: i64, lo: i64, hi: i64) -> Result<(), ServeError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(ServeError::invalid(
            field,
            format!("{field} must be between {lo} and {hi}, got {v}"),
        ))
    }
}

fn stops(stop: Option<&OneOrMany>) -> Result<Vec<String>, ServeError> {
    let stops = match stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s.clone()],
        Some(OneOrMany::Many(v)) => v.clone(),
    };
    if stops.len() > STOP_LIMIT {
        return Err(ServeError::invalid(
            "stop",
            format!("at most {STOP_LIMIT} stop strings, got {}", stops.len()),
        ));
    }
    Ok(stops)
}

/// A seed for a request that gave none: different every time.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
