//! Importing a nanoGPT checkpoint as a sympathy run. The weights only need renaming,
//! with two twists:
//! - nanoGPT names carry `transformer.` (and `_orig_mod.` after `torch.compile`), and
//!   list the tied head a second time as `lm_head.weight`.
//! - A nanoGPT char model numbers its characters in sorted order of its corpus
//!   (`meta.pkl`), while sympathy's id *is* the ASCII code. The embedding rows are
//!   moved to sympathy's ids; ids the nanoGPT vocabulary lacks get zero rows, i.e. a
//!   logit of exactly 0, until fine-tuning moves them.
//!
//! Reading a `.pt` file needs Python's unpickler, so `import` runs
//! `scripts/nanogpt_to_safetensors.py` (compiled into the binary) with PyTorch's python;
//! the script only changes the container, all checks and renaming happen here.

use crate::config::{Arch, ModelConfig, Optimizer, Preset, TrainConfig};
use crate::model::Gpt;
use crate::run::checkpoint::{self, DataSpec, State, LATEST};
use crate::tokenizer::{Tokenizer, CHAR_VOCAB_SIZE};
use crate::train::optim::AdamW;
use crate::train::params::FlatParams;
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{nn, Device, Kind, Tensor};

/// The converter `import` runs for a `.pt` file.
pub const NANOGPT_CONVERTER: &str = include_str!("../../scripts/nanogpt_to_safetensors.py");

/// The python used to read `.pt` files: `--python`, else `$SYMPATHY_PYTHON`, else the
/// project's `.venv/bin/python` (where `make` installs PyTorch), else `python3`.
pub fn python_for_import(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("SYMPATHY_PYTHON").map(PathBuf::from))
        .or_else(|| Some(PathBuf::from(".venv/bin/python")).filter(|p| p.is_file()))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Runs the converter: `ckpt` (nanoGPT's ckpt.pt) and `meta` (its meta.pkl) ->
/// `out/model.safetensors` and `out/nanogpt.json`.
pub fn convert_nanogpt_pt(
    ckpt: &Path,
    meta: Option<&Path>,
    python: &Path,
    out: &Path,
) -> Result<()> {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(NANOGPT_CONVERTER).arg(ckpt).arg(out);
    if let Some(meta) = meta {
        cmd.arg("--meta").arg(meta);
    }
    let output = cmd.output().map_err(|e| {
        Error::config(
            "--python",
            format!("cannot run {} ({e}); pass --python with a python that has PyTorch (`make libtorch` makes .venv/bin/python)", python.display()),
        )
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        let message = last.trim().trim_start_matches("error: ");
        // Exit code 4: the script found meta.pkl at fault (its BAD_META).
        if output.status.code() == Some(4) {
            return Err(Error::config("--meta", message));
        }
        let hint = if message.contains("No module named") {
            "; pass --python with a python that has PyTorch and safetensors (`make libtorch` makes .venv/bin/python)"
        } else {
            ""
        };
        return Err(Error::checkpoint(ckpt, format!("{message}{hint}")));
    }
    Ok(())
}

/// What `import_nanogpt` did, for the CLI to report.
#[derive(Debug)]
pub struct ImportReport {
    pub checkpoint: PathBuf,
    pub config: ModelConfig,
    /// sympathy ids that the nanoGPT vocabulary does not cover (given zero rows).
    pub unmapped_ids: usize,
}

/// Imports `converted` (a folder holding the converter's `model.safetensors` and
/// `nanogpt.json`) as a new sympathy run in `run_dir`: `ckpt-latest/` with the weights,
/// fresh AdamW moments (step 0) and a `state.json` with the `small` preset's training
/// settings and no corpus (pass `--data` to train or evaluate it).
pub fn import_nanogpt(converted: &Path, run_dir: &Path) -> Result<ImportReport> {
    let info = read_info(converted)?;
    let (cfg, nano_vocab) = model_config(&info.model_args, &info.path)?;
    cfg.validate()
        .map_err(|e| Error::checkpoint(&info.path, format!("model_args: {e}")))?;
    let rows = vocab_rows(info.itos.as_deref(), nano_vocab)?;

    let file = converted.join("model.safetensors");
    let tensors = read_weights(&file, &cfg, nano_vocab, &rows)?;
    crate::memory::check_fits(&cfg, crate::memory::Use::Load, true)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Gpt::new(&vs.root(), &cfg);
    copy_into(&vs, tensors, &file, &cfg)?;
    let checkpoint = write_run(run_dir, &vs, &cfg)?;
    Ok(ImportReport {
        checkpoint,
        config: cfg,
        unmapped_ids: CHAR_VOCAB_SIZE as usize - rows.len(),
    })
}

/// What the converter wrote beside the weights in `nanogpt.json`.
struct ConverterInfo {
    path: PathBuf,
    model_args: Map<String, Value>,
    /// nanoGPT's `meta.pkl` vocabulary, when the run had one.
    itos: Option<Vec<String>>,
}

fn read_info(converted: &Path) -> Result<ConverterInfo> {
    let path = converted.join("nanogpt.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::checkpoint(&path, format!("cannot read ({e}); give a nanoGPT ckpt.pt or a folder written by scripts/nanogpt_to_safetensors.py"))
    })?;
    let info: Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&path, format!("is not valid JSON ({e})")))?;
    let model_args = info
        .get("model_args")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| {
            Error::checkpoint(
                &path,
                "has no model_args; it was not written by the converter",
            )
        })?;
    let itos = match info.get("itos") {
        None | Some(Value::Null) => None,
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
            Error::checkpoint(&path, format!("itos is not a list of strings ({e})"))
        })?),
    };
    Ok(ConverterInfo {
        path,
        model_args,
        itos,
    })
}

/// The converted weights under sympathy's names, with the embedding's rows moved to the
/// char tokenizer's ids and the (tied) head dropped.
fn read_weights(
    file: &Path,
    cfg: &ModelConfig,
    nano_vocab: i64,
    rows: &[(i64, i64)],
) -> Result<HashMap<String, Tensor>> {
    let mut tensors: HashMap<String, Tensor> = checkpoint::read_tensors(file)?
        .into_iter()
        .map(|(name, t)| (strip_prefixes(&name).to_string(), t))
        .collect();
    // The causal-mask buffer nanoGPT keeps when flash attention is unavailable.
    tensors.retain(|name, _| !(name.starts_with("h.") && name.ends_with(".attn.bias")));
    let wte = tensors.remove("wte.weight").ok_or_else(|| {
        Error::checkpoint(
            file,
            "has no transformer.wte.weight; is it a nanoGPT checkpoint?",
        )
    })?;
    if wte.size() != [nano_vocab, cfg.n_embd] {
        return Err(Error::checkpoint(
            file,
            format!(
                "transformer.wte.weight has shape {:?}, model_args imply [{nano_vocab}, {}]",
                wte.size(),
                cfg.n_embd
            ),
        ));
    }
    if let Some(head) = tensors.remove("lm_head.weight") {
        if head.size() != wte.size() || !head.to_kind(Kind::Float).equal(&wte.to_kind(Kind::Float))
        {
            return Err(Error::checkpoint(file, "lm_head.weight differs from transformer.wte.weight: the head is untied, and sympathy's GPT ties it"));
        }
    }
    // (V_nano, C) -> (131, C): row i moves to the ASCII code of itos[i].
    let (from, to): (Vec<i64>, Vec<i64>) = rows.iter().copied().unzip();
    let remapped = Tensor::zeros([CHAR_VOCAB_SIZE, cfg.n_embd], (Kind::Float, Device::Cpu))
        .index_copy(
            0,
            &Tensor::from_slice(&to),
            &wte.to_kind(Kind::Float)
                .index_select(0, &Tensor::from_slice(&from)),
        );
    tensors.insert("wte.weight".into(), remapped);
    Ok(tensors)
}

/// Copies every tensor into the model's variable of the same name; a missing, extra or
/// misshapen tensor is named.
fn copy_into(
    vs: &nn::VarStore,
    mut tensors: HashMap<String, Tensor>,
    file: &Path,
    cfg: &ModelConfig,
) -> Result<()> {
    let mut vars = vs.variables();
    for (name, var) in vars.iter_mut() {
        let t = tensors.remove(name).ok_or_else(|| {
            Error::checkpoint(
                file,
                format!(
                    "has no transformer.{name}, which model_args (bias={}) need",
                    cfg.bias
                ),
            )
        })?;
        if t.size() != var.size() {
            return Err(Error::checkpoint(
                file,
                format!(
                    "transformer.{name} has shape {:?}, model_args imply {:?}",
                    t.size(),
                    var.size()
                ),
            ));
        }
        tch::no_grad(|| var.copy_(&t.to_kind(Kind::Float)));
    }
    if let Some(name) = tensors.keys().min() {
        return Err(Error::checkpoint(file, format!("has transformer.{name}, which sympathy's GPT (nanoGPT's architecture, bias={}) does not have", cfg.bias)));
    }
    Ok(())
}

/// Writes the imported weights as `run_dir/ckpt-latest`, refusing a folder that already
/// holds a checkpoint.
fn write_run(run_dir: &Path, vs: &nn::VarStore, cfg: &ModelConfig) -> Result<PathBuf> {
    if checkpoint::resolve(run_dir).is_ok() {
        return Err(Error::config(
            "--out",
            format!(
                "{} already holds a checkpoint; choose another --out",
                run_dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    // The imported model is nanoGPT's GPT-2, trained with AdamW.
    let train = TrainConfig {
        optimizer: Optimizer::AdamW,
        ..Preset::Small.train()
    };
    let opt = AdamW::new(&FlatParams::new(vs), &train); // zero moments, step 0
    let state = State::new(
        cfg.clone(),
        train,
        Tokenizer::default(),
        // nanoGPT trains on its own .bin token files: there is no corpus folder to name.
        DataSpec {
            root: PathBuf::new(),
            ext: "txt".into(),
        },
    );
    checkpoint::save_atomically(run_dir, LATEST, vs, &opt, &state)
}

fn strip_prefixes(name: &str) -> &str {
    let name = name.strip_prefix("_orig_mod.").unwrap_or(name);
    name.strip_prefix("transformer.").unwrap_or(name)
}

/// nanoGPT's `model_args` -> sympathy's config (vocabulary = the char tokenizer's) and
/// the checkpoint's own vocabulary size. Any option nanoGPT's GPT does not have is an
/// architecture sympathy cannot run, and is named.
fn model_config(args: &Map<String, Value>, path: &Path) -> Result<(ModelConfig, i64)> {
    let bad = |key: &str, want: &str| {
        Error::checkpoint(
            path,
            format!(
                "model_args.{key} is {}, expected {want}",
                args.get(key).unwrap_or(&Value::Null)
            ),
        )
    };
    let int = |key: &str| {
        args.get(key)
            .and_then(Value::as_i64)
            .ok_or_else(|| bad(key, "an integer"))
    };
    for (key, value) in args {
        if ![
            "n_layer",
            "n_head",
            "n_embd",
            "block_size",
            "vocab_size",
            "bias",
            "dropout",
        ]
        .contains(&key.as_str())
        {
            return Err(Error::checkpoint(path, format!("model_args.{key} = {value} is an option sympathy's GPT does not have; only nanoGPT's own architecture imports")));
        }
    }
    let cfg = ModelConfig {
        n_layer: int("n_layer")?,
        n_head: int("n_head")?,
        n_embd: int("n_embd")?,
        block_size: int("block_size")?,
        vocab_size: CHAR_VOCAB_SIZE,
        bias: args
            .get("bias")
            .and_then(Value::as_bool)
            .ok_or_else(|| bad("bias", "true or false"))?,
        dropout: args
            .get("dropout")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("dropout", "a number"))?,
        arch: Arch::default(), // nanoGPT's model is GPT-2's
    };
    Ok((cfg, int("vocab_size")?))
}

/// (nanoGPT id, sympathy id) for every character of the nanoGPT vocabulary.
fn vocab_rows(itos: Option<&[String]>, nano_vocab: i64) -> Result<Vec<(i64, i64)>> {
    let Some(itos) = itos else {
        if nano_vocab == CHAR_VOCAB_SIZE {
            return Ok((0..CHAR_VOCAB_SIZE).map(|i| (i, i)).collect()); // already sympathy's ids
        }
        return Err(Error::config("--meta", format!("the checkpoint's vocab_size is {nano_vocab}, sympathy's char vocabulary has {CHAR_VOCAB_SIZE} ids; for a nanoGPT char model pass its data/NAME/meta.pkl (a GPT-2 BPE model cannot be imported: sympathy reads only its own byte-level BPE files, not GPT-2's vocabulary)")));
    };
    if itos.len() as i64 > nano_vocab {
        return Err(Error::config("--meta", format!("meta.pkl has {} characters but the checkpoint's vocab_size is {nano_vocab}; is it the meta.pkl of this model's dataset?", itos.len())));
    }
    let mut seen = [false; 128];
    let mut rows = Vec::with_capacity(itos.len());
    for (i, s) in itos.iter().enumerate() {
        let mut chars = s.chars();
        let (Some(c), None) = (chars.next(), chars.next()) else {
            return Err(Error::config(
                "--meta",
                format!("id {i} is {s:?}, not one character; only char-level vocabularies import"),
            ));
        };
        if !c.is_ascii() || seen[c as usize] {
            return Err(Error::config("--meta", format!("id {i} is {c:?}, which sympathy's char tokenizer (one id per ASCII character) cannot hold{}", if c.is_ascii() { " twice" } else { "" })));
        }
        seen[c as usize] = true;
        rows.push((i as i64, c as i64));
    }
    Ok(rows)
}
