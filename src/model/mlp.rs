//! The position-wise feed-forward network: C -> 4C -> nonlinearity -> C (Vaswani et al.
//! 2017, §3.3). Attention moves information between positions; the MLP is where each
//! position computes with what it gathered, and it holds two thirds of a block's
//! parameters. The nonlinearity is GELU (Hendrycks & Gimpel 2016) as in GPT-2, or
//! ReLU² (So et al. 2021, "Primer"), which the speedrun found to train faster: as cheap
//! as a ReLU, and smooth at 0 like GELU.

use crate::config::{Activation, ModelConfig};
use crate::model::{dropout, fused, linear, project, residual_std, INIT_STD};
use tch::{nn, Tensor};

#[derive(Debug)]
pub struct Mlp {
    c_fc: nn::Linear,
    c_proj: nn::Linear,
    activation: Activation,
    dropout: f64,
}

impl Mlp {
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let c = cfg.n_embd;
        Mlp {
            c_fc: linear(&p / "c_fc", c, 4 * c, cfg, INIT_STD),
            c_proj: linear(&p / "c_proj", 4 * c, c, cfg, residual_std(cfg)),
            activation: cfg.arch.mlp,
            dropout: cfg.dropout,
        }
    }

    /// x: (B, T, C) -> (B, T, C).
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = activate(&project(x, &self.c_fc), self.activation); // (B, T, 4C)
        dropout(project(&h, &self.c_proj), self.dropout, train) // (B, T, C)
    }
}

/// The nonlinearity, elementwise: exact (erf) GELU as nanoGPT's `nn.GELU()`, or relu(x)²
/// (the fused kernel on the CPU in f32, libtorch's `relu` and `square` elsewhere).
pub fn activate(x: &Tensor, activation: Activation) -> Tensor {
    match activation {
        Activation::Relu2 if fused::applies(x) => fused::relu2(x),
        _ => activate_reference(x, activation),
    }
}

/// [`activate`] in libtorch's ops alone: the reference of the fused kernel.
pub fn activate_reference(x: &Tensor, activation: Activation) -> Tensor {
    match activation {
        Activation::Gelu => x.gelu("none"),
        Activation::Relu2 => x.relu().square(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn relu2_is_relu_times_relu() {
        let x = Tensor::randn([1000], (Kind::Float, Device::Cpu)) * 3.0;
        let r = x.relu();
        // One rounding each way, the same product: bit for bit.
        assert!(activate(&x, Activation::Relu2).equal(&(&r * &r)));
        assert!(activate(&x, Activation::Relu2).min().double_value(&[]) >= 0.0);
    }
}
