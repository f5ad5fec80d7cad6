//! `sympathy bench train`: full training steps (forward, loss, backward, clip, AdamW or
//! Muon, zero-grad) on one batch of random tokens, each phase timed, and the step's MFU
//! against the matmul peak measured in the same process ([`crate::runtime::matmul_peak`]).

use super::matmul_floor::{matmul_floor_ms, matmul_flops};
use crate::config::{ModelConfig, Optimizer, TrainConfig};
use crate::model::flops;
use crate::runtime::device::Dtype;
use crate::runtime::matmul_peak::matmul_peak;
use crate::runtime::timing::{median, sync};
use crate::train::muon;
use crate::train::step::Trainer;
use crate::{Error, Result};
use serde::Serialize;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// What `bench train` measures.
#[derive(Clone, Debug)]
pub struct TrainBench {
    pub model: ModelConfig,
    /// Optimizer settings (lr, betas, weight decay, clip) and `batch_size`.
    pub train: TrainConfig,
    pub steps: usize,
    pub warmup: usize,
    pub device: Device,
    pub dtype: Dtype,
    /// Data-parallel workers (see [`crate::train::data_parallel`]); 1 = intra-op threads only.
    pub workers: usize,
}

/// The `bench train --json` object. Field names are stable: scripts read them.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub tokens_per_s: f64,
    /// Achieved model FLOP/s over `peak_gflops`, in [0, 1].
    pub mfu: f64,
    /// The measured matmul peak of this run, in `dtype`.
    pub peak_gflops: f64,
    pub achieved_gflops: f64,
    pub flops_per_token: f64,
    /// Medians over the timed steps; `ms_step` is the median of whole steps.
    pub ms_step: f64,
    pub ms_forward: f64,
    pub ms_backward: f64,
    /// Clip, the optimizer's update and zero-grad.
    pub ms_optimizer: f64,
    /// What updated the blocks' weight matrices (`adamw` or `muon`).
    pub optimizer: Optimizer,
    /// With Muon, what its Newton–Schulz products multiplied in (`fp32` or `bf16`).
    pub newton_schulz: Option<&'static str>,
    /// The step's weight-matrix products alone, in ms (see `matmul_floor`): what a step
    /// would take if everything else were free.
    pub ms_matmuls: f64,
    /// The FLOP/s of those products over `peak_gflops`: how close the kernels come to
    /// the peak at this model's (often skinny) shapes.
    pub matmul_efficiency: f64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_embd: i64,
    pub block_size: i64,
    pub batch_size: i64,
    pub vocab_size: i64,
    pub n_params: i64,
    pub steps: usize,
    pub warmup: usize,
    pub threads: i32,
    pub workers: usize,
    pub device: String,
    pub dtype: Dtype,
    /// The last step's loss, to show the steps did real work (it falls, since the
    /// batch repeats).
    pub loss: f64,
}

/// `bench train`: `warmup` then `steps` full training steps (forward, loss, backward,
/// grad-norm clip, AdamW, zero-grad) on one batch of random tokens, each phase timed.
pub fn bench_training(b: &TrainBench) -> Result<TrainReport> {
    b.model.validate()?;
    b.train.validate()?;
    if b.steps == 0 {
        return Err(Error::config("--steps", "must be at least 1"));
    }
    let (cfg, tcfg, device) = (&b.model, &b.train, b.device);
    // Weights, activations and moments all in the one dtype (bf16 too): a throughput
    // measurement, not a training recipe (that would keep fp32 master weights).
    let mut trainer = Trainer::new(cfg, tcfg, device, b.dtype.kind(), b.workers)?;
    trainer.sync_phases = true;
    let (bsz, t) = (tcfg.batch_size, cfg.block_size);
    let window = Tensor::randint(cfg.vocab_size, [bsz, t + 1], (Kind::Int64, device));
    let (x, y) = (window.narrow(1, 0, t), window.narrow(1, 1, t)); // (B, T), (B, T)

    // The MFU scale. On the CPU it is the fp32 peak, as `bench matmul` measures there:
    // without native bf16 (AVX2) libtorch's bf16 products fall back to a plain loop that
    // would take minutes to probe at the peak's sizes.
    let peak_dtype = if device == Device::Cpu {
        Dtype::Fp32
    } else {
        b.dtype
    };
    let peak = matmul_peak(device, peak_dtype).0;
    let mut times = PhaseTimes::default();
    let mut loss_value = f64::NAN;
    for i in 0..b.warmup + b.steps {
        let (loss, step_times) = timed_step(&mut trainer, &x, &y, tcfg.lr);
        loss_value = loss;
        if i >= b.warmup {
            times.push(step_times);
        }
    }
    Ok(report(b, &trainer, &times, peak, loss_value))
}

/// The ms of each phase of the timed steps: forward, backward, optimizer, whole step.
#[derive(Default)]
struct PhaseTimes {
    forward: Vec<f64>,
    backward: Vec<f64>,
    optimizer: Vec<f64>,
    step: Vec<f64>,
}

impl PhaseTimes {
    fn push(&mut self, [forward, backward, optimizer, step]: [f64; 4]) {
        self.forward.push(forward);
        self.backward.push(backward);
        self.optimizer.push(optimizer);
        self.step.push(step);
    }
}

/// One training step as `train` takes it, the device synchronised between phases;
/// returns the loss and the ms of forward, backward, optimizer and the whole step.
fn timed_step(trainer: &mut Trainer, x: &Tensor, y: &Tensor, lr: f64) -> (f64, [f64; 4]) {
    let device = x.device();
    sync(device);
    let t0 = Instant::now();
    let out = trainer.forward_backward(x, y, 1);
    let t1 = t0 + Duration::from_secs_f64(out.ms_forward / 1e3);
    sync(device);
    let t2 = Instant::now();
    // As `train` does: the norm comes to the host to decide the clip.
    let norm = trainer.grad_norm();
    trainer.update(norm, lr);
    trainer.zero_grad();
    sync(device);
    let t3 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let times = [ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t0, t3)];
    (out.loss.double_value(&[]), times)
}

/// The report of the timed steps, with the step's weight products timed on their own.
fn report(
    b: &TrainBench,
    trainer: &Trainer,
    times: &PhaseTimes,
    peak: f64,
    loss: f64,
) -> TrainReport {
    let (cfg, device) = (&b.model, b.device);
    let (bsz, t) = (b.train.batch_size, cfg.block_size);
    let ms_step = median(&times.step);
    let tokens_per_s = (bsz * t) as f64 / (ms_step / 1e3);
    let flops_per_token = flops::flops_per_token(cfg);
    let achieved_gflops = tokens_per_s * flops_per_token / 1e9;
    let ms_matmuls = matmul_floor_ms(cfg, bsz, b.dtype.kind(), device, 5);
    let products_gflops = matmul_flops(cfg, bsz) / (ms_matmuls / 1e3) / 1e9;
    TrainReport {
        tokens_per_s,
        mfu: achieved_gflops / peak,
        peak_gflops: peak,
        achieved_gflops,
        flops_per_token,
        ms_step,
        ms_forward: median(&times.forward),
        ms_backward: median(&times.backward),
        ms_optimizer: median(&times.optimizer),
        optimizer: b.train.optimizer,
        newton_schulz: (b.train.optimizer == Optimizer::Muon).then(|| {
            match muon::ns_kind(b.train.muon_precision, device) {
                Kind::BFloat16 => "bf16",
                _ => "fp32",
            }
        }),
        ms_matmuls,
        matmul_efficiency: products_gflops / peak,
        n_layer: cfg.n_layer,
        n_head: cfg.n_head,
        n_embd: cfg.n_embd,
        block_size: cfg.block_size,
        batch_size: bsz,
        vocab_size: cfg.vocab_size,
        n_params: trainer.n_params(),
        steps: b.steps,
        warmup: b.warmup,
        threads: tch::get_num_threads(),
        workers: trainer.workers(),
        device: format!("{device:?}").to_lowercase(),
        dtype: b.dtype,
        loss,
    }
}
