//! The `sympathy` command line: parses flags and calls the library. No logic lives
//! here beyond turning flags into configs and errors into one-line messages.

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use sympathy::checkpoint;
use sympathy::config::{DeviceChoice, ModelConfig, Preset, TrainConfig};
use sympathy::data::{self, Batches, TokenStreams};
use sympathy::generate::{self, GenerateConfig};
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

// Parsed once per process, so the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as clap renders them; a usage error is one line
        // with exit code 1, like every other error.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            eprintln!("{first} (see --help)");
            std::process::exit(1);
        }
    };
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
    let flags = &args.model;
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

/// With --resume, training flags may change the run (a longer --max-steps, a lower --lr
/// after a divergence); each change is said once, since the run then no longer repeats
/// the uninterrupted one.
fn note_resume_changes(flags: &TrainFlags, saved: &TrainConfig) {
    let pairs = [
        (
            "--max-steps",
            flags.max_steps.map(|v| v as f64),
            saved.max_steps as f64,
        ),
        (
            "--batch-size",
            flags.batch_size.map(|v| v as f64),
            saved.batch_size as f64,
        ),
        (
            "--grad-accum",
            flags.grad_accum.map(|v| v as f64),
            saved.grad_accum as f64,
        ),
        ("--lr", flags.lr, saved.lr),
        ("--min-lr", flags.min_lr, saved.min_lr),
        (
            "--warmup-steps",
            flags.warmup_steps.map(|v| v as f64),
            saved.warmup_steps as f64,
        ),
        ("--weight-decay", flags.weight_decay, saved.weight_decay),
        ("--grad-clip", flags.grad_clip, saved.grad_clip),
        ("--seed", flags.seed.map(|v| v as f64), saved.seed as f64),
    ];
    for (flag, given, saved) in pairs {
        if let Some(g) = given.filter(|g| *g != saved) {
            eprintln!("note: {flag} {g} replaces the checkpoint's {saved}; the resumed run will differ from an uninterrupted one");
        }
    }
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
    let root = args.data.clone().unwrap_or_else(|| state.data.root.clone());
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
