//! Byte-level BPE: bytes in == bytes out on every file of the default corpus, the same
//! ids as Python's `tokenizers` (the reference implementation) for the saved file, a
//! checkpoint that keeps its tokenizer through save and reload, generation that streams
//! multi-byte characters whole, and one `error:` line for each bad input.

mod common;

use common::{run, stderr, stdout, train_tiny, write_corpus, TINY};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use sympathy::data;
use sympathy::tokenizer::stream::Utf8Stream;
use sympathy::tokenizer::{Bpe, Tokenizer};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("bpe")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A corpus with multi-byte characters in every file (accents, CJK, emoji), so merges
/// form inside characters and tokens end in the middle of one.
fn write_unicode_corpus(dir: &Path, n_files: usize) -> PathBuf {
    write_corpus(dir, n_files);
    for i in 0..n_files {
        let path = dir.join(format!("mod_{i:02}.py"));
        let mut text = fs::read_to_string(&path).unwrap();
        for j in 0..30 {
            text.push_str(&format!(
                "# café naïve 日本語 {j} 🐍 — «ü» ñ\ndef g_{i}_{j}(): return \"Grüße {j} 🐍\"\n"
            ));
        }
        fs::write(&path, text).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn round_trip_on_every_file_of_the_default_corpus() {
    let root = data::default_corpus_dir().expect("python3 reports its stdlib");
    let files = data::discover(&root, "py").unwrap();
    // A small vocabulary trained on a slice of the corpus: the round trip must hold for
    // any merges, and every file (non-ASCII included) is encoded with them.
    let texts: Vec<String> = files
        .iter()
        .step_by(20)
        .filter_map(|f| fs::read_to_string(f).ok())
        .collect();
    let bpe = Tokenizer::Bpe(Bpe::train(&texts, 512).unwrap());
    let (mut checked, mut non_ascii) = (0, 0);
    for f in &files {
        let Ok(text) = fs::read_to_string(f) else {
            continue;
        };
        let ids = bpe.encode(&text).ids;
        assert_eq!(bpe.decode_bytes(&ids), text.as_bytes(), "{}", f.display());
        checked += 1;
        non_ascii += usize::from(!text.is_ascii());
    }
    assert!(checked > 500, "only {checked} files in {}", root.display());
    assert!(non_ascii > 10, "only {non_ascii} files with non-ASCII text");
}

/// The venv's Python with `tokenizers` installed from PyPI (installed here if missing).
fn python_with_tokenizers() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing; run `make libtorch` to create the venv",
        python.display()
    );
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", "import tokenizers"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        let o = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "tokenizers"])
            .output()
            .expect("pip runs");
        assert!(
            o.status.success(),
            "pip install tokenizers failed (PyPI reachable?): {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(
        has(&python),
        "tokenizers is still not importable after pip install"
    );
    python
}

#[test]
fn python_tokenizers_gives_the_same_ids_for_the_saved_file() {
    let dir = scratch("python");
    let corpus = write_unicode_corpus(&dir.join("corpus"), 12);
    let file = dir.join("tok.json");
    let o = run(&[
        "tokenizer",
        "train",
        "--data",
        corpus.to_str().unwrap(),
        "--vocab-size",
        "400",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let samples = [
        "def squares(n): return [x**2 for x in range(n)]\n",
        "        if self._closed:\n            raise ValueError('café')\n",
        "# 日本語 🐍 naïve «ü» — Grüße\n\tx = 1\r\n",
        "<eos> is text here, not a token",
        "",
    ];
    let ours = Tokenizer::Bpe(Bpe::load(&file).unwrap());
    // sympathy encodes `<eos>` typed in text as text; Python is told to do the same.
    let script = "import json, sys\nfrom tokenizers import Tokenizer\nt = Tokenizer.from_file(sys.argv[1])\nt.encode_special_tokens = True\nfor s in json.load(sys.stdin):\n    print(json.dumps(t.encode(s, add_special_tokens=False).ids))\n";
    let mut child = Command::new(python_with_tokenizers())
        .args(["-c", script, file.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&samples).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let theirs: Vec<Vec<u32>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(theirs.len(), samples.len());
    for (s, ids) in samples.iter().zip(&theirs) {
        assert_eq!(&ours.encode(s).ids, ids, "{s:?}");
        assert_eq!(ours.decode(ids), *s);
    }
    // Merges did happen: the samples take fewer tokens than bytes.
    let bytes: usize = samples.iter().map(|s| s.len()).sum();
    assert!(theirs.iter().map(Vec::len).sum::<usize>() * 10 < bytes * 8);
}

/// A tiny BPE model trained on the unicode corpus (shared by the tests below).
fn trained_run(name: &str) -> (PathBuf, PathBuf) {
    let dir = scratch(name);
    let corpus = write_unicode_corpus(&dir.join("corpus"), 12);
    let out = dir.join("run");
    train_tiny(
        &corpus,
        &out,
        30,
        &["--tokenizer", "bpe", "--vocab-size", "320"],
    );
    (corpus, out)
}

#[test]
fn checkpoint_keeps_its_tokenizer_and_every_command_uses_it() {
    let (corpus, out) = trained_run("reload");
    let cached = out.join("tokens/bpe-320.json");
    let ckpt = out.join("ckpt-latest");
    // The checkpoint's tokenizer.json is the tokenizer trained for the run.
    let from_cache = Bpe::load(&cached).unwrap();
    let state = sympathy::run::checkpoint::read_state(&ckpt).unwrap();
    assert_eq!(state.tokenizer, Tokenizer::Bpe(from_cache));
    assert_eq!(state.model.vocab_size, 320);
    // tokenize through the checkpoint and through the file give the same ids.
    let text = "def café(): return '日本'\n";
    let a = run(&[
        "tokenize",
        "--json",
        "--checkpoint",
        out.to_str().unwrap(),
        text,
    ]);
    let b = run(&[
        "tokenize",
        "--json",
        "--tokenizer",
        cached.to_str().unwrap(),
        text,
    ]);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
    let report: serde_json::Value = serde_json::from_str(&stdout(&a)).unwrap();
    assert_eq!(report["tokenizer"], "bpe-320");
    assert!(report["bytes_per_token"].as_f64().unwrap() > 1.0);
    // eval reports bits per byte; resume keeps the tokenizer.
    let e = run(&[
        "eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(e.status.success(), "{}", stderr(&e));
    let e: serde_json::Value = serde_json::from_str(&stdout(&e)).unwrap();
    let (loss, bpb, bpt) = (
        e["val_loss"].as_f64().unwrap(),
        e["bits_per_byte"].as_f64().unwrap(),
        e["bytes_per_token"].as_f64().unwrap(),
    );
    // The same f64 arithmetic as `eval`, in another order: equal to a few ulps anywhere.
    assert!((bpb - loss / std::f64::consts::LN_2 / bpt).abs() < 1e-9 * bpb);
    let mut args = vec![
        "train",
        "--resume",
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "35",
    ];
    args.extend_from_slice(&["--data", corpus.to_str().unwrap(), "--device", "cpu"]);
    let r = run(&args);
    assert!(r.status.success(), "{}", stderr(&r));
    let resumed = sympathy::run::checkpoint::read_state(&ckpt).unwrap();
    assert_eq!(resumed.step, 35);
    assert_eq!(resumed.tokenizer, state.tokenizer);
    // The metrics speak bits per byte.
    let metrics = fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().any(|l| l.contains("\"val_bpb\"")));
    assert!(metrics.lines().all(|l| l.contains("\"bytes_seen\"")));
}

#[test]
fn generation_streams_whole_characters_once() {
    let (_, out) = trained_run("stream");
    for seed in ["1", "2", "3"] {
        let o = run(&[
            "generate",
            "--checkpoint",
            out.to_str().unwrap(),
            "--device",
            "cpu",
            "--prompt",
            "# café 日",
            "--max-tokens",
            "60",
            "--seed",
            seed,
            "--temperature",
            "1.5",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        // Streamed piece by piece, stdout is still valid UTF-8 (no half characters)...
        let text = String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8");
        assert!(!text.is_empty());
    }
    // ...and the streaming decoder gives exactly the lossless decoding of all the bytes
    // (no byte twice, none lost) for every way of cutting them into tokens.
    let bpe = Tokenizer::Bpe(Bpe::load(&out.join("tokens/bpe-320.json")).unwrap());
    let text = "Grüße 🐍 日本語 «ü» café\n";
    let ids = bpe.encode(text).ids;
    assert!(
        ids.iter()
            .any(|&id| std::str::from_utf8(&bpe.token_bytes(id)).is_err()),
        "some token ends inside a character"
    );
    let mut stream = Utf8Stream::new();
    let mut streamed: String = ids
        .iter()
        .map(|&id| stream.push(&bpe.token_bytes(id)))
        .collect();
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, text);
}

#[test]
fn stop_strings_match_across_token_boundaries() {
    let (_, out) = trained_run("stop");
    let generate = |stop: Option<&str>| -> serde_json::Value {
        let mut a = vec![
            "generate",
            "--checkpoint",
            out.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
            "--prompt",
            "def ",
            "--max-tokens",
            "80",
            "--temperature",
            "1.0",
            "--seed",
            "7",
        ];
        if let Some(s) = stop {
            a.extend(["--stop", s]);
        }
        let o = run(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap()
    };
    let full = generate(None);
    let text = full["text"].as_str().unwrap().to_string();
    let ids: Vec<u32> = serde_json::from_value(full["tokens"].clone()).unwrap();
    // A stop string made of the last byte of one generated token and the first of the
    // next, appearing nowhere earlier: only a match across the boundary finds it.
    let bpe = Bpe::load(&out.join("tokens/bpe-320.json")).unwrap();
    let mut at = 0;
    let mut found = None;
    for w in ids.windows(2) {
        let (a, b) = (bpe.token_bytes(w[0]), bpe.token_bytes(w[1]));
        at += a.len();
        if let (Some(&x), Some(&y)) = (a.last(), b.first()) {
            let stop = String::from_utf8(vec![x, y]).unwrap_or_default();
            if !stop.is_empty() && text.find(&stop) == Some(at - 1) {
                found = Some((at - 1, stop));
                break;
            }
        }
    }
    let (cut, stop) =
        found.expect("two generated tokens meet in an ASCII pair seen nowhere before");
    let stopped = generate(Some(&stop));
    assert_eq!(
        stopped["text"].as_str().unwrap(),
        &text[..cut],
        "stop {stop:?}"
    );
    assert_eq!(stopped["stop_reason"], "stop_string");
}

#[test]
fn bad_tokenizer_inputs_are_one_line_errors() {
    let dir = scratch("bad");
    let corpus = write_corpus(&dir.join("corpus"), 12);
    let c = corpus.to_str().unwrap();
    let expect_error = |args: &[&str], needle: &str| {
        let o = run(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.trim_end().lines().count() == 1,
            "{args:?}: {err}"
        );
        assert!(err.contains(needle), "{args:?}: {err} lacks {needle}");
    };
    let out = dir.join("t.json");
    let o = out.to_str().unwrap();
    // A vocabulary smaller than the 256 bytes plus specials; more than u32 ids.
    expect_error(
        &[
            "tokenizer",
            "train",
            "--data",
            c,
            "--vocab-size",
            "100",
            "--out",
            o,
        ],
        "--vocab-size",
    );
    expect_error(
        &[
            "tokenizer",
            "train",
            "--data",
            c,
            "--vocab-size",
            "8589934592",
            "--out",
            o,
        ],
        "--vocab-size",
    );
    let run_dir = dir.join("r");
    let r = run_dir.to_str().unwrap();
    expect_error(
        &[
            "train",
            "--data",
            c,
            "--out",
            r,
            "--tokenizer",
            "bpe",
            "--vocab-size",
            "257",
            "--preset",
            "tiny",
        ],
        "--vocab-size",
    );
    expect_error(
        &[
            "train",
            "--data",
            c,
            "--out",
            r,
            "--vocab-size",
            "300",
            "--preset",
            "tiny",
        ],
        "--vocab-size",
    );
    // A corrupt file, a tokenizer of another kind, a file that does not exist.
    let corrupt = dir.join("corrupt.json");
    fs::write(&corrupt, "{\"model\": {\"type\": \"BPE\", ").unwrap();
    expect_error(
        &["tokenize", "--tokenizer", corrupt.to_str().unwrap(), "x"],
        "corrupt.json",
    );
    let wordlevel = dir.join("wordlevel.json");
    fs::write(&wordlevel, r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"a":1},"unk_token":"[UNK]"}}"#).unwrap();
    expect_error(
        &["tokenize", "--tokenizer", wordlevel.to_str().unwrap(), "x"],
        "another kind",
    );
    expect_error(
        &[
            "train",
            "--data",
            c,
            "--out",
            r,
            "--tokenizer",
            wordlevel.to_str().unwrap(),
            "--preset",
            "tiny",
        ],
        "wordlevel.json",
    );
    expect_error(
        &[
            "train",
            "--data",
            c,
            "--out",
            r,
            "--tokenizer",
            "nope.json",
            "--preset",
            "tiny",
        ],
        "--tokenizer",
    );
    // A checkpoint whose tokenizer.json does not match its embedding.
    let tok300 = dir.join("t300.json");
    assert!(run(&[
        "tokenizer",
        "train",
        "--data",
        c,
        "--vocab-size",
        "300",
        "--out",
        tok300.to_str().unwrap()
    ])
    .status
    .success());
    let tok280 = dir.join("t280.json");
    assert!(run(&[
        "tokenizer",
        "train",
        "--data",
        c,
        "--vocab-size",
        "280",
        "--out",
        tok280.to_str().unwrap()
    ])
    .status
    .success());
    let mut args = vec![
        "train",
        "--data",
        c,
        "--out",
        r,
        "--max-steps",
        "2",
        "--tokenizer",
        tok300.to_str().unwrap(),
    ];
    args.extend_from_slice(TINY);
    let t = run(&args);
    assert!(t.status.success(), "{}", stderr(&t));
    let ckpt = run_dir.join("ckpt-latest");
    fs::copy(&tok280, ckpt.join("tokenizer.json")).unwrap();
    expect_error(
        &[
            "generate",
            "--checkpoint",
            r,
            "--device",
            "cpu",
            "--prompt",
            "x",
        ],
        "tokenizer.json",
    );
    fs::write(ckpt.join("tokenizer.json"), "not json").unwrap();
    expect_error(
        &[
            "generate",
            "--checkpoint",
            r,
            "--device",
            "cpu",
            "--prompt",
            "x",
        ],
        "tokenizer.json",
    );
    fs::remove_file(ckpt.join("tokenizer.json")).unwrap();
    expect_error(&["tokenize", "--checkpoint", r, "x"], "tokenizer.json");
}
