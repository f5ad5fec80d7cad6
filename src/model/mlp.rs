//! The position-wise feed-forward network: C -> 4C -> GELU -> C (Vaswani et al. 2017,
//! §3.3; GELU from Hendrycks & Gimpel 2016 as in GPT-2). Attention moves information
//! between positions; the MLP is where each position computes with what it gathered,
//! and it holds two thirds of a block's parameters.

use crate::config::ModelConfig;
use crate::model::{dropout, linear, project, residual_std, INIT_STD};
use tch::{nn, Tensor};

#[derive(Debug)]
pub struct Mlp {
    c_fc: nn::Linear,
    c_proj: nn::Linear,
    dropout: f64,
}

impl Mlp {
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let c = cfg.n_embd;
        Mlp {
            c_fc: linear(&p / "c_fc", c, 4 * c, cfg, INIT_STD),
            c_proj: linear(&p / "c_proj", 4 * c, c, cfg, residual_std(cfg)),
            dropout: cfg.dropout,
        }
    }

    /// x: (B, T, C) -> (B, T, C). Exact (erf) GELU, as nanoGPT's `nn.GELU()`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = project(x, &self.c_fc).gelu("none"); // (B, T, 4C)
        dropout(project(&h, &self.c_proj), self.dropout, train) // (B, T, C)
    }
}
