//! `sympathy bench`: what this machine can do, measured rather than looked up.
//!
//! nanoGPT reports MFU against a hard-coded A100 peak, which is wrong on every other
//! machine. Here the peak is the median rate of large square matmuls measured in the
//! same process, with the threads training uses, and MFU is the training step's model
//! FLOPs ([`crate::flops`]) per second divided by that peak: the share of the machine's
//! best arithmetic rate that the whole step (attention, norms, optimizer and all) keeps.
//!
//! Timing follows the usual rules: warm-up runs first (allocator, kernel selection,
//! lazily loaded libraries), then the median of several runs, which a busy neighbour
//! moves less than the mean. On CUDA the device is synchronised around each timed
//! phase, since kernels are queued and return at once.

use crate::config::{ModelConfig, TrainConfig};
use crate::data_parallel::{one_thread_each, DataParallel};
use crate::flops;
use crate::matmul_floor::{matmul_floor_ms, matmul_flops};
use crate::model::Gpt;
use crate::optim::AdamW;
use crate::{Error, Result};
use serde::Serialize;
use std::sync::Barrier;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// The number formats `bench` measures in. `bf16` is the CUDA training format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Fp32,
    Bf16,
}

impl Dtype {
    pub fn kind(self) -> Kind {
        match self {
            Dtype::Fp32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
        }
    }
}

/// Waits for the queued kernels of `device` (a no-op on the CPU, where ops are eager).
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The median of `xs` (which must not be empty).
pub(crate) fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// How the product's work is spread over the CPU's cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// One product at a time, split by libtorch over its intra-op threads (as a single
    /// big matmul, or training with one worker, runs).
    IntraOp,
    /// One product per core at once, each on one thread (as training's data-parallel
    /// workers run): no thread waits for another inside a product.
    PerCore,
}

/// One matmul size, measured.
#[derive(Clone, Debug, Serialize)]
pub struct MatmulRun {
    pub dtype: Dtype,
    /// The side of the square matrices.
    pub n: i64,
    pub split: Split,
    /// Products running at once (1 for `IntraOp`).
    pub workers: usize,
    /// Median over `runs` timed rounds, after warm-up, in GFLOP/s of all workers.
    pub gflops: f64,
    /// The fastest round (on a busy machine, closer to the hardware).
    pub best_gflops: f64,
    pub runs: usize,
}

/// Times `warmup + runs` products `a·b` into a preallocated output (so the allocator is
/// not part of the figure), each after `barrier` if given; returns the timed seconds.
fn timed_products(
    device: Device,
    dtype: Dtype,
    n: i64,
    warmup: usize,
    runs: usize,
    barrier: Option<&Barrier>,
) -> Vec<f64> {
    let opts = (dtype.kind(), device);
    let (a, b) = (Tensor::randn([n, n], opts), Tensor::randn([n, n], opts));
    let out = Tensor::empty([n, n], opts);
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        if let Some(barrier) = barrier {
            barrier.wait();
        }
        sync(device);
        let start = Instant::now();
        let _ = a.matmul_out(&out, &b);
        sync(device);
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times
}

/// `n×n · n×n` products in `dtype` on `device`, `2·n³` FLOPs each, split over the
/// intra-op threads: the median of `runs` after `warmup` untimed ones.
pub fn matmul_gflops(
    device: Device,
    dtype: Dtype,
    n: i64,
    warmup: usize,
    runs: usize,
) -> MatmulRun {
    let times = timed_products(device, dtype, n, warmup, runs, None);
    rates(dtype, n, Split::IntraOp, 1, &times)
}

/// `workers` CPU threads, each with one intra-op thread, each multiplying its own
/// matrices, started together every round; a round's rate is all their FLOPs over the
/// slowest one's time.
pub fn matmul_gflops_per_core(
    dtype: Dtype,
    n: i64,
    workers: usize,
    warmup: usize,
    runs: usize,
) -> MatmulRun {
    let barrier = Barrier::new(workers);
    let jobs: Vec<_> = (0..workers)
        .map(|_| || timed_products(Device::Cpu, dtype, n, warmup, runs, Some(&barrier)))
        .collect();
    let per_worker = one_thread_each(jobs);
    let slowest: Vec<f64> = (0..runs)
        .map(|i| per_worker.iter().map(|t| t[i]).fold(0.0, f64::max))
        .collect();
    rates(dtype, n, Split::PerCore, workers, &slowest)
}

fn rates(dtype: Dtype, n: i64, split: Split, workers: usize, times: &[f64]) -> MatmulRun {
    let flops = workers as f64 * 2.0 * (n as f64).powi(3);
    let fastest = times.iter().copied().fold(f64::INFINITY, f64::min);
    MatmulRun {
        dtype,
        n,
        split,
        workers,
        gflops: flops / median(times) / 1e9,
        best_gflops: flops / fastest / 1e9,
        runs: times.len(),
    }
}

/// The square sizes that `bench matmul` tries: large enough that the product is bound
/// by arithmetic, not by memory or per-call overhead, and ~1 s for all of them. Which
/// size is fastest depends on the caches (and, on a shared machine, on how often a
/// long product is preempted), so the peak is the best size's median.
fn peak_sizes(device: Device) -> &'static [i64] {
    match device {
        Device::Cpu => &[512, 1024, 2048],
        _ => &[4096, 8192],
    }
}

/// Every size in `dtype`, split over the intra-op threads and (on a CPU with several)
/// one product per core, `warmup` and `runs` each; the peak is the highest median.
/// On an idle machine the two splits agree; on a busy one, threads that wait for each
/// other inside a product lose more, and training's workers don't wait, so the peak
/// is the better of the two.
fn peak_of(
    device: Device,
    dtype: Dtype,
    sizes: &[i64],
    warmup: usize,
    runs: usize,
) -> (f64, Vec<MatmulRun>) {
    let threads = tch::get_num_threads().max(1) as usize;
    let mut out = vec![];
    for &n in sizes {
        out.push(matmul_gflops(device, dtype, n, warmup, runs));
        if device == Device::Cpu && threads > 1 {
            out.push(matmul_gflops_per_core(dtype, n, threads, warmup, runs));
        }
    }
    let peak = out.iter().map(|r| r.gflops).fold(0.0, f64::max);
    (peak, out)
}

/// `bench matmul`: the peak in `dtype` and every measurement behind it.
pub fn matmul_peak(device: Device, dtype: Dtype) -> (f64, Vec<MatmulRun>) {
    peak_of(device, dtype, peak_sizes(device), 2, 5)
}

/// A cheap peak for the start of `train` (about 0.2 s on an idle 2-core CPU): one size,
/// two warm-ups, the *fastest* of five rather than the median. The first session saw a
/// median of three read 165 GFLOP/s once and 314 once on the same idle machine: one
/// disturbed product was enough, and the figure is the MFU scale for the whole run.
/// Other work only ever slows a product down, so the fastest is the least disturbed
/// (Python's `timeit` reasons the same way).
pub fn quick_peak(device: Device, dtype: Dtype) -> f64 {
    let n = if device == Device::Cpu { 1024 } else { 4096 };
    let (_, runs) = peak_of(device, dtype, &[n], 2, 5);
    runs.iter().map(|r| r.best_gflops).fold(0.0, f64::max)
}

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
    /// Data-parallel workers (see [`crate::data_parallel`]); 1 = intra-op threads only.
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
    pub ms_optimizer: f64,
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
pub fn train(b: &TrainBench) -> Result<TrainReport> {
    b.model.validate()?;
    b.train.validate()?;
    if b.steps == 0 {
        return Err(Error::config("--steps", "must be at least 1"));
    }
    let (cfg, tcfg, device) = (&b.model, &b.train, b.device);
    let tokens = tcfg.batch_size * cfg.block_size;
    let purpose = crate::memory::Use::Train { tokens };
    crate::memory::check_fits(cfg, purpose, device == Device::Cpu)?;
    tch::manual_seed(tcfg.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let model = Gpt::new(&vs.root(), cfg);
    if b.dtype == Dtype::Bf16 {
        // Weights, activations and moments all in bf16: a throughput measurement, not
        // a training recipe (that would keep fp32 master weights).
        vs.bfloat16();
    }
    let mut opt = AdamW::new(&vs, tcfg);
    let mut model = model;
    let workers = crate::data_parallel::check_workers(b.workers, cfg)?;
    let mut dp = DataParallel::new(cfg, device, &opt, workers);
    let n_params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();

    let (bsz, t) = (tcfg.batch_size, cfg.block_size);
    let window = Tensor::randint(cfg.vocab_size, [bsz, t + 1], (Kind::Int64, device));
    let (x, y) = (window.narrow(1, 0, t), window.narrow(1, 1, t)); // (B, T), (B, T)

    let peak = matmul_peak(device, b.dtype).0;
    let (mut fwd, mut bwd, mut opt_ms, mut step_ms) = (vec![], vec![], vec![], vec![]);
    let mut loss_value = f64::NAN;
    for i in 0..b.warmup + b.steps {
        sync(device);
        let t0 = Instant::now();
        let (loss, t1) = if dp.workers() > 1 {
            let out = dp.forward_backward(&mut model, &mut opt, &x, &y, 1.0);
            (
                out.loss,
                t0 + std::time::Duration::from_secs_f64(out.ms_forward / 1e3),
            )
        } else {
            let loss = Gpt::loss(&model.forward(&x, true), &y);
            sync(device);
            let t1 = Instant::now();
            loss.backward();
            (loss, t1)
        };
        sync(device);
        let t2 = Instant::now();
        // As `train` does: the norm comes to the host to decide the clip.
        let norm = opt.grad_norm().double_value(&[]);
        opt.clip_grad_norm(norm, tcfg.grad_clip);
        opt.step(tcfg.lr);
        opt.zero_grad();
        sync(device);
        let t3 = Instant::now();
        loss_value = loss.double_value(&[]);
        if i >= b.warmup {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            fwd.push(ms(t0, t1));
            bwd.push(ms(t1, t2));
            opt_ms.push(ms(t2, t3));
            step_ms.push(ms(t0, t3));
        }
    }

    let ms_step = median(&step_ms);
    let tokens_per_s = (bsz * t) as f64 / (ms_step / 1e3);
    let flops_per_token = flops::flops_per_token(cfg);
    let achieved_gflops = tokens_per_s * flops_per_token / 1e9;
    let ms_matmuls = matmul_floor_ms(cfg, bsz, b.dtype.kind(), device, 5);
    let products_gflops = matmul_flops(cfg, bsz) / (ms_matmuls / 1e3) / 1e9;
    Ok(TrainReport {
        tokens_per_s,
        mfu: achieved_gflops / peak,
        peak_gflops: peak,
        achieved_gflops,
        flops_per_token,
        ms_step,
        ms_forward: median(&fwd),
        ms_backward: median(&bwd),
        ms_optimizer: median(&opt_ms),
        ms_matmuls,
        matmul_efficiency: products_gflops / peak,
        n_layer: cfg.n_layer,
        n_head: cfg.n_head,
        n_embd: cfg.n_embd,
        block_size: cfg.block_size,
        batch_size: bsz,
        vocab_size: cfg.vocab_size,
        n_params,
        steps: b.steps,
        warmup: b.warmup,
        threads: tch::get_num_threads(),
        workers: dp.workers(),
        device: format!("{device:?}").to_lowercase(),
        dtype: b.dtype,
        loss: loss_value,
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
