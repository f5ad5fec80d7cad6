//! One transformer block, pre-norm as in GPT-2 (Radford et al. 2019, §2.3):
//! `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`. Normalising the input of each branch,
//! not its output, leaves the residual stream an untouched sum, so gradients reach the
//! first layers directly and deep stacks train without warmup tricks. The norms are
//! LayerNorm (GPT-2) or RMSNorm, as the config says ([`super::norm`]).

use crate::config::ModelConfig;
use crate::model::kv_cache::LayerCache;
use crate::model::{CausalSelfAttention, Mlp, Norm, Rope};
use tch::{nn, Tensor};

#[derive(Debug)]
pub struct Block {
    pub(super) ln_1: Norm,
    pub(super) attn: CausalSelfAttention,
    pub(super) ln_2: Norm,
    pub(super) mlp: Mlp,
}

impl Block {
    /// A block under `p`; `rope` is the model's table when `cfg.arch.pos` is rope.
    pub fn new(p: nn::Path, cfg: &ModelConfig, rope: Option<&Rope>) -> Self {
        Block {
            ln_1: Norm::new(&p / "ln_1", cfg),
            attn: CausalSelfAttention::new(&p / "attn", cfg, rope),
            ln_2: Norm::new(&p / "ln_2", cfg),
            mlp: Mlp::new(&p / "mlp", cfg),
        }
    }

    /// x: (B, T, C) -> (B, T, C).
    pub fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>, train: bool) -> Tensor {
        let x = x + self.attn.forward(&self.ln_1.forward(x), cache, train);
        &x + self.mlp.forward(&self.ln_2.forward(&x), train)
    }

    /// As `forward` (eval mode, no cache), also returning the attention weights (B, H, T, T).
    pub fn forward_traced(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (a, att) = self.attn.forward_traced(&self.ln_1.forward(x));
        let x = x + a;
        (&x + self.mlp.forward(&self.ln_2.forward(&x), false), att)
    }
}
