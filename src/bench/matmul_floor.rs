//! The matmul floor of a training step: how long its weight-matrix products take on
//! their own, on the same kernels, with nothing else in the step.
//!
//! A GPT's training FLOPs are almost all in the products of activations with the
//! weight matrices (the `6N` of `6N + 12·L·T·C`). So the time of those products alone
//! bounds how fast any implementation on the same kernels can be: with every other op
//! (attention, GELU, LayerNorm, the optimizer) free, a step still takes this long. The
//! floor turns "how far are we from the matmul peak?" into two questions with answers:
//! how efficient are the products at *this model's shapes* (small `C` or short `T` make
//! skinny products that reach a fraction of the square-matrix peak), and how much of the
//! step is everything else.
//!
//! Per Linear `n_in -> n_out` over `N = B·T` rows, training runs three products
//! (PyTorch's `addmm` backward): the forward `x·Wᵀ + b` (N×n_in · n_in×n_out), the
//! input gradient `g·W` (N×n_out · n_out×n_in) and the weight gradient `gᵀ·x`
//! (n_out×N · N×n_in). A block has four Linears (`c_attn` C->3C, `attn.c_proj` C->C,
//! `c_fc` C->4C, `mlp.c_proj` 4C->C); the tied head adds one more C->V. The products
//! inside attention are left out (they are the kernel's business), and one set of
//! matrices serves every layer, so the data sits warmer in cache than in a real step:
//! both make the floor lower, i.e. a true bound.

use crate::config::ModelConfig;
use crate::runtime::timing::{median, sync};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The three products of one Linear, with their inputs and preallocated outputs.
struct LinearProducts {
    x: Tensor,      // (N, n_in)
    w: Tensor,      // (n_out, n_in)
    bias: Tensor,   // (n_out)
    grad: Tensor,   // (N, n_out)
    y: Tensor,      // (N, n_out)
    grad_x: Tensor, // (N, n_in)
    grad_w: Tensor, // (n_out, n_in)
}

impl LinearProducts {
    fn new(rows: i64, n_in: i64, n_out: i64, kind: Kind, device: Device) -> Self {
        let randn = |shape: &[i64]| Tensor::randn(shape, (kind, device));
        LinearProducts {
            x: randn(&[rows, n_in]),
            w: randn(&[n_out, n_in]),
            bias: randn(&[n_out]),
            grad: randn(&[rows, n_out]),
            y: randn(&[rows, n_out]),
            grad_x: randn(&[rows, n_in]),
            grad_w: randn(&[n_out, n_in]),
        }
    }

    fn run(&self) {
        let _ = self.bias.addmm_out(&self.y, &self.x, &self.w.tr()); // forward
        let _ = self.grad.mm_out(&self.grad_x, &self.w); // input gradient
        let _ = self.grad.tr().mm_out(&self.grad_w, &self.x); // weight gradient
    }
}

/// The FLOPs of those products for one step: `3 × 2·N·n_in·n_out` per Linear, which
/// is the `6N` part of the model's FLOPs (without the attention scores) times `N` rows.
pub fn matmul_flops(cfg: &ModelConfig, batch_size: i64) -> f64 {
    let (l, c, v) = (cfg.n_layer as f64, cfg.n_embd as f64, cfg.vocab_size as f64);
    let rows = (batch_size * cfg.block_size) as f64;
    6.0 * rows * (l * 12.0 * c * c + c * v)
}

/// The median time, in ms, of one training step's weight-matrix products for `cfg` at
/// `batch_size` rows of `block_size` tokens, over `runs` rounds after two warm-ups.
pub fn matmul_floor_ms(
    cfg: &ModelConfig,
    batch_size: i64,
    kind: Kind,
    device: Device,
    runs: usize,
) -> f64 {
    let rows = batch_size * cfg.block_size;
    let c = cfg.n_embd;
    let block: Vec<LinearProducts> = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)]
        .iter()
        .map(|&(n_in, n_out)| LinearProducts::new(rows, n_in, n_out, kind, device))
        .collect();
    // The head has no bias; a zero one costs nothing next to the product.
    let head = LinearProducts::new(rows, c, cfg.vocab_size, kind, device);
    let mut times = Vec::with_capacity(runs);
    tch::no_grad(|| {
        for i in 0..2 + runs {
            sync(device);
            let start = Instant::now();
            for _ in 0..cfg.n_layer {
                block.iter().for_each(LinearProducts::run);
            }
            head.run();
            sync(device);
            if i >= 2 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    });
    median(&times)
}
