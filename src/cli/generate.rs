//! `sympathy generate` and `sympathy eval`: a checkpoint put to use, completing prompts
//! ([`sympathy::infer::generate`]) or scoring the validation split ([`sympathy::train::evaluate`]).

use super::set_threads;
use anyhow::{bail, Result};
use clap::Args;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use sympathy::data::{self, Batches, TokenStreams};
use sympathy::infer::generate::{self, Completion, GenerateConfig};
use sympathy::infer::sampling::SamplingConfig;
use sympathy::model::{bits_per_byte, nats_to_bits};
use sympathy::run::checkpoint;
use sympathy::runtime::device::DeviceChoice;
use sympathy::tokenizer::Tokenizer;
use sympathy::train;

#[derive(Args)]
pub(crate) struct GenerateArgs {
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
    /// Intra-op CPU threads [default: libtorch's, the number of physical cores]; on a
    /// machine busy with other work, small models often decode faster with 1.
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
pub(crate) struct EvalArgs {
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

pub(crate) fn cmd_generate(args: GenerateArgs) -> Result<()> {
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
    let block = generate::check_context(args.block_size, loaded.state.model.block_size)?;
    generate::check_num_samples(args.num_samples)?;
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
        print_completions(&mut stdout, &completions, args.json, stream)
    };
    if let Some(prompt) = &args.prompt {
        return complete(prompt);
    }
    repl(complete)
}

/// Reads prompts from stdin, one a line, until an empty line or Ctrl-D.
fn repl(mut complete: impl FnMut(&str) -> Result<()>) -> Result<()> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("? ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(()); // Ctrl-D
        }
        let prompt = line.trim_end_matches(['\n', '\r']);
        if prompt.is_empty() {
            return Ok(());
        }
        complete(prompt)?;
    }
}

/// Prints finished completions: JSON lines, the streamed text's final newline, or one
/// block per sample with a header when several finish together.
fn print_completions(
    out: &mut impl Write,
    completions: &[Completion],
    json: bool,
    streamed: bool,
) -> Result<()> {
    let n = completions.len();
    for c in completions {
        if json {
            writeln!(out, "{}", serde_json::to_string(c)?)?;
        } else if streamed {
            writeln!(out)?;
        } else {
            let reason = serde_json::to_value(c.stop_reason)?;
            writeln!(
                out,
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
}

pub(crate) fn cmd_eval(args: EvalArgs) -> Result<()> {
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
    let bytes_per_token = streams.report.val_bytes_per_token();
    let bpb = bits_per_byte(loss, bytes_per_token);
    if args.json {
        let mut report = serde_json::json!({
            "checkpoint": loaded.dir, "step": state.step, "val_loss": loss, "bits_per_byte": bpb,
            "bytes_per_token": bytes_per_token, "tokenizer": state.tokenizer.label(),
            "windows": starts.len(), "tokens": starts.len() as i64 * state.model.block_size, "data": root,
        });
        if let Tokenizer::Char { .. } = state.tokenizer {
            // A char token is one character: bits per token are bits per character.
            report["bits_per_char"] = nats_to_bits(loss).into();
        }
        println!("{report}");
    } else {
        println!(
            "val loss {loss:.4} nats/token, {bpb:.4} bits/byte ({} tokenizer, {bytes_per_token:.2} bytes/token; {} windows of {} tokens, step {})",
            state.tokenizer.label(),
            starts.len(),
            state.model.block_size,
            state.step
        );
    }
    Ok(())
}
