//! Checkpoints: a directory with `model.safetensors` (GPT-2 parameter names),
//! `optimizer.safetensors` (AdamW moments and step, Muon's momenta) and `state.json`
//! (format version, step, configs, tokenizer, data source, best validation loss).
//!
//! Writing is atomic: everything goes to `NAME.tmp/`, is fsynced, and the directory is
//! renamed into place (the previous one is first moved to `NAME.old/`, removed last).
//! A crash at any instant leaves either the old or the new checkpoint whole, and
//! [`resolve`] finds whichever exists. Loading checks the format version, every tensor
//! name and shape, and says what does not match.

use crate::config::{ModelConfig, TrainConfig};
use crate::model::Gpt;
use crate::tokenizer::bpe::TOKENIZER_FILE;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result, Step};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

/// Bumped whenever `state.json` or the tensor names change meaning.
pub const FORMAT_VERSION: u32 = 1;
/// The checkpoint written every `--checkpoint-every` steps and at the end.
pub const LATEST: &str = "ckpt-latest";
/// The checkpoint with the lowest validation loss so far.
pub const BEST: &str = "ckpt-best";

/// Where the training data came from, so `eval` can find it again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub root: PathBuf,
    pub ext: String,
}

/// What a checkpoint needs of an optimizer: its state as named tensors, out and back
/// in. The checkpoint stores them in `optimizer.safetensors` without knowing what they
/// mean, so the optimizer owns its layout.
pub trait OptimizerState {
    /// The tensors to save, each with a stable name.
    fn state_tensors(&self) -> Vec<(String, Tensor)>;
    /// Restores what [`Self::state_tensors`] gave out, read from `source` (for messages);
    /// every name and shape must match.
    fn load_state(&mut self, tensors: &[(String, Tensor)], source: &Path) -> Result<()>;
}

/// Everything in `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    /// Optimizer updates done.
    pub step: Step,
    pub tokens_seen: u64,
    pub best_val_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    /// nanoGPT's `model_args` field names.
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub tokenizer: Tokenizer,
    pub data: DataSpec,
    /// Training time so far, summed over resumed sessions.
    pub elapsed_s: f64,
    /// Steps skipped because the loss or gradient was not finite.
    pub nonfinite_skipped: u64,
    /// Where `--target-bpb` was met, which ended the schedule's plan early.
    #[serde(default)]
    pub target_reached: Option<TargetReached>,
}

/// The evaluation that met `--target-bpb`: the learning rate's decay began after this
/// step, this far into training (the clock the schedule reads).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetReached {
    pub step: Step,
    pub elapsed_s: f64,
    pub val_bpb: f64,
}

impl State {
    /// The state of a run before its first step (in this format version).
    pub fn new(
        model: ModelConfig,
        train: TrainConfig,
        tokenizer: Tokenizer,
        data: DataSpec,
    ) -> Self {
        State {
            format_version: FORMAT_VERSION,
            step: 0,
            tokens_seen: 0,
            best_val_loss: None,
            last_val_loss: None,
            model,
            train,
            tokenizer,
            data,
            elapsed_s: 0.0,
            nonfinite_skipped: 0,
            target_reached: None,
        }
    }
}

/// The checkpoint directory `path` refers to: itself if it holds `state.json`, else its
/// `ckpt-latest/` (or `ckpt-latest.old/`, left by a crash in the middle of a swap).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if !path.exists() && !set_aside(path).exists() {
        return Err(Error::checkpoint(
            path,
            "does not exist; train one with `sympathy train --out DIR` first",
        ));
    }
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    // `RUN/ckpt-best` itself may have been caught mid-swap: its `.old` twin is whole.
    if set_aside(path).join("state.json").is_file() {
        return Ok(set_aside(path));
    }
    for name in [LATEST.to_string(), format!("{LATEST}.old")] {
        let dir = path.join(name);
        if dir.join("state.json").is_file() {
            return Ok(dir);
        }
    }
    Err(Error::checkpoint(
        path,
        format!("has no state.json and no {LATEST}/; is it a sympathy run folder?"),
    ))
}

/// `DIR.old`: where [`save_atomically`] keeps the previous `DIR` during the swap.
fn set_aside(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".old");
    PathBuf::from(name)
}

/// Reads and checks `state.json` of checkpoint directory `dir`.
pub fn read_state(dir: &Path) -> Result<State> {
    let path = dir.join("state.json");
    let text = fs::read_to_string(&path)
        .map_err(|e| Error::checkpoint(&path, format!("cannot read: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::checkpoint(
            &path,
            format!("is not valid JSON ({e}); the file is corrupt"),
        )
    })?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == FORMAT_VERSION as u64 => {}
        Some(v) => {
            return Err(Error::checkpoint(
                &path,
                format!("has format version {v}, this sympathy reads version {FORMAT_VERSION}; use the sympathy that wrote it"),
            ))
        }
        None => return Err(Error::checkpoint(&path, "has no format_version; it was not written by sympathy")),
    }
    let value = with_tokenizer_file(dir, value)?;
    serde_json::from_value(value)
        .map_err(|e| Error::checkpoint(&path, format!("does not match the expected fields: {e}")))
}

/// A BPE's vocabulary lives beside `state.json` in `tokenizer.json`: read it into the
/// state's `"tokenizer"` entry, where the tokenizer's deserialisation expects it.
fn with_tokenizer_file(dir: &Path, mut value: serde_json::Value) -> Result<serde_json::Value> {
    let Some(spec) = value.get_mut("tokenizer").and_then(|t| t.as_object_mut()) else {
        return Ok(value);
    };
    if spec.get("kind").and_then(|k| k.as_str()) != Some("bpe") {
        return Ok(value);
    }
    let name = spec
        .get("file")
        .and_then(|f| f.as_str())
        .unwrap_or(TOKENIZER_FILE);
    // Only a plain file name: state.json must not point outside its checkpoint.
    let file = dir.join(Path::new(name).file_name().unwrap_or(name.as_ref()));
    let text = fs::read_to_string(&file).map_err(|e| {
        Error::checkpoint(
            &file,
            format!(
                "cannot read the checkpoint's BPE tokenizer: {e}; the checkpoint is incomplete"
            ),
        )
    })?;
    spec.insert("json".into(), serde_json::Value::String(text));
    Ok(value)
}

/// Reads `file` (safetensors) into the variables of `vs`, checking names and shapes first.
pub fn load_tensors_into(vs: &nn::VarStore, file: &Path) -> Result<()> {
    copy_into(vs, &read_tensors(file)?, file)
}

/// Checks that `dir/model.safetensors` holds a model of shape `cfg`, before one is built.
pub fn check_model_file(dir: &Path, cfg: &ModelConfig) -> Result<()> {
    let file = dir.join("model.safetensors");
    check_dimensions(&read_tensors(&file)?, cfg, &file)
}

/// Compares the layer count and the embedding shapes of `tensors` with `cfg` *before* a
/// model of that config is built: an edited or corrupt `state.json` (say `n_embd`
/// 10⁹) would otherwise ask libtorch for more memory than exists.
fn check_dimensions(tensors: &[(String, Tensor)], cfg: &ModelConfig, file: &Path) -> Result<()> {
    let layers = tensors
        .iter()
        .filter_map(|(n, _)| n.strip_prefix("h.")?.split('.').next()?.parse::<i64>().ok())
        .max()
        .map_or(0, |i| i + 1);
    if layers != cfg.n_layer {
        return Err(Error::checkpoint(
            file,
            format!(
                "has {layers} layers but state.json says n_layer {}; config and weights disagree",
                cfg.n_layer
            ),
        ));
    }
    for (name, want) in [
        ("wte.weight", [cfg.vocab_size, cfg.n_embd]),
        ("wpe.weight", [cfg.block_size, cfg.n_embd]),
    ] {
        if let Some((_, t)) = tensors.iter().find(|(n, _)| n == name) {
            if t.size() != want {
                return Err(Error::checkpoint(
                    file,
                    format!("tensor {name} has shape {:?} but the config needs {want:?}; config and weights disagree", t.size()),
                ));
            }
        }
    }
    Ok(())
}

/// Copies `tensors` (read from `file`) into the variables of `vs`, checking every name
/// and shape first.
fn copy_into(vs: &nn::VarStore, tensors: &[(String, Tensor)], file: &Path) -> Result<()> {
    let mut vars = vs.variables();
    for (name, t) in tensors {
        let Some(var) = vars.get(name) else {
            return Err(Error::checkpoint(
                file,
                format!("has tensor {name} that the model of state.json does not have; config and weights disagree"),
            ));
        };
        if var.size() != t.size() {
            return Err(Error::checkpoint(
                file,
                format!("tensor {name} has shape {:?} but the config needs {:?}; config and weights disagree", t.size(), var.size()),
            ));
        }
    }
    // Every check before the first copy: a failed load leaves the model untouched.
    if let Some(name) = vars.keys().find(|n| !tensors.iter().any(|(m, _)| m == *n)) {
        return Err(Error::checkpoint(
            file,
            format!("has no tensor {name}, which the model of state.json needs; the file is incomplete or config and weights disagree"),
        ));
    }
    tch::no_grad(|| {
        for (name, t) in tensors {
            if let Some(var) = vars.get_mut(name) {
                var.f_copy_(t)?;
            }
        }
        Ok::<(), tch::TchError>(())
    })
    .map_err(|e| Error::checkpoint(file, format!("cannot be loaded: {e}")))
}

/// All tensors of a safetensors file, with a checkpoint error for a corrupt one.
pub fn read_tensors(file: &Path) -> Result<Vec<(String, Tensor)>> {
    if !file.is_file() {
        return Err(Error::checkpoint(
            file,
            "is missing; the checkpoint is incomplete",
        ));
    }
    Tensor::read_safetensors(file).map_err(|e| {
        Error::checkpoint(
            file,
            format!("is corrupt or truncated ({e}); restore it or retrain"),
        )
    })
}

/// A model loaded from a checkpoint, ready for inference or more training.
pub struct Loaded {
    pub dir: PathBuf,
    pub vs: nn::VarStore,
    pub model: Gpt,
    pub state: State,
}

/// Loads the checkpoint that `path` refers to (see [`resolve`]) onto `device`.
pub fn load(path: &Path, device: Device) -> Result<Loaded> {
    let dir = resolve(path)?;
    let state = read_state(&dir)?;
    state.model.validate().map_err(|e| {
        Error::checkpoint(dir.join("state.json"), format!("invalid model config: {e}"))
    })?;
    if state.model.vocab_size != state.tokenizer.vocab_size() {
        // Token ids past the embedding table would crash inside libtorch.
        return Err(Error::checkpoint(
            dir.join("state.json"),
            format!(
                "model vocab_size {} does not match the tokenizer's {}; the file was edited or is corrupt",
                state.model.vocab_size,
                state.tokenizer.vocab_size()
            ),
        ));
    }
    let file = dir.join("model.safetensors");
    let tensors = read_tensors(&file)?;
    check_dimensions(&tensors, &state.model, &file)?;
    crate::memory::check_fits(
        &state.model,
        crate::memory::Use::Load,
        device == Device::Cpu,
    )
    .map_err(|e| Error::checkpoint(&dir, e.to_string()))?;
    let vs = nn::VarStore::new(device);
    let model = Gpt::new(&vs.root(), &state.model);
    copy_into(&vs, &tensors, &file)?;
    Ok(Loaded {
        dir,
        vs,
        model,
        state,
    })
}

/// Restores the optimizer state saved in checkpoint directory `dir`.
pub fn load_optimizer(dir: &Path, opt: &mut impl OptimizerState) -> Result<()> {
    let file = dir.join("optimizer.safetensors");
    let tensors = read_tensors(&file)?;
    opt.load_state(&tensors, &file)
}

/// Writes a checkpoint to `run_dir/name/` atomically (see the module docs). On failure
/// the previous checkpoint is untouched, and the error says so.
pub fn save_atomically(
    run_dir: &Path,
    name: &str,
    vs: &nn::VarStore,
    opt: &impl OptimizerState,
    state: &State,
) -> Result<PathBuf> {
    let final_dir = run_dir.join(name);
    let tmp = run_dir.join(format!("{name}.tmp"));
    let old = set_aside(&final_dir);
    let fail = |what: String| {
        let _ = fs::remove_dir_all(&tmp);
        let kept = if final_dir.exists() {
            format!(
                "; the previous checkpoint in {} is intact",
                final_dir.display()
            )
        } else {
            String::new()
        };
        Error::checkpoint(&tmp, format!("{what}{kept}"))
    };
    let variables = vs.variables();
    refuse_non_finite(&variables, &final_dir)?;
    write_files(&tmp, &variables, opt, state).map_err(fail)?;
    // The swap: old checkpoint aside, new one in, old one gone. `resolve` copes with a
    // crash between any two of these renames.
    if final_dir.exists() {
        let _ = fs::remove_dir_all(&old);
        fs::rename(&final_dir, &old)
            .map_err(|e| fail(format!("cannot move the previous checkpoint aside: {e}")))?;
    }
    fs::rename(&tmp, &final_dir).map_err(|e| {
        Error::checkpoint(
            &final_dir,
            format!(
                "cannot rename into place: {e}; the previous checkpoint is in {}",
                old.display()
            ),
        )
    })?;
    let _ = fsync(run_dir);
    let _ = fs::remove_dir_all(&old);
    Ok(final_dir)
}

/// Never lets NaN or infinite weights replace a good checkpoint: names the first tensor
/// that holds one.
fn refuse_non_finite(variables: &HashMap<String, Tensor>, final_dir: &Path) -> Result<()> {
    if all_finite(variables.values()) {
        return Ok(());
    }
    let bad = variables
        .iter()
        .find(|(_, t)| !all_finite([*t]))
        .expect("one tensor is not finite");
    Err(Error::checkpoint(
        final_dir,
        format!(
            "not written: tensor {} holds NaN or infinite values{}",
            bad.0,
            if final_dir.exists() {
                "; the previous checkpoint is intact"
            } else {
                ""
            }
        ),
    ))
}

/// Writes every file of a checkpoint into the (fresh) folder `tmp` and flushes them and
/// the folder to disk; says which step failed.
fn write_files(
    tmp: &Path,
    variables: &HashMap<String, Tensor>,
    opt: &impl OptimizerState,
    state: &State,
) -> std::result::Result<(), String> {
    if tmp.exists() {
        fs::remove_dir_all(tmp)
            .map_err(|e| format!("cannot clear a stale temporary folder: {e}"))?;
    }
    fs::create_dir_all(tmp).map_err(|e| format!("cannot create: {e}"))?;
    let mut named: Vec<(&String, &Tensor)> = variables.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    Tensor::write_safetensors(&named, tmp.join("model.safetensors"))
        .map_err(|e| format!("cannot write model.safetensors: {e}"))?;
    Tensor::write_safetensors(&opt.state_tensors(), tmp.join("optimizer.safetensors"))
        .map_err(|e| format!("cannot write optimizer.safetensors: {e}"))?;
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    fs::write(tmp.join("state.json"), json).map_err(|e| format!("cannot write state.json: {e}"))?;
    let mut files = vec!["model.safetensors", "optimizer.safetensors", "state.json"];
    if let Tokenizer::Bpe(bpe) = &state.tokenizer {
        fs::write(tmp.join(TOKENIZER_FILE), bpe.to_json())
            .map_err(|e| format!("cannot write {TOKENIZER_FILE}: {e}"))?;
        files.push(TOKENIZER_FILE);
    }
    for f in files {
        fsync(&tmp.join(f)).map_err(|e| format!("cannot flush {f} to disk: {e}"))?;
    }
    fsync(tmp).map_err(|e| format!("cannot flush the folder: {e}"))
}

/// Whether every element of every tensor is finite (no NaN, no ±inf), with one host
/// sync for all of them.
pub fn all_finite<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> bool {
    let flags: Vec<Tensor> = tensors.into_iter().map(|t| t.isfinite().all()).collect();
    flags.is_empty() || Tensor::stack(&flags, 0).all().int64_value(&[]) != 0
}

fn fsync(path: &Path) -> std::io::Result<()> {
    fs::File::open(path)?.sync_all()
}
