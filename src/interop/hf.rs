//! Exporting a sympathy checkpoint in the layout of Hugging Face's GPT-2
//! (`GPT2LMHeadModel`): a `model.safetensors` and a `config.json`; for a BPE model also
//! its `tokenizer.json` and the `tokenizer_config.json` that makes
//! `AutoTokenizer.from_pretrained(dir)` a `PreTrainedTokenizerFast` with `<eos>` and
//! `<pad>`, so model and tokenizer load from one folder.
//!
//! Hugging Face's GPT-2 computes its projections with `Conv1D`, `x @ W + b` with `W`
//! stored (in, out): the transpose of a `Linear` weight. GPT-2 always has biases, so a
//! `bias = false` model exports zero biases, which compute the same function. The
//! architecture options ([`crate::config::Arch`]) have no place in `GPT2LMHeadModel`
//! (it has no RoPE, RMSNorm, QK-norm or ReLU², and ties its head), so only a GPT-2
//! run exports; the error names the first option in the way.

use crate::config::ModelConfig;
use crate::run::checkpoint;
use crate::tokenizer::bpe::{EOS_TOKEN, PAD_TOKEN, TOKENIZER_FILE};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Writes the checkpoint of `run_dir` as Hugging Face GPT-2 (`GPT2LMHeadModel`):
/// `out_dir/model.safetensors` and `out_dir/config.json` (and the tokenizer files of a
/// BPE model). Returns the tensor count.
pub fn export_hf(run_dir: &Path, out_dir: &Path) -> Result<usize> {
    let loaded = checkpoint::load(run_dir, Device::Cpu)?;
    let cfg = &loaded.state.model;
    if let Some(option) = cfg.arch.changes().first() {
        return Err(Error::config(
            option.as_str(),
            "has no GPT2LMHeadModel equivalent; export works for the gpt2 architecture",
        ));
    }
    let vars = loaded.vs.variables();
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in &vars {
        let conv1d = name.starts_with("h.") && name.ends_with(".weight") && t.dim() == 2;
        // Linear (out, in) -> Conv1D (in, out).
        let t = if conv1d {
            t.detach().transpose(0, 1).contiguous()
        } else {
            t.detach()
        };
        out.push((format!("transformer.{name}"), t));
        if let Some(stem) = name
            .strip_suffix(".weight")
            .filter(|_| !name.starts_with("wte") && !name.starts_with("wpe"))
        {
            let bias = format!("{stem}.bias");
            if !vars.contains_key(&bias) {
                // Every weight's output size is its dim 0: (out, in) for Linear, (C,) for LayerNorm.
                out.push((
                    format!("transformer.{bias}"),
                    Tensor::zeros([vars[name].size()[0]], (Kind::Float, Device::Cpu)),
                ));
            }
        }
    }
    out.push(("lm_head.weight".into(), vars["wte.weight"].detach())); // the tied head
    out.sort_by(|a, b| a.0.cmp(&b.0));

    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let file = out_dir.join("model.safetensors");
    write_safetensors_pt(&out, &file)?;
    let config = hf_config(cfg, &loaded.state.tokenizer);
    write_tokenizer(&loaded.state.tokenizer, cfg, out_dir)?;
    let config_path = out_dir.join("config.json");
    std::fs::write(
        &config_path,
        serde_json::to_string_pretty(&config).expect("json") + "\n",
    )
    .map_err(|e| Error::io(&config_path, e))?;
    Ok(out.len())
}

/// `GPT2Config` for `cfg`. `"gelu"` is the exact erf GELU in Hugging Face (`"gelu_new"`
/// would be GPT-2's tanh approximation); `n_inner: null` means 4·n_embd.
pub fn hf_config(cfg: &ModelConfig, tokenizer: &Tokenizer) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "bos_token_id": tokenizer.eos(),
        "eos_token_id": tokenizer.eos(),
        "pad_token_id": tokenizer.pad(),
        "use_cache": true,
    })
}

/// A BPE's `tokenizer.json` (its native file) and `tokenizer_config.json`. The char
/// tokenizer has no Hugging Face counterpart: its ids are the ASCII codes.
fn write_tokenizer(tokenizer: &Tokenizer, cfg: &ModelConfig, out_dir: &Path) -> Result<()> {
    let Tokenizer::Bpe(bpe) = tokenizer else {
        return Ok(());
    };
    bpe.save(&out_dir.join(TOKENIZER_FILE))?;
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "model_max_length": cfg.block_size,
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
    });
    let path = out_dir.join("tokenizer_config.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&config).expect("json") + "\n",
    )
    .map_err(|e| Error::io(&path, e))
}

/// safetensors with the `{"format": "pt"}` header metadata that Hugging Face's
/// `from_pretrained` checks for (tch writes none).
fn write_safetensors_pt(tensors: &[(String, Tensor)], file: &Path) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let values = Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1))?;
            let shape = t.size().iter().map(|&d| d as usize).collect();
            Ok((
                name.clone(),
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ))
        })
        .collect::<Result<_>>()?;
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            Ok((
                name.as_str(),
                TensorView::new(Dtype::F32, shape.clone(), data)
                    .map_err(|e| Error::checkpoint(file, e.to_string()))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::tensor::serialize_to_file(views, &metadata, file)
        .map_err(|e| Error::checkpoint(file, format!("cannot write: {e}")))
}
