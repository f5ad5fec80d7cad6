//! `sympathy import` and `sympathy export`: checkpoints to and from other formats
//! (nanoGPT in, Hugging Face GPT-2 out); the conversions are [`sympathy::interop`]'s.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use sympathy::interop;

#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportFrom {
    /// nanoGPT's ckpt.pt (or the folder scripts/nanogpt_to_safetensors.py writes).
    Nanogpt,
}

#[derive(Args)]
pub(crate) struct ImportArgs {
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
pub(crate) struct ExportArgs {
    #[arg(long, value_enum)]
    to: ExportTo,
    /// A run folder or a checkpoint folder.
    checkpoint: PathBuf,
    /// The folder to write (created if missing; its model.safetensors and config.json are replaced).
    out_dir: PathBuf,
}

pub(crate) fn cmd_import(args: ImportArgs) -> Result<()> {
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

pub(crate) fn cmd_export(args: ExportArgs) -> Result<()> {
    let ExportTo::SafetensorsHf = args.to;
    let n = interop::export_hf(&args.checkpoint, &args.out_dir)?;
    let tokenizer = if args.out_dir.join("tokenizer.json").is_file() {
        ", tokenizer.json, tokenizer_config.json"
    } else {
        ""
    };
    eprintln!(
        "wrote {n} tensors to {} (model.safetensors, config.json{tokenizer}) for GPT2LMHeadModel",
        args.out_dir.display()
    );
    Ok(())
}
