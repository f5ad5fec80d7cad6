//! What a model needs in memory, and whether this machine has it: checked before any
//! tensor is allocated, so that `--n-embd 1000000000` ends in a one-line error that
//! names the size, not in an allocation failure deep inside libtorch.
//!
//! The count is computed from the config alone (no tensors): GPT-2's layout, with the
//! head tied to `wte`. `inspect` shows the same estimate, term by term.

use crate::config::{ModelConfig, Normalization, Positions};
use crate::{Error, Result};

/// fp32: every value the estimate counts is 4 bytes.
pub const BYTES_PER_VALUE: u64 = 4;

/// The number of parameters of a GPT shaped like `cfg`, as a float so that absurd
/// configs cannot overflow (a count above 2⁵³ is not something anyone allocates).
///
/// ```text
/// wte V·C + wpe T·C                                         (no wpe with RoPE)
/// per layer: ln_1 C(+C) + c_attn 3C²(+3C) + c_proj C²(+C) + ln_2 C(+C)
///            + c_fc 4C²(+4C) + mlp.c_proj 4C²(+C)          (+…: with biases)
///            + q_norm D + k_norm D                          (with QK-norm)
/// ln_f C(+C); the head is wte, tied, or lm_head V·C         (an RMSNorm has no bias)
/// ```
pub fn parameter_count(cfg: &ModelConfig) -> f64 {
    let (c, l, d) = (cfg.n_embd as f64, cfg.n_layer as f64, cfg.head_dim() as f64);
    let (v, t) = (cfg.vocab_size as f64, cfg.block_size as f64);
    let one = |on: bool| if on { 1.0 } else { 0.0 };
    let arch = &cfg.arch;
    let b = one(cfg.bias);
    let norm = c + one(cfg.bias && arch.norm == Normalization::LayerNorm) * c;
    let per_layer =
        2.0 * norm + 12.0 * c * c + b * (3.0 * c + c + 4.0 * c + c) + one(arch.qk_norm) * 2.0 * d;
    let embeddings = v * c + one(arch.pos == Positions::Learned) * t * c;
    embeddings + l * per_layer + norm + one(!arch.tied_head) * v * c
}

/// Values autograd keeps per token for the backward pass (fp32, fused attention):
/// per layer ln_1 input, c_attn input, q/k/v, attention output, c_proj input, ln_2
/// input, c_fc input, GELU input and output (16·C); then ln_f's input and output (2·C)
/// and the loss's log-softmax (V). `inspect` explains each term.
pub fn activation_values(cfg: &ModelConfig) -> f64 {
    cfg.n_layer as f64 * 16.0 * cfg.n_embd as f64 + 2.0 * cfg.n_embd as f64 + cfg.vocab_size as f64
}

/// What a command is about to do with the model, for its memory need.
#[derive(Clone, Copy, Debug)]
pub enum Use {
    /// Loading a checkpoint to run it: the file's tensors and the model, both in memory
    /// while the one is copied into the other.
    Load,
    /// Building an untrained model to look at it.
    Build,
    /// Training on `tokens` tokens a micro-batch: weights, gradients, AdamW's two
    /// moments, and the activations of one batch.
    Train { tokens: i64 },
}

/// Bytes the model needs for `purpose`.
pub fn bytes_needed(cfg: &ModelConfig, purpose: Use) -> f64 {
    let weights = parameter_count(cfg) * BYTES_PER_VALUE as f64;
    match purpose {
        Use::Load => 2.0 * weights,
        Use::Build => weights,
        Use::Train { tokens } => {
            4.0 * weights + tokens as f64 * activation_values(cfg) * BYTES_PER_VALUE as f64
        }
    }
}

/// Memory this process may still use, in bytes: the kernel's `MemAvailable`, capped
/// by the cgroup's limit where there is one. `None` where neither can be read (then no
/// check is made: the estimate is a guard against the absurd, not a promise).
pub fn available_bytes() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024.0)
    });
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
    let cgroup = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(cur)) => match (max.trim().parse::<f64>(), cur.trim().parse::<f64>()) {
            (Ok(max), Ok(cur)) => Some((max - cur).max(0.0)),
            _ => None, // "max": no limit
        },
        _ => None,
    };
    match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// Refuses a model that cannot fit in this machine's free memory, before anything is
/// allocated. Models on a GPU are not checked here (their memory is the device's).
pub fn check_fits(cfg: &ModelConfig, purpose: Use, on_cpu: bool) -> Result<()> {
    let Some(available) = available_bytes().filter(|_| on_cpu) else {
        return Ok(());
    };
    check_against(cfg, purpose, available)
}

/// [`check_fits`] against a given amount of free memory.
pub fn check_against(cfg: &ModelConfig, purpose: Use, available: f64) -> Result<()> {
    let need = bytes_needed(cfg, purpose);
    if need <= available {
        return Ok(());
    }
    let what = match purpose {
        Use::Load => "loading it",
        Use::Build => "its weights",
        Use::Train { .. } => "a training step (weights, gradients, AdamW moments, activations)",
    };
    Err(Error::config(
        "--n-embd",
        format!(
            "a model of {} parameters ({} layers, n_embd {}) needs {} for {what}, and this machine has {} free; choose a smaller --n-embd, --n-layer or --batch-size",
            count(parameter_count(cfg)),
            cfg.n_layer,
            cfg.n_embd,
            gigabytes(need),
            gigabytes(available),
        ),
    ))
}

/// `1.2 GB`, `3.4e6 GB`: decimal gigabytes, readable at any size.
fn gigabytes(bytes: f64) -> String {
    let gb = bytes / 1e9;
    if gb < 1e5 {
        format!("{gb:.1} GB")
    } else {
        format!("{gb:.1e} GB")
    }
}

/// A parameter count in words: `12.0B`, `1.83M`.
fn count(n: f64) -> String {
    match n {
        n if n >= 1e12 => format!("{n:.2e}"),
        n if n >= 1e9 => format!("{:.1}B", n / 1e9),
        n if n >= 1e6 => format!("{:.2}M", n / 1e6),
        n => format!("{n:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, Preset};
    use crate::model::Gpt;
    use tch::{nn, Device};

    #[test]
    fn the_count_equals_the_tensors_a_model_allocates() {
        for (preset, bias, arch) in [
            (Preset::Tiny, true, Arch::default()),
            (Preset::Small, true, Arch::default()),
            (Preset::Tiny, false, Arch::default()),
            (Preset::Tiny, true, Arch::modern()),
            (Preset::Small, false, Arch::modern()),
        ] {
            let mut cfg = preset.model(131);
            cfg.bias = bias;
            cfg.arch = arch;
            let vs = nn::VarStore::new(Device::Cpu);
            let _model = Gpt::new(&vs.root(), &cfg);
            let allocated: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
            assert_eq!(
                parameter_count(&cfg),
                allocated as f64,
                "{preset:?} bias={bias} {:?}",
                cfg.arch
            );
        }
    }

    #[test]
    fn an_absurd_model_is_refused_with_its_size() {
        let mut cfg = Preset::Small.model(131);
        cfg.n_embd = 1_000_000_000;
        cfg.n_head = 1;
        let err = check_against(&cfg, Use::Train { tokens: 2048 }, 24e9).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("--n-embd: a model of 4.80e19 parameters"),
            "{msg}"
        );
        assert!(msg.contains("this machine has 24.0 GB free"), "{msg}");
        // The default model fits with room to spare; a 100-byte machine fits nothing.
        let small = Preset::Small.model(131);
        assert!(check_against(&small, Use::Train { tokens: 2048 }, 24e9).is_ok());
        assert!(check_against(&small, Use::Load, 100.0).is_err());
    }
}
