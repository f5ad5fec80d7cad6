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
    /// Options from the modded-nanogpt speedrun; GPT-2's when absent from a file, so
    /// every checkpoint saved before they existed loads as the GPT-2 it is.
    #[serde(flatten)]
    pub arch: Arch,
}

/// The architecture options of the GPT, each a named change to GPT-2 from the
/// modded-nanogpt speedrun and nanochat. [`Arch::default`] is GPT-2; [`Arch::modern`]
/// turns on all six.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Arch {
    /// How the model knows where a token is.
    pub pos: Positions,
    /// The norm of `ln_1`, `ln_2` and `ln_f`.
    pub norm: Normalization,
    /// RMSNorm over each head's queries and keys (with a learned gain) before their dot
    /// product: bounds the attention logits, which lets higher learning rates train.
    pub qk_norm: bool,
    /// The MLP's nonlinearity.
    pub mlp: Activation,
    /// The head reuses `wte` (GPT-2); when false it is a matrix `lm_head` of its own.
    pub tied_head: bool,
    /// The projections that write into the residual stream (`attn.c_proj`,
    /// `mlp.c_proj`) start at zero, so that every block starts as the identity.
    pub zero_init: bool,
}

impl Default for Arch {
    /// GPT-2 (Radford et al. 2019), as nanoGPT builds it.
    fn default() -> Self {
        Arch {
            pos: Positions::Learned,
            norm: Normalization::LayerNorm,
            qk_norm: false,
            mlp: Activation::Gelu,
            tied_head: true,
            zero_init: false,
        }
    }
}

impl Arch {
    /// All six options of the speedrun on: RoPE, RMSNorm, QK-norm, ReLU², an untied
    /// head and zero-initialised residual projections.
    pub fn modern() -> Self {
        Arch {
            pos: Positions::Rope,
            norm: Normalization::RmsNorm,
            qk_norm: true,
            mlp: Activation::Relu2,
            tied_head: false,
            zero_init: true,
        }
    }

    /// The options that differ from GPT-2, as their flags (`--pos rope`, `--qk-norm`,
    /// ...); empty for GPT-2.
    pub fn changes(&self) -> Vec<String> {
        let gpt2 = Arch::default();
        let mut out = Vec::new();
        if self.pos != gpt2.pos {
            out.push(format!("--pos {}", self.pos));
        }
        if self.norm != gpt2.norm {
            out.push(format!("--norm {}", self.norm));
        }
        if self.qk_norm {
            out.push("--qk-norm".into());
        }
        if self.mlp != gpt2.mlp {
            out.push(format!("--mlp {}", self.mlp));
        }
        if !self.tied_head {
            out.push("--untied-head".into());
        }
        if self.zero_init {
            out.push("--zero-init".into());
        }
        out
    }
}

/// Where position information enters the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// A learned table `wpe` of one vector per position, added to the token embedding
    /// (GPT-2).
    #[default]
    Learned,
    /// Rotary embeddings (Su et al. 2021): q and k rotated by angles proportional to
    /// their position in every layer, so that q·k depends on the offset alone. No
    /// parameters.
    Rope,
}

/// The normalisation before each branch and before the head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// LayerNorm (Ba et al. 2016): centre, scale to unit variance, gain and bias.
    #[default]
    #[value(name = "layernorm")]
    LayerNorm,
    /// RMSNorm (Zhang & Sennrich 2019): scale to unit root mean square, gain only.
    #[value(name = "rmsnorm")]
    RmsNorm,
}

/// The MLP's nonlinearity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Exact (erf) GELU (Hendrycks & Gimpel 2016), as GPT-2.
    #[default]
    Gelu,
    /// ReLU² (So et al. 2021, "Primer"): relu(x)².
    #[value(name = "relu2")]
    Relu2,
}

/// Writes an option as flags and files spell it (`rope`, `rmsnorm`, `relu2`).
macro_rules! display_as_value {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let value = clap::ValueEnum::to_possible_value(self).expect("every option has a name");
                f.write_str(value.get_name())
            }
        }
    )*};
}
display_as_value!(Positions, Normalization, Activation);

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
        if self.arch.pos == Positions::Rope && self.head_dim() % 2 != 0 {
            return Err(Error::config(
                "--pos",
                format!(
                    "rope rotates pairs of a head's dimensions, and heads of width {} have an odd one; pick n_embd / n_head even",
                    self.head_dim()
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
    /// Stop on quality: once an evaluation reaches this many validation bits per byte
    /// while the learning rate is still at its peak, the budget schedule starts its decay
    /// there, as long as if the run so far had been the stable part of a planned run, and
    /// the run ends annealed ([`Schedule::Budget`] only).
    #[serde(default)]
    pub target_bpb: Option<f64>,
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
    /// The number format of Muon's Newton–Schulz products (f32 in runs saved before
    /// there was a choice, so that they resume exactly as they started).
    #[serde(default = "NsPrecision::saved_before_the_choice")]
    pub muon_precision: NsPrecision,
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

/// The number format of Muon's Newton–Schulz products (see `train::muon`). Products in
/// bf16 take half the time of f32 ones where the hardware multiplies bf16 natively, and
/// Muon does not mind their rounding; elsewhere bf16 is emulated and slower than f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsPrecision {
    /// bf16 on CUDA and on CPUs with bf16 dot products (AVX512-BF16), f32 elsewhere.
    #[default]
    Auto,
    /// f32 everywhere.
    Fp32,
    /// bf16 everywhere (emulated, and slow, on CPUs without bf16 dot products).
    Bf16,
}

impl NsPrecision {
    /// What a run saved before the choice existed used.
    fn saved_before_the_choice() -> Self {
        NsPrecision::Fp32
    }

    /// The name on the command line and in `state.json`.
    pub fn name(self) -> &'static str {
        match self {
            NsPrecision::Auto => "auto",
            NsPrecision::Fp32 => "fp32",
            NsPrecision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for NsPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
            Preset::Small => (4, 4, 128, 128),
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
            // The CPU default trains the recipe measured fastest to a good model
            // (docs/recipes.md); the test and GPU presets stay GPT-2.
            arch: match self {
                Preset::Small => Arch::modern(),
                Preset::Tiny | Preset::Large => Arch::default(),
            },
        }
    }

    pub fn train(self) -> TrainConfig {
        let base = TrainConfig {
            batch_size: 16,
            grad_accum: 1,
            max_steps: 1000,
            max_minutes: None,
            target_bpb: None,
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
            muon_precision: NsPrecision::Auto,
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
            // The modern architecture (above) with Muon, at C = 128 and batch 8: at equal
            // wall clock the fastest recipe and size measured (docs/recipes.md). Up to
            // 10M tokens; the time limit ends it first on a slower machine, and the
            // budget schedule anneals the model before that limit, wherever the run
            // stops. `make demo` adds --target-bpb.
            Preset::Small => TrainConfig {
                batch_size: 8,
                max_steps: 10000,
                lr: 2e-3,
                min_lr: 2e-4,
                warmup_steps: 100,
                eval_every: 400,
                checkpoint_every: 1000,
                max_minutes: Some(14.0),
                schedule: Schedule::Budget,
                optimizer: Optimizer::Muon,
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
        if let Some(t) = self.target_bpb {
            if !(t > 0.0 && t.is_finite()) {
                return Err(Error::config(
                    "--target-bpb",
                    format!("must be a positive number of bits per byte, got {t}"),
                ));
            }
            if self.schedule != Schedule::Budget {
                return Err(Error::config(
                    "--target-bpb",
                    "needs --schedule budget (a cosine's end is fixed by --max-steps)",
                ));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_config_saved_before_the_options_loads_as_gpt2() {
        // The `model` of a state.json written before the architecture options existed.
        let old = r#"{"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16,
                      "vocab_size": 131, "bias": true, "dropout": 0.0}"#;
        let cfg: ModelConfig = serde_json::from_str(old).unwrap();
        assert_eq!(cfg, Preset::Tiny.model(131));
        assert_eq!(cfg.arch, Arch::default());
        assert!(cfg.arch.changes().is_empty());
    }

    #[test]
    fn the_options_are_saved_by_name_and_read_back() {
        let cfg = ModelConfig {
            arch: Arch::modern(),
            ..Preset::Tiny.model(131)
        };
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["pos"], "rope");
        assert_eq!(json["norm"], "rmsnorm");
        assert_eq!(json["mlp"], "relu2");
        assert_eq!(json["tied_head"], false);
        assert_eq!(serde_json::from_value::<ModelConfig>(json).unwrap(), cfg);
        assert_eq!(
            cfg.arch.changes(),
            [
                "--pos rope",
                "--norm rmsnorm",
                "--qk-norm",
                "--mlp relu2",
                "--untied-head",
                "--zero-init"
            ]
        );
    }
}
