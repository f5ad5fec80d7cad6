//! The machine's matmul peak, measured rather than looked up.
//!
//! nanoGPT reports MFU against a hard-coded A100 peak, which is wrong on every other
//! machine. Here the peak is the median rate of large square matmuls measured in the
//! same process, with the threads training uses, and MFU is the training step's model
//! FLOPs ([`crate::model::flops`]) per second divided by that peak: the share of the
//! machine's best arithmetic rate that the whole step (attention, norms, optimizer and
//! all) keeps. `train` takes the quick probe ([`quick_peak`]) for its MFU column;
//! `bench matmul` reports every measurement behind [`matmul_peak`].
//!
//! Timing follows the usual rules: warm-up runs first (allocator, kernel selection,
//! lazily loaded libraries), then the median of several runs, which a busy neighbour
//! moves less than the mean. On CUDA the device is synchronised around each timed
//! phase, since kernels are queued and return at once.

use super::device::Dtype;
use super::threads::one_thread_each;
use super::timing::{median, sync};
use serde::Serialize;
use std::sync::Barrier;
use std::time::Instant;
use tch::{Device, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThreadSplit {
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
    pub split: ThreadSplit,
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
    rates(dtype, n, ThreadSplit::IntraOp, 1, &times)
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
    rates(dtype, n, ThreadSplit::PerCore, workers, &slowest)
}

fn rates(dtype: Dtype, n: i64, split: ThreadSplit, workers: usize, times: &[f64]) -> MatmulRun {
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
