//! Model and training configuration, the presets that set their defaults, and the
//! device choice. Field names follow nanoGPT (`n_layer`, `n_head`, `n_embd`,
//! `block_size`, `vocab_size`, `bias`, `dropout`) so a `state.json` reads like a
//! nanoGPT `model_args` and checkpoints convert by name.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The shape of the GPT (nanoGPT's `GPTConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub n_layer: i64,
    pub n_head: i64,
    pub n_embd: i64,
    /// The context length: the most positions the model can see (`wpe` has this many rows).
    pub block_size: i64,
    pub vocab_size: i64,
    /// Linear layers and LayerNorms carry a bias (as GPT-2 does).
    pub bias: bool,
    pub dropout: f64,
}

impl ModelConfig {
    /// Checks what would otherwise fail deep inside libtorch, naming the flag to change.
    pub fn validate(&self) -> Result<()> {
        for (flag, v) in [
            ("--n-layer", self.n_layer),
            ("--n-head", self.n_head),
            ("--n-embd", self.n_embd),
            ("--block-size", self.block_size),
            ("vocab_size", self.vocab_size),
        ] {
            if v <= 0 {
                return Err(Error::config(flag, format!("must be positive, got {v}")));
            }
        }
        if self.n_embd % self.n_head != 0 {
            return Err(Error::config(
                "--n-embd",
                format!(
                    "{} is not divisible by --n-head {}; pick n_embd as a multiple of n_head",
                    self.n_embd, self.n_head
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(
                "--dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        Ok(())
    }

    /// `D`, the width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.n_embd / self.n_head
    }
}

/// How to train: optimizer, schedule, batch and stopping rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Windows per micro-batch (`B`).
    pub batch_size: i64,
    /// Micro-batches whose gradients are summed before one optimizer step.
    pub grad_accum: i64,
    pub max_steps: u64,
    /// Wall-clock budget; training stops (and checkpoints) at whichever of this and
    /// `max_steps` comes first. With [`Schedule::Budget`] it counts the run's whole
    /// training time across resumes, and the decay is planned to end there.
    pub max_minutes: Option<f64>,
    /// How the learning rate leaves its peak (cosine for runs saved before there was a
    /// choice).
    #[serde(default)]
    pub schedule: Schedule,
    /// Peak learning rate, reached at the end of warmup.
    pub lr: f64,
    /// The cosine schedule decays to this (10 % of the peak by default).
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Gradients are rescaled so that their global L2 norm is at most this (0 = off).
    pub grad_clip: f64,
    /// What updates the hidden matrices of the blocks (AdamW for runs saved before
    /// there was a choice); everything else is always AdamW's.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Muon's peak learning rate; the schedule scales it as it scales `lr`.
    #[serde(default = "default_muon_lr")]
    pub muon_lr: f64,
    /// Muon's momentum μ (Nesterov).
    #[serde(default = "default_muon_momentum")]
    pub muon_momentum: f64,
    pub eval_every: u64,
    /// Validation loss is the mean over this many fixed windows of the validation stream.
    pub eval_windows: i64,
    pub checkpoint_every: u64,
    pub seed: u64,
    /// Stop (with a checkpoint) once this many updates are done, without changing the LR
    /// schedule, which `max_steps` defines: train a long run in sessions. Belongs to one
    /// session, so it is never saved and a resumed run does not inherit it.
    #[serde(skip)]
    pub stop_at_step: Option<u64>,
}

/// The shape of the learning rate after warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine decay to `min_lr` at `max_steps`: a pure function of the step, so a run
    /// is exactly reproducible.
    #[default]
    Cosine,
    /// Warmup, a stable phase at the peak, and a linear decay over the last part of the
    /// run, whose end is `max_steps` or the `max_minutes` deadline, whichever the run
    /// reaches first: a run cut by time still ends annealed, on any machine.
    Budget,
}

/// Which optimizer updates the 2-D weight matrices inside the blocks (attention's
/// `c_attn`, `c_proj`, the MLP's `c_fc`, `c_proj`). The embeddings, LayerNorms and
/// biases are AdamW's either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// AdamW for every parameter.
    #[default]
    #[value(name = "adamw")]
    AdamW,
    /// Muon (momentum, orthogonalised by Newton–Schulz) for the hidden matrices; see
    /// `train::muon`.
    Muon,
}

impl Optimizer {
    /// The name on the command line and in `state.json`.
    pub fn name(self) -> &'static str {
        match self {
            Optimizer::AdamW => "adamw",
            Optimizer::Muon => "muon",
        }
    }
}

/// `--muon-lr` when none is given (and in runs saved before Muon): measured on the
/// small preset, see `train::muon`.
pub const DEFAULT_MUON_LR: f64 = 0.05;

fn default_muon_lr() -> f64 {
    DEFAULT_MUON_LR
}

fn default_muon_momentum() -> f64 {
    0.95
}

/// Named defaults. `tiny` is for tests, `small` is the CPU default of `make demo`,
/// [`Preset::Large`] (`--preset seed`) is the GPU model (≈25.6M parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Tiny,
    Small,
    // Named `seed` on the command line and in files.
    #[value(name = "seed")]
    #[serde(rename = "seed")]
    Large,
}

impl Preset {
    pub fn model(self, vocab_size: i64) -> ModelConfig {
        let (n_layer, n_head, n_embd, block_size) = match self {
            Preset::Tiny => (2, 2, 32, 16),
            Preset::Small => (4, 4, 192, 128),
            Preset::Large => (8, 8, 512, 512),
        };
        ModelConfig {
            n_layer,
            n_head,
            n_embd,
            block_size,
            vocab_size,
            bias: true,
            dropout: 0.0,
        }
    }

    pub fn train(self) -> TrainConfig {
        let base = TrainConfig {
            batch_size: 16,
            grad_accum: 1,
            max_steps: 1000,
            max_minutes: None,
            schedule: Schedule::Cosine,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            grad_clip: 1.0,
            optimizer: Optimizer::AdamW,
            muon_lr: DEFAULT_MUON_LR,
            muon_momentum: default_muon_momentum(),
            eval_every: 250,
            eval_windows: 256,
            checkpoint_every: 500,
            seed: 1337,
            stop_at_step: None,
        };
        match self {
            Preset::Tiny => TrainConfig {
                batch_size: 8,
                max_steps: 50,
                warmup_steps: 5,
                eval_every: 25,
                eval_windows: 32,
                checkpoint_every: 25,
                ..base
            },
            // About 10M training tokens (≈11 minutes on 2 idle CPU cores). Measured: after
            // 8.2M tokens (4000 steps, val 1.121) greedy decoding of `[x**2 for x in `
            // still chose `x` (p 0.191) just over `r` (p 0.178), so the demo trains longer. The time
            // limit keeps `make demo` within its budget on a slower machine, and the budget
            // schedule anneals the model before that limit, wherever the run stops.
            Preset::Small => TrainConfig {
                batch_size: 16,
                max_steps: 5000,
                lr: 2e-3,
                min_lr: 2e-4,
                warmup_steps: 100,
                eval_every: 500,
                checkpoint_every: 500,
                max_minutes: Some(14.0),
                schedule: Schedule::Budget,
                ..base
            },
            Preset::Large => TrainConfig {
                batch_size: 32,
                max_steps: 5000,
                lr: 6e-4,
                min_lr: 6e-5,
                warmup_steps: 200,
                eval_every: 500,
                eval_windows: 128,
                checkpoint_every: 1000,
                ..base
            },
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size <= 0 {
            return Err(Error::config(
                "--batch-size",
                format!("must be positive, got {}", self.batch_size),
            ));
        }
        if self.grad_accum <= 0 {
            return Err(Error::config(
                "--grad-accum",
                format!("must be positive, got {}", self.grad_accum),
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::config(
                "--lr",
                format!("must be a positive number, got {}", self.lr),
            ));
        }
        if self.max_steps == 0 {
            return Err(Error::config("--max-steps", "must be at least 1"));
        }
        if self.stop_at_step == Some(0) {
            return Err(Error::config("--stop-at-step", "must be at least 1"));
        }
        if !(self.muon_lr > 0.0 && self.muon_lr.is_finite()) {
            return Err(Error::config(
                "--muon-lr",
                format!("must be a positive number, got {}", self.muon_lr),
            ));
        }
        if !(0.0..1.0).contains(&self.muon_momentum) {
            return Err(Error::config(
                "--muon-momentum",
                format!("must be in [0, 1), got {}", self.muon_momentum),
            ));
        }
        for (flag, v) in [
            ("--min-lr", self.min_lr),
            ("--weight-decay", self.weight_decay),
            ("--grad-clip", self.grad_clip),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::config(
                    flag,
                    format!("must be 0 or a positive number, got {v}"),
                ));
            }
        }
        if self.checkpoint_every == 0 {
            return Err(Error::config(
                "--checkpoint-every",
                "must be at least 1 (a checkpoint is always written at the end too)",
            ));
        }
        if self.eval_every == 0 {
            return Err(Error::config("--eval-every", "must be positive"));
        }
        if self.eval_windows <= 0 {
            return Err(Error::config("--eval-windows", "must be positive"));
        }
        if let Some(m) = self.max_minutes {
            if m.is_nan() || m <= 0.0 {
                return Err(Error::config(
                    "--max-minutes",
                    format!("must be positive, got {m}"),
                ));
            }
        }
        Ok(())
    }
}
