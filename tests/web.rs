//! The web page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! the set-up when missing) driven by Python's Playwright (installed from PyPI into a
//! git-ignored venv under `.cache/`, never `playwright install`), against `sympathy
//! serve` on 127.0.0.1. `tests/web/drive.py` holds the checks; this file prepares
//! everything, runs it, and fails with its message.
//!
//! `SYMPATHY_WEB_RUN=runs/default` serves that run instead of a freshly trained tiny
//! model, and `SYMPATHY_WEB_SHOTS=docs` saves the three screenshots there (they go to
//! `target/web-shots` otherwise).

mod common;

use common::{free_port, train_tiny, write_corpus};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs Debian's chromium when it is missing, or fails saying how to get it.
fn ensure_chromium() {
    if Path::new(CHROMIUM).exists() {
        return;
    }
    let status = Command::new("sh")
        .args([
            "-c",
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium",
        ])
        .status();
    assert!(
        status.is_ok_and(|s| s.success()) && Path::new(CHROMIUM).exists(),
        "the browser tests need {CHROMIUM}: `apt-get install chromium` failed; install it (as root) and rerun"
    );
}

/// A venv under `.cache/web-venv` with Playwright from PyPI; returns its python.
fn ensure_playwright() -> PathBuf {
    let venv = root().join(".cache/web-venv");
    let python = venv.join("bin/python");
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", "import playwright.sync_api"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && has(&python) {
        return python;
    }
    let base = root().join(".venv/bin/python");
    let base = if base.exists() {
        base
    } else {
        PathBuf::from("python3")
    };
    let made = Command::new(&base).args(["-m", "venv"]).arg(&venv).status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "could not create {} with {}: install python3-venv",
        venv.display(),
        base.display()
    );
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "-q", "playwright"])
        .status();
    assert!(
        pip.is_ok_and(|s| s.success()) && has(&python),
        "`pip install playwright` into {} failed: the browser tests need PyPI's playwright package",
        venv.display()
    );
    python
}

/// `sympathy serve` that is killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server on `run` and waits until it prints its URL.
fn serve(run: &Path) -> (Server, String) {
    let port = free_port().to_string();
    let run = run.to_str().unwrap();
    let mut child = common::sympathy()
        .args(["serve", "--checkpoint", run, "--run", run, "--port", &port])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sympathy serve starts");
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(out) as Box<dyn std::io::Read + Send>,
        Box::new(err),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("serve: {line}");
                let _ = tx.send(line);
            }
        });
    }
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains(&url) => return (server, url),
            _ => {}
        }
    }
    panic!("sympathy serve did not print {url} within 120 s");
}

#[test]
fn the_page_in_chromium() {
    ensure_chromium();
    let python = ensure_playwright();
    let tmp = tempfile::tempdir().unwrap();
    let run = match std::env::var_os("SYMPATHY_WEB_RUN") {
        Some(run) => PathBuf::from(run),
        None => {
            let corpus = write_corpus(&tmp.path().join("corpus"), 4);
            let run = tmp.path().join("run");
            train_tiny(&corpus, &run, 60, &[]);
            run
        }
    };
    let shots = std::env::var_os("SYMPATHY_WEB_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/web-shots"));
    std::fs::create_dir_all(&shots).unwrap();
    let (_server, url) = serve(&run);
    let out = Command::new(&python)
        .arg(root().join("tests/web/drive.py"))
        .args([&url, run.to_str().unwrap(), shots.to_str().unwrap()])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser checks failed:\n{stdout}\n{stderr}"
    );
    eprintln!("measured: {}", stdout.lines().last().unwrap_or(""));
    for view in ["playground", "inside", "dashboard"] {
        let png = shots.join(format!("web-{view}.png"));
        let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
        let info = decoder.read_info().unwrap().info().clone();
        assert_eq!((info.width, info.height), (1280, 800), "{}", png.display());
    }
}
