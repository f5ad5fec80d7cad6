//! The `sympathy` command line: the commands and their one-line help, and the edge
//! where errors become one-line messages and exit codes. Each command's flags and body
//! live in [`cli`]; no logic lives there beyond turning flags into configs.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cli::bench::{cmd_bench_generate, cmd_bench_matmul, cmd_bench_serve, cmd_bench_train, Bench};
use cli::generate::{cmd_eval, cmd_generate, EvalArgs, GenerateArgs};
use cli::inspect::{cmd_explain, cmd_inspect, cmd_plot, ExplainArgs, InspectArgs, PlotArgs};
use cli::interop::{cmd_export, cmd_import, ExportArgs, ImportArgs};
use cli::serve::{cmd_serve, ServeArgs};
use cli::tokenizer::{cmd_tokenize, cmd_tokenizer, TokenizeArgs, TokenizerCmd};
use cli::train::{cmd_train, TrainArgs};

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
    /// Mean validation loss of a checkpoint, in nats per token and bits per byte.
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
    /// An OpenAI-compatible HTTP server with streaming, logprobs and continuous batching.
    Serve(ServeArgs),
    /// Train a byte-level BPE tokenizer on a corpus.
    #[command(subcommand)]
    Tokenizer(TokenizerCmd),
    /// Show text split into tokens (a checkpoint's or a tokenizer file's), or their ids.
    Tokenize(TokenizeArgs),
    /// Measure this machine: matmul peak, training throughput and MFU, generation speed.
    #[command(subcommand)]
    Bench(Bench),
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
    sympathy::runtime::torch_ext::set_onednn(false);
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
        Command::Serve(args) => cmd_serve(args).map(|_| 0),
        Command::Tokenizer(cmd) => cmd_tokenizer(cmd).map(|_| 0),
        Command::Tokenize(args) => cmd_tokenize(args).map(|_| 0),
        Command::Bench(Bench::Matmul(args)) => cmd_bench_matmul(args).map(|_| 0),
        Command::Bench(Bench::Train(args)) => cmd_bench_train(args).map(|_| 0),
        Command::Bench(Bench::Generate(args)) => cmd_bench_generate(args).map(|_| 0),
        Command::Bench(Bench::Serve(args)) => cmd_bench_serve(args).map(|_| 0),
    }
}
