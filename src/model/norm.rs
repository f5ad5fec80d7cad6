//! The normalisations: LayerNorm (GPT-2) and RMSNorm (the speedrun's), and [`Norm`],
//! the one a config picks for `ln_1`, `ln_2` and `ln_f`.
//!
//! A pre-norm block feeds each branch a normalised copy of the residual stream, whose
//! scale grows with depth. LayerNorm centres each vector and scales it to unit variance;
//! RMSNorm only scales it to unit root mean square, one reduction instead of two and no
//! bias, and trains as well (Zhang & Sennrich 2019). QK-norm ([`super::attention`])
//! uses RMSNorm over each head's queries and keys.

use crate::config::{ModelConfig, Normalization};
use crate::model::fused;
use tch::{nn, Tensor};

/// The epsilon of both norms, GPT-2's LayerNorm's (and nanochat's RMSNorm's order).
const EPS: f64 = 1e-5;

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
            EPS,
            true,
        )
    }
}

/// RMSNorm (Zhang & Sennrich 2019): `x / sqrt(mean(x²) + eps) · g`, a learned gain `g`
/// and no bias.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    size: i64,
}

impl RmsNorm {
    pub fn new(p: nn::Path, size: i64) -> Self {
        let weight = p.var("weight", &[size], nn::Init::Const(1.0));
        RmsNorm { weight, size }
    }

    /// x: (…, size) -> (…, size), normalised over the last dimension: the fused kernel
    /// on the CPU in f32, [`RmsNorm::forward_reference`] elsewhere.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if fused::applies(x) {
            return fused::rms_norm(x, &self.weight, EPS, None);
        }
        self.forward_reference(x)
    }

    /// libtorch's `rms_norm` (which accumulates in fp32 for bf16 inputs): the reference
    /// of the fused kernel.
    pub fn forward_reference(&self, x: &Tensor) -> Tensor {
        x.rms_norm([self.size], Some(&self.weight), EPS)
    }

    /// x (…, T, size) normalised, then each pair (i, i + size/2) rotated by the angle
    /// whose cos and sin are `rope`, (T, size/2) each: QK-norm then RoPE, as one fused
    /// kernel. Only where the kernels apply ([`fused::applies`]).
    pub fn forward_rotated(&self, x: &Tensor, rope: (&Tensor, &Tensor)) -> Tensor {
        fused::rms_norm(x, &self.weight, EPS, Some(rope))
    }
}

/// The norm a config picks.
#[derive(Debug)]
pub enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    /// A norm over the C channels as `cfg.arch.norm` says (a LayerNorm's bias as
    /// `cfg.bias` says; an RMSNorm has none).
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        match cfg.arch.norm {
            Normalization::LayerNorm => Norm::Layer(LayerNorm::new(p, cfg.n_embd, cfg.bias)),
            Normalization::RmsNorm => Norm::Rms(RmsNorm::new(p, cfg.n_embd)),
        }
    }

    /// x: (…, C) -> (…, C).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn rms_norm_is_x_over_its_root_mean_square_times_the_gain() {
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = RmsNorm::new(vs.root() / "n", 48);
        let gain = Tensor::randn([48], (Kind::Float, Device::Cpu)) + 1.0;
        tch::no_grad(|| norm.weight.shallow_clone().copy_(&gain));
        // Rows of very different scales, one of them near the epsilon.
        let scales = Tensor::from_slice(&[1e-3f32, 1.0, 30.0]).view([3, 1, 1]);
        let x = Tensor::randn([3, 5, 48], (Kind::Float, Device::Cpu)) * scales;
        let got = norm.forward(&x);
        // The definition, in f64 from the same f32 inputs.
        let x64 = x.to_kind(Kind::Double);
        let ms = x64.square().mean_dim(-1, true, Kind::Double);
        let want = &x64 / (ms + EPS).sqrt() * gain.to_kind(Kind::Double);
        // Each output is x times a gain times 1/rms, the rms a sum of 48 squares and a
        // square root: a few dozen roundings of ε = f32 epsilon, each relative to the
        // output itself, in any summation order or vector width; 100·ε bounds them.
        let bound = want.abs() * (100.0 * f64::from(f32::EPSILON));
        let excess = ((got.to_kind(Kind::Double) - want).abs() - bound)
            .max()
            .double_value(&[]);
        assert!(excess <= 0.0, "over the rounding bound by {excess}");
    }
}
