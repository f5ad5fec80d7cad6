//! Data-parallel training over c10d (Gloo, 127.0.0.1 only): ranks against one process
//! with the same global batch, resuming with another number of ranks, a rank killed
//! mid-run, launches that cannot work, and PyTorch's own launcher, torchrun.
//!
//! Tolerances: the ranks compute the same mean gradient as one process, summed in
//! another order (each rank's rows, then Gloo's sum of two halves, times 1/2), with one
//! intra-op thread each instead of two. fp32 rounding differs per element by a few ulps
//! of the gradient, and AdamW divides by the second moment's root, which keeps each
//! update's error relative. Over 20 steps of the tiny model we see relative loss
//! differences of 2.2e-7 and weight differences of at most 1.6e-6 (the largest weight
//! is ~1.0), on AVX2; AVX-512 or scalar kernels change the summation order of the same
//! few-ulp roundings, not their size, so the bounds (1e-5 relative for the loss, 1e-4
//! for the weights) hold with a margin of ~50.

mod common;

use common::{free_port, stderr, sympathy, write_corpus, TINY};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tch::Tensor;

const STEPS: u64 = 20;

/// A corpus and the run of one process over it, trained once for the whole file.
struct Reference {
    dir: PathBuf,
    corpus: PathBuf,
    run: PathBuf,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let corpus = write_corpus(&dir.join("corpus"), 12);
        let run = dir.join("one-process");
        let o = train(&corpus, &run, &[]);
        assert!(o.status.success(), "one process: {}", stderr(&o));
        Reference { dir, corpus, run }
    })
}

/// `sympathy train` of the tiny preset, plus `extra` flags (with STEPS steps unless
/// they say otherwise).
fn train_command(corpus: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = sympathy();
    cmd.args(["train", "--data", corpus.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .args(TINY)
        .args(extra);
    if !extra.contains(&"--max-steps") {
        cmd.args(["--max-steps", &STEPS.to_string()]);
    }
    cmd
}

fn train(corpus: &Path, out: &Path, extra: &[&str]) -> Output {
    train_command(corpus, out, extra).output().unwrap()
}

/// The loss of every step in `run/metrics.jsonl`, by step.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn assert_same_losses(got: &[(u64, f64)], want: &[(u64, f64)]) {
    assert_eq!(got.len(), want.len(), "steps logged");
    for ((s, a), (t, b)) in got.iter().zip(want) {
        assert_eq!(s, t);
        let rel = (a - b).abs() / b.abs();
        assert!(
            rel <= 1e-5,
            "step {s}: loss {a} against {b} (relative {rel:.2e})"
        );
    }
}

/// The largest difference between two checkpoints' weights, over all tensors.
fn max_weight_difference(a: &Path, b: &Path) -> f64 {
    let read =
        |run: &Path| Tensor::read_safetensors(run.join("ckpt-latest/model.safetensors")).unwrap();
    let (wa, wb) = (read(a), read(b));
    assert_eq!(wa.len(), wb.len());
    wa.iter()
        .map(|(name, t)| {
            let (_, u) = wb.iter().find(|(n, _)| n == name).expect("same tensors");
            (t - u).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_ranks_train_as_one_process_with_the_same_global_batch() {
    let r = reference();
    let run = r.dir.join("two-ranks");
    let o = train(&r.corpus, &run, &["--nproc", "2"]);
    assert!(o.status.success(), "--nproc 2: {}", stderr(&o));
    assert!(
        stderr(&o).contains("split among 2 ranks (gloo)"),
        "{}",
        stderr(&o)
    );
    assert_same_losses(&losses(&run), &losses(&r.run));
    let diff = max_weight_difference(&run, &r.run);
    assert!(diff <= 1e-4, "weights differ by {diff:.2e}");
    // Rank 0 alone wrote the run folder: one line per step, not two.
    assert_eq!(losses(&run).len() as u64, STEPS);
}

/// With Muon, every rank orthogonalises the same averaged gradient: the ranks stay
/// identical (each run checks that at its end, bit for bit, against rank 0) and train
/// as one process does. The bounds are the AdamW run's: Newton–Schulz starts by
/// dividing by the update's norm, so a few ulps of difference in the gradient stay a
/// relative difference of the same order in the step. In f32, that is: bf16 products
/// (`auto` on a CPU with AVX512-BF16) would turn a few ulps into a flipped bf16
/// rounding, 2⁻⁹ of an entry, and this test is about how the ranks add gradients.
#[test]
fn two_ranks_train_with_muon_as_one_process() {
    let r = reference();
    let (one, two) = (r.dir.join("muon-one-process"), r.dir.join("muon-two-ranks"));
    let muon = ["--optimizer", "muon", "--muon-precision", "fp32"];
    let o = train(&r.corpus, &one, &muon);
    assert!(o.status.success(), "one process: {}", stderr(&o));
    let o = train(&r.corpus, &two, &[&["--nproc", "2"][..], &muon].concat());
    assert!(o.status.success(), "--nproc 2: {}", stderr(&o));
    assert_same_losses(&losses(&two), &losses(&one));
    let diff = max_weight_difference(&two, &one);
    println!("Muon, 2 ranks against 1 process: weights differ by {diff:.2e}");
    assert!(diff <= 1e-4, "weights differ by {diff:.2e}");
}

#[test]
fn a_two_rank_run_resumes_in_one_process_as_the_same_run() {
    let r = reference();
    let run = r.dir.join("two-then-one");
    let o = train(&r.corpus, &run, &["--nproc", "2", "--stop-at-step", "10"]);
    assert!(o.status.success(), "--nproc 2 to step 10: {}", stderr(&o));
    let o = train(&r.corpus, &run, &["--resume"]);
    assert!(o.status.success(), "resume in one process: {}", stderr(&o));
    assert_same_losses(&losses(&run), &losses(&r.run));
    let diff = max_weight_difference(&run, &r.run);
    assert!(diff <= 1e-4, "weights differ by {diff:.2e}");
}

/// Starts rank `rank` of 2 as torchrun would (rank 0 serves the store).
fn start_rank(corpus: &Path, out: &Path, rank: usize, port: u16, extra: &[&str]) -> Child {
    train_command(corpus, out, extra)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("OMP_NUM_THREADS", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_rank_stops_the_others_naming_it_and_the_checkpoint_resumes() {
    let r = reference();
    let run = r.dir.join("killed");
    let port = free_port();
    let flags = [
        "--max-steps",
        "100000",
        "--checkpoint-every",
        "5",
        "--eval-every",
        "100000",
    ];
    let mut rank0 = start_rank(&r.corpus, &run, 0, port, &flags);
    let mut rank1 = start_rank(&r.corpus, &run, 1, port, &flags);
    let state = run.join("ckpt-latest/state.json");
    let start = Instant::now();
    while !state.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint after 2 minutes"
        );
        if rank0.try_wait().unwrap().is_some() {
            panic!(
                "rank 0 ended early: {}",
                stderr(&rank0.wait_with_output().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    rank1.kill().unwrap(); // SIGKILL
    rank1.wait().unwrap();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = rank0.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "rank 0 still running 30 s after rank 1 was killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = stderr(&rank0.wait_with_output().unwrap());
    assert_eq!(status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    let lost = format!("rank 1 (process {}) is gone", rank1.id());
    assert!(
        last.starts_with("error: distributed training: ") && last.contains(&lost),
        "{err}"
    );
    // The checkpoint is whole: one process resumes it and trains two more steps.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let step = saved["step"].as_u64().unwrap();
    assert!(
        step >= 5 && step.is_multiple_of(5),
        "checkpoint at step {step}"
    );
    let to = (step + 2).to_string();
    let o = sympathy()
        .args([
            "train",
            "--out",
            run.to_str().unwrap(),
            "--resume",
            "--max-steps",
            &to,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "resume: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("trained to step {to}")),
        "{}",
        stderr(&o)
    );
}

/// Runs `cmd`, which must fail within `limit` with exactly one line, `error: ` + a text
/// that contains `want`.
fn fails_at_once(mut cmd: Command, limit: Duration, want: &str) {
    let start = Instant::now();
    let o = cmd.output().unwrap();
    let took = start.elapsed();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(took < limit, "took {took:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(want),
        "{err}"
    );
}

#[test]
fn launches_that_cannot_work_fail_at_once_with_one_line() {
    let r = reference();
    let rank_env = |cmd: &mut Command, rank: &str, port: u16| {
        cmd.env("RANK", rank)
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
    };
    // A batch that does not split into equal slices: refused before any rank starts.
    let cmd = train_command(&r.corpus, &r.dir.join("indivisible"), &["--nproc", "3"]);
    fails_at_once(
        cmd,
        Duration::from_secs(10),
        "--batch-size: 8 does not divide among 3 ranks",
    );
    // Rank 0 cannot serve the store on a port another program listens on.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cmd = train_command(&r.corpus, &r.dir.join("busy"), &[]);
    rank_env(&mut cmd, "0", port);
    fails_at_once(
        cmd,
        Duration::from_secs(10),
        &format!("127.0.0.1:{port} is already in use"),
    );
    // Rank 1 finds no store: it gives up after --dist-timeout (c10d retries once).
    let port = free_port();
    let mut cmd = train_command(
        &r.corpus,
        &r.dir.join("unreachable"),
        &["--dist-timeout", "3"],
    );
    rank_env(&mut cmd, "1", port);
    fails_at_once(
        cmd,
        Duration::from_secs(30),
        &format!("no store answered at 127.0.0.1:{port}"),
    );
}

/// The project venv's torchrun (PyTorch's launcher), next to the python that the
/// build found libtorch with.
fn torchrun() -> PathBuf {
    let venv_bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    assert!(
        venv_bin.is_file(),
        "{} is missing: run `make libtorch-full` (the full torch install has torchrun)",
        venv_bin.display()
    );
    venv_bin
}

#[test]
fn torchrun_starts_the_ranks_of_the_same_run() {
    let r = reference();
    let run = r.dir.join("torchrun");
    let mut cmd = Command::new(torchrun());
    cmd.args([
        "--nproc-per-node",
        "2",
        "--no-python",
        "--master-addr",
        "127.0.0.1",
    ])
    .args(["--master-port", &free_port().to_string()])
    .arg(env!("CARGO_BIN_EXE_sympathy"))
    .args([
        "train",
        "--data",
        r.corpus.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ])
    .args(["--max-steps", &STEPS.to_string()])
    .args(TINY);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "torchrun: {}", stderr(&o));
    assert!(
        stderr(&o).contains("split among 2 ranks (gloo)"),
        "{}",
        stderr(&o)
    );
    assert_same_losses(&losses(&run), &losses(&r.run));
}

/// Ctrl-C reaches every process of the terminal's group: the ranks vote, stop after the
/// same step, rank 0 saves, and the launch exits with 130 like a single process.
#[test]
fn ctrl_c_stops_every_rank_after_the_same_step_with_a_checkpoint() {
    use std::os::unix::process::CommandExt;
    let r = reference();
    let run = r.dir.join("interrupted");
    let mut cmd = train_command(
        &r.corpus,
        &run,
        &[
            "--nproc",
            "2",
            "--max-steps",
            "100000",
            "--eval-every",
            "100000",
        ],
    );
    // A process group of its own, as a terminal gives a foreground job.
    let launch = cmd.process_group(0).stderr(Stdio::piped()).spawn().unwrap();
    let metrics = run.join("metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no steps after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) on the process group the child leads; no memory involved.
    let rc = unsafe { libc::kill(-(launch.id() as i32), libc::SIGINT) };
    assert_eq!(rc, 0);
    let o = launch.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let state = std::fs::read_to_string(run.join("ckpt-latest/state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let logged = std::fs::read_to_string(&metrics).unwrap().lines().count() as u64;
    assert_eq!(
        state["step"].as_u64(),
        Some(logged),
        "checkpoint at the last logged step"
    );
    assert!(stderr(&o).contains("stopped by SIGINT"), "{}", stderr(&o));
}

/// A time budget is read from one clock: every rank takes rank 0's training time as of
/// the last step, so they compute the same learning rate even though their own clocks
/// differ. Reference: the end-of-session check that each rank's weights are rank 0's
/// bit for bit (a rank on its own clock would fail it), and the budget's decay ending
/// below the peak.
#[test]
fn a_time_budget_keeps_the_ranks_identical() {
    let r = reference();
    let run = r.dir.join("budget");
    let o = train(
        &r.corpus,
        &run,
        &[
            "--nproc",
            "2",
            "--max-steps",
            "100000",
            "--max-minutes",
            "0.15",
            "--lr",
            "1e-2",
            "--eval-every",
            "100000",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records = sympathy::run::metrics::read(&run.join("metrics.jsonl")).unwrap();
    let last = records.last().unwrap();
    assert!(
        last.step < 100_000,
        "stopped by the budget at step {}",
        last.step
    );
    assert!(
        last.lr < 1e-2,
        "decayed before the deadline: lr {}",
        last.lr
    );
}
