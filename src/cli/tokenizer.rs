//! `sympathy tokenizer train` (a byte-level BPE from a corpus) and `sympathy tokenize`
//! (text -> tokens, as the model sees them); the tokenizer is [`sympathy::tokenizer`]'s.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Instant;
use sympathy::data;
use sympathy::run::checkpoint;
use sympathy::see::tokens::{mark_boundaries, TokenReport};
use sympathy::tokenizer::{Bpe, Tokenizer};

#[derive(Subcommand)]
pub(crate) enum TokenizerCmd {
    /// Train a byte-level BPE on the training split of a corpus; writes its tokenizer.json.
    Train(TokenizerTrainArgs),
}

#[derive(Args)]
pub(crate) struct TokenizerTrainArgs {
    /// Folder of source files [default: python3's stdlib, without site-packages].
    #[arg(long)]
    data: Option<PathBuf>,
    /// File extension of the corpus files.
    #[arg(long, default_value = "py")]
    ext: String,
    /// Vocabulary size: 256 bytes + <eos> + <pad> + merges.
    #[arg(long)]
    vocab_size: i64,
    /// The tokenizer file to write (Hugging Face's JSON format).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub(crate) struct TokenizeArgs {
    /// A run or checkpoint folder: use its tokenizer.
    #[arg(long, conflicts_with = "tokenizer")]
    checkpoint: Option<PathBuf>,
    /// A tokenizer file (from `sympathy tokenizer train`), or `char`.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Print ids and tokens as JSON instead of the marked text.
    #[arg(long)]
    json: bool,
    /// The text; `-` or none reads stdin.
    text: Option<String>,
}

pub(crate) fn cmd_tokenizer(cmd: TokenizerCmd) -> Result<()> {
    let TokenizerCmd::Train(args) = cmd;
    let root = match args.data {
        Some(d) => d,
        None => data::default_corpus_dir()?,
    };
    let start = Instant::now();
    let texts = data::training_texts(&root, &args.ext)?;
    let bytes: usize = texts.iter().map(String::len).sum();
    let bpe = Bpe::train(&texts, args.vocab_size)?;
    let seconds = start.elapsed().as_secs_f64();
    bpe.save(&args.out)?;
    let tokens: usize = texts.iter().map(|t| bpe.encode(t).len()).sum();
    eprintln!(
        "trained a byte-level BPE of {} ids on {} training files ({:.1} MB) in {seconds:.1} s: {:.2} bytes/token on them; wrote {}",
        bpe.vocab_size(),
        texts.len(),
        bytes as f64 / 1e6,
        bytes as f64 / tokens.max(1) as f64,
        args.out.display()
    );
    Ok(())
}

pub(crate) fn cmd_tokenize(args: TokenizeArgs) -> Result<()> {
    let tokenizer = match (&args.checkpoint, args.tokenizer.as_deref()) {
        (Some(c), _) => checkpoint::read_state(&checkpoint::resolve(c)?)?.tokenizer,
        (None, Some("char")) => Tokenizer::default(),
        (None, Some(file)) => Tokenizer::Bpe(Bpe::load(std::path::Path::new(file))?),
        (None, None) => {
            bail!("--checkpoint or --tokenizer: give one (a run folder, a tokenizer.json, or char)")
        }
    };
    let text = match args.text.as_deref() {
        Some(t) if t != "-" => t.to_string(),
        _ => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| anyhow::anyhow!("stdin: {e}; tokenize reads UTF-8 text"))?;
            s
        }
    };
    let report = TokenReport::new(&tokenizer, &text);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let colour = std::io::stdout().is_terminal();
    println!("{}", mark_boundaries(&tokenizer, &report.ids, colour));
    eprintln!(
        "{} bytes, {} tokens ({}): {:.2} bytes/token",
        report.bytes,
        report.ids.len(),
        report.tokenizer,
        report.bytes_per_token
    );
    Ok(())
}
