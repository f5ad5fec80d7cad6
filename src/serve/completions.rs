//! The two generating endpoints, `POST /v1/completions` and `POST /v1/chat/completions`:
//! a request becomes one engine job per completion (`n` per prompt, completion `i` with
//! seed `seed + i`, as `generate --num-samples` does), and the engine's events become
//! OpenAI's response, whole or streamed chunk by chunk.

use super::engine::{Event, FinishReason, GenJob, TokenLogprob};
use super::errors::ServeError;
use super::openai::{self, ChatFields, Common, CompletionFields, Decided, Prompt};
use super::{chat, check_ids, read_json, sse, AppState};
use crate::infer::generate::prepare_prompt;
use crate::tokenizer::{TokenId, Tokenizer, EOS};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A prompt as the model will see it, and what had to change on the way.
struct Prepared {
    ids: Vec<TokenId>,
    notes: Vec<String>,
}

/// Which endpoint a response is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

/// What the response builders need besides the events.
struct Reply {
    api: Api,
    id: String,
    created: u64,
    model: Arc<str>,
    tokenizer: Tokenizer,
    /// Report logprobs in the response (requested), not only computed.
    logprobs: bool,
    /// Completions per prompt.
    n: usize,
    /// Echoed prompt texts (completions with `echo`), one per prompt.
    echo: Option<Vec<String>>,
    prompt_tokens: usize,
    /// Each prompt's ids, for the echoed tokens' logprobs.
    prompt_ids: Vec<Vec<TokenId>>,
    warnings: Vec<String>,
    include_usage: bool,
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServeError> {
    let body = read_json(&state, &headers, body).await?;
    let (common, own): (Common, CompletionFields) =
        (openai::fields(&body)?, openai::fields(&body)?);
    state.check_model(common.model.as_deref())?;
    let mut decided = openai::decide(&common, 16, state.timeout)?;
    if let Some(k) = own.logprobs {
        openai::in_range("logprobs", k, 0, openai::LOGPROBS_LIMIT)?;
        decided.params.logprobs = Some(k as usize);
    }
    if own.best_of.is_some_and(|b| b != 1 && b != decided.n as i64) {
        return Err(ServeError::invalid(
            "best_of",
            "best_of is not supported; use n",
        ));
    }
    if own.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ServeError::invalid(
            "suffix",
            "suffix (insertion) is not supported",
        ));
    }
    let echo = own.echo.unwrap_or(false);
    decided.params.score_prompt = echo;
    let prompt = own
        .prompt
        .ok_or_else(|| ServeError::invalid("prompt", "prompt is required"))?;
    let prompts = prepare_prompts(&state, prompt)?;
    let echo_texts = echo.then(|| {
        prompts
            .iter()
            .map(|p| state.tokenizer.decode(&p.ids))
            .collect()
    });
    start(&state, Api::Completions, prompts, decided, echo_texts).await
}

/// `POST /v1/chat/completions`: the messages rendered by [`chat::render`].
pub async fn chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServeError> {
    let body = read_json(&state, &headers, body).await?;
    let (common, own): (Common, ChatFields) = (openai::fields(&body)?, openai::fields(&body)?);
    state.check_model(common.model.as_deref())?;
    let mut decided = openai::decide(&common, 256, state.timeout)?;
    let top = own.top_logprobs.unwrap_or(0);
    openai::in_range("top_logprobs", top, 0, openai::LOGPROBS_LIMIT)?;
    if own.top_logprobs.is_some() && own.logprobs != Some(true) {
        return Err(ServeError::invalid(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        ));
    }
    if own.logprobs == Some(true) {
        decided.params.logprobs = Some(top as usize);
    }
    let messages = own
        .messages
        .ok_or_else(|| ServeError::invalid("messages", "messages is required"))?;
    let text = chat::render(&messages)?;
    let prepared = prepare_prompt(&state.tokenizer, &text, state.block_size);
    let prompts = vec![Prepared {
        ids: prepared.ids,
        notes: prepared.notes,
    }];
    start(&state, Api::Chat, prompts, decided, None).await
}

/// The prompts of a completion request, each fitted to the context as `generate` does.
fn prepare_prompts(state: &AppState, prompt: Prompt) -> Result<Vec<Prepared>, ServeError> {
    let texts = |v: Vec<String>| -> Vec<Prepared> {
        v.iter()
            .map(|t| {
                let p = prepare_prompt(&state.tokenizer, t, state.block_size);
                Prepared {
                    ids: p.ids,
                    notes: p.notes,
                }
            })
            .collect()
    };
    let prompts = match prompt {
        Prompt::Text(t) => texts(vec![t]),
        Prompt::Texts(v) => texts(v),
        Prompt::Ids(ids) => vec![prepare_ids(state, &ids, "prompt")?],
        Prompt::IdLists(lists) => lists
            .iter()
            .enumerate()
            .map(|(i, ids)| prepare_ids(state, ids, &format!("prompt[{i}]")))
            .collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() || prompts.len() > openai::PROMPTS_LIMIT {
        let n = prompts.len();
        return Err(ServeError::invalid(
            "prompt",
            format!(
                "prompt must hold 1 to {} prompts, got {n}",
                openai::PROMPTS_LIMIT
            ),
        ));
    }
    Ok(prompts)
}

/// A prompt given as ids: checked against the vocabulary, then fitted like text.
fn prepare_ids(state: &AppState, ids: &[i64], param: &str) -> Result<Prepared, ServeError> {
    let mut ids = check_ids(ids, &state.tokenizer, param)?;
    let mut notes = Vec::new();
    if ids.is_empty() {
        notes.push("prompt: empty, starting from <eos> (a new file)".to_string());
        ids.push(EOS);
    }
    let max = state.block_size as usize;
    if ids.len() > max {
        notes.push(format!(
            "prompt: {} tokens is longer than the context {max}; keeping the last {max}",
            ids.len()
        ));
        ids.drain(..ids.len() - max);
    }
    Ok(Prepared { ids, notes })
}

/// A fresh response id.
fn response_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{prefix}-{:x}{:04x}",
        now,
        NEXT.fetch_add(1, Relaxed) & 0xffff
    )
}

/// Queues the jobs and answers: a stream, or the whole response once every completion
/// is done.
async fn start(
    state: &AppState,
    api: Api,
    prompts: Vec<Prepared>,
    d: Decided,
    echo: Option<Vec<String>>,
) -> Result<Response, ServeError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let params = Arc::new(d.params);
    let jobs = prompts
        .iter()
        .enumerate()
        .flat_map(|(p, prompt)| {
            let (tx, params) = (tx.clone(), params.clone());
            (0..d.n).map(move |i| GenJob {
                index: p * d.n + i,
                prompt: prompt.ids.clone(),
                seed: d.seed.wrapping_add(i as u64),
                params: params.clone(),
                events: tx.clone(),
            })
        })
        .collect();
    drop(tx); // the channel closes when the last job leaves the engine
    state.engine.submit(jobs)?;
    let reply = Reply {
        api,
        id: response_id(if api == Api::Chat { "chatcmpl" } else { "cmpl" }),
        created: state.started.max(now_s()),
        model: state.model_id.clone(),
        tokenizer: state.tokenizer.clone(),
        logprobs: params.logprobs.is_some(),
        n: d.n,
        echo,
        prompt_tokens: prompts.iter().map(|p| p.ids.len()).sum(),
        prompt_ids: prompts.iter().map(|p| p.ids.clone()).collect(),
        warnings: prompts.into_iter().flat_map(|p| p.notes).collect(),
        include_usage: d.include_usage,
    };
    if d.stream {
        Ok(stream(reply, rx))
    } else {
        whole(reply, rx).await
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One completion as it accumulates.
#[derive(Default)]
struct Choice {
    text: String,
    /// The prompt's tokens with their scores (echo only).
    prompt: Vec<(TokenId, Option<TokenLogprob>)>,
    tokens: Vec<(TokenId, Option<TokenLogprob>)>,
    finish: Option<FinishReason>,
    completion_tokens: usize,
}

/// Waits for every completion, then answers with OpenAI's whole response.
async fn whole(
    reply: Reply,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
) -> Result<Response, ServeError> {
    let mut choices: Vec<Choice> = (0..reply.prompt_ids.len() * reply.n)
        .map(|_| Choice::default())
        .collect();
    while let Some((i, event)) = rx.recv().await {
        let c = &mut choices[i];
        match event {
            Event::Prompt(scores) => {
                c.prompt = reply.prompt_ids[i / reply.n]
                    .iter()
                    .copied()
                    .zip(scores)
                    .collect()
            }
            Event::Token { id, text, logprob } => {
                c.text.push_str(&text);
                c.tokens.push((id, logprob));
            }
            Event::Done {
                text,
                finish,
                completion_tokens,
            } => {
                c.text.push_str(&text);
                c.finish = Some(finish);
                c.completion_tokens = completion_tokens;
            }
            Event::Failed(e) => return Err(e),
        }
    }
    if choices.iter().any(|c| c.finish.is_none()) {
        return Err(ServeError::ShuttingDown); // the engine went away mid-request
    }
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    let body = choices
        .iter()
        .enumerate()
        .map(|(i, c)| reply.whole_choice(i, c))
        .collect::<Vec<_>>();
    let mut response = reply.envelope(false);
    response["choices"] = Value::Array(body);
    response["usage"] = reply.usage(completion_tokens);
    Ok(Json(response).into_response())
}

/// Streams the events as chunks, then the usage chunk (when asked) and `[DONE]`.
fn stream(reply: Reply, mut rx: mpsc::UnboundedReceiver<(usize, Event)>) -> Response {
    let (response, frames) = sse::response();
    tokio::spawn(async move {
        if reply.api == Api::Chat {
            for i in 0..reply.n {
                let role = json!({"role": "assistant", "content": ""});
                if !frames.data(&reply.chunk(i, role, None, None)).await {
                    return;
                }
            }
        }
        let mut offsets = vec![0usize; reply.prompt_ids.len() * reply.n];
        let mut completion_tokens = 0;
        loop {
            let event = tokio::select! {
                _ = frames.closed() => return, // the client left: dropping `rx` stops its rows
                event = rx.recv() => event,
            };
            let Some((i, event)) = event else { break };
            if let Event::Done {
                completion_tokens: n,
                ..
            } = &event
            {
                completion_tokens += n;
            }
            let chunks = match event {
                Event::Failed(e) => {
                    let _ = frames.data(&e.body()).await;
                    let _ = frames.done().await;
                    return;
                }
                event => reply.stream_chunks(i, event, &mut offsets[i]),
            };
            for chunk in chunks {
                if !frames.data(&chunk).await {
                    return;
                }
            }
        }
        if reply.include_usage {
            let mut usage = reply.envelope(true);
            usage["choices"] = json!([]);
            usage["usage"] = reply.usage(completion_tokens);
            let _ = frames.data(&usage).await;
        }
        let _ = frames.done().await;
    });
    response
}

impl Reply {
    /// The fields every response and chunk starts with (and `warnings`, if any).
    fn envelope(&self, chunk: bool) -> Value {
        let object = match (self.api, chunk) {
            (Api::Completions, _) => "text_completion",
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
        };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": &*self.model, "system_fingerprint": null});
        if !self.warnings.is_empty() {
            // What happened to the prompt (cut to the context, `<unk>`), on every chunk.
            v["warnings"] = json!(self.warnings);
        }
        v
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
               "total_tokens": self.prompt_tokens + completion_tokens})
    }

    /// Choice `i` of a whole response.
    fn whole_choice(&self, i: usize, c: &Choice) -> Value {
        let finish = c.finish.map(FinishReason::as_str);
        match self.api {
            Api::Completions => {
                let echo = self.echo.as_ref().map_or("", |e| e[i / self.n].as_str());
                let logprobs = self.logprobs.then(|| {
                    let entries: Vec<_> = c
                        .prompt
                        .iter()
                        .chain(&c.tokens)
                        .map(|(id, l)| (*id, l.as_ref()))
                        .collect();
                    legacy_logprobs(&self.tokenizer, &entries, &mut 0)
                });
                json!({"text": format!("{echo}{}", c.text), "index": i, "logprobs": logprobs, "finish_reason": finish})
            }
            Api::Chat => {
                let logprobs = self.logprobs.then(|| {
                    chat_logprobs(
                        &self.tokenizer,
                        c.tokens.iter().filter_map(|(_, l)| l.as_ref()),
                    )
                });
                json!({"index": i, "message": {"role": "assistant", "content": c.text, "refusal": null},
                       "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }

    /// One streamed chunk for choice `i`: a completion's `text` or a chat's `delta`.
    fn chunk(
        &self,
        i: usize,
        content: Value,
        logprobs: Option<Value>,
        finish: Option<FinishReason>,
    ) -> Value {
        let finish = finish.map(FinishReason::as_str);
        let choice = match self.api {
            Api::Completions => {
                json!({"text": content, "index": i, "logprobs": logprobs, "finish_reason": finish})
            }
            Api::Chat => {
                json!({"index": i, "delta": content, "logprobs": logprobs, "finish_reason": finish})
            }
        };
        let mut chunk = self.envelope(true);
        chunk["choices"] = json!([choice]);
        chunk
    }

    /// The chunks one event of choice `i` becomes; `offset` is its `text_offset` so far.
    fn stream_chunks(&self, i: usize, event: Event, offset: &mut usize) -> Vec<Value> {
        let tok = &self.tokenizer;
        let text = |t: String| match self.api {
            Api::Completions => json!(t),
            Api::Chat => json!({"content": t}),
        };
        match event {
            Event::Prompt(scores) => {
                let ids = &self.prompt_ids[i / self.n];
                let entries: Vec<_> = ids
                    .iter()
                    .copied()
                    .zip(scores.iter().map(Option::as_ref))
                    .collect();
                let logprobs = self
                    .logprobs
                    .then(|| legacy_logprobs(tok, &entries, offset));
                let echo = self
                    .echo
                    .as_ref()
                    .map_or(String::new(), |e| e[i / self.n].clone());
                vec![self.chunk(i, json!(echo), logprobs, None)]
            }
            Event::Token {
                id,
                text: piece,
                logprob,
            } => {
                let logprobs = match (self.logprobs, self.api) {
                    (false, _) => None,
                    (true, Api::Completions) => {
                        Some(legacy_logprobs(tok, &[(id, logprob.as_ref())], offset))
                    }
                    (true, Api::Chat) => Some(chat_logprobs(tok, logprob.iter())),
                };
                vec![self.chunk(i, text(piece), logprobs, None)]
            }
            Event::Done {
                text: rest, finish, ..
            } => match self.api {
                Api::Completions => vec![self.chunk(i, json!(rest), None, Some(finish))],
                Api::Chat if rest.is_empty() => vec![self.chunk(i, json!({}), None, Some(finish))],
                Api::Chat => vec![
                    self.chunk(i, text(rest), None, None),
                    self.chunk(i, json!({}), None, Some(finish)),
                ],
            },
            Event::Failed(e) => vec![e.body()],
        }
    }
}

/// A token as a string in responses: its text, or its name when it has none (`<eos>`).
pub fn token_text(tokenizer: &Tokenizer, id: TokenId) -> String {
    let text = tokenizer.decode(&[id]);
    if text.is_empty() {
        tokenizer.display(id)
    } else {
        text
    }
}

/// The completions API's logprobs: parallel lists of tokens, their logprobs, the top
/// alternatives (`{token: logprob}`) and each token's character offset in the text.
fn legacy_logprobs(
    tok: &Tokenizer,
    entries: &[(TokenId, Option<&TokenLogprob>)],
    offset: &mut usize,
) -> Value {
    let (mut tokens, mut logprobs, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for &(id, score) in entries {
        tokens.push(token_text(tok, id));
        logprobs.push(score.map(|s| s.logprob));
        tops.push(score.map(|s| {
            s.top
                .iter()
                .map(|&(t, l)| (token_text(tok, t), json!(l)))
                .collect::<serde_json::Map<_, _>>()
        }));
        offsets.push(*offset);
        *offset += tok.decode(&[id]).chars().count();
    }
    json!({"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets})
}

/// The chat API's logprobs: `{content: [{token, logprob, bytes, top_logprobs}]}`.
fn chat_logprobs<'a>(tok: &Tokenizer, scores: impl Iterator<Item = &'a TokenLogprob>) -> Value {
    let entry = |id: TokenId, logprob: f64| {
        let token = token_text(tok, id);
        json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
    };
    let content: Vec<Value> = scores
        .map(|s| {
            let mut e = entry(s.id, s.logprob);
            e["top_logprobs"] = s.top.iter().map(|&(t, l)| entry(t, l)).collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}
