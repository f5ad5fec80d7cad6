//! `sympathy serve` under 1,000 malformed or hostile requests interleaved with valid
//! ones: every bad one gets a 4xx JSON error in OpenAI's shape, every valid one
//! completes, the server stays up, and its resident memory afterwards is within 50 MB
//! of before. The counts are printed (`cargo test --test serve_hostile -- --nocapture`).

mod common;
mod serve_support;

use serde_json::json;
use serve_support::{Response, Server};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

fn trained_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve_hostile");
    let _ = std::fs::remove_dir_all(&root);
    let corpus = common::write_corpus(&root.join("corpus"), 6);
    let run = root.join("run");
    common::train_tiny(&corpus, &run, 20, &[]);
    run
}

/// Resident memory of process `pid` in MB (`VmRSS` of /proc).
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb / 1024.0
}

/// What a request was and what it should get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Valid,
    ValidStream,
    ValidSlowBody,
    BadJson,
    WrongType,
    HugeNumber,
    Negative,
    TooBig,
    UnknownModel,
    LeavesMidStream,
    StalledBody,
}

const ROTATION: [Kind; 10] = [
    Kind::Valid,
    Kind::BadJson,
    Kind::WrongType,
    Kind::ValidStream,
    Kind::HugeNumber,
    Kind::Negative,
    Kind::TooBig,
    Kind::ValidSlowBody,
    Kind::UnknownModel,
    Kind::LeavesMidStream,
];

fn kind_of(i: usize) -> Kind {
    if i % 100 == 99 {
        Kind::StalledBody // ten of them: each waits out --timeout-s
    } else {
        ROTATION[i % ROTATION.len()]
    }
}

/// Writes `head` + `body` and reads the whole answer (the connection closes after it).
fn exchange(
    server: &Server,
    path: &str,
    body: &[u8],
    declared: Option<usize>,
    pause: Option<Duration>,
) -> Response {
    let mut s = server.connect();
    let len = declared.unwrap_or(body.len());
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    match pause {
        Some(p) => {
            let (a, b) = body.split_at(body.len() / 2);
            s.write_all(a).unwrap();
            std::thread::sleep(p);
            let _ = s.write_all(b);
        }
        None => {
            let _ = s.write_all(body);
        }
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("an answer");
    Response::parse(&raw)
}

/// Sends request `i`; returns its kind and whether it got what it should.
fn one(server: &Server, i: usize) -> (Kind, Result<(), String>) {
    let kind = kind_of(i);
    let valid = json!({"prompt": format!("x{i}"), "max_tokens": 6, "seed": i});
    let expect_error = |r: Response, status: u16| -> Result<(), String> {
        let ok = r.status == status
            && r.json_opt().is_some_and(|v| {
                v["error"]["message"].is_string() && v["error"]["type"].is_string()
            });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "wanted a {status} JSON error, got {} {}",
                r.status,
                r.text()
            ))
        }
    };
    let result = match kind {
        Kind::Valid => {
            let r = server.post("/v1/completions", &valid);
            match r.json_opt() {
                Some(v) if r.status == 200 && v["choices"][0]["finish_reason"].is_string() => {
                    Ok(())
                }
                _ => Err(format!("valid request: {} {}", r.status, r.text())),
            }
        }
        Kind::ValidStream | Kind::ValidSlowBody => {
            let mut body = valid.clone();
            body["stream"] = json!(kind == Kind::ValidStream);
            let pause = (kind == Kind::ValidSlowBody).then_some(Duration::from_millis(150));
            let r = exchange(
                server,
                "/v1/completions",
                body.to_string().as_bytes(),
                None,
                pause,
            );
            let done = r.status == 200
                && (r.events().last().is_some_and(|e| e == "[DONE]")
                    || r.json_opt()
                        .is_some_and(|v| v["choices"][0]["text"].is_string()));
            if done {
                Ok(())
            } else {
                Err(format!("valid request: {} {}", r.status, r.text()))
            }
        }
        Kind::BadJson => expect_error(
            exchange(
                server,
                "/v1/completions",
                b"{\"prompt\": \"x\", max_tokens: }",
                None,
                None,
            ),
            400,
        ),
        Kind::WrongType => expect_error(
            server.post(
                "/v1/completions",
                &json!({"prompt": {"a": 1}, "max_tokens": [1]}),
            ),
            400,
        ),
        Kind::HugeNumber => expect_error(
            server.post(
                "/v1/completions",
                &json!({"prompt": "x", "max_tokens": 1e30, "n": 99999999999u64}),
            ),
            400,
        ),
        Kind::Negative => expect_error(
            server.post(
                "/v1/completions",
                &json!({"prompt": "x", "max_tokens": -5, "logprobs": -1}),
            ),
            400,
        ),
        Kind::TooBig => expect_error(
            exchange(server, "/v1/completions", b"", Some(10 << 20), None),
            413,
        ),
        Kind::UnknownModel => expect_error(
            server.post(
                "/v1/chat/completions",
                &json!({"model": "gpt-4o", "messages": []}),
            ),
            404,
        ),
        Kind::StalledBody => expect_error(
            exchange(server, "/v1/completions", b"{\"prompt\":", Some(64), None),
            408,
        ),
        Kind::LeavesMidStream => {
            let mut s = server.connect();
            let body =
                json!({"prompt": "x", "max_tokens": 500, "stream": true, "ignore_eos": true})
                    .to_string();
            write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
            let mut reader = BufReader::new(s);
            let mut line = String::new();
            while !line.starts_with("data: ") {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
            }
            if line.starts_with("data: ") {
                Ok(())
            } else {
                Err("no stream before leaving".into())
            }
        }
    };
    (kind, result)
}

trait JsonOpt {
    fn json_opt(&self) -> Option<serde_json::Value>;
}

impl JsonOpt for Response {
    fn json_opt(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[test]
fn a_thousand_hostile_requests_leave_the_server_up_and_its_memory_flat() {
    let server = Server::start(&trained_dir(), &["--timeout-s", "2", "--max-queue", "256"]);
    for i in 0..20 {
        // Warm-up: valid requests, so that one-time allocations settle before measuring.
        assert!(one(&server, i * ROTATION.len()).1.is_ok());
    }
    let before = rss_mb(server.child.id());
    let next = AtomicUsize::new(0);
    let counts: Mutex<BTreeMap<Kind, (usize, usize)>> = Mutex::new(BTreeMap::new());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= 1000 {
                    return;
                }
                let (kind, result) = one(&server, i);
                let mut c = counts.lock().unwrap();
                let entry = c.entry(kind).or_default();
                entry.0 += 1;
                if let Err(e) = result {
                    entry.1 += 1;
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("request {i} ({kind:?}): {e}"));
                }
            });
        }
    });
    let counts = counts.into_inner().unwrap();
    println!("kind              sent  wrong");
    for (kind, (sent, wrong)) in &counts {
        println!("{:<16} {sent:>5}  {wrong:>5}", format!("{kind:?}"));
    }
    assert_eq!(counts.values().map(|c| c.0).sum::<usize>(), 1000);
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} wrong answers, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Still up, and still right.
    assert_eq!(server.get("/health").status, 200);
    let (_, after_ok) = one(&server, 0);
    assert!(after_ok.is_ok());
    std::thread::sleep(Duration::from_millis(500)); // abandoned streams leave the batch
    let after = rss_mb(server.child.id());
    println!(
        "resident memory: {before:.1} MB before, {after:.1} MB after ({:+.1} MB)",
        after - before
    );
    assert!(
        after - before < 50.0,
        "resident memory grew by {:.1} MB",
        after - before
    );
}
