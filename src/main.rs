//! The `sympathy` command line: parses flags and calls the library. No logic lives
//! here beyond turning flags into configs and errors into one-line messages.

use anyhow::{bail, Result};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use sympathy::bench::{self, Dtype as BenchDtype, TrainBench};
use sympathy::bench_generate;
use sympathy::checkpoint;
use sympathy::config::{DeviceChoice, ModelConfig, Preset, TrainConfig};
use sympathy::data::{self, Batches, TokenStreams};
use sympathy::generate::{self, GenerateConfig};
use sympathy::interop;
use sympathy::sampling::SamplingConfig;
use sympathy::tokenizer::Tokenizer;
use sympathy::train::{self, StopCause, StopFlags, TrainOptions};
use sympathy::{explain, inspect, plot};

#[derive(Parser)]
#[command(
    name = "sympathy",
    version,
    about = "Train a GPT from scratch, generate with it, and see inside it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
enum Command {
    /// Train a GPT on a folder of source files (default: the Python standard library).
    #[command(allow_negative_numbers = true)]
    Train(TrainArgs),
    /// Complete a prompt (--prompt), or read prompts interactively from stdin.
    #[command(allow_negative_numbers = true)]
    Generate(GenerateArgs),
    /// Mean validation loss of a checkpoint, in nats and bits per character.
    #[command(allow_negative_numbers = true)]
    Eval(EvalArgs),
    /// Convert a nanoGPT checkpoint into a sympathy run folder.
    Import(ImportArgs),
    /// Write a checkpoint in another format (Hugging Face GPT-2).
    Export(ExportArgs),
    /// Parameters, memory, FLOPs per token and training summary of a checkpoint or preset.
    Inspect(InspectArgs),
    /// Per-position predictions, attention maps (PNG) and the logit lens for a prompt.
    Explain(ExplainArgs),
    /// Loss and learning-rate curves of one or more runs, as a PNG.
    Plot(PlotArgs),
    /// Measure this machine: matmul peak, training throughput and MFU, generation speed.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportFrom {
    /// nanoGPT's ckpt.pt (or the folder scripts/nanogpt_to_safetensors.py writes).
    Nanogpt,
}

#[derive(Args)]
struct ImportArgs {
    #[arg(long, value_enum)]
    from: ImportFrom,
    /// nanoGPT's ckpt.pt, or a folder converted by scripts/nanogpt_to_safetensors.py.
    ckpt: PathBuf,
    /// The run folder to create (its ckpt-latest/ holds the imported model).
    #[arg(long)]
    out: PathBuf,
    /// The dataset's meta.pkl, for a char model (its ids are remapped to ASCII codes).
    #[arg(long)]
    meta: Option<PathBuf>,
    /// Python with PyTorch, to read the .pt [default: $SYMPATHY_PYTHON, .venv/bin/python, python3].
    #[arg(long)]
    python: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportTo {
    /// Hugging Face GPT2LMHeadModel: model.safetensors + config.json.
    SafetensorsHf,
}

#[derive(Args)]
struct ExportArgs {
    #[arg(long, value_enum)]
    to: ExportTo,
    /// A run folder or a checkpoint folder.
    checkpoint: PathBuf,
    /// The folder to write (created if missing; its model.safetensors and config.json are replaced).
    out_dir: PathBuf,
}

#[derive(Subcommand)]
enum Bench {
    /// The measured matmul peak in GFLOP/s (fp32; bf16 too on CUDA).
    Matmul(BenchMatmulArgs),
    /// Training steps on random tokens: tokens/s, ms per phase, FLOPs, MFU.
    Train(BenchTrainArgs),
    /// Decode tokens/s with and without the KV cache at several output lengths.
    Generate(BenchGenerateArgs),
}

#[derive(Args)]
struct BenchMatmulArgs {
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
struct BenchTrainArgs {
    /// Defaults for the model and batch flags.
    #[arg(long, value_enum, default_value = "small")]
    preset: Preset,
    #[arg(long)]
    n_layer: Option<i64>,
    #[arg(long)]
    n_head: Option<i64>,
    #[arg(long)]
    n_embd: Option<i64>,
    /// Context length T.
    #[arg(long)]
    block_size: Option<i64>,
    #[arg(long)]
    batch_size: Option<i64>,
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
    /// Data-parallel workers, each on a slice of the batch with one thread
    /// [default: 1, libtorch's intra-op threads alone].
    #[arg(long)]
    workers: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
struct BenchGenerateArgs {
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
    /// Intra-op CPU threads [default: libtorch's, the number of physical cores]; one-token
    /// decode steps are too small to split, so small models often decode faster with 1.
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
struct TrainArgs {
    /// Folder of source files [default: python3's stdlib, without site-packages].
    #[arg(long)]
    data: Option<PathBuf>,
    /// File extension of the corpus files.
    #[arg(long, default_value = "py")]
    ext: String,
    /// Run folder: checkpoints, metrics.jsonl, token cache.
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// Defaults for every model and training flag [default: small; with --resume, the
    /// checkpoint's].
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Continue the checkpoint in --out (model flags must then match it).
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Data-parallel workers, each on a slice of the batch with one thread: worth trying
    /// on a machine busy with other work (1 = libtorch's intra-op threads alone).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    model: ModelFlags,
    #[command(flatten)]
    train: TrainFlags,
}

/// Model shape overrides (unset = the preset's, or the checkpoint's with --resume).
#[derive(Args)]
struct ModelFlags {
    #[arg(long)]
    n_layer: Option<i64>,
    #[arg(long)]
    n_head: Option<i64>,
    #[arg(long)]
    n_embd: Option<i64>,
    /// Context length T.
    #[arg(long)]
    block_size: Option<i64>,
    #[arg(long)]
    dropout: Option<f64>,
}

/// Training overrides (unset = the preset's, or the checkpoint's with --resume).
#[derive(Args)]
struct TrainFlags {
    #[arg(long)]
    max_steps: Option<u64>,
    /// Stop after this many minutes of training (a checkpoint is written).
    #[arg(long)]
    max_minutes: Option<f64>,
    #[arg(long)]
    batch_size: Option<i64>,
    #[arg(long)]
    grad_accum: Option<i64>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long)]
    warmup_steps: Option<u64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    eval_every: Option<u64>,
    #[arg(long)]
    eval_windows: Option<i64>,
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Stop at this step with a checkpoint, keeping the LR schedule of --max-steps; go on
    /// later with --resume.
    #[arg(long)]
    stop_at_step: Option<u64>,
}

#[derive(Args)]
struct GenerateArgs {
    /// A run folder or a checkpoint folder.
    #[arg(long, default_value = "runs/default")]
    checkpoint: PathBuf,
    /// Complete this and exit; without it, read prompts from stdin.
    #[arg(long)]
    prompt: Option<String>,
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    /// End the completion before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Use at most this many positions of context (≤ the model's).
    #[arg(long)]
    block_size: Option<i64>,
    /// Recompute the whole window for every token (the reference path).
    #[arg(long)]
    no_cache: bool,
    /// Print one JSON object per completion instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Completions of the prompt, generated together in one batch (seeds seed, seed+1, …).
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
    /// Do not stop at the end-of-file token; generate until --max-tokens or --stop.
    #[arg(long)]
    ignore_eos: bool,
    /// Intra-op CPU threads [default: libtorch's, the number of physical cores]; small
    /// models often decode faster with 1.
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long, default_value = "runs/default")]
    checkpoint: PathBuf,
    /// Corpus folder [default: the one the checkpoint was trained on].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Number of validation windows (spread evenly over the split).
    #[arg(long, default_value_t = 512)]
    windows: i64,
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["checkpoint", "preset"])))]
struct InspectArgs {
    /// A run folder or a checkpoint folder.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// A preset before training; the model flags below change its shape.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    #[command(flatten)]
    model: ModelFlags,
    /// Windows per step for the memory estimate [default: the run's or preset's].
    #[arg(long)]
    batch_size: Option<i64>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExplainArgs {
    /// A run folder or a checkpoint folder.
    #[arg(long, default_value = "runs/default")]
    checkpoint: PathBuf,
    #[arg(long)]
    prompt: String,
    /// Folder for the attention maps (PNG); without it only the tables are printed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Predictions shown per position.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Show only the last N positions in the table.
    #[arg(long)]
    last: Option<usize>,
    /// Draw only this layer (0-based).
    #[arg(long)]
    layer: Option<i64>,
    /// With --layer: one large map of this head (0-based).
    #[arg(long, requires = "layer")]
    head: Option<i64>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
struct PlotArgs {
    /// Run folders with a metrics.jsonl; several are drawn on one chart.
    #[arg(required = true, value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// The PNG to write [default: RUN_DIR/loss.png for one run, loss.png for several].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print in full; a usage error is one line and exit code 1,
        // like every other error.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{} (see --help)", message.join(" "));
            std::process::exit(1);
        }
    };
    // GELU on ATen's kernel rather than oneDNN's: ~8× faster on one decode row, and
    // faster over forward plus backward on a training batch (see src/torch_ext.rs).
    sympathy::torch_ext::set_onednn(false);
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the cause chain joined (skipping causes the message already
            // quotes, as `Error::Io` does), never a backtrace.
            let mut msg = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if msg.is_empty() {
                    msg = cause;
                } else if !msg.contains(&cause) {
                    msg = format!("{msg}: {cause}");
                }
            }
            eprintln!("error: {msg}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Train(args) => cmd_train(args),
        Command::Generate(args) => cmd_generate(args).map(|_| 0),
        Command::Eval(args) => cmd_eval(args).map(|_| 0),
        Command::Import(args) => cmd_import(args).map(|_| 0),
        Command::Export(args) => cmd_export(args).map(|_| 0),
        Command::Inspect(args) => cmd_inspect(args).map(|_| 0),
        Command::Explain(args) => cmd_explain(args).map(|_| 0),
        Command::Plot(args) => cmd_plot(args).map(|_| 0),
        Command::Bench(Bench::Matmul(args)) => cmd_bench_matmul(args).map(|_| 0),
        Command::Bench(Bench::Train(args)) => cmd_bench_train(args).map(|_| 0),
        Command::Bench(Bench::Generate(args)) => cmd_bench_generate(args).map(|_| 0),
    }
}

/// Applies `Some` overrides to a config, naming each field once.
macro_rules! override_fields {
    ($cfg:expr, $flags:expr, [$($field:ident),*]) => {
        $( if let Some(v) = $flags.$field { $cfg.$field = v; } )*
    };
}

fn cmd_train(args: TrainArgs) -> Result<i32> {
    let device = args.device.resolve()?;
    let (mut model, mut tcfg, saved_data) = if args.resume {
        let dir = checkpoint::resolve(&args.out)?;
        let state = checkpoint::read_state(&dir)?;
        check_resume_flags(&args, &state.model)?;
        note_resume_changes(&args.train, &state.train);
        (state.model, state.train, Some(state.data))
    } else {
        let preset = args.preset.unwrap_or(Preset::Small);
        (
            preset.model(Tokenizer::default().vocab_size()),
            preset.train(),
            None,
        )
    };
    override_fields!(
        model,
        args.model,
        [n_layer, n_head, n_embd, block_size, dropout]
    );
    override_fields!(
        tcfg,
        args.train,
        [
            max_steps,
            batch_size,
            grad_accum,
            lr,
            min_lr,
            warmup_steps,
            weight_decay,
            grad_clip,
            seed,
            eval_every,
            eval_windows,
            checkpoint_every
        ]
    );
    if let Some(m) = args.train.max_minutes {
        tcfg.max_minutes = Some(m);
    }
    tcfg.stop_at_step = args.train.stop_at_step;
    let (data, ext) = match (args.data, saved_data) {
        (Some(d), _) => (d, args.ext),
        (None, Some(saved)) => (saved.root, saved.ext),
        (None, None) => (data::default_corpus_dir()?, args.ext),
    };
    let opts = TrainOptions {
        data,
        ext,
        out: args.out.clone(),
        model,
        train: tcfg,
        device,
        resume: args.resume,
        workers: args.workers,
        quiet: false,
    };

    let flags = StopFlags::default();
    // A first Ctrl-C (or SIGTERM) sets the flag: the loop finishes its step and saves.
    // A second one finds the flag set and exits at once.
    for (signal, flag, code) in [
        (signal_hook::consts::SIGINT, &flags.interrupt, 130),
        (signal_hook::consts::SIGTERM, &flags.terminate, 143),
    ] {
        signal_hook::flag::register_conditional_shutdown(signal, code, flag.clone())?;
        signal_hook::flag::register(signal, flag.clone())?;
    }

    let summary = train::train(&opts, &flags)?;
    // The loss curves are a bonus: a run that trained must not fail for a picture.
    let png = args.out.join("loss.png");
    warn_if_no_fonts();
    match plot::plot_runs(std::slice::from_ref(&args.out), &png) {
        Ok(()) => eprintln!("loss curves: {}", png.display()),
        Err(e) => eprintln!("warning: no loss curves: {e}"),
    }
    let val = summary
        .val_loss
        .map(|v| {
            format!(
                "val loss {v:.4} ({:.3} bits/char)",
                v / std::f64::consts::LN_2
            )
        })
        .unwrap_or_else(|| "no validation yet".into());
    eprintln!(
        "trained to step {} ({:.2}M tokens, {:.0} tok/s at the end), {val}; checkpoint {}",
        summary.step,
        summary.tokens_seen as f64 / 1e6,
        summary.tokens_per_s,
        summary.checkpoint.display()
    );
    let resume = format!("sympathy train --resume --out {}", args.out.display());
    Ok(match summary.cause {
        StopCause::MaxSteps | StopCause::MaxMinutes => 0,
        StopCause::StopAtStep => {
            eprintln!(
                "stopped at step {} as --stop-at-step asked; continue with: {resume}",
                summary.step
            );
            0
        }
        cause => {
            let (signal, code) = if cause == StopCause::Interrupted {
                ("SIGINT", 130)
            } else {
                ("SIGTERM", 143)
            };
            eprintln!(
                "stopped by {signal} after step {}, checkpoint saved in {}; resume with: {resume}",
                summary.step,
                summary.checkpoint.display()
            );
            code
        }
    })
}

/// With --resume, a model flag (or a --preset) may repeat the saved value but not
/// contradict it: the weights have the saved shape.
fn check_resume_flags(args: &TrainArgs, saved: &ModelConfig) -> Result<()> {
    if let Some(preset) = args.preset {
        if preset.model(saved.vocab_size) != *saved {
            let name = preset.to_possible_value().expect("presets have names");
            bail!("--preset: {} describes another model than the checkpoint in {}; drop --preset to resume", name.get_name(), args.out.display());
        }
    }
    let m = &args.model;
    let changed = [
        differs("--n-layer", m.n_layer, saved.n_layer),
        differs("--n-head", m.n_head, saved.n_head),
        differs("--n-embd", m.n_embd, saved.n_embd),
        differs("--block-size", m.block_size, saved.block_size),
        differs("--dropout", m.dropout, saved.dropout),
    ];
    if let Some((flag, given, saved)) = changed.into_iter().flatten().next() {
        bail!("{flag}: {given} contradicts the checkpoint's {saved}; drop the flag to resume, or train a new --out");
    }
    Ok(())
}

/// With --resume, training flags may change the run (a longer --max-steps, a lower --lr
/// after a divergence); each change is said once, since the run then no longer repeats
/// the uninterrupted one.
fn note_resume_changes(flags: &TrainFlags, saved: &TrainConfig) {
    let changed = [
        differs("--max-steps", flags.max_steps, saved.max_steps),
        differs("--batch-size", flags.batch_size, saved.batch_size),
        differs("--grad-accum", flags.grad_accum, saved.grad_accum),
        differs("--lr", flags.lr, saved.lr),
        differs("--min-lr", flags.min_lr, saved.min_lr),
        differs("--warmup-steps", flags.warmup_steps, saved.warmup_steps),
        differs("--weight-decay", flags.weight_decay, saved.weight_decay),
        differs("--grad-clip", flags.grad_clip, saved.grad_clip),
        differs("--seed", flags.seed, saved.seed),
    ];
    for (flag, given, saved) in changed.into_iter().flatten() {
        eprintln!("note: {flag} {given} replaces the checkpoint's {saved}; the resumed run will differ from an uninterrupted one");
    }
}

/// `(flag, given, saved)` as text when a flag was given with a value other than the
/// checkpoint's; shared by the resume checks so each compares in its own type.
fn differs<T: PartialEq + std::fmt::Display>(
    flag: &'static str,
    given: Option<T>,
    saved: T,
) -> Option<(&'static str, String, String)> {
    given
        .filter(|g| *g != saved)
        .map(|g| (flag, g.to_string(), saved.to_string()))
}

fn cmd_generate(args: GenerateArgs) -> Result<()> {
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
    };
    sampling.validate()?;
    set_threads(args.threads)?;
    let device = args.device.resolve()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    let tokenizer = loaded.state.tokenizer.clone();
    let context = loaded.state.model.block_size;
    let block = match args.block_size {
        Some(b) if b < 1 || b > context => {
            bail!("--block-size: {b} must be between 1 and the model's context {context}")
        }
        Some(b) => b,
        None => context,
    };
    if args.num_samples == 0 {
        bail!("--num-samples: must be at least 1");
    }
    let cfg = GenerateConfig {
        max_tokens: args.max_tokens,
        sampling,
        seed: args.seed,
        stop: args.stop.clone(),
        use_cache: !args.no_cache,
        block_size: Some(block),
        ignore_eos: args.ignore_eos,
    };
    let n = args.num_samples;
    let complete = |prompt: &str| -> Result<()> {
        let prepared = generate::prepare_prompt(&tokenizer, prompt, block);
        for note in &prepared.notes {
            eprintln!("{note}");
        }
        let mut stdout = std::io::stdout().lock();
        let stream = !args.json && n == 1;
        let completions = generate::generate_batch(
            &loaded.model,
            &tokenizer,
            &prepared.ids,
            &cfg,
            n,
            |_, piece| {
                if stream {
                    // Streamed: each piece is shown the moment it is sampled.
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                }
            },
        )?;
        for c in &completions {
            if args.json {
                writeln!(stdout, "{}", serde_json::to_string(c)?)?;
            } else if stream {
                writeln!(stdout)?;
            } else {
                // Several completions finish together; each gets a header line.
                let reason = serde_json::to_value(c.stop_reason)?;
                writeln!(
                    stdout,
                    "--- sample {}/{n} (seed {}, {} tokens, {}) ---\n{}",
                    c.sample + 1,
                    c.seed,
                    c.tokens_generated,
                    reason.as_str().unwrap_or_default(),
                    c.text
                )?;
            }
        }
        Ok(())
    };
    if let Some(prompt) = &args.prompt {
        return complete(prompt);
    }
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("? ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break; // Ctrl-D
        }
        let prompt = line.trim_end_matches(['\n', '\r']);
        if prompt.is_empty() {
            break;
        }
        complete(prompt)?;
    }
    Ok(())
}

fn cmd_eval(args: EvalArgs) -> Result<()> {
    if args.windows < 1 {
        bail!("--windows: must be at least 1, got {}", args.windows);
    }
    let device = args.device.resolve()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    let state = &loaded.state;
    let root = match (&args.data, state.data.root.as_os_str().is_empty()) {
        (Some(d), _) => d.clone(),
        (None, false) => state.data.root.clone(),
        (None, true) => {
            bail!("--data: the checkpoint records no corpus (it was imported); pass --data DIR")
        }
    };
    let files = data::discover(&root, &state.data.ext)?;
    let streams = TokenStreams::build(&root, &files, &state.tokenizer)?;
    streams.check_fits(state.model.block_size)?;
    let batches = Batches::new(
        &streams.val,
        state.model.block_size,
        state.train.batch_size,
        state.train.seed,
        device,
    )?;
    let starts = batches.eval_starts(args.windows);
    let loss = train::evaluate(&loaded.model, &batches, &starts);
    let bits = loss / std::f64::consts::LN_2;
    if args.json {
        let report = serde_json::json!({
            "checkpoint": loaded.dir, "step": state.step, "val_loss": loss, "bits_per_char": bits,
            "windows": starts.len(), "tokens": starts.len() as i64 * state.model.block_size, "data": root,
        });
        println!("{report}");
    } else {
        println!(
            "val loss {loss:.4} nats/char, {bits:.4} bits/char ({} windows of {} chars, step {})",
            starts.len(),
            state.model.block_size,
            state.step
        );
    }
    Ok(())
}

fn cmd_import(args: ImportArgs) -> Result<()> {
    let ImportFrom::Nanogpt = args.from;
    if !args.ckpt.exists() {
        bail!(
            "{}: does not exist; give nanoGPT's ckpt.pt (e.g. out-shakespeare-char/ckpt.pt)",
            args.ckpt.display()
        );
    }
    let is_pt = args.ckpt.is_file();
    if !is_pt && !args.ckpt.join("nanogpt.json").is_file() {
        bail!("{}: neither a nanoGPT ckpt.pt nor a folder converted by scripts/nanogpt_to_safetensors.py", args.ckpt.display());
    }
    if !is_pt && args.meta.is_some() {
        bail!("--meta: a converted folder already holds its vocabulary; give --meta to scripts/nanogpt_to_safetensors.py instead");
    }
    let report = if is_pt {
        let python = interop::python_for_import(args.python);
        // Converted next to the run folder, so a failed import leaves no half-made run.
        let tmp = args.out.with_extension("nanogpt.tmp");
        let result = interop::convert_nanogpt_pt(&args.ckpt, args.meta.as_deref(), &python, &tmp)
            .and_then(|()| interop::import_nanogpt(&tmp, &args.out));
        let _ = std::fs::remove_dir_all(&tmp);
        result?
    } else {
        interop::import_nanogpt(&args.ckpt, &args.out)?
    };
    let c = &report.config;
    eprintln!(
        "imported {} (n_layer {}, n_head {}, n_embd {}, block_size {}, bias {}) into {}; optimizer moments are zero (step 0)",
        args.ckpt.display(), c.n_layer, c.n_head, c.n_embd, c.block_size, c.bias, report.checkpoint.display()
    );
    if report.unmapped_ids > 0 {
        eprintln!(
            "note: {} of sympathy's {} ids are not in the nanoGPT vocabulary; their embedding rows are zero (logit 0) until fine-tuned",
            report.unmapped_ids, c.vocab_size
        );
    }
    Ok(())
}

fn warn_if_no_fonts() {
    if !plot::fonts_available() {
        eprintln!("warning: no system font found (fontconfig); pictures are drawn without labels");
    }
}

fn cmd_inspect(args: InspectArgs) -> Result<()> {
    let cpu = tch::Device::Cpu;
    let (source, cfg, vs, tcfg, state) = if let Some(path) = &args.checkpoint {
        let m = &args.model;
        for (flag, given) in [
            ("--n-layer", m.n_layer.is_some()),
            ("--n-head", m.n_head.is_some()),
            ("--n-embd", m.n_embd.is_some()),
            ("--dropout", m.dropout.is_some()),
        ] {
            if given {
                bail!("{flag}: a checkpoint's shape is fixed; use it with --preset instead");
            }
        }
        let loaded = checkpoint::load(path, cpu)?;
        let state = loaded.state;
        (
            loaded.dir.display().to_string(),
            state.model.clone(),
            loaded.vs,
            state.train.clone(),
            Some((state, loaded.dir)),
        )
    } else {
        let preset = args.preset.expect("clap requires --checkpoint or --preset");
        let mut cfg = preset.model(Tokenizer::default().vocab_size());
        override_fields!(
            cfg,
            args.model,
            [n_layer, n_head, n_embd, block_size, dropout]
        );
        cfg.validate()?;
        let vs = tch::nn::VarStore::new(cpu);
        let _model = sympathy::model::Gpt::new(&vs.root(), &cfg);
        let name = format!("{preset:?}").to_lowercase();
        (
            format!("preset {name} (untrained)"),
            cfg,
            vs,
            preset.train(),
            None,
        )
    };
    // With a checkpoint, --block-size is the sequence length of the estimates.
    let seq_len = args.model.block_size.unwrap_or(cfg.block_size);
    let batch = args.batch_size.unwrap_or(tcfg.batch_size);
    let state_ref = state.as_ref().map(|(s, dir)| (s, dir.clone()));
    let report = inspect::report(source, &cfg, &vs, batch, seq_len, state_ref)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", inspect::render(&report));
    }
    Ok(())
}

fn cmd_export(args: ExportArgs) -> Result<()> {
    let ExportTo::SafetensorsHf = args.to;
    let n = interop::export_hf(&args.checkpoint, &args.out_dir)?;
    eprintln!(
        "wrote {n} tensors to {} (model.safetensors, config.json) for GPT2LMHeadModel",
        args.out_dir.display()
    );
    Ok(())
}

fn cmd_explain(args: ExplainArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    let cfg = loaded.state.model.clone();
    if let Some(l) = args.layer {
        if l < 0 || l >= cfg.n_layer {
            bail!(
                "--layer: {l} is out of range; the model has layers 0..{}",
                cfg.n_layer - 1
            );
        }
    }
    if let Some(h) = args.head {
        if h < 0 || h >= cfg.n_head {
            bail!(
                "--head: {h} is out of range; the model has heads 0..{}",
                cfg.n_head - 1
            );
        }
    }
    let tokenizer = loaded.state.tokenizer.clone();
    let prepared = generate::prepare_prompt(&tokenizer, &args.prompt, cfg.block_size);
    for note in &prepared.notes {
        eprintln!("{note}");
    }
    let e = explain::explain(
        &loaded.model,
        &tokenizer,
        &prepared.ids,
        args.top_k,
        args.last,
    )?;
    // The window the model saw (the prompt may have been cut to the context), for titles.
    let seen: Vec<char> = tokenizer.decode(&prepared.ids).chars().collect();
    let seen: String = match seen.len() {
        n if n > 48 => format!("…{}", seen[n - 47..].iter().collect::<String>()),
        _ => seen.iter().collect(),
    };
    print!("{}", explain::render(&e));
    let Some(out) = &args.out else {
        eprintln!("(add --out DIR for the attention maps as PNG)");
        return Ok(());
    };
    std::fs::create_dir_all(out)
        .map_err(|err| anyhow::anyhow!("--out {}: {err}", out.display()))?;
    warn_if_no_fonts();
    let layers: Vec<i64> = match args.layer {
        Some(l) => vec![l],
        None => (0..cfg.n_layer).collect(),
    };
    for l in layers {
        let att = &e.attention[l as usize]; // (H, T, T)
        let path = match args.head {
            Some(h) => {
                let path = out.join(format!("attention-layer{l}-head{h}.png"));
                let title =
                    format!("layer {l}, head {h}: attention over {seen:?} (white 0 to dark blue 1, √ scale)");
                plot::attention_map(&path, &att.get(h), &e.labels, &title)?;
                path
            }
            None => {
                let path = out.join(format!("attention-layer{l}.png"));
                let title = format!(
                    "layer {l}: attention over {seen:?} (row attends to column; grey: masked; √ scale)"
                );
                plot::attention_grid(&path, att, &e.labels, &title)?;
                path
            }
        };
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn cmd_plot(args: PlotArgs) -> Result<()> {
    let out = match (&args.out, args.runs.as_slice()) {
        (Some(out), _) => out.clone(),
        (None, [one]) => one.join("loss.png"),
        (None, _) => PathBuf::from("loss.png"),
    };
    warn_if_no_fonts();
    plot::plot_runs(&args.runs, &out)?;
    println!("{}", out.display());
    Ok(())
}

/// `--threads`: at least 1; unset leaves libtorch's default.
fn set_threads(threads: Option<i32>) -> Result<()> {
    match threads {
        Some(n) if n < 1 => bail!("--threads: must be at least 1, got {n}"),
        Some(n) => tch::set_num_threads(n),
        None => {}
    }
    Ok(())
}

fn cmd_bench_generate(args: BenchGenerateArgs) -> Result<()> {
    set_threads(args.threads)?;
    let device = args.device.resolve()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    let bench = bench_generate::bench_generate(
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

fn cmd_bench_matmul(args: BenchMatmulArgs) -> Result<()> {
    set_threads(args.threads)?;
    let device = args.device.resolve()?;
    let mut dtypes = vec![BenchDtype::Fp32];
    if device.is_cuda() {
        dtypes.push(BenchDtype::Bf16);
    }
    let measured: Vec<_> = dtypes
        .iter()
        .map(|&d| (d, bench::matmul_peak(device, d)))
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

fn cmd_bench_train(args: BenchTrainArgs) -> Result<()> {
    set_threads(args.threads)?;
    let device = args.device.resolve()?;
    if args.dtype == BenchDtype::Bf16 {
        // bf16 matmuls on the CPU are oneDNN's; without it they crawl (see torch_ext).
        sympathy::torch_ext::set_onednn(true);
    }
    let mut model = args.preset.model(Tokenizer::default().vocab_size());
    override_fields!(model, args, [n_layer, n_head, n_embd, block_size]);
    let mut train = args.preset.train();
    override_fields!(train, args, [batch_size]);
    let r = bench::train(&TrainBench {
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
            "step {:.1} ms = forward {:.1} + backward {:.1} + optimizer {:.1} (medians of {} steps)",
            r.ms_step, r.ms_forward, r.ms_backward, r.ms_optimizer, r.steps
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
