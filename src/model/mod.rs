//! The GPT, one layer per file, in the order data flows through it:
//! [`attention`] → [`mlp`] → [`block`] → [`gpt`]. Parameter names follow GPT-2 and
//! nanoGPT (`wte`, `wpe`, `h.{i}.ln_1`, `h.{i}.attn.c_attn`, …, `ln_f`), so weights
//! move between sympathy and the PyTorch world by name.

pub mod attention;
pub mod block;
pub mod gpt;
pub mod mlp;

pub use attention::CausalSelfAttention;
pub use block::Block;
pub use gpt::{Gpt, Trace};
pub use mlp::Mlp;

use crate::config::ModelConfig;
use tch::{nn, Tensor};

/// The standard deviation of every weight at initialisation (GPT-2, nanoGPT).
pub const INIT_STD: f64 = 0.02;

/// A Linear layer initialised N(0, std²) with a zero bias, as GPT-2 does (PyTorch's
/// default Kaiming-uniform init trains noticeably worse for transformers).
pub(crate) fn linear(
    p: nn::Path,
    n_in: i64,
    n_out: i64,
    cfg: &ModelConfig,
    std: f64,
) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: cfg.bias,
    };
    nn::linear(p, n_in, n_out, config)
}

/// The init std of the projections that write into the residual stream: GPT-2 scales
/// them by 1/sqrt(2·L) because each of the 2·L residual branches adds variance.
pub(crate) fn residual_std(cfg: &ModelConfig) -> f64 {
    INIT_STD / ((2 * cfg.n_layer) as f64).sqrt()
}

/// LayerNorm (Ba et al. 2016) with an optional bias; eps 1e-5 as in GPT-2. Written here
/// rather than taken from `tch::nn` because nanoGPT's `bias=False` drops the bias too.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    size: i64,
}

impl LayerNorm {
    pub fn new(p: nn::Path, size: i64, bias: bool) -> Self {
        let weight = p.var("weight", &[size], nn::Init::Const(1.0));
        let bias = bias.then(|| p.var("bias", &[size], nn::Init::Const(0.0)));
        LayerNorm { weight, bias, size }
    }

    /// x: (…, C) -> (…, C), normalised over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.size],
            Some(&self.weight),
            self.bias.as_ref(),
            1e-5,
            true,
        )
    }
}
