//! How much arithmetic one training token costs, so that a throughput in tokens/s can
//! be turned into FLOP/s and compared with what the machine's matmuls reach (MFU,
//! "model FLOPs utilisation", Chowdhery et al. 2022, *PaLM*, appendix B).
//!
//! The count is the model's, not the kernels': it is the same whether attention runs
//! as a fused kernel or written out, and whether a causal kernel skips the masked half
//! (PaLM counts the full `T×T` score matrix, and so do we, to stay comparable with the
//! MFU figures of PaLM and nanoGPT).

use crate::config::ModelConfig;

/// Parameters that take part in a matrix product for every token: every block's
/// weights, biases and LayerNorm gains, the final LayerNorm, and the token embedding,
/// counted once because it is also the output head (tying, see `model::gpt`) and that
/// head is a `C×V` matmul. The position embedding is left out: it is a table lookup.
/// This is nanoGPT's `get_num_params(non_embedding=True)`.
pub fn matmul_params(cfg: &ModelConfig) -> f64 {
    let (c, l, v) = (cfg.n_embd as f64, cfg.n_layer as f64, cfg.vocab_size as f64);
    let bias = if cfg.bias { 1.0 } else { 0.0 };
    // c_attn C·3C, attn.c_proj C·C, mlp.c_fc C·4C, mlp.c_proj 4C·C = 12·C² weights;
    // their biases 3C + C + 4C + C = 9C; ln_1 and ln_2 gains 2C (+ 2C biases).
    let per_layer = 12.0 * c * c + bias * 9.0 * c + 2.0 * c + bias * 2.0 * c;
    let ln_f = c + bias * c;
    l * per_layer + ln_f + v * c
}

/// FLOPs to train on one token (forward and backward), PaLM appendix B:
///
/// ```text
/// 6·N + 12·L·T·C
/// ```
///
/// * `6·N`: every parameter does one multiply-add (2 FLOPs) per token in the forward
///   pass and two in the backward pass (gradients for the input and for the weight),
///   so 2 + 4 = 6 FLOPs per parameter per token; `N` is [`matmul_params`].
/// * `12·L·T·C`: attention's two products that have no parameters, `q·kᵀ` and
///   `att·v`. Per token and layer each is `T·C` multiply-adds (a query meets `T` keys
///   of width `D` in each of `H` heads, `H·D = C`), so 2·2·T·C FLOPs forward, times 3
///   for forward plus backward.
///
/// For the 6-layer, C=384, T=256 model (N = 10.70M) that is 64.2M + 7.1M ≈ 71.3 MFLOP
/// per token; attention's share grows with `T / C`.
pub fn training_flops_per_token(cfg: &ModelConfig) -> f64 {
    let attention = 12.0 * (cfg.n_layer * cfg.block_size * cfg.n_embd) as f64;
    6.0 * matmul_params(cfg) + attention
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n_layer: i64, n_embd: i64, block_size: i64) -> ModelConfig {
        ModelConfig {
            n_layer,
            n_head: 1,
            n_embd,
            block_size,
            vocab_size: 131,
            bias: true,
            dropout: 0.0,
        }
    }

    #[test]
    fn params_match_a_hand_count() {
        // One layer, C = 2: weights 12·4 = 48, biases 9·2 = 18, ln_1/ln_2 4 + 4,
        // ln_f 2 + 2, wte 131·2 = 262.
        assert_eq!(
            matmul_params(&cfg(1, 2, 8)),
            48.0 + 18.0 + 8.0 + 4.0 + 262.0
        );
    }

    #[test]
    fn flops_are_six_n_plus_attention() {
        let c = cfg(6, 384, 256);
        let n = matmul_params(&c);
        let attention = 12.0 * 6.0 * 256.0 * 384.0;
        assert_eq!(training_flops_per_token(&c), 6.0 * n + attention);
        // The README figure: N = 10.70M, ≈ 71.3 MFLOP per token.
        assert_eq!(n, 10_697_856.0);
        assert!((training_flops_per_token(&c) / 1e6 - 71.27).abs() < 0.01);
    }
}
