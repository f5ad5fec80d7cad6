//! The `sympathy bench` commands print their stable JSON fields with sane values (no
//! timing thresholds: the machines that run tests are shared) and reject bad flags in
//! one line.

mod common;

use common::{run, stderr, stdout, TINY};
use serde_json::Value;
use sympathy::config::{ModelConfig, Preset};
use sympathy::model::flops::flops_per_token;

fn json(args: &[&str]) -> Value {
    let o = run(args);
    assert!(o.status.success(), "{args:?} failed: {}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "one JSON object: {out}");
    serde_json::from_str(&out).expect("valid JSON")
}

fn positive(v: &Value, field: &str) -> f64 {
    let x = v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing: {v}"));
    assert!(x.is_finite() && x > 0.0, "{field} = {x}");
    x
}

#[test]
fn bench_matmul_json_has_a_peak() {
    let v = json(&["bench", "matmul", "--json", "--device", "cpu"]);
    let peak = positive(&v, "peak_gflops");
    assert!(
        v["peak_gflops_bf16"].is_null(),
        "bf16 is measured on CUDA only"
    );
    let threads = v["threads"].as_i64().unwrap();
    assert!(threads >= 1);
    let runs = v["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    // Each size is measured split over the intra-op threads, and with several threads
    // also as one product per core.
    let per_core = runs.iter().filter(|r| r["split"] == "per-core").count();
    let intra_op = runs.iter().filter(|r| r["split"] == "intra-op").count();
    assert!(intra_op > 0);
    assert_eq!(per_core, if threads > 1 { intra_op } else { 0 }, "{v}");
    let best = runs
        .iter()
        .map(|r| positive(r, "gflops"))
        .fold(0.0, f64::max);
    assert_eq!(best, peak, "the peak is the best size's median");
}

/// The JSON of `sympathy bench train` on the CPU for the tiny preset cut to one layer
/// (to run fast), plus `extra`.
fn bench_train_json(extra: &[&str]) -> Value {
    json(&[&["bench", "train", "--json", "--n-layer", "1"], TINY, extra].concat())
}

/// `--optimizer muon` times Muon's steps, and the report names the optimizer.
#[test]
fn bench_train_takes_muon() {
    let args = ["--batch-size", "4", "--steps", "3", "--warmup", "1"];
    let muon = bench_train_json(&[&args[..], &["--optimizer", "muon"]].concat());
    assert_eq!(muon["optimizer"], "muon");
    positive(&muon, "ms_optimizer");
    assert!(muon["loss"].as_f64().unwrap().is_finite());
}

#[test]
fn bench_train_json_reports_the_stable_fields() {
    let v = bench_train_json(&["--batch-size", "4", "--steps", "3", "--warmup", "1"]);
    for f in [
        "tokens_per_s",
        "peak_gflops",
        "ms_forward",
        "ms_backward",
        "ms_optimizer",
        "ms_step",
        "ms_matmuls",
    ] {
        positive(&v, f);
    }
    assert_eq!(v["optimizer"], "adamw");
    // The products' efficiency is their FLOPs over their time, against the same peak.
    let cfg = ModelConfig {
        n_layer: 1,
        ..Preset::Tiny.model(131)
    };
    let efficiency = positive(&v, "matmul_efficiency");
    let products = sympathy::bench::matmul_floor::matmul_flops(&cfg, 4);
    let gflops = products / (v["ms_matmuls"].as_f64().unwrap() / 1e3) / 1e9;
    let peak = v["peak_gflops"].as_f64().unwrap();
    assert!((efficiency - gflops / peak).abs() <= 1e-9 * efficiency);
    let mfu = positive(&v, "mfu");
    assert!(
        mfu < 1.0,
        "a tiny model cannot use the whole machine: mfu {mfu}"
    );
    // The figures agree with each other and with the config asked for.
    assert_eq!(
        v["flops_per_token"].as_f64().unwrap(),
        flops_per_token(&cfg)
    );
    let tokens = (4 * cfg.block_size) as f64;
    let tps = v["tokens_per_s"].as_f64().unwrap();
    assert!((tps - tokens / (v["ms_step"].as_f64().unwrap() / 1e3)).abs() <= 1e-6 * tps);
    let achieved = tps * flops_per_token(&cfg) / 1e9;
    assert!((mfu - achieved / v["peak_gflops"].as_f64().unwrap()).abs() <= 1e-9);
    for (field, want) in [
        ("n_layer", 1),
        ("n_head", 2),
        ("n_embd", 32),
        ("block_size", 16),
        ("batch_size", 4),
    ] {
        assert_eq!(v[field].as_i64(), Some(want), "{field}");
    }
    assert_eq!(v["steps"].as_i64(), Some(3));
    assert!(v["loss"].as_f64().unwrap().is_finite());
}

/// bf16 is the CUDA format; on the CPU it runs too, which exercises the bf16 weights
/// and the optimizer's tensor-op path that CUDA takes.
#[test]
fn bench_train_runs_in_bf16() {
    let v = bench_train_json(&["--steps", "2", "--warmup", "1", "--dtype", "bf16"]);
    assert_eq!(v["dtype"], "bf16");
    positive(&v, "tokens_per_s");
    positive(&v, "peak_gflops");
    assert!(v["loss"].as_f64().unwrap().is_finite());
}

#[test]
fn bench_train_rejects_bad_flags_in_one_line() {
    for (args, flag) in [
        (vec!["--steps", "0"], "--steps"),
        (vec!["--n-embd", "30", "--n-head", "4"], "--n-embd"),
    ] {
        let mut all = vec!["bench", "train", "--preset", "tiny", "--device", "cpu"];
        all.extend(args);
        let o = run(&all);
        assert_eq!(o.status.code(), Some(1), "{all:?}");
        let err = stderr(&o);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(flag), "names {flag}: {err}");
    }
}
