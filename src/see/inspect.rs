//! `sympathy inspect`: what a model is made of and what it costs, before or after
//! training. Every parameter tensor with its shape and share of the total, the memory
//! that training needs (weights, gradients, AdamW moments, activations), the FLOPs per
//! token (see [`crate::model::flops`]), and, for a checkpoint, how far it was trained.
//!
//! The parameter table is read from a real `VarStore` (built from the config, or loaded
//! from `model.safetensors`), never from a formula, so it always shows what the code in
//! `src/model/` actually allocates.

use crate::config::ModelConfig;
use crate::model::flops::FlopsBreakdown;
use crate::model::nats_to_bits;
use crate::run::checkpoint::State;
use crate::{Error, Result};
use serde::Serialize;
use std::fmt::Write;
use std::path::PathBuf;
use tch::nn;

/// Bytes per parameter and per activation: sympathy trains in fp32.
pub use crate::memory::BYTES_PER_VALUE;

/// One parameter tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamRow {
    /// GPT-2 name, e.g. `h.0.attn.c_attn.weight`.
    pub name: String,
    pub shape: Vec<i64>,
    pub count: i64,
    /// Fraction of all parameters, 0..1.
    pub share: f64,
}

/// Memory in bytes for one training step at `batch_size` windows of `seq_len` tokens.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Memory {
    pub batch_size: i64,
    pub seq_len: i64,
    pub weights: u64,
    pub gradients: u64,
    /// AdamW's two moments, m and v: twice the weights.
    pub adamw_state: u64,
    /// Activations autograd keeps for the backward pass (see [`activation_values`]).
    pub activations: u64,
    pub training_total: u64,
    /// The (B, H, T, T) scores and probabilities of every layer, which the fused
    /// attention kernel never stores but the written-out one (`explain`) does.
    pub attention_maps_if_materialised: u64,
}

/// Forward FLOPs per token by part, and the totals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlopsReport {
    /// The context the attention term was computed for.
    pub seq_len: i64,
    pub attention: f64,
    pub mlp: f64,
    pub head: f64,
    pub forward: f64,
    /// Forward + backward = 3 × forward (PaLM appendix B; Kaplan et al. 2020 §2.1).
    pub training: f64,
    /// Training FLOPs of one optimizer step: `training · batch_size · seq_len`.
    pub per_training_step: f64,
}

/// What `state.json` says about the training so far.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainingSummary {
    pub checkpoint: PathBuf,
    pub step: u64,
    pub max_steps: u64,
    pub tokens_seen: u64,
    pub best_val_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    pub elapsed_s: f64,
    pub data: PathBuf,
    /// `char` or `bpe-N`: what one token is.
    pub tokenizer: String,
}

/// The whole `inspect` report; `--json` prints it as is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// `preset NAME` or the checkpoint folder.
    pub source: String,
    pub model: ModelConfig,
    pub params: Vec<ParamRow>,
    pub total_params: i64,
    pub memory: Memory,
    pub flops: FlopsReport,
    pub training: Option<TrainingSummary>,
}

/// The parameter tensors of `vs` in the order data meets them: `wte`, `wpe`, then each
/// block (`ln_1`, `attn.c_attn`, `attn.q_norm`, `attn.k_norm`, `attn.c_proj`, `ln_2`,
/// `mlp.c_fc`, `mlp.c_proj`, weight before bias), then `ln_f` and an untied `lm_head`.
/// A tied head has no row: it is `wte.weight`.
pub fn parameter_rows(vs: &nn::VarStore) -> Vec<ParamRow> {
    let mut rows: Vec<ParamRow> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| ParamRow {
            name,
            shape: t.size(),
            count: t.numel() as i64,
            share: 0.0,
        })
        .collect();
    rows.sort_by_key(|r| model_order(&r.name));
    let total: i64 = rows.iter().map(|r| r.count).sum();
    for r in &mut rows {
        r.share = r.count as f64 / total.max(1) as f64;
    }
    rows
}

/// Sort key for [`parameter_rows`]: (part, layer, piece, weight-before-bias).
fn model_order(name: &str) -> (u8, i64, u8, bool, String) {
    let parts: Vec<&str> = name.split('.').collect();
    let part = match parts[0] {
        "wte" => 0,
        "wpe" => 1,
        "h" => 2,
        "ln_f" => 3,
        "lm_head" => 4,
        _ => 5,
    };
    let layer = parts.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    const PIECES: [&str; 8] = [
        "ln_1",
        "c_attn",
        "q_norm",
        "k_norm",
        "attn.c_proj",
        "ln_2",
        "c_fc",
        "mlp.c_proj",
    ];
    let piece = PIECES
        .iter()
        .position(|p| name.contains(&format!(".{p}.")))
        .unwrap_or(PIECES.len()) as u8;
    (
        part,
        layer,
        piece,
        name.ends_with(".bias"),
        name.to_string(),
    )
}

/// Activation values per token that autograd saves for the backward pass, in sympathy's
/// model with the fused attention kernel and dropout 0. Per layer, in units of `C`:
///
/// ```text
/// ln_1 input 1, c_attn input 1, q k v 3, attention output (= c_proj input) 1,
/// ln_2 input 1, c_fc input 1, GELU input 4, mlp c_proj input 4           = 16·C
/// ```
///
/// This is the `34·s·b·h` bytes per layer of Korthikanti et al. 2022 (§4.1, "Reducing
/// Activation Recomputation in Large Transformer Models") at 2 bytes a value, less their
/// two dropout masks (1 byte a value each), and without their `5·a·s²·b` attention
/// matrices, which the fused kernel never stores. After the last block: the `ln_f`
/// input and output (2·C) and the log-softmax of the loss (V). LayerNorm statistics and
/// the kernel's log-sum-exp (a few values per token) are left out. Checked against
/// PyTorch's saved-tensor hooks on the same architecture (4 layers, C=128, T=128): the
/// estimate is within 0.5 % of what autograd keeps.
pub fn activation_values(cfg: &ModelConfig) -> i64 {
    crate::memory::activation_values(cfg) as i64
}

/// Builds the report for the parameters in `vs` (a model shaped like `cfg`), for
/// training steps of `batch_size` windows of `seq_len` tokens.
pub fn report(
    source: String,
    cfg: &ModelConfig,
    vs: &nn::VarStore,
    batch_size: i64,
    seq_len: i64,
    state: Option<(&State, PathBuf)>,
) -> Result<Report> {
    if batch_size < 1 {
        return Err(Error::config(
            "--batch-size",
            format!("must be positive, got {batch_size}"),
        ));
    }
    if seq_len < 1 || seq_len > cfg.block_size {
        return Err(Error::config(
            "--block-size",
            format!(
                "{seq_len} must be between 1 and the model's context {}",
                cfg.block_size
            ),
        ));
    }
    let params = parameter_rows(vs);
    let total_params: i64 = params.iter().map(|r| r.count).sum();
    let n = total_params as u64;
    let tokens = (batch_size * seq_len) as u64;
    let weights = n * BYTES_PER_VALUE;
    let activations = tokens * activation_values(cfg) as u64 * BYTES_PER_VALUE;
    let memory = Memory {
        batch_size,
        seq_len,
        weights,
        gradients: weights,
        adamw_state: 2 * weights,
        activations,
        training_total: 4 * weights + activations,
        attention_maps_if_materialised: (2 * cfg.n_layer * cfg.n_head) as u64
            * (batch_size * seq_len * seq_len) as u64
            * BYTES_PER_VALUE,
    };
    let at_len = ModelConfig {
        block_size: seq_len,
        ..cfg.clone()
    };
    let f = FlopsBreakdown::of(&at_len);
    let flops = FlopsReport {
        seq_len,
        attention: f.attention,
        mlp: f.mlp,
        head: f.head,
        forward: f.forward(),
        training: f.training(),
        per_training_step: f.training() * tokens as f64,
    };
    let training = state.map(|(s, dir)| TrainingSummary {
        checkpoint: dir,
        step: s.step,
        max_steps: s.train.max_steps,
        tokens_seen: s.tokens_seen,
        best_val_loss: s.best_val_loss,
        last_val_loss: s.last_val_loss,
        tokenizer: s.tokenizer.label(),
        elapsed_s: s.elapsed_s,
        data: s.data.root.clone(),
    });
    Ok(Report {
        source,
        model: cfg.clone(),
        params,
        total_params,
        memory,
        flops,
        training,
    })
}

/// `1234567` -> `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Bytes in binary units: `1536` -> `1.50 KiB`.
pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", units[i])
    }
}

/// A count in SI units: `2.5e9` -> `2.50 G`.
pub fn si(x: f64) -> String {
    let units = ["", "k", "M", "G", "T", "P"];
    let mut v = x;
    let mut i = 0;
    while v.abs() >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.2} {}", units[i])
}

/// The human-readable report printed by `sympathy inspect`.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    render_model(&mut s, r);
    render_params(&mut s, r);
    render_memory(&mut s, r);
    render_flops(&mut s, r);
    if let Some(t) = &r.training {
        render_training(&mut s, t);
    }
    s
}

/// The architecture lines: the shape, then the options.
fn render_model(s: &mut String, r: &Report) {
    let m = &r.model;
    let _ = writeln!(s, "model {}", r.source);
    let _ = writeln!(
        s,
        "  {} layers, {} heads of width {}, n_embd {}, context {}, vocab {}, bias {}, dropout {}",
        m.n_layer,
        m.n_head,
        m.head_dim(),
        m.n_embd,
        m.block_size,
        m.vocab_size,
        m.bias,
        m.dropout
    );
    let a = &m.arch;
    let _ = writeln!(
        s,
        "  positions {}, norm {}, qk-norm {}, mlp {}, head {}, residual projections {}\n",
        a.pos,
        a.norm,
        if a.qk_norm { "on" } else { "off" },
        a.mlp,
        if a.tied_head {
            "tied to wte"
        } else {
            "untied (lm_head)"
        },
        if a.zero_init {
            "zero at init"
        } else {
            "N(0, 0.02²/2L) at init"
        }
    );
}

/// One row per parameter tensor: shape, count and share of the total.
fn render_params(s: &mut String, r: &Report) {
    let name_w = r
        .params
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(9)
        .max(9)
        + 2;
    let _ = writeln!(
        s,
        "{:<name_w$}{:>12}{:>14}{:>9}",
        "parameter", "shape", "count", "share"
    );
    for p in &r.params {
        let shape = p
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×");
        let _ = writeln!(
            s,
            "{:<name_w$}{:>12}{:>14}{:>8.2}%",
            p.name,
            shape,
            thousands(p.count),
            100.0 * p.share
        );
    }
    let _ = writeln!(
        s,
        "{:<name_w$}{:>12}{:>14}{:>8.2}%",
        "total",
        "",
        thousands(r.total_params),
        100.0
    );
    if r.model.arch.tied_head {
        let _ = writeln!(
            s,
            "  the head reuses wte.weight (tied), so it has no row of its own"
        );
    }
    let _ = writeln!(s);
}

/// What one training step holds in memory, and why.
fn render_memory(s: &mut String, r: &Report) {
    let (m, mem) = (&r.model, &r.memory);
    let _ = writeln!(
        s,
        "memory for one training step, fp32, batch {} × {} tokens",
        mem.batch_size, mem.seq_len
    );
    for (what, b, why) in [
        ("weights", mem.weights, "4 bytes a parameter"),
        ("gradients", mem.gradients, "one per parameter"),
        (
            "AdamW m and v",
            mem.adamw_state,
            "two moments per parameter",
        ),
        (
            "activations",
            mem.activations,
            if m.dropout > 0.0 {
                "saved for backward: 16·C per layer per token, plus dropout masks (not counted)"
            } else {
                "saved for backward: 16·C per layer per token (Korthikanti et al. 2022)"
            },
        ),
        ("training total", mem.training_total, ""),
        (
            "attention maps",
            mem.attention_maps_if_materialised,
            "only if materialised (explain); the fused kernel never stores them",
        ),
    ] {
        let line = format!("  {what:<16}{:>12}   {why}", bytes(b));
        let _ = writeln!(s, "{}", line.trim_end());
    }
    let _ = writeln!(s);
}

/// FLOPs per token, split by where they are spent.
fn render_flops(s: &mut String, r: &Report) {
    let (f, mem) = (&r.flops, &r.memory);
    let _ = writeln!(
        s,
        "FLOPs per token at context {} (multiply-add = 2)",
        f.seq_len
    );
    for (what, v) in [("attention", f.attention), ("mlp", f.mlp), ("head", f.head)] {
        let _ = writeln!(
            s,
            "  {what:<16}{:>12}   {:>5.1}% of the forward",
            si(v),
            100.0 * v / f.forward
        );
    }
    let _ = writeln!(s, "  {:<16}{:>12}", "forward", si(f.forward));
    let _ = writeln!(
        s,
        "  {:<16}{:>12}   3 × forward = 6N + 12·L·C·T (PaLM app. B; Kaplan et al. 2020)",
        "training",
        si(f.training)
    );
    let _ = writeln!(
        s,
        "  {:<16}{:>12}   training FLOPs of one step of {} tokens",
        "per step",
        si(f.per_training_step),
        thousands(mem.batch_size * mem.seq_len)
    );
}

/// Where the checkpoint's training stands.
fn render_training(s: &mut String, t: &TrainingSummary) {
    let _ = writeln!(
        s,
        "
training ({})",
        t.checkpoint.display()
    );
    let _ = writeln!(
        s,
        "  step {} of {}, {} tokens ({}) seen, {:.1} s of training, data {}",
        t.step,
        t.max_steps,
        thousands(t.tokens_seen as i64),
        t.tokenizer,
        t.elapsed_s,
        t.data.display()
    );
    let loss = |v: Option<f64>| match v {
        Some(v) => format!("{v:.4} nats/token ({:.3} bits/token)", nats_to_bits(v)),
        None => "not evaluated yet".to_string(),
    };
    let _ = writeln!(s, "  best val loss {}", loss(t.best_val_loss));
    let _ = writeln!(s, "  last val loss {}", loss(t.last_val_loss));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(12), "12 B");
        assert_eq!(si(2.5e9), "2.50 G");
    }

    #[test]
    fn model_order_puts_layers_in_numeric_order() {
        let mut names = vec![
            "ln_f.weight",
            "h.10.ln_1.weight",
            "h.2.mlp.c_proj.bias",
            "h.2.attn.c_attn.bias",
            "h.2.attn.c_attn.weight",
            "wpe.weight",
            "wte.weight",
        ];
        names.sort_by_key(|n| model_order(n));
        assert_eq!(
            names,
            [
                "wte.weight",
                "wpe.weight",
                "h.2.attn.c_attn.weight",
                "h.2.attn.c_attn.bias",
                "h.2.mlp.c_proj.bias",
                "h.10.ln_1.weight",
                "ln_f.weight"
            ]
        );
    }
}
