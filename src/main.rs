//! The `sympathy` command line: parses flags and calls the library. No logic lives
//! here beyond turning flags into configs and errors into one-line messages.

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use sympathy::checkpoint;
use sympathy::config::{DeviceChoice, ModelConfig, Preset};
use sympathy::data::{self, Batches, TokenStreams};
use sympathy::generate::{self, GenerateConfig};
use sympathy::interop;
use sympathy::sampling::SamplingConfig;
use sympathy::tokenizer::Tokenizer;
use sympathy::train::{self, StopCause, StopFlags, TrainOptions};

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
    Train(TrainArgs),
    /// Complete a prompt (--prompt), or read prompts interactively from stdin.
    Generate(GenerateArgs),
    /// Mean validation loss of a checkpoint, in nats and bits per character.
    Eval(EvalArgs),
    /// Convert a nanoGPT checkpoint into a sympathy run folder.
    Import(ImportArgs),
    /// Write a checkpoint in another format (Hugging Face GPT-2).
    Export(ExportArgs),
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
    /// Defaults for every model and training flag.
    #[arg(long, value_enum, default_value = "small")]
    preset: Preset,
    /// Continue the checkpoint in --out (model flags must then match it).
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
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

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the cause chain joined, never a backtrace.
            let msg = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
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
        check_resume_flags(&args.model, &state.model)?;
        (state.model, state.train, Some(state.data))
    } else {
        (
            args.preset.model(Tokenizer::default().vocab_size()),
            args.preset.train(),
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
    Ok(match summary.cause {
        StopCause::MaxSteps | StopCause::MaxMinutes => 0,
        cause => {
            eprintln!(
                "stopped by a signal; resume with: sympathy train --resume --out {}",
                args.out.display()
            );
            if cause == StopCause::Interrupted {
                130
            } else {
                143
            }
        }
    })
}

/// With --resume, a model flag may repeat the saved value but not contradict it.
fn check_resume_flags(flags: &ModelFlags, saved: &ModelConfig) -> Result<()> {
    let pairs = [
        (
            "--n-layer",
            flags.n_layer.map(|v| v as f64),
            saved.n_layer as f64,
        ),
        (
            "--n-head",
            flags.n_head.map(|v| v as f64),
            saved.n_head as f64,
        ),
        (
            "--n-embd",
            flags.n_embd.map(|v| v as f64),
            saved.n_embd as f64,
        ),
        (
            "--block-size",
            flags.block_size.map(|v| v as f64),
            saved.block_size as f64,
        ),
        ("--dropout", flags.dropout, saved.dropout),
    ];
    for (flag, given, saved) in pairs {
        if let Some(g) = given {
            if g != saved {
                bail!("{flag}: {g} contradicts the checkpoint's {saved}; drop the flag to resume, or train a new --out");
            }
        }
    }
    Ok(())
}

fn cmd_generate(args: GenerateArgs) -> Result<()> {
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
    };
    sampling.validate()?;
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
    let cfg = GenerateConfig {
        max_tokens: args.max_tokens,
        sampling,
        seed: args.seed,
        stop: args.stop.clone(),
        use_cache: !args.no_cache,
    };
    let complete = |prompt: &str| -> Result<()> {
        let prepared = generate::prepare_prompt(&tokenizer, prompt, block);
        for note in &prepared.notes {
            eprintln!("{note}");
        }
        let mut stdout = std::io::stdout().lock();
        let completion = if args.json {
            generate::generate(&loaded.model, &tokenizer, &prepared.ids, &cfg, |_| {})?
        } else {
            generate::generate(&loaded.model, &tokenizer, &prepared.ids, &cfg, |piece| {
                // Streamed: each piece is shown the moment it is sampled.
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            })?
        };
        if args.json {
            writeln!(stdout, "{}", serde_json::to_string(&completion)?)?;
        } else {
            writeln!(stdout)?;
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
        (None, true) => bail!("--data: the checkpoint records no corpus (it was imported); pass --data DIR"),
    };
    let files = data::discover(&root, &state.data.ext)?;
    let streams = TokenStreams::build(&root, &files, &state.tokenizer)?;
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

fn cmd_export(args: ExportArgs) -> Result<()> {
    let ExportTo::SafetensorsHf = args.to;
    let n = interop::export_hf(&args.checkpoint, &args.out_dir)?;
    eprintln!(
        "wrote {n} tensors to {} (model.safetensors, config.json) for GPT2LMHeadModel",
        args.out_dir.display()
    );
    Ok(())
}
