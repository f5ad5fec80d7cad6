//! The training loop: sample a batch, forward, loss, backward, clip, AdamW step; every
//! so often evaluate on validation windows, log, and checkpoint.
//!
//! A run is a pure function of its configs and seed. Batches depend only on
//! (seed, step) (see [`Batches::get`]), libtorch's generator (dropout) is reseeded from
//! (seed, step) before every step, and AdamW's state is saved, so a run resumed from a
//! checkpoint repeats, bit for bit on the CPU, what the uninterrupted run would do.

pub mod data_parallel;
pub mod eval;
pub mod fused_adamw;
pub mod optim;

use crate::config::{ModelConfig, TrainConfig};
use crate::data::{Batches, TokenStreams};
use crate::model::{flops, Gpt};
use crate::run::checkpoint::{self, DataSpec, State, BEST, LATEST};
use crate::run::metrics::{MetricsWriter, Record};
use crate::runtime::device::Dtype;
use crate::runtime::matmul_peak::quick_peak;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result, Step};
use data_parallel::{check_workers, DataParallel};
pub use eval::evaluate;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use optim::{AdamW, LrSchedule};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// After this many non-finite steps in a row, training stops instead of skipping more.
pub const MAX_NONFINITE_IN_A_ROW: u64 = 5;

pub struct TrainOptions {
    pub data: PathBuf,
    pub ext: String,
    pub out: PathBuf,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub device: Device,
    /// Continue the checkpoint in `out` instead of starting fresh.
    pub resume: bool,
    /// Data-parallel workers (1: libtorch's intra-op threads alone; see `data_parallel`).
    pub workers: usize,
    /// No progress bar and no log lines (tests).
    pub quiet: bool,
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
    pub checkpoint: PathBuf,
    pub cause: StopCause,
}

fn log_line(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Trains as `opts` says and returns where it stopped. Stops at `max_steps`, after
/// `max_minutes`, or when a flag in `stop` is raised; always leaves a checkpoint.
pub fn train(opts: &TrainOptions, stop: &StopFlags) -> Result<TrainSummary> {
    opts.model.validate()?;
    opts.train.validate()?;
    let (cfg, tcfg) = (&opts.model, &opts.train);
    let tokenizer = Tokenizer::default();
    if cfg.vocab_size != tokenizer.vocab_size() {
        return Err(Error::config(
            "vocab_size",
            format!(
                "{} does not match the char tokenizer's {}",
                cfg.vocab_size,
                tokenizer.vocab_size()
            ),
        ));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let has_checkpoint = checkpoint::resolve(&opts.out).is_ok();
    if has_checkpoint && !opts.resume {
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

    let streams =
        TokenStreams::load_or_build(&opts.data, &opts.ext, &tokenizer, &opts.out.join("tokens"))?;
    streams.check_fits(cfg.block_size)?;
    let train_batches = Batches::new(
        &streams.train,
        cfg.block_size,
        tcfg.batch_size,
        tcfg.seed,
        opts.device,
    )?;
    let val_batches = Batches::new(
        &streams.val,
        cfg.block_size,
        tcfg.batch_size,
        tcfg.seed,
        opts.device,
    )?;
    let eval_starts = val_batches.eval_starts(tcfg.eval_windows);

    if opts.resume {
        checkpoint::check_model_file(&checkpoint::resolve(&opts.out)?, cfg)?;
    }
    // Initialisation is seeded too, so two runs with one seed start from the same weights.
    tch::manual_seed(tcfg.seed as i64);
    let vs = nn::VarStore::new(opts.device);
    let mut model = Gpt::new(&vs.root(), cfg);
    let mut opt = AdamW::new(&vs, tcfg);
    let n_workers = check_workers(opts.workers, cfg)?;
    let mut workers = DataParallel::new(cfg, opts.device, &opt, n_workers);
    let schedule = LrSchedule::new(tcfg);
    let mut state = State::new(
        cfg.clone(),
        tcfg.clone(),
        tokenizer.clone(),
        DataSpec {
            root: opts.data.clone(),
            ext: opts.ext.clone(),
        },
    );
    if opts.resume {
        let dir = checkpoint::resolve(&opts.out)?;
        let saved = checkpoint::read_state(&dir)?;
        if saved.model != *cfg {
            return Err(Error::checkpoint(
                &dir,
                "its model config differs from the one requested; resume without model flags",
            ));
        }
        checkpoint::load_tensors_into(&vs, &dir.join("model.safetensors"))?;
        checkpoint::load_optimizer(&dir, &mut opt)?;
        state = State {
            train: tcfg.clone(),
            data: state.data,
            ..saved
        };
    }

    let n_params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    let tokens_per_step = (tcfg.batch_size * cfg.block_size * tcfg.grad_accum) as u64;
    let bar = if opts.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(tcfg.max_steps), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(state.step);
    log_line(&bar, streams.report.summary());
    log_line(
        &bar,
        format!(
            "model: {n_params} parameters ({:.2}M), {} layers, {} heads, n_embd {}, context {}; {} tokens/step on {:?}",
            n_params as f64 / 1e6, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, tokens_per_step, opts.device
        ),
    );
    if state.step >= tcfg.max_steps {
        log_line(
            &bar,
            format!(
                "already trained to step {} (--max-steps {}); nothing to do",
                state.step, tcfg.max_steps
            ),
        );
        bar.finish_and_clear();
        return Ok(TrainSummary {
            step: state.step,
            tokens_seen: state.tokens_seen,
            last_loss: None,
            val_loss: state.last_val_loss,
            best_val_loss: state.best_val_loss,
            tokens_per_s: 0.0,
            checkpoint: checkpoint::resolve(&opts.out)?,
            cause: StopCause::MaxSteps,
        });
    }

    // MFU needs this machine's peak: a ~0.2 s matmul probe (see `bench`).
    let flops_per_token = flops::flops_per_token(cfg);
    let peak_gflops = quick_peak(opts.device, Dtype::Fp32);
    log_line(
        &bar,
        format!(
            "{:.1} MFLOP/token; matmul peak {peak_gflops:.0} GFLOP/s with {} threads (MFU is against it)",
            flops_per_token / 1e6,
            tch::get_num_threads()
        ),
    );

    let mut metrics = MetricsWriter::append(&opts.out.join("metrics.jsonl"))?;
    let session_start = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut nonfinite_in_a_row: u64 = 0;
    let mut last_loss = None;
    let mut tokens_per_s = 0.0;
    let mut cause = StopCause::MaxSteps;

    while state.step < tcfg.max_steps {
        if stop.interrupt.load(Ordering::SeqCst) {
            cause = StopCause::Interrupted;
            break;
        }
        if stop.terminate.load(Ordering::SeqCst) {
            cause = StopCause::Terminated;
            break;
        }
        if tcfg.stop_at_step.is_some_and(|s| state.step >= s) {
            cause = StopCause::StopAtStep;
            break;
        }
        if let Some(minutes) = tcfg.max_minutes {
            if session_start.elapsed().as_secs_f64() >= minutes * 60.0 {
                cause = StopCause::MaxMinutes;
                break;
            }
        }
        let step_start = Instant::now();
        let step = state.step;
        let lr = schedule.at(step);
        tch::manual_seed((tcfg.seed as i64).wrapping_add(step as i64 + 1));

        // Forward and backward over the micro-batches; gradients add up in `.grad`.
        let mut loss_sum = Tensor::zeros([], (Kind::Float, opts.device));
        for micro in 0..tcfg.grad_accum as u64 {
            let (x, y) = train_batches.get(step, micro); // (B, T), (B, T)
            let ga = tcfg.grad_accum as f64;
            loss_sum += if workers.workers() > 1 {
                workers
                    .forward_backward(&mut model, &mut opt, &x, &y, 1.0 / ga)
                    .loss
            } else {
                let loss = Gpt::loss(&model.forward(&x, true), &y) / ga;
                loss.backward();
                loss.detach()
            };
        }
        let loss = loss_sum.double_value(&[]);
        let grad_norm = opt.grad_norm().double_value(&[]);

        state.step += 1;
        state.tokens_seen += tokens_per_step;
        if loss.is_finite() && grad_norm.is_finite() {
            opt.clip_grad_norm(grad_norm, tcfg.grad_clip);
            opt.step(lr);
            nonfinite_in_a_row = 0;
            last_loss = Some(loss);
            // A finite, clipped gradient can still overflow the weights when the LR is
            // absurd. The update is in place, so there is no last good state left in
            // memory: stop, and point at the last checkpoint on disk (never overwrite it).
            let params = vs.trainable_variables();
            if !checkpoint::all_finite(params.iter()) {
                return Err(Error::Diverged(format!(
                    "the update of step {} (lr {lr:.3e}) made the weights non-finite; nothing was saved, {}; lower --lr",
                    state.step,
                    last_good_checkpoint(&opts.out)
                )));
            }
        } else {
            // Skip the update: the weights stay those of the last good step.
            state.nonfinite_skipped += 1;
            nonfinite_in_a_row += 1;
            log_line(
                &bar,
                format!(
                    "step {}: loss {loss} / grad norm {grad_norm} is not finite; update skipped",
                    state.step
                ),
            );
        }
        opt.zero_grad();
        let step_s = step_start.elapsed().as_secs_f64();
        tokens_per_s = tokens_per_step as f64 / step_s;
        let mfu = tokens_per_s * flops_per_token / (peak_gflops * 1e9);

        let is_last = state.step == tcfg.max_steps;
        let mut val_loss = None;
        if state.step.is_multiple_of(tcfg.eval_every) || is_last {
            let v = evaluate(&model, &val_batches, &eval_starts);
            val_loss = Some(v);
            state.last_val_loss = Some(v);
            if v.is_finite() && state.best_val_loss.is_none_or(|b| v < b) {
                state.best_val_loss = Some(v);
                state.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();
                checkpoint::save_atomically(&opts.out, BEST, &vs, &opt, &state)?;
            }
            log_line(
                &bar,
                format!(
                    "step {:>6} | loss {:.4} | val {:.4} ({:.3} bits/char) | lr {:.2e} | {:.0} tok/s",
                    state.step, loss, v, v / std::f64::consts::LN_2, lr, tokens_per_s
                ),
            );
        }
        state.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();
        metrics.write(&Record {
            step: state.step,
            loss: loss.is_finite().then_some(loss),
            val_loss,
            lr,
            tokens_per_s,
            mfu: Some(mfu),
            elapsed_s: state.elapsed_s,
            tokens_seen: state.tokens_seen,
            grad_norm: grad_norm.is_finite().then_some(grad_norm),
        })?;
        if nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW {
            // The weights are those of the last finite update (the save refuses anything
            // else), so resuming with a lower --lr continues from good weights.
            let saved = checkpoint::save_atomically(&opts.out, LATEST, &vs, &opt, &state)?;
            return Err(Error::Diverged(format!(
                "steps {}..={} had a non-finite loss or gradient and were skipped ({} skipped so far); the last good weights are saved in {}; resume with a lower --lr: sympathy train --resume --out {} --lr {:.1e}",
                state.step + 1 - nonfinite_in_a_row,
                state.step,
                state.nonfinite_skipped,
                saved.display(),
                opts.out.display(),
                tcfg.lr / 10.0
            )));
        }
        if state.step.is_multiple_of(tcfg.checkpoint_every) && !is_last {
            checkpoint::save_atomically(&opts.out, LATEST, &vs, &opt, &state)?;
        }
        bar.set_position(state.step);
        bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {:.1}k tok/s MFU {:.0}%",
            tokens_per_s / 1e3,
            100.0 * mfu
        ));
    }

    state.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();
    let dir = checkpoint::save_atomically(&opts.out, LATEST, &vs, &opt, &state)?;
    bar.finish_and_clear();
    Ok(TrainSummary {
        step: state.step,
        tokens_seen: state.tokens_seen,
        last_loss,
        val_loss: state.last_val_loss,
        best_val_loss: state.best_val_loss,
        tokens_per_s,
        checkpoint: dir,
        cause,
    })
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

/// The run folder's latest checkpoint, for messages.
pub fn latest_checkpoint(run_dir: &Path) -> PathBuf {
    run_dir.join(LATEST)
}
