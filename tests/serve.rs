//! `sympathy serve`: the batched decode step against the uncached forward, completions
//! against `sympathy generate`, streams against whole responses, logprobs against
//! `explain`, a seeded request alone and inside a batch, OpenAI's error shapes, a
//! client that leaves mid-stream, Ctrl-C, and the official `openai` Python client.
//! Everything talks to 127.0.0.1 only.

mod common;
mod serve_support;

use serde_json::{json, Value};
use serve_support::Server;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use sympathy::config::{Arch, ModelConfig, Preset};
use sympathy::model::{Gpt, KvCache, SlotCache};
use sympathy::run::checkpoint;
use sympathy::tokenizer::{TokenId, Tokenizer};
use tch::{nn, Device, Kind, Tensor};

/// One tiny model trained for a few steps, shared by every test.
fn trained_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve");
        let _ = std::fs::remove_dir_all(&root);
        let corpus = common::write_corpus(&root.join("corpus"), 6);
        let run = root.join("run");
        common::train_tiny(&corpus, &run, 40, &[]);
        run
    })
}

/// 14 characters: the tiny model's context is 16, so completions run past it and
/// exercise the context shift too.
const PROMPT: &str = "def f_1_2(n):\n";

// ---------------------------------------------------------------- the batched step

/// A random tiny model of architecture `arch` with N(0, 0.5²) weights, so that logits
/// are large and a wrong position or mask cannot hide below the tolerance.
fn random_model(arch: Arch) -> (nn::VarStore, Gpt) {
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        arch,
        ..Preset::Tiny.model(Tokenizer::default().vocab_size())
    };
    let model = Gpt::new(&vs.root(), &cfg);
    tch::no_grad(|| {
        for mut v in vs.trainable_variables() {
            let r = v.randn_like() * 0.5;
            v.copy_(&r);
        }
    });
    (vs, model)
}

/// The uncached forward's logits (V,) for the last position of `ids`.
fn reference(model: &Gpt, ids: &[i64]) -> Tensor {
    let x = Tensor::from_slice(ids).unsqueeze(0); // (1, T)
    model.forward(&x, false).get(0).get(ids.len() as i64 - 1)
}

/// A one-row prefill of `ids` (as the engine does when a request joins).
fn prefill(model: &Gpt, ids: &[i64]) -> KvCache {
    let mut kv = model.new_cache();
    let _ = model.forward_cached(&Tensor::from_slice(ids).unsqueeze(0), &mut kv);
    kv
}

/// For every architecture (with RoPE, each row's rotation is gathered at its own
/// position).
#[test]
fn every_row_of_a_batched_step_equals_the_uncached_forward() {
    for arch in common::architectures() {
        rows_equal_the_uncached_forward(arch);
    }
}

fn rows_equal_the_uncached_forward(arch: Arch) {
    let (_vs, model) = random_model(arch);
    let _guard = tch::no_grad_guard();
    // Three sequences of different lengths; rows join at different steps, one leaves.
    let mut seqs: Vec<Vec<i64>> = vec![vec![5, 9, 3], vec![7; 9], vec![1, 2, 3, 4, 5, 6]];
    let mut cache = SlotCache::new(2, 4, 16);
    cache.push_row(&prefill(&model, &seqs[0]));
    cache.push_row(&prefill(&model, &seqs[1]));
    let mut active = vec![0usize, 1];
    let mut worst = 0.0f64;
    for step in 0..6 {
        if step == 2 {
            cache.push_row(&prefill(&model, &seqs[2]));
            active.push(2);
        }
        if step == 4 {
            cache.swap_remove(0); // the first request leaves; the last row moves up
            active.swap_remove(0);
        }
        let tokens: Vec<i64> = active
            .iter()
            .map(|&s| (step * 13 + s as i64 * 7) % 128)
            .collect();
        for (&s, &t) in active.iter().zip(&tokens) {
            seqs[s].push(t);
        }
        let logits = model.decode_rows(&tokens, &mut cache); // (B, V)
        for (b, &s) in active.iter().enumerate() {
            assert_eq!(cache.lens()[b], seqs[s].len() as i64, "row {b} length");
            let r = reference(&model, &seqs[s]);
            // Relative to the largest reference logit: the batched step sums in other
            // orders than the full forward (matrix products over other shapes, attention
            // over a masked, longer key range), each within a few ulps of the magnitudes
            // summed; 1e-4 of the largest is ~800 ulps, on any instruction set.
            let scale = r.abs().max().double_value(&[]).max(1.0);
            let diff = (logits.get(b as i64) - &r).abs().max().double_value(&[]) / scale;
            worst = worst.max(diff);
        }
    }
    assert!(
        worst < 1e-4,
        "{:?}: batched step differs from the uncached forward by {worst:e}",
        model.config().arch
    );
}

// ---------------------------------------------------------------- against generate

fn generate_cli(args: &[&str]) -> String {
    let dir = trained_dir().to_str().unwrap();
    let mut all = vec![
        "generate",
        "--checkpoint",
        dir,
        "--device",
        "cpu",
        "--prompt",
        PROMPT,
    ];
    all.extend_from_slice(args);
    let o = common::run(&all);
    assert!(
        o.status.success(),
        "generate failed: {}",
        common::stderr(&o)
    );
    let out = common::stdout(&o);
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

/// The text of a streamed completion: its chunks' `text` joined, checking the framing.
fn streamed_text(r: &serve_support::Response) -> (String, Vec<Value>) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let events = r.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "a stream ends with [DONE]"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    (text, chunks)
}

#[test]
fn completions_equal_generate_and_streams_join_to_the_whole_text() {
    let server = Server::start(trained_dir(), &[]);
    let cases: [(&[&str], Value); 3] = [
        (
            &["--seed", "7", "--temperature", "0.9", "--max-tokens", "40"],
            json!({"seed": 7, "temperature": 0.9, "max_tokens": 40}),
        ),
        (
            &[
                "--seed",
                "3",
                "--temperature",
                "1.2",
                "--top-k",
                "20",
                "--top-p",
                "0.9",
                "--repetition-penalty",
                "1.3",
                "--max-tokens",
                "60",
            ],
            json!({"seed": 3, "temperature": 1.2, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.3, "max_tokens": 60}),
        ),
        (
            &[
                "--seed",
                "5",
                "--temperature",
                "0",
                "--max-tokens",
                "50",
                "--stop",
                "\n",
            ],
            json!({"seed": 5, "temperature": 0.0, "max_tokens": 50, "stop": "\n"}),
        ),
    ];
    for (flags, fields) in cases {
        let expected = generate_cli(flags);
        let mut body = fields.clone();
        body["prompt"] = json!(PROMPT);
        let whole = server.post("/v1/completions", &body);
        assert_eq!(whole.status, 200, "{}", whole.text());
        let v = whole.json();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(
            v["choices"][0]["text"], expected,
            "completion vs generate {flags:?}"
        );
        let reason = v["choices"][0]["finish_reason"].as_str().unwrap();
        assert!(reason == "stop" || reason == "length");
        let usage = &v["usage"];
        assert_eq!(usage["prompt_tokens"], PROMPT.len());
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["prompt_tokens"].as_u64().unwrap()
                    + usage["completion_tokens"].as_u64().unwrap()
            )
        );
        body["stream"] = json!(true);
        let (text, chunks) = streamed_text(&server.post("/v1/completions", &body));
        assert_eq!(text, expected, "streamed chunks vs generate {flags:?}");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            reason
        );
        assert!(
            chunks.iter().all(|c| c["id"] == chunks[0]["id"]),
            "one id per stream"
        );
    }
}

/// Log of the probabilities `explain` reports, (T, V), for `ids`.
fn explain_logprobs(ids: &[TokenId]) -> Vec<Vec<f64>> {
    let loaded = checkpoint::load(trained_dir(), Device::Cpu).unwrap();
    let e = sympathy::see::explain::explain(&loaded.model, &loaded.state.tokenizer, ids, 5, None)
        .unwrap();
    let probs = e.probs.to_kind(Kind::Double);
    (0..ids.len() as i64)
        .map(|t| Vec::<f64>::try_from(probs.get(t).log()).unwrap())
        .collect()
}

/// Two log-probabilities of one token from different kernels: the traced forward's
/// written-out attention against the cached fused one. Their logits agree to ~1e-4 of
/// the largest logit (see the batched-step test); a log-softmax moves by at most twice
/// the largest logit change, and this tiny model's logits stay below ~10, so 2e-3.
const LOGPROB_TOL: f64 = 2e-3;

#[test]
fn logprobs_equal_explain_and_echo_scores_the_prompt() {
    let server = Server::start(trained_dir(), &[]);
    let tok = Tokenizer::default();
    // Prompt and completion within the context of 16, where `explain` can score them.
    let body = json!({"prompt": PROMPT, "max_tokens": 2, "seed": 1, "logprobs": 5, "echo": true, "ignore_eos": true});
    let v = server.post("/v1/completions", &body).json();
    let c = &v["choices"][0];
    let lp = &c["logprobs"];
    let text = c["text"].as_str().unwrap();
    assert!(
        text.starts_with(PROMPT),
        "echo puts the prompt first: {text:?}"
    );
    let tokens: Vec<String> = serde_json::from_value(lp["tokens"].clone()).unwrap();
    assert_eq!(tokens.concat(), text, "tokens join to the text");
    let ids: Vec<TokenId> = tok.encode(text).ids;
    assert_eq!(ids.len(), tokens.len());
    let reference = explain_logprobs(&ids);
    let token_logprobs = lp["token_logprobs"].as_array().unwrap();
    assert!(
        token_logprobs[0].is_null(),
        "the first prompt token has no context to score it"
    );
    for t in 1..ids.len() {
        let got = token_logprobs[t].as_f64().unwrap();
        let want = reference[t - 1][ids[t] as usize];
        assert!(
            (got - want).abs() < LOGPROB_TOL,
            "position {t}: {got} vs explain's {want}"
        );
        // The top alternatives are explain's most likely tokens with their logprobs.
        let top = lp["top_logprobs"][t].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 5);
        for (token, l) in top {
            let id = tok.encode(token).ids[0] as usize;
            assert!((l.as_f64().unwrap() - reference[t - 1][id]).abs() < LOGPROB_TOL);
        }
    }
    let offsets: Vec<usize> = serde_json::from_value(lp["text_offset"].clone()).unwrap();
    assert_eq!(
        offsets,
        (0..ids.len()).collect::<Vec<_>>(),
        "one character per token"
    );

    // Scoring only: max_tokens 0 with echo returns the prompt and its scores.
    let v = server
        .post(
            "/v1/completions",
            &json!({"prompt": PROMPT, "max_tokens": 0, "logprobs": 0, "echo": true}),
        )
        .json();
    assert_eq!(v["choices"][0]["text"], PROMPT);
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let total: f64 = v["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .sum();
    let ids = tok.encode(PROMPT).ids;
    let reference = explain_logprobs(&ids);
    let want: f64 = (1..ids.len())
        .map(|t| reference[t - 1][ids[t] as usize])
        .sum();
    assert!(
        (total - want).abs() < LOGPROB_TOL * ids.len() as f64,
        "{total} vs {want}"
    );
}

#[test]
fn a_seeded_request_gives_the_same_text_alone_and_inside_a_batch() {
    let server = Server::start(trained_dir(), &["--max-batch", "16"]);
    let request = json!({"prompt": PROMPT, "max_tokens": 80, "seed": 42, "temperature": 1.0, "ignore_eos": true});
    let alone = server.post("/v1/completions", &request).json()["choices"][0]["text"].clone();
    assert_eq!(alone.as_str().unwrap().len(), 80);
    // Eight other streams, long enough to outlast it, already decoding when it arrives.
    let others: Vec<_> = (0..8)
        .map(|i| {
            let mut s = server.connect();
            let body = json!({"prompt": format!("# other {i}\n"), "max_tokens": 3000, "seed": i, "stream": true, "ignore_eos": true}).to_string();
            write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
            let mut reader = BufReader::new(s);
            let mut line = String::new();
            while !line.contains("data: ") {
                line.clear();
                reader.read_line(&mut line).unwrap();
            }
            reader
        })
        .collect();
    let batched = server.post("/v1/completions", &request).json()["choices"][0]["text"].clone();
    // The eight were decoding before it arrived (each had sent a token) and still are
    // now that it has finished, so it ran as the ninth row of their batch.
    let batch = server.metric("batch_size");
    assert!(
        batch >= 8.0,
        "the eight others are still decoding, batch {batch}"
    );
    assert_eq!(
        batched, alone,
        "seeded text alone vs inside a batch of 8 others"
    );
    drop(others);
}

#[test]
fn chat_streams_a_role_then_content_then_finish_and_usage() {
    let server = Server::start(trained_dir(), &[]);
    let body = json!({"messages": [{"role": "system", "content": "tiny"}, {"role": "user", "content": "squares"}],
                      "max_tokens": 10, "seed": 9, "stream": true, "stream_options": {"include_usage": true},
                      "logprobs": true, "top_logprobs": 3, "ignore_eos": true});
    let r = server.post("/v1/chat/completions", &body);
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 10);
    let finish = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(finish["delta"], json!({}));
    assert_eq!(finish["finish_reason"], "length");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    // The same request whole gives the same text, and the chat template is documented.
    let mut whole = body.clone();
    whole["stream"] = json!(false);
    whole.as_object_mut().unwrap().remove("stream_options");
    let v = server.post("/v1/chat/completions", &whole).json();
    assert_eq!(v["choices"][0]["message"]["content"], content);
    let lp = &v["choices"][0]["logprobs"]["content"];
    assert_eq!(lp.as_array().unwrap().len(), 10);
    assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(
        lp[0]["bytes"],
        json!(lp[0]["token"].as_str().unwrap().as_bytes())
    );
    let generated = generate_chat_reference();
    assert_eq!(
        content, generated,
        "chat = generate on the rendered template"
    );
}

/// `generate` on the documented rendering of the chat above.
fn generate_chat_reference() -> String {
    let dir = trained_dir().to_str().unwrap();
    let o = common::run(&[
        "generate",
        "--checkpoint",
        dir,
        "--device",
        "cpu",
        "--prompt",
        "# tiny\n# squares\n",
        "--seed",
        "9",
        "--temperature",
        "1",
        "--max-tokens",
        "10",
        "--ignore-eos",
    ]);
    let out = common::stdout(&o);
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

// ---------------------------------------------------------------- errors and limits

#[test]
fn errors_come_in_openai_shape_with_the_right_status() {
    let server = Server::start(trained_dir(), &[]);
    let e = server
        .request("POST", "/v1/completions", &[], b"{not json")
        .openai_error(400);
    assert_eq!(e["code"], "invalid_json");
    let e = server
        .post(
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": "ten"}),
        )
        .openai_error(400);
    assert_eq!(e["param"], "max_tokens");
    let e = server
        .post(
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 100000}),
        )
        .openai_error(400);
    assert_eq!(e["param"], "max_tokens");
    let e = server
        .post("/v1/completions", &json!({"prompt": "x", "n": 99}))
        .openai_error(400);
    assert_eq!(e["param"], "n");
    let e = server
        .post(
            "/v1/completions",
            &json!({"prompt": "x", "temperature": -1}),
        )
        .openai_error(400);
    assert_eq!(e["param"], "temperature");
    let e = server
        .post(
            "/v1/completions",
            &json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
        )
        .openai_error(400);
    assert_eq!(e["param"], "stop");
    let e = server
        .post("/v1/completions", &json!({"max_tokens": 3}))
        .openai_error(400);
    assert_eq!(e["param"], "prompt");
    let e = server
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "wizard", "content": "x"}]}),
        )
        .openai_error(400);
    assert_eq!(e["param"], "messages[0].role");
    let e = server
        .post("/v1/completions", &json!({"model": "gpt-4", "prompt": "x"}))
        .openai_error(404);
    assert_eq!(e["code"], "model_not_found");
    server.get("/v1/models/gpt-4").openai_error(404);
    server.get("/no/such/route").openai_error(404);
    server
        .request("DELETE", "/v1/models", &[], b"")
        .openai_error(405);
    let big = vec![b'x'; 2 << 20];
    server
        .request("POST", "/v1/completions", &[], &big)
        .openai_error(413);
    let e = server
        .post("/detokenize", &json!({"tokens": [1, 99999]}))
        .openai_error(400);
    assert_eq!(e["param"], "tokens");
    // A prompt past the context keeps its last window and says so.
    let long = "x = 1\n".repeat(10);
    let v = server
        .post("/v1/completions", &json!({"prompt": long, "max_tokens": 1}))
        .json();
    assert_eq!(v["usage"]["prompt_tokens"], 16);
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("keeping the last 16"),
        "{v}"
    );
    // The server is still up and answers the small endpoints.
    assert_eq!(server.get("/health").json(), json!({"status": "ok"}));
    let models = server.get("/v1/models").json();
    let id = models["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(server.get(&format!("/v1/models/{id}")).json()["id"], id);
    let t = server.post("/tokenize", &json!({"content": "def"})).json();
    assert_eq!(t["tokens"], json!([100, 101, 102]));
    assert_eq!(
        server
            .post("/detokenize", &json!({"tokens": [100, 101, 102]}))
            .json()["content"],
        "def"
    );
    assert!(server.metric("http_errors_total") >= 14.0);
}

#[test]
fn the_api_key_is_required_when_set() {
    let server = Server::start(trained_dir(), &["--api-key", "sesame"]);
    let body = json!({"prompt": "x", "max_tokens": 1}).to_string();
    server
        .request("POST", "/v1/completions", &[], body.as_bytes())
        .openai_error(401);
    let e = server
        .request(
            "POST",
            "/v1/completions",
            &["Authorization: Bearer wrong"],
            body.as_bytes(),
        )
        .openai_error(401);
    assert_eq!(e["code"], "invalid_api_key");
    let ok = server.request(
        "POST",
        "/v1/completions",
        &["Authorization: Bearer sesame"],
        body.as_bytes(),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(server.get("/health").status, 200, "health needs no key");
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(trained_dir(), &["--max-batch", "1", "--max-queue", "1"]);
    let long =
        json!({"prompt": "x", "max_tokens": 4000, "ignore_eos": true, "stream": true}).to_string();
    // One decoding, one waiting: the third is refused at once.
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let mut s = server.connect();
            write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}", long.len()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            s
        })
        .collect();
    let r = server.post("/v1/completions", &json!({"prompt": "x", "max_tokens": 1}));
    let e = r.openai_error(429);
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(busy);
}

#[test]
fn a_client_that_leaves_mid_stream_stops_its_generation() {
    let server = Server::start(trained_dir(), &[]);
    let body =
        json!({"prompt": "x", "max_tokens": 4000, "ignore_eos": true, "stream": true}).to_string();
    let mut s = server.connect();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = BufReader::new(s);
    let mut seen = 0;
    let mut line = String::new();
    while seen < 5 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        seen += usize::from(line.starts_with("data: "));
    }
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("cancelled_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the generation did not stop after the client left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let tokens = server.metric("completion_tokens_total");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server.metric("completion_tokens_total"),
        tokens,
        "no tokens after the client left"
    );
    assert!(tokens < 4000.0);
}

#[test]
fn ctrl_c_ends_streams_with_a_final_event_and_exits_cleanly() {
    let mut server = Server::start(trained_dir(), &[]);
    let body =
        json!({"prompt": "x", "max_tokens": 4000, "ignore_eos": true, "stream": true}).to_string();
    let mut s = server.connect();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    // SAFETY: sends SIGINT to our own child process, by its id.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
    assert!(
        rest.contains("shutting_down"),
        "the stream's final event says why it ended"
    );
    assert!(rest.contains("data: [DONE]"));
    let status = server.child.wait().unwrap();
    assert!(status.success(), "serve exits 0 after Ctrl-C, got {status}");
}

#[test]
fn bad_flags_are_one_line_errors() {
    for (args, flag) in [
        (&["--max-batch", "0"][..], "--max-batch"),
        (&["--port", "99999"], "--port"),
        (&["--checkpoint", "/nonexistent"], "/nonexistent"),
    ] {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let o = common::run(&all);
        assert_eq!(o.status.code(), Some(1));
        let err = common::stderr(&o);
        assert!(err.lines().count() == 1 && err.contains(flag), "{err}");
    }
}

// ---------------------------------------------------------------- the official client

/// The project venv's Python with the `openai` package, installed from PyPI on first use.
fn python_with_openai() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make libtorch` first",
        python.display()
    );
    let has = |py: &Path| {
        std::process::Command::new(py)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has(&python) {
        let o = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "openai"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "pip install openai failed (PyPI must be reachable): {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(
        has(&python),
        "the openai package does not import after installing it"
    );
    python
}

#[test]
fn the_official_openai_client_drives_it() {
    let python = python_with_openai();
    let server = Server::start(trained_dir(), &["--api-key", "sesame"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_openai_client.py");
    let o = std::process::Command::new(python)
        .arg(script)
        .arg(format!("{}/v1", server.base_url()))
        .arg("sesame")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}");
    assert!(
        o.status.success(),
        "the openai client checks failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("all checks passed"));
}

#[test]
fn bench_serve_reports_consistent_rounds() {
    let dir = trained_dir().to_str().unwrap();
    let o = common::run(&[
        "bench",
        "serve",
        "--checkpoint",
        dir,
        "--device",
        "cpu",
        "--clients",
        "1,2",
        "--requests",
        "1",
        "--repeats",
        "1",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: Value = serde_json::from_str(common::stdout(&o).trim()).unwrap();
    let rounds = v["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for r in rounds {
        // Every round makes the same work: 2 requests (1 client sends 2, 2 clients 1 each).
        assert_eq!(r["requests"], 2, "{r}");
        assert_eq!(r["completion_tokens"], 16, "{r}");
        let (wall, tps) = (
            r["wall_s"].as_f64().unwrap(),
            r["tokens_per_s"].as_f64().unwrap(),
        );
        assert!(
            (tps * wall - 16.0).abs() < 1e-6 * 16.0,
            "tokens_per_s is tokens over wall time: {r}"
        );
        assert!(
            r["decode_tokens_per_s"].as_f64().unwrap() >= tps,
            "decoding spans lie within the round"
        );
        assert!(r["ttft_p50_ms"].as_f64().unwrap() <= r["ttft_p99_ms"].as_f64().unwrap());
        assert!(r["ttft_p99_ms"].as_f64().unwrap() <= r["latency_p99_ms"].as_f64().unwrap());
    }
    let o = common::run(&["bench", "serve", "--checkpoint", dir, "--clients", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        common::stderr(&o).starts_with("error: --clients"),
        "{}",
        common::stderr(&o)
    );
}
