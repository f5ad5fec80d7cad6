//! `sympathy bench serve`: the server measured from outside, as its users see it.
//!
//! The server runs in this process on a free loopback port, and for each client count
//! N, N clients (a small HTTP/1.1 client on hyper, one connection per request) send
//! streaming completions, each client one after the other: `requests` each at the
//! largest N and proportionally more at smaller N, so that every round makes the same
//! number of tokens and lasts long enough to see the same machine, with `<eos>` banned so every completion is
//! exactly `max_tokens` long. Reported per N: aggregate tokens/s end to end (all tokens
//! over the wall time of the round) and while decoding (see
//! [`ServeRound::decode_tokens_per_s`]), time to first token (request sent -> first token
//! chunk read) and request latency (sent -> `[DONE]`), p50 and p99. Continuous batching
//! is what makes the aggregate grow with N: every decode step advances every client.
//! The client counts take turns `repeats` times and each reports its fastest round: on
//! a shared machine other processes only ever slow a round down.

use crate::run::checkpoint::Loaded;
use crate::serve::{self, engine::EngineConfig, ServeOptions};
use crate::{Error, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Clone, Debug)]
pub struct ServeBench {
    /// Concurrent clients per round.
    pub clients: Vec<usize>,
    /// Requests each client sends at the largest client count (`requests · max / N`
    /// at N clients, so every round makes the same number of tokens).
    pub requests: usize,
    /// Rounds per client count; the fastest counts (other processes only slow a round).
    pub repeats: usize,
    pub max_tokens: usize,
    pub prompt: String,
    /// The inference thread's intra-op threads (`None`: the server's default).
    pub threads: Option<i32>,
}

/// One round: N clients.
#[derive(Clone, Debug, Serialize)]
pub struct ServeRound {
    pub clients: usize,
    pub requests: usize,
    pub completion_tokens: usize,
    pub wall_s: f64,
    /// All tokens over the wall time, prefills and connections included.
    pub tokens_per_s: f64,
    /// Tokens after each request's first, over the time during which some request was
    /// decoding (the union of the spans first token -> `[DONE]`): the decode rate,
    /// without the waits for prefills that end-to-end `tokens_per_s` includes.
    pub decode_tokens_per_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

/// Serves `loaded` on loopback and measures each round of `bench`.
pub fn bench_serve(
    loaded: Loaded,
    bench: &ServeBench,
    mut on_round: impl FnMut(&ServeRound),
) -> Result<Vec<ServeRound>> {
    if bench.clients.is_empty()
        || bench.clients.contains(&0)
        || bench.requests == 0
        || bench.repeats == 0
        || bench.max_tokens == 0
    {
        return Err(Error::config(
            "--clients/--requests/--repeats/--max-tokens",
            "must all be positive",
        ));
    }
    let max_clients = bench.clients.iter().copied().max().unwrap_or(1);
    let opts = ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        api_key: None,
        engine: EngineConfig {
            max_batch: max_clients,
            max_queue: 4 * max_clients,
            threads: bench.threads,
        },
        timeout: Duration::from_secs(600),
        run_dir: None,
        model_id: "bench".into(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::config("bench serve", e.to_string()))?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(serve::serve(
            loaded,
            opts,
            async {
                let _ = stop_rx.await;
            },
            move |addr| {
                let _ = addr_tx.send(addr);
            },
        ));
        let addr = addr_rx
            .await
            .map_err(|_| Error::config("bench serve", "the server did not start"))?;
        let rounds = measure(addr, bench, max_clients, &mut on_round).await;
        let _ = stop_tx.send(());
        let _ = server.await;
        rounds
    })
}

/// The warm-up, then every client count `repeats` times, taking turns.
async fn measure(
    addr: SocketAddr,
    bench: &ServeBench,
    max_clients: usize,
    on_round: &mut impl FnMut(&ServeRound),
) -> Result<Vec<ServeRound>> {
    // A warm-up request: the first allocations and kernel choices are not timed.
    round(addr, bench, 1, 1).await?;
    // The client counts take turns, `repeats` times over, so that a slow spell of
    // a shared machine hits them alike; each keeps its fastest round.
    let mut best: Vec<Option<ServeRound>> = vec![None; bench.clients.len()];
    for _ in 0..bench.repeats {
        for (slot, &n) in best.iter_mut().zip(&bench.clients) {
            let r = round(addr, bench, n, bench.requests * max_clients / n).await?;
            on_round(&r);
            if slot
                .as_ref()
                .is_none_or(|b| r.decode_tokens_per_s > b.decode_tokens_per_s)
            {
                *slot = Some(r);
            }
        }
    }
    Ok(best.into_iter().flatten().collect())
}

/// `n` clients, each sending `requests` requests in turn.
async fn round(
    addr: SocketAddr,
    bench: &ServeBench,
    n: usize,
    requests: usize,
) -> Result<ServeRound> {
    let started = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|c| {
            let body = serde_json::json!({
                "prompt": bench.prompt, "max_tokens": bench.max_tokens, "stream": true,
                "stream_options": {"include_usage": true}, "ignore_eos": true, "seed": c, "temperature": 0.8,
            })
            .to_string();
            tokio::spawn(async move {
                let mut timings = Vec::new();
                for _ in 0..requests {
                    timings.push(stream_once(addr, &body).await?);
                }
                Ok::<_, String>(timings)
            })
        })
        .collect();
    let mut timings = Vec::new();
    for c in clients {
        let t = c
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| Error::config("bench serve", e))?;
        timings.extend(t);
    }
    let wall_s = started.elapsed().as_secs_f64();
    let tokens: usize = timings.iter().map(|t| t.tokens).sum();
    let ms = |f: fn(&Timing) -> f64| -> Vec<f64> { timings.iter().map(f).collect() };
    let (ttft, latency) = (ms(|t| t.ttft_ms), ms(|t| t.latency_ms));
    let decoded: usize = timings.iter().map(|t| t.tokens.saturating_sub(1)).sum();
    Ok(ServeRound {
        clients: n,
        requests: timings.len(),
        completion_tokens: tokens,
        wall_s,
        tokens_per_s: tokens as f64 / wall_s,
        decode_tokens_per_s: decoded as f64 / decoding_s(&timings, started),
        ttft_p50_ms: percentile(&ttft, 0.50),
        ttft_p99_ms: percentile(&ttft, 0.99),
        latency_p50_ms: percentile(&latency, 0.50),
        latency_p99_ms: percentile(&latency, 0.99),
    })
}

/// Seconds during which at least one request was between its first token and its end.
fn decoding_s(timings: &[Timing], start: Instant) -> f64 {
    let at = |t: &Timing, ms: f64| (t.sent - start).as_secs_f64() + ms / 1e3;
    let mut spans: Vec<(f64, f64)> = timings
        .iter()
        .map(|t| (at(t, t.ttft_ms), at(t, t.latency_ms)))
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut total, mut end) = (0.0, f64::NEG_INFINITY);
    for (a, b) in spans {
        total += (b - a.max(end)).max(0.0);
        end = end.max(b);
    }
    total.max(1e-9)
}

/// The `q`-quantile of `xs` (nearest rank).
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied().unwrap_or(f64::NAN)
}

struct Timing {
    sent: Instant,
    ttft_ms: f64,
    latency_ms: f64,
    tokens: usize,
}

/// One streaming completion over a fresh connection, timed.
async fn stream_once(addr: SocketAddr, body: &str) -> std::result::Result<Timing, String> {
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = hyper::Request::post("/v1/completions")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?
        .into_body();
    let (mut pending, mut ttft, mut tokens) = (String::new(), None, 0);
    while let Some(frame) = response.frame().await {
        let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(json) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if json == "[DONE]" {
                let latency_ms = started.elapsed().as_secs_f64() * 1e3;
                return Ok(Timing {
                    sent: started,
                    ttft_ms: ttft.unwrap_or(latency_ms),
                    latency_ms,
                    tokens,
                });
            }
            let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
            if let Some(e) = v.get("error") {
                return Err(format!("the server answered an error: {e}"));
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n as usize;
            } else if ttft.is_none() && v["choices"][0]["finish_reason"].is_null() {
                ttft = Some(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    Err("the stream ended without [DONE]".into())
}
