//! What the server tests share: a running `sympathy serve` on a free loopback port
//! (killed when dropped) and a small blocking HTTP/1.1 client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

/// A `sympathy serve` child process; dropping it kills it.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    /// Starts `sympathy serve --checkpoint CKPT --port 0 --device cpu EXTRA…` and waits
    /// for the URL it prints.
    pub fn start(checkpoint: &std::path::Path, extra: &[&str]) -> Server {
        let mut child = super::common::sympathy()
            .args([
                "serve",
                "--checkpoint",
                checkpoint.to_str().unwrap(),
                "--port",
                "0",
                "--device",
                "cpu",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sympathy serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("serve prints its URL");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no URL in the first line of serve's output: {line:?}"))
            .to_string();
        Server { child, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends `body` (JSON or anything) to `path` with `method`; extra header lines
    /// `headers` ("Name: value"). Returns the answer.
    pub fn request(&self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Response {
        let mut s = self.connect();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !headers
            .iter()
            .any(|h| h.to_lowercase().starts_with("content-type"))
        {
            head.push_str("Content-Type: application/json\r\n");
        }
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(body);
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("the server answers");
        Response::parse(&raw)
    }

    pub fn post(&self, path: &str, json: &serde_json::Value) -> Response {
        self.request("POST", path, &[], json.to_string().as_bytes())
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).expect("connects to the server");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s
    }

    /// A metric's value from `GET /metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("sympathy_{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response, the body de-chunked.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn parse(raw: &[u8]) -> Response {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete HTTP head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Response {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `data:` payloads of an event stream, `[DONE]` included.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_string))
            .collect()
    }

    /// Asserts OpenAI's error shape and this status; returns the `error` object.
    pub fn openai_error(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "status of {}", self.text());
        let v = self.json();
        let e = v["error"].clone();
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error.message in {v}"
        );
        assert!(e["type"].is_string(), "error.type in {v}");
        assert!(
            e.get("param").is_some() && e.get("code").is_some(),
            "error.param and error.code in {v}"
        );
        e
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&body[start..(start + size).min(body.len())]);
        body = &body[(start + size + 2).min(body.len())..];
    }
}
