//! Training that survives anything (issue 5): a resumed run is the same run, a crash at
//! any instant leaves a loadable checkpoint, signals stop cleanly, non-finite steps never
//! reach the weights on disk, and every bad input ends in one `error:` line, exit code 1.
//!
//! Everything runs the real binary on the `tiny` preset (2 layers, C=32, T=16) and a
//! small generated corpus. One reference run (40 steps, dropout on, so the libtorch
//! generator matters too) is trained once and shared.

mod common;

use common::{run, stderr, sympathy, write_corpus, TINY};
use rand::{Rng, SeedableRng};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use sympathy::config::Optimizer;
use sympathy::run::checkpoint::{self, OptimizerState};
use sympathy::run::metrics::{self, Record};
use sympathy::train::optim::{AdamW, Optimizers};
use sympathy::train::params::FlatParams;
use sympathy::train::MAX_NONFINITE_IN_A_ROW;
use tch::Device;

/// The reference run's flags. Checkpointing has no effect on the numbers, so runs that
/// checkpoint more often must still match it exactly.
const REF_STEPS: u64 = 40;
const REF_FLAGS: &[&str] = &[
    "--preset",
    "tiny",
    "--device",
    "cpu",
    "--dropout",
    "0.1",
    "--max-steps",
    "40",
];

struct Fixture {
    root: PathBuf,
    corpus: PathBuf,
    /// A run trained straight through to step 40.
    straight: PathBuf,
}

/// A fresh scratch folder under cargo's per-target temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("robustness")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = scratch("shared");
        let corpus = write_corpus(&root.join("corpus"), 6);
        let straight = root.join("straight");
        let o = train(&corpus, &straight, &[]);
        assert!(o.status.success(), "reference run failed: {}", stderr(&o));
        Fixture {
            root,
            corpus,
            straight,
        }
    })
}

/// `sympathy train` with the reference flags plus `extra`.
fn train_cmd(corpus: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = sympathy();
    cmd.arg("train")
        .arg("--data")
        .arg(corpus)
        .arg("--out")
        .arg(out)
        .args(REF_FLAGS)
        .args(extra);
    cmd
}

fn train(corpus: &Path, out: &Path, extra: &[&str]) -> Output {
    train_cmd(corpus, out, extra).output().unwrap()
}

/// `sympathy train --resume` of the run in `out` on the CPU, plus `extra`.
fn resume_cmd(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = sympathy();
    cmd.args(["train", "--resume", "--device", "cpu", "--out"])
        .arg(out)
        .args(extra);
    cmd
}

fn resume(out: &Path, extra: &[&str]) -> Output {
    resume_cmd(out, extra).output().unwrap()
}

/// `sympathy train` of the tiny preset on the CPU, plus `extra` (no other flags, so the
/// caller's `--max-steps` sets the schedule).
fn tiny_cmd(corpus: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = sympathy();
    cmd.args(["train", "--data", s(corpus), "--out", s(out)])
        .args(TINY)
        .args(extra);
    cmd
}

/// A reference-flag run stopped at `step`, in a fresh scratch folder named `name`.
/// Returns the run folder and the (successful) output.
fn run_stopped_at(name: &str, step: &str) -> (PathBuf, Output) {
    run_stopped_with(name, step, &[])
}

/// [`run_stopped_at`] with `extra` flags.
fn run_stopped_with(name: &str, step: &str, extra: &[&str]) -> (PathBuf, Output) {
    let run = scratch(name).join("run");
    let extra = [&["--stop-at-step", step][..], extra].concat();
    let o = train(&fixture().corpus, &run, &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    (run, o)
}

/// The bytes of the latest checkpoint's weights in `run`, to compare across runs.
fn latest_weights(run: &Path) -> Vec<u8> {
    fs::read(run.join("ckpt-latest/model.safetensors")).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What must match exactly between two runs: everything in a metrics line but timing.
fn numbers(r: &Record) -> (u64, Option<u64>, Option<u64>, u64, Option<u64>, u64) {
    (
        r.step,
        r.loss.map(f64::to_bits),
        r.val_loss.map(f64::to_bits),
        r.lr.to_bits(),
        r.grad_norm.map(f64::to_bits),
        r.tokens_seen,
    )
}

fn assert_same_run(a: &Path, b: &Path) {
    let (ma, mb) = (
        metrics::read(&a.join("metrics.jsonl")).unwrap(),
        metrics::read(&b.join("metrics.jsonl")).unwrap(),
    );
    assert_eq!(ma.len(), REF_STEPS as usize);
    assert_eq!(
        ma.iter().map(numbers).collect::<Vec<_>>(),
        mb.iter().map(numbers).collect::<Vec<_>>(),
        "every logged loss, val loss, lr and grad norm must be bit-identical"
    );
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let (fa, fb) = (
            a.join("ckpt-latest").join(file),
            b.join("ckpt-latest").join(file),
        );
        assert!(
            fs::read(&fa).unwrap() == fs::read(&fb).unwrap(),
            "{file} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// Loads the checkpoint `run` resolves to, weights and optimizer, and checks that every
/// tensor is finite. Returns its step.
fn load_valid(run: &Path) -> u64 {
    let loaded = checkpoint::load(run, Device::Cpu)
        .unwrap_or_else(|e| panic!("no loadable checkpoint in {}: {e}", run.display()));
    let params = FlatParams::grouped(&loaded.vs, loaded.state.train.optimizer);
    let mut opt = Optimizers::new(&params, &loaded.state.train);
    checkpoint::load_optimizer(&loaded.dir, &mut opt).unwrap();
    assert!(checkpoint::all_finite(loaded.vs.variables().values()));
    let opt_state = opt.state_tensors();
    assert!(checkpoint::all_finite(opt_state.iter().map(|(_, t)| t)));
    assert_eq!(
        opt.steps_done() as u64 + loaded.state.nonfinite_skipped,
        loaded.state.step
    );
    loaded.state.step
}

fn metric_lines(run: &Path) -> usize {
    fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Polls until `ready` holds (or panics after a minute, with the child killed).
fn wait_until(child: &mut Child, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {what}");
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

fn wait_with_stderr(child: Child) -> (ExitStatus, String) {
    let o = child.wait_with_output().unwrap();
    (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
}

// ---------------------------------------------------------------------------------
// Exact resume, best checkpoint
// ---------------------------------------------------------------------------------

#[test]
fn stop_and_resume_is_bit_identical_to_a_straight_run() {
    let f = fixture();
    // --stop-at-step pauses without touching the LR schedule (--max-steps 40 defines it).
    let (run, o) = run_stopped_at("resume", "20");
    assert!(
        stderr(&o).contains("stopped at step 20 as --stop-at-step asked; continue with: sympathy train --resume --out"),
        "{}",
        stderr(&o)
    );
    assert_eq!(load_valid(&run), 20);
    assert_eq!(metric_lines(&run), 20);

    let o = resume(&run, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("note:"),
        "a plain resume changes nothing"
    );
    assert_eq!(load_valid(&run), REF_STEPS);
    // Appended, not rewritten: the first session's 20 lines are followed by 20 more.
    assert_eq!(metric_lines(&run), REF_STEPS as usize);
    assert_same_run(&f.straight, &run);

    // Already at --max-steps: nothing to do, nothing changed.
    let before = latest_weights(&run);
    let o = resume(&run, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to do"));
    assert_eq!(latest_weights(&run), before);
}

/// The speedrun's architecture trains (its loss falls) and resumes exactly too: RoPE's
/// tables are rebuilt, not saved, and the untied head and the new gains are saved and
/// restored like every other tensor.
#[test]
fn a_modern_run_trains_and_stop_and_resume_is_bit_identical() {
    let f = fixture();
    let straight = scratch("modern-straight").join("run");
    let o = train(&f.corpus, &straight, &["--arch", "modern"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o)
        .contains("--pos rope --norm rmsnorm --qk-norm --mlp relu2 --untied-head --zero-init"));
    let losses: Vec<f64> = metrics::read(&straight.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter_map(|r| r.loss)
        .collect();
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        (first - 131f64.ln()).abs() < 1e-4,
        "a zero head starts at ln V: {first}"
    );
    assert!(last < first - 0.5, "the loss falls: {first} -> {last}");

    let run = scratch("modern-resume").join("run");
    let o = train(
        &f.corpus,
        &run,
        &["--arch", "modern", "--stop-at-step", "20"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = resume(&run, &["--arch", "modern"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_run(&straight, &run);
    assert_user_error(
        &resume(&run, &["--pos", "learned"]),
        &[
            "--pos: learned contradicts the checkpoint's rope",
            "drop the flag",
        ],
    );
}

/// The same with `--optimizer muon`: Muon's momenta are saved and restored, so the
/// resumed run repeats the straight one bit for bit. And it trains: the loss falls.
#[test]
fn stop_and_resume_with_muon_is_bit_identical_to_a_straight_run() {
    let f = fixture();
    let muon = ["--optimizer", "muon"];
    let straight = scratch("muon-straight").join("run");
    let o = train(&f.corpus, &straight, &muon);
    assert!(o.status.success(), "{}", stderr(&o));
    let (run, _) = run_stopped_with("resume-muon", "20", &muon);
    assert_eq!(load_valid(&run), 20);
    let o = resume(&run, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(load_valid(&run), REF_STEPS);
    assert_same_run(&straight, &run);
    let state = checkpoint::read_state(&run.join("ckpt-latest")).unwrap();
    assert_eq!(state.train.optimizer, Optimizer::Muon);
    // A char model starts near ln(vocab) ≈ 4.6 nats; 40 steps must bring it well down.
    let losses: Vec<f64> = metrics::read(&straight.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter_map(|r| r.loss)
        .collect();
    let (first, last) = (
        losses[0],
        losses[losses.len() - 5..].iter().sum::<f64>() / 5.0,
    );
    assert!(last < first - 0.5, "loss {first:.3} → {last:.3}");
    // The run is Muon's: resuming it as AdamW would find no moments for its matrices.
    assert_user_error(
        &resume(&run, &["--optimizer", "adamw", "--max-steps", "41"]),
        &[
            "--optimizer: adamw contradicts the checkpoint's muon",
            "drop the flag",
        ],
    );
}

/// `--max-minutes` plans the decay to end at the deadline: a run cut by time (long
/// before `--max-steps`) holds the peak, then decays linearly to `--min-lr` at the
/// deadline, and a resume of it has nothing left to do. Reference: the schedule's
/// definition (peak until 70 % of the budget, then a straight line to the floor) applied
/// to the clock that metrics.jsonl records. Each rate was computed between the line
/// before it and its own line, so it lies between the schedule at those two times:
/// the check holds however fast or loaded the machine is.
#[test]
fn a_run_cut_by_its_time_budget_ends_annealed() {
    let f = fixture();
    let run = scratch("budget").join("run");
    let o = tiny_cmd(
        &f.corpus,
        &run,
        &[
            "--max-steps",
            "1000000",
            "--max-minutes",
            "0.2",
            "--lr",
            "1e-2",
            "--min-lr",
            "1e-4",
            "--eval-every",
            "1000000",
        ],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (budget, max, min) = (12.0, 1e-2, 1e-4);
    let by_time = |t: f64| min + ((1.0 - t / budget) / 0.3).clamp(0.0, 1.0) * (max - min);
    let records = metrics::read(&run.join("metrics.jsonl")).unwrap();
    let last = records.last().unwrap();
    assert!(
        last.step < 1_000_000,
        "stopped by time, at step {}",
        last.step
    );
    let warmup = 5; // the tiny preset's
    assert!(records.len() > warmup + 2, "{} steps", records.len());
    for pair in records[warmup..].windows(2) {
        let (before, this) = (&pair[0], &pair[1]);
        let (high, low) = (by_time(before.elapsed_s), by_time(this.elapsed_s));
        assert!(
            this.lr <= high * (1.0 + 1e-9) && this.lr >= low * (1.0 - 1e-9),
            "step {}: lr {} outside [{low}, {high}]",
            this.step,
            this.lr
        );
    }
    assert!(last.lr < max, "the decay began before the deadline");
    assert!(
        last.val_loss.is_some(),
        "the annealed model is evaluated: {last:?}"
    );
    let o = resume(&run, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));
}

/// `--target-bpb` met at an evaluation ends the plan there: the budget schedule decays
/// over the next 3/7 of the run so far and the run stops, annealed. A target every
/// evaluation meets ends the run at its first evaluation (step 10) plus 3/7: step 15,
/// with the same rates, losses and weights as a run planned for 15 steps from the start.
/// Stopped and resumed in between, the run keeps its shortened plan.
#[test]
fn a_met_target_anneals_and_stops_like_a_run_planned_that_long() {
    let f = fixture();
    let dir = scratch("target");
    let flags = |steps: &'static str| {
        [
            "--schedule",
            "budget",
            "--eval-every",
            "10",
            "--max-steps",
            steps,
        ]
    };
    let planned = dir.join("planned");
    let o = tiny_cmd(&f.corpus, &planned, &flags("15"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let early = dir.join("early");
    let stop_flags = ["--target-bpb", "100", "--stop-at-step", "12"];
    let o = tiny_cmd(
        &f.corpus,
        &early,
        &[&flags("1000")[..], &stop_flags].concat(),
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("step 10: validation reached --target-bpb")
            && stderr(&o).contains("decays until step 15"),
        "{}",
        stderr(&o)
    );
    let o = resume(&early, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("stopped early"), "{}", stderr(&o));
    let (a, b) = (
        metrics::read(&planned.join("metrics.jsonl")).unwrap(),
        metrics::read(&early.join("metrics.jsonl")).unwrap(),
    );
    assert_eq!(b.len(), 15);
    assert_eq!(
        a.iter().map(numbers).collect::<Vec<_>>(),
        b.iter().map(numbers).collect::<Vec<_>>(),
        "the early end must follow the 15-step plan exactly"
    );
    assert!(latest_weights(&planned) == latest_weights(&early));
    assert!(
        b[10..].windows(2).all(|w| w[1].lr < w[0].lr),
        "the rate decays after step 11 (70 % of 15)"
    );
}

#[test]
fn best_checkpoint_holds_the_lowest_validation_loss() {
    let f = fixture();
    let records = metrics::read(&f.straight.join("metrics.jsonl")).unwrap();
    let evals: Vec<&Record> = records.iter().filter(|r| r.val_loss.is_some()).collect();
    assert_eq!(
        evals.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![25, 40],
        "tiny evaluates every 25 steps and at the end"
    );
    let best = evals
        .iter()
        .min_by(|a, b| a.val_loss.unwrap().total_cmp(&b.val_loss.unwrap()))
        .unwrap();
    let state = checkpoint::read_state(&f.straight.join("ckpt-best")).unwrap();
    assert_eq!(state.step, best.step);
    assert_eq!(state.best_val_loss, best.val_loss);
    let latest = checkpoint::read_state(&f.straight.join("ckpt-latest")).unwrap();
    assert_eq!(latest.step, REF_STEPS);
    assert_eq!(latest.best_val_loss, best.val_loss);
}

// ---------------------------------------------------------------------------------
// Crashes and signals
// ---------------------------------------------------------------------------------

#[test]
fn sigkill_at_random_moments_always_leaves_a_resumable_checkpoint() {
    let f = fixture();
    let run = scratch("kill").join("run");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (mut kills, mut mid_swap, mut last_step) = (0, 0, 0);
    while kills < 10 {
        let lines_before = metric_lines(&run);
        let mut cmd = if kills == 0 {
            train_cmd(&f.corpus, &run, &["--checkpoint-every", "1"])
        } else {
            resume_cmd(&run, &[])
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill while it trains (and checkpoints every step), not while libtorch loads.
        wait_until(&mut child, "training progressed", || {
            metric_lines(&run) > lines_before && checkpoint::resolve(&run).is_ok()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill: the rest is checked below
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let leftovers = ["ckpt-latest.tmp", "ckpt-latest.old"]
            .iter()
            .any(|n| run.join(n).exists());
        mid_swap += leftovers as usize;
        let step = load_valid(&run);
        assert!(
            step >= last_step,
            "the checkpoint went back from {last_step} to {step}"
        );
        last_step = step;
        if step == REF_STEPS {
            break; // the kill landed after the last checkpoint (while plotting, say)
        }
    }
    eprintln!("{kills} kills, {mid_swap} left a .tmp or .old behind, last at step {last_step}");
    assert!(
        kills >= 5,
        "only {kills} kills landed before the run finished"
    );
    let o = resume(&run, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(load_valid(&run), REF_STEPS);
    // Crashes and all, the run is the straight run (redone steps log again; the later
    // line of a step wins in `metrics::read`).
    assert_same_run(&f.straight, &run);
}

#[test]
fn a_checkpoint_caught_mid_swap_still_loads() {
    let f = fixture();
    let run = scratch("mid-swap").join("run");
    // Killed between "old one aside" and "new one in": only NAME.old and a NAME.tmp,
    // which may be partial, are there.
    let copy = |from: &str, to: &str| {
        fs::create_dir_all(run.join(to)).unwrap();
        for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            fs::copy(f.straight.join(from).join(file), run.join(to).join(file)).unwrap();
        }
    };
    copy("ckpt-latest", "ckpt-latest.old");
    copy("ckpt-best", "ckpt-best.old");
    fs::create_dir_all(run.join("ckpt-latest.tmp")).unwrap();
    fs::write(run.join("ckpt-latest.tmp/model.safetensors"), b"partial").unwrap();
    assert_eq!(
        checkpoint::resolve(&run).unwrap(),
        run.join("ckpt-latest.old")
    );
    assert_eq!(load_valid(&run), REF_STEPS);
    let best = run.join("ckpt-best");
    assert_eq!(
        checkpoint::resolve(&best).unwrap(),
        run.join("ckpt-best.old")
    );
    let best_step = checkpoint::read_state(&f.straight.join("ckpt-best"))
        .unwrap()
        .step;
    assert_eq!(load_valid(&best), best_step);
}

/// The schedule of a long run: more steps than any test lets it reach.
const LONG_RUN: &[&str] = &["--max-steps", "100000"];

/// Starts a long run, stderr piped.
fn spawn_long_run(corpus: &Path, run: &Path, extra: &[&str]) -> Child {
    tiny_cmd(corpus, run, &[LONG_RUN, extra].concat())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends `sig` to a long run once it has logged a few steps, and checks that the run
/// exits with `code` and leaves a valid checkpoint. Returns that checkpoint's step and
/// the run's stderr.
fn signal_long_run(run: &Path, sig: libc::c_int, code: i32) -> (u64, String) {
    let mut child = spawn_long_run(&fixture().corpus, run, &[]);
    wait_until(&mut child, "three steps", || metric_lines(run) >= 3);
    signal(&child, sig);
    let (status, err) = wait_with_stderr(child);
    assert_eq!(status.code(), Some(code), "{err}");
    (load_valid(run), err)
}

#[test]
fn sigint_finishes_the_step_checkpoints_and_exits_130_and_the_resume_is_exact() {
    let f = fixture();
    let dir = scratch("sigint");
    let run = dir.join("run");
    let (step, err) = signal_long_run(&run, libc::SIGINT, 130);
    assert_eq!(
        metric_lines(&run) as u64,
        step,
        "the step in progress was finished and logged"
    );
    let last = err.lines().last().unwrap();
    assert_eq!(
        last,
        format!(
            "stopped by SIGINT after step {step}, checkpoint saved in {}; resume with: sympathy train --resume --out {}",
            run.join("ckpt-latest").display(),
            run.display()
        )
    );

    // Interrupted at whatever step, the resumed run equals one never interrupted.
    let target = (step + 3).to_string();
    let o = resume(&run, &["--stop-at-step", &target]);
    assert!(o.status.success(), "{}", stderr(&o));
    let straight = dir.join("straight");
    let o = tiny_cmd(
        &f.corpus,
        &straight,
        &[LONG_RUN, &["--stop-at-step", &target]].concat(),
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(latest_weights(&run), latest_weights(&straight));
}

#[test]
fn sigterm_checkpoints_and_exits_143() {
    let run = scratch("sigterm").join("run");
    let (step, err) = signal_long_run(&run, libc::SIGTERM, 143);
    assert!(
        err.contains(&format!("stopped by SIGTERM after step {step}")),
        "{err}"
    );
}

#[test]
fn a_second_sigint_exits_at_once() {
    let f = fixture();
    let run = scratch("sigint2").join("run");
    // One log line per step into a stderr pipe shrunk to one page that nobody reads:
    // the run soon blocks writing a line, inside a step, where no graceful stop can
    // finish. Only the second Ctrl-C can end it then.
    let mut child = spawn_long_run(
        &f.corpus,
        &run,
        &["--eval-every", "1", "--eval-windows", "1"],
    );
    use std::os::fd::AsRawFd;
    let fd = child.stderr.as_ref().unwrap().as_raw_fd();
    // SAFETY: fcntl and ioctl on the read end of a pipe we own.
    let size = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096, "F_SETPIPE_SZ failed");
    let mut last = (0, Instant::now());
    wait_until(&mut child, "the run to block on stderr", || {
        let mut unread: libc::c_int = 0;
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) };
        let n = metric_lines(&run);
        if n != last.0 {
            last = (n, Instant::now());
        }
        // Full to within a line, and no step logged since: blocked in the write.
        unread as i64 > size as i64 - 200 && last.1.elapsed() > Duration::from_millis(300)
    });
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first Ctrl-C only asks the run to stop after its step"
    );
    let t = Instant::now();
    signal(&child, libc::SIGINT);
    let (status, err) = wait_with_stderr(child);
    assert_eq!(status.code(), Some(130));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        !err.contains("stopped by SIGINT"),
        "no graceful stop happened"
    );
    load_valid(&run);
}

// ---------------------------------------------------------------------------------
// Non-finite steps
// ---------------------------------------------------------------------------------

#[test]
fn non_finite_steps_are_skipped_then_training_stops_with_the_last_good_weights() {
    let f = fixture();
    let dir = scratch("nan");
    let run = dir.join("run");
    // A real way to blow up: an absurd learning rate. Step 1 (lr 1.7e5 in warmup) leaves
    // finite but huge weights, whose gradients are NaN from step 2 on.
    let o = train(&f.corpus, &run, &["--lr", "1e6"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let records = metrics::read(&run.join("metrics.jsonl")).unwrap();
    let first_bad = records
        .iter()
        .position(|r| r.grad_norm.is_none())
        .expect("a non-finite step") as u64
        + 1;
    assert!(first_bad >= 2, "the first update is finite");
    let last_bad = first_bad + MAX_NONFINITE_IN_A_ROW - 1;
    assert_eq!(
        records.len() as u64,
        last_bad,
        "every step is logged, skipped ones too"
    );
    assert!(records[first_bad as usize - 1..]
        .iter()
        .all(|r| r.grad_norm.is_none()));
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("is not finite; update skipped"))
            .count() as u64,
        MAX_NONFINITE_IN_A_ROW
    );
    let last = assert_user_error(
        &o,
        &["resume with a lower --lr: sympathy train --resume --out"],
    );
    assert!(
        last.starts_with(&format!("error: training diverged: steps {first_bad}..={last_bad} had a non-finite loss or gradient and were skipped ({MAX_NONFINITE_IN_A_ROW} skipped so far); the last good weights are saved in {}", run.join("ckpt-latest").display())),
        "{last}"
    );
    let state = checkpoint::read_state(&run.join("ckpt-latest")).unwrap();
    assert_eq!(
        (state.step, state.nonfinite_skipped),
        (last_bad, MAX_NONFINITE_IN_A_ROW)
    );
    load_valid(&run); // finite weights and moments

    // "The last good weights" are exactly those of the last finite update.
    let good = dir.join("good");
    let stop = (first_bad - 1).to_string();
    let o = train(&f.corpus, &good, &["--lr", "1e6", "--stop-at-step", &stop]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(latest_weights(&run), latest_weights(&good));

    // The command the message suggests works, and says what it changes.
    let target = (last_bad + 2).to_string();
    let o = resume(&run, &["--lr", "1e-3", "--max-steps", &target]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("note: --lr 0.001 replaces the checkpoint's 1000000"));
    assert_eq!(load_valid(&run), last_bad + 2);
}

#[test]
fn a_checkpoint_with_nan_weights_is_never_written() {
    let (run, _) = run_stopped_at("nan-save", "2");
    let before = latest_weights(&run);
    let loaded = checkpoint::load(&run, Device::Cpu).unwrap();
    let opt = AdamW::new(&FlatParams::new(&loaded.vs), &loaded.state.train);
    tch::no_grad(|| {
        let _ = loaded.vs.variables()["ln_f.weight"].get(0).fill_(f64::NAN);
    });
    let e = checkpoint::save_atomically(&run, checkpoint::LATEST, &loaded.vs, &opt, &loaded.state)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not written: tensor ln_f.weight holds NaN or infinite values; the previous checkpoint is intact"),
        "{e}"
    );
    assert_eq!(latest_weights(&run), before);
    assert!(!run.join("ckpt-latest.tmp").exists());

    // For real: an LR so large that AdamW's step size overflows f32 turns finite weights
    // and gradients into non-finite weights in one update. Nothing is saved.
    let o = resume(&run, &["--lr", "1e39"]);
    assert_user_error(
        &o,
        &[
            "training diverged: the update of step 3",
            "made the weights non-finite; nothing was saved, the last good checkpoint is",
            "(step 2); lower --lr",
        ],
    );
    assert_eq!(latest_weights(&run), before);
    assert_eq!(load_valid(&run), 2);
}

// ---------------------------------------------------------------------------------
// Bad input: one `error:` line, exit code 1, never a panic
// ---------------------------------------------------------------------------------

/// Asserts a user error: exit code 1, the last stderr line is the only `error:` line and
/// contains every one of `needles`. Returns that line.
fn assert_user_error(o: &Output, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1, stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {err}");
    assert_eq!(Some(errors[0]), err.lines().last(), "{err}");
    for n in needles {
        assert!(errors[0].contains(n), "{:?} not in {:?}", n, errors[0]);
    }
    errors[0].to_string()
}

/// A tiny run of one step (unless `extra` sets `--max-steps`): enough to reach every
/// check of the input.
fn train_tiny(corpus: &Path, out: &Path, extra: &[&str]) -> Output {
    let steps: &[&str] = if extra.contains(&"--max-steps") {
        &[]
    } else {
        &["--max-steps", "1"]
    };
    tiny_cmd(corpus, out, &[steps, extra].concat())
        .output()
        .unwrap()
}

#[test]
fn corpus_problems_are_named() {
    let dir = scratch("corpus");
    let out = dir.join("out");
    let missing = dir.join("missing");
    assert_user_error(
        &train_tiny(&missing, &out, &[]),
        &[s(&missing), "does not exist", "--data"],
    );

    let empty = dir.join("empty");
    fs::create_dir_all(&empty).unwrap();
    assert_user_error(&train_tiny(&empty, &out, &[]), &[s(&empty), "is empty"]);

    let other = dir.join("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("notes.txt"), "hello").unwrap();
    assert_user_error(
        &train_tiny(&other, &out, &[]),
        &["no *.py files found", "--ext"],
    );

    let tiny = dir.join("tiny");
    fs::create_dir_all(&tiny).unwrap();
    fs::write(tiny.join("a.py"), "x = 1\n".repeat(10)).unwrap();
    fs::write(tiny.join("b.py"), "y = 2\n").unwrap();
    assert_user_error(
        &train_tiny(&tiny, &out, &[]),
        &[
            s(&tiny),
            "validation split has 7 tokens, less than one window of 17",
            "--block-size",
        ],
    );

    // Binary and non-UTF-8 files are skipped with a count; training goes on.
    let mixed = write_corpus(&dir.join("mixed"), 3);
    fs::write(mixed.join("aa_binary.py"), b"x = 1\0\0\x01\x02").unwrap();
    fs::write(mixed.join("aa_latin1.py"), b"s = '\xe9t\xe9'\n").unwrap();
    let o = train_tiny(&mixed, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("skipped 2 (binary 1, non-UTF-8 1, unreadable 0)"),
        "{}",
        stderr(&o)
    );
    let only_binary = dir.join("only_binary");
    fs::create_dir_all(&only_binary).unwrap();
    fs::write(only_binary.join("a.py"), b"\0\0").unwrap();
    fs::write(only_binary.join("b.py"), b"\xff\xfe").unwrap();
    assert_user_error(
        &train_tiny(&only_binary, &dir.join("out2"), &[]),
        &["no readable text file in the training split (skipped 1 binary, 1 non-UTF-8, 0 unreadable)"],
    );
}

#[test]
fn a_model_too_large_for_this_machine_is_refused_before_allocating() {
    let dir = scratch("too_large");
    let corpus = write_corpus(&dir.join("corpus"), 3);
    let huge = ["--n-embd", "1000000000", "--n-head", "1"];
    let line = assert_user_error(
        &train_tiny(&corpus, &dir.join("out"), &huge),
        &[
            "--n-embd",
            "parameters",
            "needs",
            "GB for a training step",
            "free",
        ],
    );
    assert!(!dir.join("out/ckpt-latest").exists(), "{line}");
    let o = common::run(&[
        "inspect",
        "--preset",
        "tiny",
        "--n-embd",
        "1000000000",
        "--n-head",
        "1",
    ]);
    assert_user_error(&o, &["--n-embd", "GB for its weights"]);
}

/// The user and group ids a child runs as; `None`: this process's own.
type RunAs = Option<(u32, u32)>;

/// How to run a child to which file permissions apply. Root reads and writes through
/// chmod 000, so as root children run as `nobody` (uid/gid 65534): `Some(Some(ids))`.
/// Not root: `Some(None)`, as is. `None`: root that may not switch user.
fn unprivileged() -> Option<RunAs> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(None);
    }
    let ok = Command::new("true")
        .uid(65534)
        .gid(65534)
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(Some((65534, 65534)))
}

fn as_nobody(mut cmd: Command, ids: RunAs) -> Command {
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// For a test of file permissions: the user its children run as (see `unprivileged`), a
/// fresh scratch folder named `name` and a corpus of `n_files` files in it. `None`, said
/// on stderr, where such a test cannot run.
fn permission_scratch(name: &str, n_files: usize) -> Option<(RunAs, PathBuf, PathBuf)> {
    let Some(ids) = unprivileged() else {
        eprintln!("skipped: running as root without the right to switch user");
        return None;
    };
    let dir = scratch(name);
    let corpus = write_corpus(&dir.join("corpus"), n_files);
    Some((ids, dir, corpus))
}

fn open_to_all(path: &Path) {
    for entry in walkdir::WalkDir::new(path) {
        let entry = entry.unwrap();
        fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o777)).unwrap();
    }
}

#[test]
fn unreadable_corpus_files_are_skipped_and_counted() {
    let Some((ids, dir, corpus)) = permission_scratch("unreadable", 3) else {
        return;
    };
    fs::write(corpus.join("aa_secret.py"), "x = 1\n").unwrap();
    open_to_all(&dir);
    fs::set_permissions(
        corpus.join("aa_secret.py"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let cmd = tiny_cmd(&corpus, &dir.join("out"), &["--max-steps", "1"]);
    let o = as_nobody(cmd, ids).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("skipped 1 (binary 0, non-UTF-8 0, unreadable 1)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unwritable_run_dir_fails_the_due_checkpoint_and_keeps_the_previous_one() {
    let Some((ids, dir, corpus)) = permission_scratch("readonly", 6) else {
        return;
    };
    let run = dir.join("run");
    open_to_all(&dir);
    let cmd = tiny_cmd(&corpus, &run, &["--max-steps", "20", "--stop-at-step", "4"]);
    let o = as_nobody(cmd, ids).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let before = latest_weights(&run);
    fs::set_permissions(&run, fs::Permissions::from_mode(0o555)).unwrap();
    let cmd = resume_cmd(&run, &["--checkpoint-every", "2"]);
    let o = as_nobody(cmd, ids).output().unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o777)).unwrap();
    assert_user_error(
        &o,
        &[
            "ckpt-latest.tmp: cannot create",
            "ermission denied",
            &format!(
                "the previous checkpoint in {} is intact",
                run.join("ckpt-latest").display()
            ),
        ],
    );
    assert_eq!(latest_weights(&run), before);
    assert_eq!(load_valid(&run), 4);
}

#[test]
fn a_full_disk_fails_the_due_checkpoint_and_keeps_the_previous_one() {
    let (run, _) = run_stopped_at("disk-full", "3");
    let before = latest_weights(&run);
    // RLIMIT_FSIZE makes writes past 200 kB fail (EFBIG), as a full disk does (ENOSPC):
    // model.safetensors (~120 kB) fits, optimizer.safetensors (~240 kB) does not.
    let mut cmd = resume_cmd(&run, &["--checkpoint-every", "2"]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 200_000,
                rlim_max: 200_000,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_user_error(
        &o,
        &[
            "cannot write optimizer.safetensors",
            "File too large",
            &format!(
                "the previous checkpoint in {} is intact",
                run.join("ckpt-latest").display()
            ),
        ],
    );
    assert!(
        !run.join("ckpt-latest.tmp").exists(),
        "the partial checkpoint is removed"
    );
    assert_eq!(latest_weights(&run), before);
    assert_eq!(load_valid(&run), 3);
}

/// A copy of the reference run's final checkpoint folder, to damage.
fn checkpoint_copy(name: &str) -> PathBuf {
    let f = fixture();
    let dir = scratch(name).join("ckpt");
    fs::create_dir_all(&dir).unwrap();
    for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        fs::copy(f.straight.join("ckpt-latest").join(file), dir.join(file)).unwrap();
    }
    dir
}

fn generate(checkpoint: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["generate", "--checkpoint", s(checkpoint), "--device", "cpu"];
    args.extend_from_slice(&["--max-tokens", "5"]);
    if !extra.contains(&"--temperature") {
        args.extend_from_slice(&["--temperature", "0"]);
    }
    args.extend_from_slice(extra);
    run(&args)
}

fn edit_state(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn checkpoint_problems_are_named() {
    let f = fixture();
    let missing = f.root.join("no-such-run");
    assert_user_error(&generate(&missing, &[]), &[s(&missing), "does not exist"]);
    let not_a_run = f.corpus.clone();
    assert_user_error(
        &generate(&not_a_run, &[]),
        &["has no state.json and no ckpt-latest/"],
    );

    let dir = checkpoint_copy("ckpt-missing-file");
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert_user_error(&generate(&dir, &[]), &["model.safetensors", "is missing"]);

    let dir = checkpoint_copy("ckpt-truncated");
    let bytes = fs::read(dir.join("model.safetensors")).unwrap();
    fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert_user_error(
        &generate(&dir, &[]),
        &["model.safetensors", "is corrupt or truncated"],
    );
    fs::write(
        dir.join("model.safetensors"),
        b"this is not a safetensors file",
    )
    .unwrap();
    assert_user_error(
        &generate(&dir, &[]),
        &["model.safetensors", "is corrupt or truncated"],
    );

    let dir = checkpoint_copy("ckpt-bad-json");
    fs::write(dir.join("state.json"), "{\"format_version\": 1, \"step\": ").unwrap();
    assert_user_error(&generate(&dir, &[]), &["state.json", "is not valid JSON"]);

    let dir = checkpoint_copy("ckpt-version");
    edit_state(&dir, |v| v["format_version"] = 99.into());
    assert_user_error(
        &generate(&dir, &[]),
        &["has format version 99, this sympathy reads version 1"],
    );

    let dir = checkpoint_copy("ckpt-shape");
    edit_state(&dir, |v| v["model"]["n_embd"] = 64.into());
    assert_user_error(
        &generate(&dir, &[]),
        &["but the config needs", "config and weights disagree"],
    );
    let dir = checkpoint_copy("ckpt-layers");
    edit_state(&dir, |v| v["model"]["n_layer"] = 3.into());
    assert_user_error(
        &generate(&dir, &[]),
        &[
            "has 2 layers but state.json says n_layer 3",
            "config and weights disagree",
        ],
    );
    let dir = checkpoint_copy("ckpt-vocab");
    edit_state(&dir, |v| v["model"]["vocab_size"] = 100.into());
    assert_user_error(
        &generate(&dir, &[]),
        &["vocab_size 100 does not match the tokenizer's 131"],
    );

    // The optimizer file matters only to a resume.
    let run = scratch("ckpt-optimizer").join("run");
    fs::create_dir_all(&run).unwrap();
    let ck = checkpoint_copy("ckpt-optimizer-src");
    fs::rename(&ck, run.join("ckpt-latest")).unwrap();
    let unrelated = [("x", tch::Tensor::from(1f32))];
    tch::Tensor::write_safetensors(&unrelated, run.join("ckpt-latest/optimizer.safetensors"))
        .unwrap();
    assert_user_error(
        &resume(&run, &["--max-steps", "41"]),
        &["optimizer.safetensors", "optimizer state has no tensor m."],
    );
}

#[test]
fn resume_flags_that_contradict_the_checkpoint_are_named() {
    let f = fixture();
    assert_user_error(
        &resume(&f.straight, &["--n-embd", "64"]),
        &[
            "--n-embd: 64 contradicts the checkpoint's 32",
            "drop the flag",
        ],
    );
    assert_user_error(
        &resume(&f.straight, &["--dropout", "0"]),
        &["--dropout: 0 contradicts the checkpoint's 0.1"],
    );
    assert_user_error(
        &resume(&f.straight, &["--arch", "modern"]),
        &["--arch: rope contradicts the checkpoint's learned"],
    );
    assert_user_error(
        &resume(&f.straight, &["--arch", "modern", "--pos", "learned"]),
        &["--arch: rmsnorm contradicts the checkpoint's layernorm"],
    );
    assert_user_error(
        &resume(&f.straight, &["--qk-norm"]),
        &["--qk-norm: true contradicts the checkpoint's false"],
    );
    assert_user_error(
        &resume(&f.straight, &["--optimizer", "muon"]),
        &["--optimizer: muon contradicts the checkpoint's adamw"],
    );
    assert_user_error(
        &resume(&f.straight, &["--preset", "small"]),
        &[
            "--preset: small gives n_layer 4, the checkpoint in",
            "has 2; drop --preset",
        ],
    );
    let fresh = scratch("resume-none").join("run");
    fs::create_dir_all(&fresh).unwrap();
    assert_user_error(
        &resume(&fresh, &[]),
        &["has no state.json and no ckpt-latest/"],
    );
    // Without --resume an existing run is not silently overwritten.
    assert_user_error(
        &train(&f.corpus, &f.straight, &[]),
        &["--out: ", "already holds a checkpoint; pass --resume"],
    );
}

#[test]
fn the_command_that_started_a_run_resumes_it_with_resume_added() {
    let dir = scratch("same-command");
    let corpus = write_corpus(&dir.join("corpus"), 3);
    let run = dir.join("run");
    // A preset changed by model flags: the resumed model must equal the saved one.
    let start = ["--n-embd", "64", "--dropout", "0.1", "--max-steps", "6"];
    let o = tiny_cmd(
        &corpus,
        &run,
        &[&start[..], &["--stop-at-step", "3"]].concat(),
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tiny_cmd(&corpus, &run, &[&start[..], &["--resume"]].concat())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("trained to step 6"), "{}", stderr(&o));
    // A real contradiction is still named: tiny with n_embd 32 is not this model.
    let other = ["--n-embd", "32", "--max-steps", "8", "--resume"];
    assert_user_error(
        &tiny_cmd(&corpus, &run, &other).output().unwrap(),
        &[
            "--preset: tiny gives n_embd 32, the checkpoint in",
            "has 64",
        ],
    );
}

#[test]
fn a_run_folder_has_one_writer_and_a_dead_writer_never_blocks() {
    let f = fixture();
    let run = scratch("one-writer").join("run");
    let mut first = spawn_long_run(&f.corpus, &run, &["--checkpoint-every", "2"]);
    wait_until(&mut first, "a checkpoint", || {
        run.join("ckpt-latest/state.json").exists()
    });
    let line = assert_user_error(
        &resume(&run, &[]),
        &[
            "--out: ",
            &format!("is being written by process {}", first.id()),
            "train.lock",
        ],
    );
    // Readers are never blocked.
    let o = common::run(&["inspect", "--checkpoint", s(&run)]);
    assert!(o.status.success(), "{line}: {}", stderr(&o));
    // kill -9 leaves the lock file but not the lock: the next run goes ahead.
    signal(&first, libc::SIGKILL);
    let _ = first.wait();
    assert!(run.join("train.lock").exists());
    let target = load_valid(&run) + 2;
    let o = resume(&run, &["--stop-at-step", &target.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(load_valid(&run), target, "the second writer trained");
}

#[test]
fn flag_problems_are_named() {
    let f = fixture();
    let out = scratch("flags").join("out");
    // Each case: the flags, split at spaces, and what the one error line must say.
    for (flags, needle) in [
        ("--n-embd 0", "--n-embd: must be positive, got 0"),
        ("--n-layer -2", "--n-layer: must be positive, got -2"),
        ("--batch-size 0", "--batch-size: must be positive"),
        ("--block-size -1", "--block-size: must be positive, got -1"),
        ("--max-steps 0", "--max-steps: must be at least 1"),
        ("--max-steps -5", "invalid value '-5' for '--max-steps"),
        (
            "--checkpoint-every 0",
            "--checkpoint-every: must be at least 1",
        ),
        (
            "--n-embd 30 --n-head 4",
            "--n-embd: 30 is not divisible by --n-head 4",
        ),
        ("--lr -0.1", "--lr: must be a positive number"),
        (
            "--grad-clip -1",
            "--grad-clip: must be 0 or a positive number",
        ),
        ("--dropout 1", "--dropout: must be in [0, 1)"),
        (
            "--target-bpb 2 --schedule cosine",
            "--target-bpb: needs --schedule budget",
        ),
        (
            "--target-bpb -1 --schedule budget",
            "--target-bpb: must be a positive number of bits per byte, got -1",
        ),
        ("--no-such-flag", "unexpected argument '--no-such-flag'"),
    ] {
        let flags: Vec<&str> = flags.split(' ').collect();
        assert_user_error(&train_tiny(&f.corpus, &out, &flags), &[needle]);
    }
    let ckpt = &f.straight;
    for (flags, needle) in [
        ("--top-p 0", "--top-p: must be in (0, 1], got 0"),
        ("--top-p 1.5", "--top-p: must be in (0, 1], got 1.5"),
        ("--top-k 0", "--top-k: must be at least 1"),
        (
            "--temperature -1",
            "--temperature: must be 0 (greedy) or positive",
        ),
        (
            "--block-size 17",
            "--block-size: 17 must be between 1 and the model's context 16",
        ),
        ("--block-size 0", "--block-size: 0 must be between 1"),
    ] {
        let flags: Vec<&str> = ["--prompt", "x"]
            .into_iter()
            .chain(flags.split(' '))
            .collect();
        assert_user_error(&generate(ckpt, &flags), &[needle]);
    }
    assert_user_error(
        &run(&[
            "eval",
            "--checkpoint",
            s(ckpt),
            "--device",
            "cpu",
            "--windows",
            "0",
        ]),
        &["--windows: must be at least 1"],
    );
}

#[test]
fn odd_prompts_are_handled_and_said() {
    let f = fixture();
    let ok = |o: &Output| {
        assert!(o.status.success(), "{}", stderr(o));
        assert!(!stderr(o).contains("error"));
        stderr(o)
    };
    let o = generate(&f.straight, &["--prompt", "déf π():"]);
    assert!(ok(&o).contains("prompt: 2 character(s) outside the vocabulary were replaced by <unk>"));
    let o = generate(&f.straight, &["--prompt", ""]);
    assert!(ok(&o).contains("prompt: empty, starting from <eos> (a new file)"));
    let long = "x = 1\n".repeat(20);
    let o = generate(&f.straight, &["--prompt", &long]);
    assert!(
        ok(&o).contains("prompt: 120 tokens is longer than the context 16; keeping the last 16")
    );
    assert_eq!(common::stdout(&o).trim_end_matches('\n').chars().count(), 5);
}
