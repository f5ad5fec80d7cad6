//! How much arithmetic one token costs: the floating-point operations (FLOPs) of the
//! forward pass, split into attention, MLP and head, and the training cost (forward +
//! backward) that model-FLOPs utilisation (MFU) divides by.
//!
//! Only matrix multiplications are counted: a multiply-add of an (m×k)·(k×n) product is
//! 2·m·k·n FLOPs, and the norms, the nonlinearity, RoPE's rotations, softmax and the
//! residual adds are a few FLOPs per *activation*, not per *weight*, which is negligible
//! at any useful width. Embedding
//! lookups are gathers, not FLOPs. Per token and per layer, with `C = n_embd`,
//! `T = block_size` and `V = vocab_size`:
//!
//! ```text
//! attention  c_attn  C -> 3C            2·3C²  = 6C²
//!            q·kᵀ    T keys of width C   2·T·C
//!            att·v   T values of width C 2·T·C
//!            c_proj  C -> C              2·C²
//! mlp        c_fc    C -> 4C             2·4C²  = 8C²
//!            c_proj  4C -> C             2·4C²  = 8C²
//! head       (once)  C -> V              2·C·V
//! ```
//!
//! The backward pass costs twice the forward (one product for the gradient of the
//! input, one for the gradient of the weight), so training is 3× the forward:
//!
//! ```text
//! training FLOPs per token = 6·N + 12·L·C·T,   N = 12·L·C² + V·C (the matmul weights)
//! ```
//!
//! This is the estimate of PaLM (Chowdhery et al. 2022, appendix B: `6N + 12·L·H·Q·T`,
//! where `H·Q = C`) and Kaplan et al. 2020 (§2.1, table 1: `C_forward ≈ 2N + 2·L·T·C`),
//! the one nanoGPT's `estimate_mfu` uses. Like them it charges every query all `T` keys,
//! although the causal mask leaves position `t` only `t + 1` of them: kernels compute
//! the masked half anyway, and MFU figures compare across projects only with one
//! convention.

use crate::config::ModelConfig;
use serde::Serialize;

/// Forward FLOPs per token, by where they are spent (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FlopsBreakdown {
    /// All layers' attention: the projections (8·C² each) and the scores (4·T·C each).
    pub attention: f64,
    /// All layers' MLPs (16·C² each).
    pub mlp: f64,
    /// The head that scores the vocabulary (2·C·V), tied to `wte` or not.
    pub head: f64,
}

impl FlopsBreakdown {
    /// The forward FLOPs per token of a model shaped like `cfg` at context `cfg.block_size`.
    pub fn of(cfg: &ModelConfig) -> Self {
        let (l, c, t, v) = (
            cfg.n_layer as f64,
            cfg.n_embd as f64,
            cfg.block_size as f64,
            cfg.vocab_size as f64,
        );
        FlopsBreakdown {
            attention: l * (8.0 * c * c + 4.0 * t * c),
            mlp: l * 16.0 * c * c,
            head: 2.0 * c * v,
        }
    }

    pub fn forward(&self) -> f64 {
        self.attention + self.mlp + self.head
    }

    /// Forward and backward: the backward pass costs two forwards.
    pub fn training(&self) -> f64 {
        3.0 * self.forward()
    }
}

/// Training FLOPs per token (forward + backward) of a model shaped like `cfg`:
/// `6·N + 12·L·C·T` with `N = 12·L·C² + V·C` (PaLM appendix B). Multiply by tokens per
/// second and divide by the hardware's peak FLOP/s to get MFU.
pub fn flops_per_token(cfg: &ModelConfig) -> f64 {
    FlopsBreakdown::of(cfg).training()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn training_flops_are_six_n_plus_the_attention_term() {
        for preset in [Preset::Tiny, Preset::Small, Preset::Large] {
            let cfg = preset.model(131);
            let (l, c, t, v) = (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.vocab_size);
            let n = 12 * l * c * c + v * c;
            let expected = (6 * n + 12 * l * c * t) as f64;
            assert_eq!(flops_per_token(&cfg), expected, "{preset:?}");
        }
    }
}
