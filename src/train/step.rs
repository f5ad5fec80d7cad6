//! One training step's parts, shared by the training loop and `bench train`: the model
//! with its flat parameters, the optimizer and the data-parallel workers, and the two
//! halves of a step, llm.c's five calls in two:
//!
//! ```text
//! forward_backward(x, y)   forward, loss, backward (on every worker); gradients add up
//! update(grad_norm, lr)    clip to --grad-clip, AdamW (and Muon with --optimizer muon)
//! zero_grad()              ready for the next step
//! ```

use super::data_parallel::{check_workers, DataParallel, ForwardBackward};
use super::optim::Optimizers;
use super::params::FlatParams;
use crate::config::{ModelConfig, TrainConfig};
use crate::memory;
use crate::model::Gpt;
use crate::runtime::timing::sync;
use crate::Result;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

pub struct Trainer {
    pub vs: nn::VarStore,
    pub model: Gpt,
    pub params: FlatParams,
    pub opt: Optimizers,
    workers: DataParallel,
    /// The clip threshold (0 = off).
    grad_clip: f64,
    /// Wait for the device after the forward pass, so that its time is its own (for
    /// `bench train`; on the CPU it costs nothing, on CUDA a sync per micro-batch).
    pub sync_phases: bool,
}

impl Trainer {
    /// A `cfg` model on `device` in `kind`, initialised from `tcfg.seed` (two runs with
    /// one seed start from the same weights), its parameters in flat buffers grouped
    /// for `tcfg.optimizer`, fresh optimizer state, and `workers` data-parallel workers.
    pub fn new(
        cfg: &ModelConfig,
        tcfg: &TrainConfig,
        device: Device,
        kind: Kind,
        workers: usize,
    ) -> Result<Self> {
        let tokens = tcfg.batch_size * cfg.block_size;
        memory::check_fits(cfg, memory::Use::Train { tokens }, device == Device::Cpu)?;
        tch::manual_seed(tcfg.seed as i64);
        let mut vs = nn::VarStore::new(device);
        let model = Gpt::new(&vs.root(), cfg);
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        let params = FlatParams::grouped(&vs, tcfg.optimizer);
        let opt = Optimizers::new(&params, tcfg);
        let workers = DataParallel::new(cfg, device, &params, check_workers(workers, cfg)?);
        Ok(Trainer {
            vs,
            model,
            params,
            opt,
            workers,
            grad_clip: tcfg.grad_clip,
            sync_phases: false,
        })
    }

    /// The number of data-parallel workers (1: libtorch's intra-op threads alone).
    pub fn workers(&self) -> usize {
        self.workers.workers()
    }

    /// The number of trainable parameters.
    pub fn n_params(&self) -> i64 {
        self.params.values().numel() as i64
    }

    /// Forward and backward of one micro-batch `x`, `y` (B, T), one of `micro_batches`
    /// whose gradients add up before an update: the loss is divided by their number,
    /// so the sum is the gradient of the mean. Returns that share of the loss
    /// (detached) and the forward pass's time.
    pub fn forward_backward(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        micro_batches: i64,
    ) -> ForwardBackward {
        if self.workers.workers() > 1 {
            let scale = 1.0 / micro_batches as f64;
            return self
                .workers
                .forward_backward(&mut self.model, &mut self.params, x, y, scale);
        }
        let start = Instant::now();
        let loss = Gpt::loss(&self.model.forward(x, true), y) / micro_batches as f64;
        if self.sync_phases {
            sync(self.params.values().device());
        }
        let ms_forward = start.elapsed().as_secs_f64() * 1e3;
        loss.backward();
        ForwardBackward {
            loss: loss.detach(),
            ms_forward,
        }
    }

    /// The global gradient norm, brought to the host (it decides the clip, and whether
    /// the step is finite).
    pub fn grad_norm(&self) -> f64 {
        self.params.grad_norm().double_value(&[])
    }

    /// Clips the gradients (whose norm is `grad_norm`) and takes one optimizer step at
    /// `lr` (AdamW's rate; Muon's follows it, see [`Optimizers::step`]).
    pub fn update(&mut self, grad_norm: f64, lr: f64) {
        self.params.clip_grad_norm(grad_norm, self.grad_clip);
        self.opt.step(&mut self.params, lr);
    }

    /// Zeroes every gradient for the next step.
    pub fn zero_grad(&mut self) {
        self.params.zero_grad();
    }
}
