//! Muon (Keller Jordan et al. 2024, "Muon: an optimizer for hidden layers"; the
//! optimizer of the modded-nanogpt speedrun), written out: SGD with Nesterov momentum
//! whose update is orthogonalised before it is applied, for the 2-D weight matrices
//! inside the blocks. Everything else (the embeddings, the tied head, LayerNorm gains,
//! biases) stays with AdamW ([`super::optim::Optimizers`] runs both).
//!
//! Why orthogonalise: a gradient matrix of a transformer is nearly low-rank, a few
//! directions carry almost all of its norm. Replacing the update `U·S·Vᵀ` (its SVD) by
//! `U·Vᵀ` gives every direction the same step, so the rare directions learn as fast as
//! the dominant ones. The SVD itself is slow and does not run well on accelerators; a
//! Newton–Schulz iteration gets close to `U·Vᵀ` with matrix products alone:
//!
//! ```text
//! X ← G / (‖G‖_F + 1e-7)           singular values now in [0, 1]
//! 5 times:  A ← X·Xᵀ,  X ← a·X + (b·A + c·A²)·X      (a, b, c) = (3.4445, −4.7750, 2.0315)
//! ```
//!
//! Each step maps every singular value σ of X to `a·σ + b·σ³ + c·σ⁵` and keeps the
//! singular vectors. The coefficients make the slope at 0 large (a = 3.4 per step), so
//! small singular values grow fast, at the price of not converging to exactly 1: after
//! five steps every σ ≥ 0.0015 (relative to ‖G‖_F) lands in [0.68, 1.21]. An optimizer
//! does not mind the band (`tests/optim.rs` measures it).
//!
//! One update, per hidden matrix W (rows × cols) with gradient g:
//!
//! ```text
//! m ← μ·m + g                       momentum (μ = --muon-momentum, 0.95)
//! u ← g + μ·m                       Nesterov
//! W ← W − lr·max(1, rows/cols)^½ · NewtonSchulz(u)
//! ```
//!
//! Choices, and why:
//! - The scale `max(1, rows/cols)^½` is the speedrun's (its first Muon records): an
//!   orthogonal update of a tall matrix (`c_fc`, `c_attn` as (out, in)) has the same
//!   spectral norm as a square one but smaller entries, and the factor gives its rows
//!   comparable steps.
//! - No weight decay on Muon's matrices, as in the speedrun's early versions. Muon's
//!   step has a fixed size (a semi-orthogonal matrix times lr) whatever the gradient,
//!   so the weights cannot run away from a large gradient, and our runs are short.
//!   Decoupled decay `W ← W·(1 − lr·λ)` at Muon's rate (0.05) would shrink the weights
//!   25 to 50 times faster per step than AdamW's at its `--lr` (2e-3, 1e-3), so reusing
//!   `--weight-decay` would change the regularisation silently: it stays AdamW's.
//! - The rate follows AdamW's schedule: Muon's rate at a step is `--muon-lr` times the
//!   schedule's `lr_t / --lr` (warmup, cosine or budget decay alike).
//! - `--muon-lr` 0.05. Measured on the small preset, 200 steps each (warmup 20,
//!   cosine, seed 1337, 64 validation windows): validation loss 1.991 at 0.05,
//!   2.044 at the speedrun's 0.02, 2.305 with AdamW alone. A small model with a short
//!   run takes the larger rate.
//! - Newton–Schulz runs in f32, on the CPU too. The speedrun ran it in bf16 on GPUs,
//!   where bf16 products are several times faster and the iteration tolerates the
//!   rounding; f32 here keeps the step bit-reproducible across a resume and needs no
//!   fast bf16 kernel on the CPU.
//!
//! The cost: per matrix with r ≤ c (after transposing), five times `4·r²·c + 2·r³`
//! FLOPs; for the small preset (C = 192) that is about a third of the forward and
//! backward passes' FLOPs.

use super::optim::restore;
use super::params::{view_at, FlatParams};
use crate::config::TrainConfig;
use crate::run::checkpoint::OptimizerState;
use crate::Result;
use std::path::Path;
use tch::{Kind, Tensor};

/// (a, b, c) of the quintic `a·X + b·(X·Xᵀ)·X + c·(X·Xᵀ)²·X` (the speedrun's).
pub const NS_COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// Newton–Schulz iterations per update.
pub const NS_STEPS: usize = 5;

/// Whether Muon updates the parameter `name` (shape `t`): a 2-D weight inside a block
/// (`h.{i}.attn.c_attn`, `h.{i}.attn.c_proj`, `h.{i}.mlp.c_fc`, `h.{i}.mlp.c_proj`).
/// Not the embeddings (`wte`, also the tied head; `wpe`), whose rows are looked up one
/// token at a time, and not the 1-D gains and biases, which are no matrices.
pub fn is_hidden_matrix(name: &str, t: &Tensor) -> bool {
    name.starts_with("h.") && name.ends_with(".weight") && t.dim() == 2
}

/// An approximation of `U·Vᵀ`, where `g = U·S·Vᵀ` (rows × cols): `steps` Newton–Schulz
/// iterations of the quintic (see the module docs), in f32. Returns f32, shaped as `g`.
pub fn newton_schulz(g: &Tensor, steps: usize) -> Tensor {
    let (a, b, c) = NS_COEFFICIENTS;
    let g = g.to_kind(Kind::Float);
    // The wide orientation (r ≤ c), so that A = X·Xᵀ is the smaller square.
    let tall = g.size()[0] > g.size()[1];
    let x = if tall { g.transpose(0, 1) } else { g }; // (r, c)
                                                      // The Frobenius norm bounds the largest singular value: all of them now ≤ 1.
    let mut x = &x / (x.norm() + 1e-7); // (r, c)
    for _ in 0..steps {
        let a_mat = x.matmul(&x.transpose(0, 1)); // (r, r)
        let poly = &a_mat * b + a_mat.matmul(&a_mat) * c; // (r, r)
        x = &x * a + poly.matmul(&x); // (r, c)
    }
    if tall {
        x.transpose(0, 1) // (rows, cols)
    } else {
        x
    }
}

/// The factor on a (rows × cols) matrix's orthogonalised update: `max(1, rows/cols)^½`.
pub fn shape_scale(rows: i64, cols: i64) -> f64 {
    (rows as f64 / cols as f64).max(1.0).sqrt()
}

/// One hidden matrix's momentum buffer.
struct Momentum {
    /// The matrix's name, which names the buffer in the saved state.
    name: String,
    /// Where the matrix starts in the flat buffers.
    offset: i64,
    /// (rows, cols), like the matrix.
    m: Tensor,
}

/// Muon's state: one momentum buffer per hidden matrix, nothing else (no step count:
/// the update has no bias correction).
pub struct Muon {
    momenta: Vec<Momentum>,
    /// μ.
    momentum: f64,
}

impl Muon {
    /// Zero momentum for every parameter of `params` that is Muon's (`Param::muon`).
    pub fn new(params: &FlatParams, cfg: &TrainConfig) -> Self {
        let momenta = params
            .params()
            .iter()
            .filter(|p| p.muon)
            .map(|p| Momentum {
                name: p.name.clone(),
                offset: p.offset,
                m: p.tensor.detach().zeros_like(),
            })
            .collect();
        Muon {
            momenta,
            momentum: cfg.muon_momentum,
        }
    }

    /// One Muon update at learning rate `lr` of every hidden matrix of `params`, from
    /// the gradients in `params` (already averaged and clipped).
    pub fn step(&mut self, params: &mut FlatParams, lr: f64) {
        let mu = self.momentum;
        tch::no_grad(|| {
            for p in &mut self.momenta {
                let mut w = view_at(params.values(), p.offset, &p.m); // (rows, cols)
                let g = view_at(params.grads(), p.offset, &p.m); // (rows, cols)
                let _ = p.m.g_mul_scalar_(mu).g_add_(&g); // m ← μ·m + g
                let u = &g + &p.m * mu; // Nesterov: g + μ·m
                let o = newton_schulz(&u, NS_STEPS); // ≈ U·Vᵀ of u
                let (rows, cols) = (w.size()[0], w.size()[1]);
                let step = o * (-lr * shape_scale(rows, cols));
                let _ = w.g_add_(&step.to_kind(w.kind())); // W ← W − lr·scale·O
            }
        });
    }
}

/// The momentum buffers, `momentum.{name}` for every hidden matrix.
impl OptimizerState for Muon {
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.momenta
            .iter()
            .map(|p| (format!("momentum.{}", p.name), p.m.shallow_clone()))
            .collect()
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)], source: &Path) -> Result<()> {
        for p in &mut self.momenta {
            restore(tensors, &format!("momentum.{}", p.name), &mut p.m, source)?;
        }
        Ok(())
    }
}
