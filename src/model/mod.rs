//! The GPT, one layer per file, in the order data flows through it:
//! [`norm`] → [`attention`] (with [`rope`]) → [`mlp`] → [`block`] → [`gpt`]. Parameter
//! names follow GPT-2 and nanoGPT (`wte`, `wpe`, `h.{i}.ln_1`, `h.{i}.attn.c_attn`, …,
//! `ln_f`, `lm_head`), so weights move between sympathy and the PyTorch world by name.
//!
//! GPT-2 is the default; [`crate::config::Arch`] names the speedrun's changes to it
//! (RoPE, RMSNorm, QK-norm, ReLU², an untied head, zero-initialised residual
//! projections), each implemented where its layer is.
//!
//! Beside the layers: the [`kv_cache`] that the cached forward takes, the one-token
//! fast path of generation ([`decode`]), the server's per-row cache ([`slot_cache`]) and
//! its batched step ([`batch_decode`]), and the model's FLOPs per token ([`flops`]).

pub mod attention;
pub mod batch_decode;
pub mod block;
pub mod decode;
pub mod flops;
pub mod fused;
pub mod gpt;
pub mod kv_cache;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod slot_cache;

pub use attention::CausalSelfAttention;
pub use block::Block;
pub use gpt::{Gpt, Trace};
pub use kv_cache::{KvCache, LayerCache};
pub use mlp::Mlp;
pub use norm::{LayerNorm, Norm, RmsNorm};
pub use rope::Rope;
pub use slot_cache::SlotCache;

use crate::config::ModelConfig;
use tch::{nn, Tensor};

/// A cross-entropy in nats ([`Gpt::loss`]) in bits: per character, the number of
/// yes/no questions the model still needs to name the next one.
pub fn nats_to_bits(nats: f64) -> f64 {
    nats / std::f64::consts::LN_2
}

/// A loss in nats per token as bits per byte of text: total nats over the bytes they
/// predicted, over ln 2. A char model and a BPE model compare on this scale, since a
/// BPE token carries several bytes and so costs more nats than one character does.
pub fn bits_per_byte(nats_per_token: f64, bytes_per_token: f64) -> f64 {
    nats_to_bits(nats_per_token) / bytes_per_token
}

/// The standard deviation of every weight at initialisation (GPT-2, nanoGPT).
pub const INIT_STD: f64 = 0.02;

/// A Linear layer initialised N(0, std²) with a zero bias, as GPT-2 does (PyTorch's
/// default Kaiming-uniform init trains noticeably worse for transformers); std 0 gives
/// zeros without drawing from the generator.
pub(crate) fn linear(
    p: nn::Path,
    n_in: i64,
    n_out: i64,
    cfg: &ModelConfig,
    std: f64,
) -> nn::Linear {
    let ws_init = if std == 0.0 {
        nn::Init::Const(0.0)
    } else {
        nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        }
    };
    let config = nn::LinearConfig {
        ws_init,
        bs_init: Some(nn::Init::Const(0.0)),
        bias: cfg.bias,
    };
    nn::linear(p, n_in, n_out, config)
}

/// `x Wᵀ + b` for x (…, n_in) -> (…, n_out), what `x.apply(lin)` computes.
///
/// A decode step of one sequence ([`Gpt::decode_one`]) passes one vector, x (n_in,).
/// libtorch's `linear` would run it as a (1, n_in) × (n_in, n_out) matrix product, which
/// first packs the transposed weight into a scratch buffer; the matrix-vector kernel
/// (`addmv`) reads the weight once as stored, which took a 192 -> 576 projection from
/// ~13 µs to ~7 µs on our 2-core CPU. At this size the weights stream from cache once per
/// token, so that is the whole cost.
pub(crate) fn project(x: &Tensor, lin: &nn::Linear) -> Tensor {
    if x.dim() != 1 {
        return x.apply(lin);
    }
    match &lin.bs {
        Some(b) => b.addmv(&lin.ws, x),
        None => lin.ws.mv(x),
    }
}

/// Dropout during training, the identity otherwise. libtorch's `dropout` returns its
/// input unchanged when not training, but is still a dispatched call; a decode step
/// would make nine of those for nothing.
pub(crate) fn dropout(x: Tensor, p: f64, train: bool) -> Tensor {
    if train && p > 0.0 {
        x.dropout(p, true)
    } else {
        x
    }
}

/// The init std of the projections that write into the residual stream: GPT-2 scales
/// them by 1/sqrt(2·L) because each of the 2·L residual branches adds variance. With
/// `zero_init` (the speedrun's) they start at 0: every block is then the identity at
/// step 0, and the first gradients reach the embeddings undisturbed by random branches.
pub(crate) fn residual_std(cfg: &ModelConfig) -> f64 {
    if cfg.arch.zero_init {
        return 0.0;
    }
    INIT_STD / ((2 * cfg.n_layer) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use tch::{Device, Kind};

    #[test]
    fn project_equals_the_linear_layer_for_a_vector_and_a_batch() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = Preset::Tiny.model(131);
        let mut lin = linear(vs.root() / "l", 32, 96, &cfg, INIT_STD);
        // A nonzero bias, so that adding it is checked too.
        if let Some(b) = lin.bs.as_mut() {
            let _ = tch::no_grad(|| b.uniform_(-1.0, 1.0));
        }
        for shape in [&[32][..], &[3, 5, 32]] {
            let x = Tensor::randn(shape, (Kind::Float, Device::Cpu));
            let (fast, reference) = (project(&x, &lin), x.apply(&lin));
            assert_eq!(fast.size(), reference.size());
            // Two orders of summing 32 products and a bias: each result is within
            // γ = 33·ε (ε = f32 epsilon) of exact, relative to Σ|w·x| + |b|, whatever
            // the order or vector width (AVX2, AVX-512, NEON), so they agree to 2γ.
            let bias = lin.bs.as_ref().unwrap().abs();
            let scale = x.abs().matmul(&lin.ws.abs().tr()) + bias;
            let excess = ((fast - reference).abs() - scale * (66.0 * f64::from(f32::EPSILON)))
                .max()
                .double_value(&[]);
            assert!(
                excess <= 0.0,
                "{shape:?}: over the rounding bound by {excess}"
            );
        }
    }
}
