//! `sympathy bench matmul|train|generate`: this machine measured; the measuring is
//! [`sympathy::bench`]'s and [`sympathy::runtime::matmul_peak`]'s.

use super::train::{ArchFlags, ShapeFlags};
use super::{override_fields, set_threads};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use sympathy::bench::training::{self, TrainBench};
use sympathy::bench::{generation, serve};
use sympathy::config::{NsPrecision, Optimizer, Preset};
use sympathy::run::checkpoint;
use sympathy::runtime::device::DeviceChoice;
use sympathy::runtime::device::Dtype as BenchDtype;
use sympathy::runtime::matmul_peak;
use sympathy::tokenizer::Tokenizer;

#[derive(Subcommand)]
pub(crate) enum Bench {
    /// The measured matmul peak in GFLOP/s (fp32; bf16 too on CUDA).
    Matmul(BenchMatmulArgs),
    /// Training steps on random tokens: tokens/s, ms per phase, FLOPs, MFU.
    Train(BenchTrainArgs),
    /// Decode tokens/s with and without the KV cache at several output lengths.
    Generate(BenchGenerateArgs),
    /// `sympathy serve` under N concurrent streaming clients: tokens/s, TTFT, latency.
    Serve(BenchServeArgs),
}

#[derive(Args)]
pub(crate) struct BenchServeArgs {
    /// A run folder or a checkpoint folder.
    #[arg(long, default_value = "runs/default")]
    checkpoint: PathBuf,
    /// Concurrent clients per round, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    /// Streaming requests each client sends in turn at the largest client count; fewer
    /// clients send proportionally more, so every round makes the same tokens.
    #[arg(long, default_value_t = 2)]
    requests: usize,
    /// Rounds per client count, taking turns; each reports its fastest.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Tokens per completion (`<eos>` is banned, so each is exactly this long).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[arg(long, default_value = "def squares(n):\n    return [x**2 for x in")]
    prompt: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Intra-op CPU threads of the inference thread [default: the cores libtorch would
    /// use, less one left to the HTTP side, at least 1].
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
pub(crate) struct BenchMatmulArgs {
    /// Intra-op CPU threads [default: libtorch's, the number of physical cores].
    #[arg(long)]
    threads: Option<i32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
pub(crate) struct BenchTrainArgs {
    /// Defaults for the model and batch flags.
    #[arg(long, value_enum, default_value = "small")]
    preset: Preset,
    #[command(flatten)]
    shape: ShapeFlags,
    #[command(flatten)]
    arch: ArchFlags,
    #[arg(long)]
    batch_size: Option<i64>,
    /// What updates the blocks' weight matrices (see `train --optimizer`) [default:
    /// the preset's]
    #[arg(long, value_enum)]
    optimizer: Option<Optimizer>,
    /// Muon's Newton–Schulz number format (see `train --muon-precision`) [default: auto]
    #[arg(long, value_enum)]
    muon_precision: Option<NsPrecision>,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Number format of weights and activations (bf16 is meant for CUDA).
    #[arg(long, value_enum, default_value = "fp32")]
    dtype: BenchDtype,
    /// Intra-op CPU threads [default: libtorch's, the number of physical cores].
    #[arg(long)]
    threads: Option<i32>,
    /// Data-parallel workers, each on a slice of the batch with one thread (1 =
    /// libtorch's intra-op threads alone).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// `fused`: ReLU², RMSNorm and QK-norm with RoPE through sympathy's fused CPU
    /// kernels, as `train` runs them; `libtorch`: through libtorch's ops, the reference
    #[arg(long, value_enum, default_value = "fused")]
    kernels: Kernels,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

/// Which kernels the model's elementwise layers take (see `model::fused`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kernels {
    Fused,
    Libtorch,
}

#[derive(Args)]
pub(crate) struct BenchGenerateArgs {
    /// A run folder or a checkpoint folder.
    #[arg(long, default_value = "runs/default")]
    checkpoint: PathBuf,
    /// Output lengths to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
    lengths: Vec<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Runs per measurement; the fastest counts.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Intra-op CPU threads [default: libtorch's, the number of physical cores]; with 1,
    /// neither path splits its ops, so the speed-up measures the cache alone.
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

pub(crate) fn cmd_bench_matmul(args: BenchMatmulArgs) -> Result<()> {
    set_threads(args.threads)?;
    let device = args.device.resolve()?;
    let mut dtypes = vec![BenchDtype::Fp32];
    if device.is_cuda() {
        dtypes.push(BenchDtype::Bf16);
    }
    let measured: Vec<_> = dtypes
        .iter()
        .map(|&d| (d, matmul_peak::matmul_peak(device, d)))
        .collect();
    let threads = tch::get_num_threads();
    if args.json {
        let peak = |d| measured.iter().find(|m| m.0 == d).map(|m| m.1 .0);
        let runs: Vec<_> = measured.iter().flat_map(|m| m.1 .1.clone()).collect();
        let report = serde_json::json!({
            "peak_gflops": peak(BenchDtype::Fp32), "peak_gflops_bf16": peak(BenchDtype::Bf16),
            "device": format!("{device:?}").to_lowercase(), "threads": threads, "runs": runs,
        });
        println!("{report}");
    } else {
        for (dtype, (peak, runs)) in &measured {
            for r in runs {
                println!(
                    "{dtype:?} {n}x{n} {:?} x{}: {:.1} GFLOP/s (median of {}; best {:.1})",
                    r.split,
                    r.workers,
                    r.gflops,
                    r.runs,
                    r.best_gflops,
                    n = r.n
                );
            }
            println!("{dtype:?} peak: {peak:.1} GFLOP/s on {device:?} with {threads} threads");
        }
    }
    Ok(())
}

pub(crate) fn cmd_bench_train(args: BenchTrainArgs) -> Result<()> {
    set_threads(args.threads)?;
    let device = args.device.resolve()?;
    if args.dtype == BenchDtype::Bf16 {
        // bf16 matmuls on the CPU are oneDNN's; without it they crawl (see torch_ext).
        sympathy::runtime::torch_ext::set_onednn(true);
    }
    sympathy::model::fused::set_enabled(args.kernels == Kernels::Fused);
    let mut model = args.preset.model(Tokenizer::default().vocab_size());
    args.shape.apply(&mut model);
    args.arch.apply(&mut model.arch);
    let mut train = args.preset.train();
    override_fields!(train, args, [batch_size, optimizer, muon_precision]);
    let r = training::bench_training(&TrainBench {
        model,
        train,
        steps: args.steps,
        warmup: args.warmup,
        device,
        dtype: args.dtype,
        workers: args.workers,
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "model: {} layers, {} heads, n_embd {}, T {}, batch {}; {:.2}M parameters; {:?} on {} with {} threads, {} data-parallel workers",
            r.n_layer, r.n_head, r.n_embd, r.block_size, r.batch_size, r.n_params as f64 / 1e6, r.dtype, r.device, r.threads, r.workers
        );
        println!(
            "step {:.1} ms = forward {:.1} + backward {:.1} + optimizer {:.1} ({}{}; medians of {} steps)",
            r.ms_step, r.ms_forward, r.ms_backward, r.ms_optimizer, r.optimizer.name(),
            r.newton_schulz.map_or(String::new(), |k| format!(", Newton–Schulz in {k}")), r.steps
        );
        println!(
            "{:.0} tokens/s, {:.2} MFLOP/token (6N + 12LTC), {:.1} GFLOP/s = {:.1}% MFU of the measured {:.1} GFLOP/s matmul peak",
            r.tokens_per_s,
            r.flops_per_token / 1e6,
            r.achieved_gflops,
            100.0 * r.mfu,
            r.peak_gflops
        );
        println!(
            "matmul floor: the step's weight products alone take {:.1} ms ({:.0}% of the step) at {:.0}% of the peak; the rest is attention, GELU, LayerNorm, the optimizer",
            r.ms_matmuls,
            100.0 * r.ms_matmuls / r.ms_step,
            100.0 * r.matmul_efficiency
        );
    }
    Ok(())
}

pub(crate) fn cmd_bench_generate(args: BenchGenerateArgs) -> Result<()> {
    set_threads(args.threads)?;
    let device = args.device.resolve()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    let bench = generation::bench_generate(
        &loaded.model,
        &loaded.state.tokenizer,
        &args.lengths,
        args.repeats,
        |line| eprintln!("{line}"),
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&bench)?);
    } else {
        print!("{}", bench.table());
    }
    Ok(())
}

pub(crate) fn cmd_bench_serve(args: BenchServeArgs) -> Result<()> {
    if args.threads.is_some_and(|n| n < 1) {
        anyhow::bail!("--threads: must be at least 1");
    }
    let device = args.device.resolve()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    let bench = serve::ServeBench {
        clients: args.clients,
        requests: args.requests,
        repeats: args.repeats,
        max_tokens: args.max_tokens,
        prompt: args.prompt.replace("\\n", "\n"),
        threads: args.threads,
    };
    let rounds = serve::bench_serve(loaded, &bench, |r| {
        eprintln!(
            "{} clients: {:.0} tokens/s decoding, {:.0} end to end",
            r.clients, r.decode_tokens_per_s, r.tokens_per_s
        )
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"rounds": rounds, "threads": args.threads, "max_tokens": bench.max_tokens})
        );
        return Ok(());
    }
    println!("clients  decode tok/s  vs first  end-to-end tok/s  vs first  TTFT p50/p99 ms  latency p50/p99 ms");
    let first = rounds
        .first()
        .map_or((1.0, 1.0), |r| (r.decode_tokens_per_s, r.tokens_per_s));
    for r in &rounds {
        println!(
            "{:>7}  {:>12.0}  {:>7.2}x  {:>16.0}  {:>7.2}x  {:>7.0} / {:<6.0}  {:>8.0} / {:<6.0}",
            r.clients,
            r.decode_tokens_per_s,
            r.decode_tokens_per_s / first.0,
            r.tokens_per_s,
            r.tokens_per_s / first.1,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.latency_p50_ms,
            r.latency_p99_ms
        );
    }
    Ok(())
}
