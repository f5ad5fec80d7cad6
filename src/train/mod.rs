//! The training loop, as nanoGPT's reads: open the run (fresh or resumed), then per
//! step forward and backward over the micro-batches, clip and update, evaluate and
//! checkpoint every so often, log; finish with a checkpoint.
//!
//! ```text
//! let mut run = Run::open(opts)?;
//! while run.should_continue(stop) {
//!     let (loss, grad_norm) = run.forward_backward()?;
//!     run.update(loss, grad_norm)?;
//!     run.evaluate_and_checkpoint(loss, grad_norm)?;
//! }
//! run.finish()
//! ```
//!
//! The step's parts are shared with `bench train` ([`step::Trainer`]). With several
//! processes ([`ranks`]), the run meets the other ranks at named points: it takes its
//! rows of each batch, averages the gradients, agrees on the loss and on stopping, and
//! waits while rank 0 evaluates and writes checkpoints.
//!
//! A run is a pure function of its configs and seed. Batches depend only on
//! (seed, step) (see [`Batches::get`]), libtorch's generator (dropout) is reseeded from
//! (seed, step) before every step, and the optimizer's state is saved, so a run resumed
//! from a checkpoint repeats, bit for bit on the CPU, what the uninterrupted run would do.

pub mod data_parallel;
pub mod distributed;
pub mod eval;
pub mod fused_adamw;
pub mod launch;
pub mod muon;
pub mod optim;
pub mod params;
pub mod ranks;
pub mod step;

use crate::config::{ModelConfig, Schedule, TrainConfig};
use crate::data::{Batches, TokenStreams};
use crate::model::bits_per_byte;
use crate::model::flops;
use crate::run::checkpoint::{self, DataSpec, OptimizerState, State, TargetReached, BEST, LATEST};
use crate::run::lock::RunLock;
use crate::run::metrics::{MetricsWriter, Record};
use crate::runtime::device::Dtype;
use crate::runtime::matmul_peak::quick_peak;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result, Step};
pub use eval::evaluate;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use optim::LrSchedule;
use ranks::{RankEnv, Ranks};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use step::Trainer;
use tch::{Device, Kind, Tensor};

/// After this many non-finite steps in a row, training stops instead of skipping more.
pub const MAX_NONFINITE_IN_A_ROW: u64 = 5;

pub struct TrainOptions {
    pub data: PathBuf,
    pub ext: String,
    pub out: PathBuf,
    pub model: ModelConfig,
    pub train: TrainConfig,
    /// Its vocabulary must be the model's; on `--resume`, the checkpoint's.
    pub tokenizer: Tokenizer,
    pub device: Device,
    /// Continue the checkpoint in `out` instead of starting fresh.
    pub resume: bool,
    /// Data-parallel workers (1: libtorch's intra-op threads alone; see `data_parallel`).
    pub workers: usize,
    /// No progress bar and no log lines (tests).
    pub quiet: bool,
    /// This process's place among the ranks of a data-parallel run (`None`: alone).
    pub ranks: Option<RankEnv>,
}

/// Set from the signal handlers: finish the step, checkpoint, stop.
#[derive(Clone, Default)]
pub struct StopFlags {
    pub interrupt: Arc<AtomicBool>,
    pub terminate: Arc<AtomicBool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    MaxSteps,
    MaxMinutes,
    /// `--target-bpb` was met and the decay that followed it is done.
    TargetReached,
    /// `--stop-at-step`: a planned pause; `--resume` continues on the same schedule.
    StopAtStep,
    /// SIGINT (Ctrl-C); the CLI exits with 130.
    Interrupted,
    /// SIGTERM; the CLI exits with 143.
    Terminated,
}

#[derive(Debug)]
pub struct TrainSummary {
    pub step: Step,
    pub tokens_seen: u64,
    pub last_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub tokens_per_s: f64,
    /// Of the validation split, to turn `val_loss` into bits per byte.
    pub val_bytes_per_token: f64,
    pub checkpoint: PathBuf,
    pub cause: StopCause,
}

/// Trains as `opts` says and returns where it stopped. Stops at `max_steps`, after
/// `max_minutes`, or when a flag in `stop` is raised; always leaves a checkpoint.
pub fn train(opts: &TrainOptions, stop: &StopFlags) -> Result<TrainSummary> {
    let mut run = match Run::open(opts)? {
        Opened::Ready(run) => run,
        Opened::AlreadyDone(summary) => return Ok(summary),
    };
    while run.should_continue(stop) {
        let (loss, grad_norm) = run.forward_backward()?;
        run.update(loss, grad_norm)?;
        run.evaluate_and_checkpoint(loss, grad_norm)?;
    }
    run.finish()
}

/// What [`Run::open`] found: a run to train, or one already at `max_steps`.
enum Opened<'a> {
    Ready(Box<Run<'a>>),
    AlreadyDone(TrainSummary),
}

/// A training run in progress: the model and optimizer, the data, the schedule, the
/// state that goes into checkpoints, and the progress shown on the way.
struct Run<'a> {
    opts: &'a TrainOptions,
    trainer: Trainer,
    state: State,
    schedule: LrSchedule,
    train_batches: Batches,
    val_batches: Batches,
    eval_starts: Vec<i64>,
    tokens_per_step: u64,
    /// Bytes of text per token in each split: losses per token → bits per byte.
    train_bytes_per_token: f64,
    val_bytes_per_token: f64,
    /// For MFU: the model's FLOPs per token and this machine's matmul peak.
    flops_per_token: f64,
    peak_gflops: f64,
    metrics: MetricsWriter,
    bar: ProgressBar,
    session_start: Instant,
    /// Training time of earlier sessions of this run, and the step this session began at.
    elapsed_before: f64,
    first_step: Step,
    step_start: Instant,
    lr: f64,
    nonfinite_in_a_row: u64,
    last_loss: Option<f64>,
    tokens_per_s: f64,
    cause: StopCause,
    /// The other processes of a data-parallel run, if any.
    ranks: Ranks,
    /// This rank's stop requests (interrupt, terminate, out of time) before this step,
    /// and what all ranks agreed on after the last one.
    local_stop: [bool; 3],
    agreed_stop: [bool; 3],
    /// Rank 0's training time after the last step (see [`Run::schedule_clock`]).
    agreed_seconds: f64,
    /// A time budget's deadline, read once after each step: that step is then the
    /// last, evaluated and saved, and the loop stops before the next.
    deadline_reached: bool,
    /// Rank 0 is the run folder's one writer while the run lives.
    _writer: Option<RunLock>,
}

impl<'a> Run<'a> {
    /// Checks the configs and the run folder, loads the data, builds the model and
    /// optimizer (from the checkpoint with `--resume`), and measures the matmul peak.
    fn open(opts: &'a TrainOptions) -> Result<Opened<'a>> {
        let (cfg, tcfg) = (&opts.model, &opts.train);
        let tokenizer = check_configs(opts)?;
        if let Some(env) = &opts.ranks {
            ranks::check_divides(tcfg.batch_size, env.world_size)?;
        }
        let mut ranks = Ranks::join(opts.ranks.as_ref(), opts.device)?;
        let writer = check_run_folder(opts, ranks.is_writer())?;
        let (streams, train_batches, val_batches) = load_data(opts, &tokenizer, &mut ranks)?;
        let eval_starts = val_batches.eval_starts(tcfg.eval_windows);
        let (trainer, mut state) = build_trainer(opts, tokenizer)?;
        start_from_writers_state(&mut ranks, &trainer)?;
        let bar = progress_bar(opts.quiet || !ranks.is_writer(), tcfg.max_steps, state.step);
        let tokens_per_step = (tcfg.batch_size * cfg.block_size * tcfg.grad_accum) as u64;
        let say = |line: String| {
            if ranks.is_writer() {
                log_line(&bar, line)
            }
        };
        say(streams.report.summary());
        let arch = match cfg.arch.changes() {
            c if c.is_empty() => String::new(),
            c => format!(", {}", c.join(" ")),
        };
        say(format!(
            "model: {} parameters ({:.2}M), {} layers, {} heads, n_embd {}, context {}{arch}; {} tokens/step on {:?}{}",
            trainer.n_params(), trainer.n_params() as f64 / 1e6, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, tokens_per_step, opts.device, ranks.describe()
        ));
        let mut schedule = LrSchedule::new(tcfg);
        state.target_reached = state.target_reached.filter(|t| still_met(tcfg, t));
        if let Some(t) = state.target_reached {
            schedule.end_early(t.step, t.elapsed_s);
            bar.set_length(schedule.total);
        }
        if state.step >= schedule.total || schedule.out_of_time(state.elapsed_s) {
            let bpt = streams.report.val_bytes_per_token();
            return already_done(opts, &bar, &state, bpt).map(Opened::AlreadyDone);
        }
        // MFU needs this machine's peak: a ~0.2 s matmul probe (see `runtime::matmul_peak`),
        // times the number of ranks, which each measure their own share of the machine.
        let flops_per_token = flops::flops_per_token(cfg);
        let peak_gflops = quick_peak(opts.device, Dtype::Fp32) * ranks.world_size() as f64;
        say(format!(
            "{:.1} MFLOP/token; matmul peak {peak_gflops:.0} GFLOP/s with {} threads{} (MFU is against it)",
            flops_per_token / 1e6,
            tch::get_num_threads(),
            if ranks.world_size() > 1 { " per rank, all ranks together" } else { "" }
        ));
        Ok(Opened::Ready(Box::new(Run {
            metrics: MetricsWriter::append(&opts.out.join("metrics.jsonl"))?,
            elapsed_before: state.elapsed_s,
            first_step: state.step,
            schedule,
            session_start: Instant::now(),
            step_start: Instant::now(),
            lr: 0.0,
            nonfinite_in_a_row: 0,
            last_loss: None,
            tokens_per_s: 0.0,
            cause: StopCause::MaxSteps,
            _writer: writer,
            ranks,
            local_stop: [false; 3],
            agreed_stop: [false; 3],
            agreed_seconds: state.elapsed_s,
            deadline_reached: false,
            opts,
            trainer,
            state,
            train_batches,
            val_batches,
            eval_starts,
            tokens_per_step,
            train_bytes_per_token: streams.report.train_bytes_per_token(),
            val_bytes_per_token: streams.report.val_bytes_per_token(),
            flops_per_token,
            peak_gflops,
            bar,
        })))
    }

    /// Whether to take another step: not at `max_steps`, no stop flag raised, not at
    /// `--stop-at-step`, within `--max-minutes`. Records why not.
    /// With several ranks, the stop requests are the ones all ranks agreed on after the
    /// last step (see [`Ranks::agree`]), so that they all stop at the same step.
    fn should_continue(&mut self, stop: &StopFlags) -> bool {
        let tcfg = &self.opts.train;
        let step = self.state.step;
        // A budget's deadline was decided after the last step (`deadline_reached`);
        // a cosine run's --max-minutes is a plain cut of this session.
        let out_of_time = tcfg.schedule == Schedule::Cosine
            && tcfg
                .max_minutes
                .is_some_and(|m| self.session_start.elapsed().as_secs_f64() >= m * 60.0);
        self.local_stop = [
            stop.interrupt.load(Ordering::SeqCst),
            stop.terminate.load(Ordering::SeqCst),
            out_of_time,
        ];
        let [interrupt, terminate, out_of_time] = if self.ranks.world_size() > 1 {
            self.agreed_stop
        } else {
            self.local_stop
        };
        let early = self.state.target_reached.is_some();
        let cause = if step >= self.schedule.total || self.deadline_reached {
            match (early, step >= tcfg.max_steps) {
                (true, _) => StopCause::TargetReached,
                (false, true) => StopCause::MaxSteps,
                (false, false) => StopCause::MaxMinutes,
            }
        } else if interrupt {
            StopCause::Interrupted
        } else if terminate {
            StopCause::Terminated
        } else if tcfg.stop_at_step.is_some_and(|s| step >= s) {
            StopCause::StopAtStep
        } else if out_of_time {
            StopCause::MaxMinutes
        } else {
            return true;
        };
        self.cause = cause;
        false
    }

    /// Forward and backward over the micro-batches of this step (gradients add up in
    /// `.grad`); returns the mean loss and the global gradient norm. With several ranks,
    /// each takes its rows of every micro-batch, then the gradients are averaged and the
    /// losses and stop requests combined.
    fn forward_backward(&mut self) -> Result<(f64, f64)> {
        self.step_start = Instant::now();
        let tcfg = &self.opts.train;
        let step = self.state.step;
        self.lr = self.schedule.at(step, self.schedule_clock());
        // Dropout draws from libtorch's generator: seeded per step, so a resumed run
        // draws what the uninterrupted one would (and each rank draws its own masks).
        let rank = (self.ranks.rank() as i64) << 32;
        tch::manual_seed(
            (tcfg.seed as i64)
                .wrapping_add(step as i64 + 1)
                .wrapping_add(rank),
        );
        let mut loss_sum = Tensor::zeros([], (Kind::Float, self.opts.device));
        for micro in 0..tcfg.grad_accum as u64 {
            let (x, y) = self.train_batches.get(step, micro); // (B, T), (B, T)
            let (x, y) = self.ranks.my_rows(&x, &y); // (B/N, T), (B/N, T)
            loss_sum += self.trainer.forward_backward(&x, &y, tcfg.grad_accum).loss;
        }
        self.ranks.average_gradients(self.trainer.params.grads())?;
        let (loss, agreed, seconds) = self.ranks.agree(
            loss_sum.double_value(&[]),
            self.local_stop,
            self.training_seconds(),
        )?;
        self.agreed_stop = agreed;
        self.agreed_seconds = seconds;
        Ok((loss, self.trainer.grad_norm()))
    }

    /// Clip and AdamW when the loss and gradient are finite; otherwise skip the update
    /// (the weights stay those of the last good step) and count it. Zeroes the
    /// gradients either way.
    fn update(&mut self, loss: f64, grad_norm: f64) -> Result<()> {
        self.state.step += 1;
        self.state.tokens_seen += self.tokens_per_step;
        if loss.is_finite() && grad_norm.is_finite() {
            self.trainer.update(grad_norm, self.lr);
            self.nonfinite_in_a_row = 0;
            self.last_loss = Some(loss);
            // A finite, clipped gradient can still overflow the weights when the LR is
            // absurd. The update is in place, so there is no last good state left in
            // memory: stop, and point at the last checkpoint on disk (never overwrite it).
            if !checkpoint::all_finite([self.trainer.params.values()]) {
                return Err(Error::Diverged(format!(
                    "the update of step {} (lr {:.3e}) made the weights non-finite; nothing was saved, {}; lower --lr",
                    self.state.step,
                    self.lr,
                    last_good_checkpoint(&self.opts.out)
                )));
            }
        } else {
            self.state.nonfinite_skipped += 1;
            self.nonfinite_in_a_row += 1;
            if self.ranks.is_writer() {
                log_line(
                    &self.bar,
                    format!(
                        "step {}: loss {loss} / grad norm {grad_norm} is not finite; update skipped",
                        self.state.step
                    ),
                );
            }
        }
        self.trainer.zero_grad();
        self.tokens_per_s = self.tokens_per_step as f64 / self.step_start.elapsed().as_secs_f64();
        Ok(())
    }

    /// Every `--eval-every` steps and at the last: the validation loss, saved as the
    /// best checkpoint when it is. Then the step's metrics line, the stop after too many
    /// non-finite steps, the early end when an evaluation meets `--target-bpb`, and
    /// every `--checkpoint-every` steps the latest checkpoint.
    fn evaluate_and_checkpoint(&mut self, loss: f64, grad_norm: f64) -> Result<()> {
        let tcfg = &self.opts.train;
        // The last step of the run: at --max-steps, or at a time budget's deadline (read
        // once, from the clock every rank shares, so they agree on it and the loop
        // stops on the very decision that evaluated this step).
        self.deadline_reached = self.schedule.out_of_time(self.schedule_clock());
        let is_last = self.state.step >= self.schedule.total || self.deadline_reached;
        let due_eval = self.state.step.is_multiple_of(tcfg.eval_every) || is_last;
        let due_save = self.state.step.is_multiple_of(tcfg.checkpoint_every) && !is_last;
        let writer = self.ranks.is_writer();
        let val_loss = if due_eval && writer {
            Some(self.evaluate(loss)?)
        } else {
            None
        };
        if writer {
            self.log(loss, grad_norm, val_loss)?;
        }
        if self.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW {
            return Err(self.diverged()?);
        }
        if due_eval && !is_last {
            // The other ranks wait while rank 0 evaluates, and learn what it found.
            let met = val_loss.map_or(f64::NAN, |v| self.target_met(v));
            let met = self.ranks.writers_value(met)?;
            if met.is_finite() {
                self.end_early(met);
            }
        }
        if due_save {
            self.save(LATEST)?;
        }
        if due_save || (due_eval && is_last) {
            self.ranks.wait_for_writer()?; // the other ranks wait while rank 0 works
        }
        Ok(())
    }

    /// Validation loss `v` in bits per byte if it meets `--target-bpb` for the first
    /// time while the learning rate is at its peak, else NaN.
    fn target_met(&self, v: f64) -> f64 {
        let bpb = bits_per_byte(v, self.val_bytes_per_token);
        let met = self.opts.train.target_bpb.is_some_and(|t| bpb <= t)
            && self.state.target_reached.is_none()
            && !self
                .schedule
                .is_decaying(self.state.step, self.schedule_clock());
        if met {
            bpb
        } else {
            f64::NAN
        }
    }

    /// `--target-bpb` was met (at `val_bpb`) by this step: decay from here, then stop.
    fn end_early(&mut self, val_bpb: f64) {
        let (step, elapsed_s) = (self.state.step, self.schedule_clock());
        self.schedule.end_early(step, elapsed_s);
        self.state.target_reached = Some(TargetReached {
            step,
            elapsed_s,
            val_bpb,
        });
        self.bar.set_length(self.schedule.total);
        if self.ranks.is_writer() {
            let by_time = match self.schedule.budget_s {
                Some(b) => format!(" or {:.1} minutes of training", b / 60.0),
                None => String::new(),
            };
            log_line(
                &self.bar,
                format!(
                    "step {step}: validation reached --target-bpb ({val_bpb:.3} bits/byte); the learning rate decays until step {}{by_time}, whichever comes first",
                    self.schedule.total
                ),
            );
        }
    }

    /// The validation loss; a new best is saved to `ckpt-best`.
    fn evaluate(&mut self, loss: f64) -> Result<f64> {
        let bpt = self.val_bytes_per_token;
        let v = evaluate(&self.trainer.model, &self.val_batches, &self.eval_starts);
        self.state.last_val_loss = Some(v);
        if v.is_finite() && self.state.best_val_loss.is_none_or(|b| v < b) {
            self.state.best_val_loss = Some(v);
            self.save(BEST)?;
        }
        log_line(
            &self.bar,
            format!(
                "step {:>6} | loss {:.4} | val {:.4} ({:.3} bits/byte) | lr {:.2e} | {:.0} tok/s",
                self.state.step,
                loss,
                v,
                bits_per_byte(v, bpt),
                self.lr,
                self.tokens_per_s
            ),
        );
        Ok(v)
    }

    /// One line of `metrics.jsonl`, and the progress bar.
    fn log(&mut self, loss: f64, grad_norm: f64, val_loss: Option<f64>) -> Result<()> {
        let mfu = self.tokens_per_s * self.flops_per_token / (self.peak_gflops * 1e9);
        self.update_elapsed();
        self.metrics.write(&Record {
            step: self.state.step,
            loss: loss.is_finite().then_some(loss),
            val_loss,
            val_bpb: val_loss.map(|v| bits_per_byte(v, self.val_bytes_per_token)),
            lr: self.lr,
            tokens_per_s: self.tokens_per_s,
            mfu: Some(mfu),
            elapsed_s: self.state.elapsed_s,
            tokens_seen: self.state.tokens_seen,
            bytes_seen: Some((self.state.tokens_seen as f64 * self.train_bytes_per_token) as u64),
            grad_norm: grad_norm.is_finite().then_some(grad_norm),
        })?;
        self.bar.set_position(self.state.step);
        self.bar.set_message(format!(
            "loss {loss:.4} ({:.3} bits/byte) lr {:.2e} {:.1}k tok/s MFU {:.0}%",
            bits_per_byte(loss, self.train_bytes_per_token),
            self.lr,
            self.tokens_per_s / 1e3,
            100.0 * mfu
        ));
        Ok(())
    }

    /// After `MAX_NONFINITE_IN_A_ROW` skipped steps: the weights are those of the last
    /// finite update (the save refuses anything else), so they are saved, and resuming
    /// with a lower --lr continues from good weights.
    fn diverged(&mut self) -> Result<Error> {
        let saved = self.save(LATEST)?;
        let (state, n) = (&self.state, self.nonfinite_in_a_row);
        Ok(Error::Diverged(format!(
            "steps {}..={} had a non-finite loss or gradient and were skipped ({} skipped so far); the last good weights are saved in {}; resume with a lower --lr: sympathy train --resume --out {} --lr {:.1e}",
            state.step + 1 - n,
            state.step,
            state.nonfinite_skipped,
            saved.display(),
            self.opts.out.display(),
            self.opts.train.lr / 10.0
        )))
    }

    /// Writes checkpoint `name` of the run folder with the training time so far (rank 0
    /// only; the others return its path).
    fn save(&mut self, name: &str) -> Result<PathBuf> {
        if !self.ranks.is_writer() {
            return Ok(self.opts.out.join(name));
        }
        self.update_elapsed();
        let t = &self.trainer;
        checkpoint::save_atomically(&self.opts.out, name, &t.vs, &t.opt, &self.state)
    }

    /// The training time the schedule reads: this process's clock, or with several
    /// ranks rank 0's as of the last step, so that every rank computes the same rate.
    fn schedule_clock(&self) -> f64 {
        if self.ranks.world_size() > 1 {
            self.agreed_seconds
        } else {
            self.training_seconds()
        }
    }

    /// Training time of the whole run so far, this session included.
    fn training_seconds(&self) -> f64 {
        self.elapsed_before + self.session_start.elapsed().as_secs_f64()
    }

    fn update_elapsed(&mut self) {
        self.state.elapsed_s = self.training_seconds();
    }

    /// The last checkpoint, and where the run stopped.
    fn finish(mut self) -> Result<TrainSummary> {
        let dir = self.save(LATEST)?;
        self.ranks
            .check_same_as_writer(self.trainer.params.values())?;
        self.bar.finish_and_clear();
        let steps = self.state.step - self.first_step;
        if self.ranks.world_size() > 1 && self.ranks.is_writer() && steps > 0 {
            log_line(
                &self.bar,
                format!(
                    "{} ranks; averaging the gradients took {:.2} ms per step ({:.1}% of the training time)",
                    self.ranks.world_size(),
                    self.ranks.allreduce_ms / steps as f64,
                    self.ranks.allreduce_ms / 10.0 / self.session_start.elapsed().as_secs_f64()
                ),
            );
        }
        Ok(TrainSummary {
            step: self.state.step,
            tokens_seen: self.state.tokens_seen,
            last_loss: self.last_loss,
            val_loss: self.state.last_val_loss,
            best_val_loss: self.state.best_val_loss,
            tokens_per_s: self.tokens_per_s,
            val_bytes_per_token: self.val_bytes_per_token,
            checkpoint: dir,
            cause: self.cause,
        })
    }
}

/// Every rank takes rank 0's weights and optimizer state, so that all start alike (its
/// step count is a number on the host, the same on every rank that read the same
/// checkpoint).
fn start_from_writers_state(ranks: &mut Ranks, trainer: &Trainer) -> Result<()> {
    let optimizer_state = trainer.opt.state_tensors();
    let moments = optimizer_state
        .iter()
        .filter(|(name, _)| name != "step")
        .map(|(_, t)| t);
    ranks.copy_from_writer(std::iter::once(trainer.params.values()).chain(moments))
}

/// Validates both configs and returns the tokenizer, whose vocabulary must be the model's.
fn check_configs(opts: &TrainOptions) -> Result<Tokenizer> {
    opts.model.validate()?;
    opts.train.validate()?;
    let tokenizer = opts.tokenizer.clone();
    if opts.model.vocab_size != tokenizer.vocab_size() {
        return Err(Error::config(
            "vocab_size",
            format!(
                "{} does not match the {} tokenizer's {}",
                opts.model.vocab_size,
                tokenizer.name(),
                tokenizer.vocab_size()
            ),
        ));
    }
    Ok(tokenizer)
}

/// Creates the run folder and takes it for this process when it is the `writer` (one
/// at a time; rank 0 of several); a checkpoint in it needs `--resume`, and `--resume`
/// needs one.
/// The corpus as token streams (rank 0 builds the token cache; the others then read
/// it), checked against the context, and the seeded batches over its two splits.
fn load_data(
    opts: &TrainOptions,
    tokenizer: &Tokenizer,
    ranks: &mut Ranks,
) -> Result<(TokenStreams, Batches, Batches)> {
    let (cfg, tcfg) = (&opts.model, &opts.train);
    let streams = ranks.writer_first(|| {
        TokenStreams::load_or_build(&opts.data, &opts.ext, tokenizer, &opts.out.join("tokens"))
    })?;
    streams.check_fits(cfg.block_size)?;
    let batches = |tokens| {
        Batches::new(
            tokens,
            cfg.block_size,
            tcfg.batch_size,
            tcfg.seed,
            opts.device,
        )
    };
    let (train, val) = (batches(&streams.train)?, batches(&streams.val)?);
    Ok((streams, train, val))
}

/// The model and optimizer, fresh or (with `--resume`) from the checkpoint, and the
/// state that is saved with them.
fn build_trainer(opts: &TrainOptions, tokenizer: Tokenizer) -> Result<(Trainer, State)> {
    let (cfg, tcfg) = (&opts.model, &opts.train);
    if opts.resume {
        checkpoint::check_model_file(&checkpoint::resolve(&opts.out)?, cfg)?;
    }
    let mut trainer = Trainer::new(cfg, tcfg, opts.device, Kind::Float, opts.workers)?;
    let data = DataSpec {
        root: opts.data.clone(),
        ext: opts.ext.clone(),
    };
    let state = if opts.resume {
        resume(opts, &mut trainer, data)?
    } else {
        State::new(cfg.clone(), tcfg.clone(), tokenizer, data)
    };
    Ok((trainer, state))
}

fn check_run_folder(opts: &TrainOptions, writer: bool) -> Result<Option<RunLock>> {
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let lock = writer.then(|| RunLock::acquire(&opts.out)).transpose()?;
    let has_checkpoint = checkpoint::resolve(&opts.out).is_ok();
    if has_checkpoint && !opts.resume && writer {
        return Err(Error::config(
            "--out",
            format!("{} already holds a checkpoint; pass --resume to continue it, or choose another --out", opts.out.display()),
        ));
    }
    if opts.resume && !has_checkpoint {
        return Err(Error::config(
            "--resume",
            format!(
                "{} has no checkpoint to resume; drop --resume to start a new run",
                opts.out.display()
            ),
        ));
    }
    Ok(lock)
}

/// Loads the run folder's checkpoint into `trainer` (weights and optimizer state) and
/// returns its state, with this session's training config and data source.
fn resume(opts: &TrainOptions, trainer: &mut Trainer, data: DataSpec) -> Result<State> {
    let dir = checkpoint::resolve(&opts.out)?;
    let saved = checkpoint::read_state(&dir)?;
    if saved.model != opts.model {
        return Err(Error::checkpoint(
            &dir,
            "its model config differs from the one requested; resume without model flags",
        ));
    }
    checkpoint::load_tensors_into(&trainer.vs, &dir.join("model.safetensors"))?;
    checkpoint::load_optimizer(&dir, &mut trainer.opt)?;
    Ok(State {
        train: opts.train.clone(),
        data,
        ..saved
    })
}

fn progress_bar(quiet: bool, max_steps: u64, position: u64) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(max_steps), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(position);
    bar
}

/// Whether an early end recorded in a checkpoint still holds: the run's target (maybe
/// changed on `--resume`) is one the evaluation then met. A lower target, or none,
/// returns the run to its full plan.
fn still_met(tcfg: &TrainConfig, reached: &TargetReached) -> bool {
    tcfg.target_bpb.is_some_and(|t| reached.val_bpb <= t)
}

/// A resumed run already at `--max-steps`: nothing to train, the checkpoint stays.
fn already_done(
    opts: &TrainOptions,
    bar: &ProgressBar,
    state: &State,
    val_bytes_per_token: f64,
) -> Result<TrainSummary> {
    log_line(
        bar,
        format!(
            "already trained to step {} of --max-steps {} ({:.1} of --max-minutes {}); nothing to do",
            state.step,
            opts.train.max_steps,
            state.elapsed_s / 60.0,
            opts.train.max_minutes.map_or("none".into(), |m| m.to_string())
        ),
    );
    bar.finish_and_clear();
    Ok(TrainSummary {
        step: state.step,
        tokens_seen: state.tokens_seen,
        last_loss: None,
        val_loss: state.last_val_loss,
        best_val_loss: state.best_val_loss,
        tokens_per_s: 0.0,
        val_bytes_per_token,
        checkpoint: checkpoint::resolve(&opts.out)?,
        cause: StopCause::MaxSteps,
    })
}

fn log_line(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Where the last checkpoint of `run_dir` is and at which step, for messages.
fn last_good_checkpoint(run_dir: &Path) -> String {
    match checkpoint::resolve(run_dir).and_then(|d| Ok((checkpoint::read_state(&d)?, d))) {
        Ok((state, dir)) => format!(
            "the last good checkpoint is {} (step {})",
            dir.display(),
            state.step
        ),
        Err(_) => "and there is no earlier checkpoint".to_string(),
    }
}
