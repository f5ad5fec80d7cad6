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
//! - Newton–Schulz runs in bf16 where the hardware multiplies bf16 natively (CUDA, CPUs
//!   with AVX512-BF16), in f32 elsewhere (`--muon-precision`). The speedrun runs it in
//!   bf16: the iteration only has to land the singular values in a band, and bf16's
//!   rounding (2⁻⁹ per product) moves them by far less than the band is wide
//!   (`tests/optim.rs`). bf16 products take half the time of f32 ones on such a CPU;
//!   on one without, bf16 is emulated and slower, so f32 stays. Either way the step is
//!   deterministic, so a resume on the same machine repeats it bit for bit.
//!
//! The cost: per matrix with r ≤ c (after transposing), five times `4·r²·c + 2·r³`
//! FLOPs; for the small preset (C = 192) that is about a third of the forward and
//! backward passes' FLOPs, all of it in matrix products. So the products are what the
//! fast path saves on: [`newton_schulz_batched`] runs every matrix of one shape at once
//! (the blocks' `c_fc` and, transposed, `mlp.c_proj` share one), three batched products
//! per iteration with the polynomial's sums folded into them, instead of seven
//! operations per matrix; [`newton_schulz`], one matrix and every operation apart, is
//! the tested reference.

use super::optim::restore;
use super::params::{view_at, FlatParams};
use crate::config::{NsPrecision, TrainConfig};
use crate::run::checkpoint::OptimizerState;
use crate::runtime::torch_ext::with_onednn;
use crate::Result;
use std::path::Path;
use tch::{Device, Kind, Tensor};

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

/// [`newton_schulz`] of N matrices at once, every product in `kind` (f32 or bf16):
/// g (N, r, c) with r ≤ c -> (N, r, c) in f32. Each matrix is scaled by its own norm;
/// per iteration `A = X·Xᵀ`, then `b·A + c·A·A` and `a·X + (…)·X` as one batched
/// product each, the sums inside them.
pub fn newton_schulz_batched(g: &Tensor, steps: usize, kind: Kind) -> Tensor {
    let (a, b, c) = NS_COEFFICIENTS;
    let g = g.to_kind(Kind::Float);
    let norms = g
        .square()
        .sum_dim_intlist(&[1i64, 2][..], true, Kind::Float)
        .sqrt(); // (N, 1, 1)
    let mut x = (&g / (norms + 1e-7)).to_kind(kind); // (N, r, c)
    for _ in 0..steps {
        let a_mat = x.bmm(&x.transpose(1, 2)); // (N, r, r)
        let poly = a_mat.baddbmm(&a_mat, &a_mat, b, c); // b·A + c·A·A
        x = x.baddbmm(&poly, &x, a, 1.0); // a·X + poly·X, (N, r, c)
    }
    x.to_kind(Kind::Float)
}

/// The kind Newton–Schulz multiplies in on `device` for `precision`: `auto` is bf16 on
/// CUDA and on CPUs with bf16 dot products, f32 elsewhere.
pub fn ns_kind(precision: NsPrecision, device: Device) -> Kind {
    let native_bf16 = match device {
        Device::Cpu => cpu_multiplies_bf16(),
        _ => true,
    };
    match precision {
        NsPrecision::Fp32 => Kind::Float,
        NsPrecision::Bf16 => Kind::BFloat16,
        NsPrecision::Auto if native_bf16 => Kind::BFloat16,
        NsPrecision::Auto => Kind::Float,
    }
}

/// Whether this CPU has bf16 dot-product instructions (AVX512-BF16, which every CPU
/// with AMX has too), where oneDNN multiplies bf16 about twice as fast as f32.
fn cpu_multiplies_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
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

impl Momentum {
    /// Whether the matrix is taller than wide, so that Newton–Schulz takes its transpose.
    fn tall(&self) -> bool {
        self.m.size()[0] > self.m.size()[1]
    }

    /// (rows, cols) -> (r, c) with r ≤ c: the transpose of a tall matrix.
    fn wide(&self, t: Tensor) -> Tensor {
        if self.tall() {
            t.transpose(0, 1)
        } else {
            t
        }
    }
}

/// Muon's state: one momentum buffer per hidden matrix, nothing else (no step count:
/// the update has no bias correction).
pub struct Muon {
    momenta: Vec<Momentum>,
    /// Indices into `momenta` of the matrices of one (r, c) shape, r ≤ c, each list
    /// orthogonalised in one batch.
    batches: Vec<Vec<usize>>,
    /// μ.
    momentum: f64,
    /// What Newton–Schulz multiplies in (f32, or bf16 where that is fast).
    kind: Kind,
}

impl Muon {
    /// Zero momentum for every parameter of `params` that is Muon's (`Param::muon`).
    pub fn new(params: &FlatParams, cfg: &TrainConfig) -> Self {
        let momenta: Vec<Momentum> = params
            .params()
            .iter()
            .filter(|p| p.muon)
            .map(|p| Momentum {
                name: p.name.clone(),
                offset: p.offset,
                m: p.tensor.detach().zeros_like(),
            })
            .collect();
        let mut batches: Vec<(Vec<i64>, Vec<usize>)> = Vec::new();
        for (i, p) in momenta.iter().enumerate() {
            let shape = p.wide(p.m.shallow_clone()).size();
            match batches.iter_mut().find(|(s, _)| *s == shape) {
                Some((_, members)) => members.push(i),
                None => batches.push((shape, vec![i])),
            }
        }
        let device = params.values().device();
        Muon {
            momenta,
            batches: batches.into_iter().map(|(_, members)| members).collect(),
            momentum: cfg.muon_momentum,
            kind: ns_kind(cfg.muon_precision, device),
        }
    }

    /// One Muon update at learning rate `lr` of every hidden matrix of `params`, from
    /// the gradients in `params` (already averaged and clipped).
    pub fn step(&mut self, params: &mut FlatParams, lr: f64) {
        tch::no_grad(|| {
            for members in &self.batches {
                let u: Vec<Tensor> = members
                    .iter()
                    .map(|&i| self.nesterov(&self.momenta[i], params))
                    .collect();
                let u = Tensor::stack(&u, 0); // (N, r, c)
                let ns = || newton_schulz_batched(&u, NS_STEPS, self.kind);
                // bf16 products on the CPU are oneDNN's (see `torch_ext`).
                let o = if self.kind == Kind::BFloat16 {
                    with_onednn(ns)
                } else {
                    ns()
                };
                for (j, &i) in members.iter().enumerate() {
                    let p = &self.momenta[i];
                    let mut w = view_at(params.values(), p.offset, &p.m); // (rows, cols)
                    let (rows, cols) = (w.size()[0], w.size()[1]);
                    let step = p.wide(o.get(j as i64)) * (-lr * shape_scale(rows, cols));
                    let _ = w.g_add_(&step.to_kind(w.kind())); // W ← W − lr·scale·O
                }
            }
        });
    }

    /// Updates `p`'s momentum from its gradient in `params` and returns the Nesterov
    /// direction to orthogonalise, (r, c) with r ≤ c.
    fn nesterov(&self, p: &Momentum, params: &FlatParams) -> Tensor {
        let g = view_at(params.grads(), p.offset, &p.m); // (rows, cols)
        let _ = p.m.shallow_clone().g_mul_scalar_(self.momentum).g_add_(&g); // m ← μ·m + g
        p.wide(&g + &p.m * self.momentum) // Nesterov: g + μ·m
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
