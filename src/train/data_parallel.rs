//! Data parallelism across the CPU's cores, inside one process.
//!
//! libtorch parallelises each op across cores (intra-op threads): every matmul, every
//! add, every LayerNorm splits its work and the threads meet at a barrier when it ends.
//! A small model's step is hundreds of small ops, so the meetings add up, and on a
//! machine shared with other work they dominate: one thread preempted for a time slice
//! stalls the op for all. Measured here, on 2 busy cores, a 4-layer, C=128 step ran
//! 5–10× slower with 2 intra-op threads than with 1.
//!
//! So each core can get its own slice of the batch instead (`--workers N`): `n` workers,
//! each a thread running forward and backward with one intra-op thread, no barriers
//! between them until the step ends. Worker 0 is the caller's model; the others are replicas
//! whose weights are views of the same buffer (see [`FlatParams::share_weights`]), so one
//! optimizer update reaches all of them, while each replica's gradients go to a buffer
//! of its own and are added into the trainer's at the end. Each worker's loss is
//! weighted by its share of the batch, so the summed gradient is the gradient of the
//! whole batch's mean loss, up to float rounding.
//!
//! Every worker's ops run on one thread and the gradient sum has a fixed order, so a
//! step is as reproducible as with one worker (for a fixed number of workers). Dropout
//! draws from libtorch's one global generator, in whatever order the workers reach it,
//! so with dropout the caller should use one worker.

use super::params::FlatParams;
use crate::config::ModelConfig;
use crate::model::Gpt;
use crate::runtime::threads::one_thread_each;
use crate::{Error, Result};
use std::time::Instant;
use tch::{nn, Device, Tensor};

/// A second copy of the model that shares the weights and keeps its own gradients.
struct Replica {
    /// Owns the replica's variables (views of the trainer's weight buffer).
    _vs: nn::VarStore,
    model: Gpt,
    grad: Tensor,
}

pub struct DataParallel {
    replicas: Vec<Replica>,
}

/// What one forward and backward pass did.
pub struct ForwardBackward {
    /// The weighted sum of the workers' losses (the batch's mean loss times `scale`),
    /// detached.
    pub loss: Tensor,
    /// The mean over workers of the time their forward pass took, in ms.
    pub ms_forward: f64,
}

/// Checks a `--workers` count for a model: at least one, and one when the model has
/// dropout (whose draws the workers would take from the shared generator in whatever
/// order they reach it, so runs would not repeat).
///
/// The default is one worker, i.e. libtorch's intra-op threads. On an idle machine that
/// was as fast or faster than a worker per core: 14.2k against 14.2k tokens/s for the
/// `small` preset, 28.2k against 20.6k for a 4-layer C=128 model, 3.01k against 2.96k
/// for a 6-layer C=384 one (2 cores). Workers pay off on a machine busy with other work.
pub fn check_workers(workers: usize, cfg: &ModelConfig) -> Result<usize> {
    if workers == 0 {
        return Err(Error::config("--workers", "must be at least 1"));
    }
    if workers > 1 && cfg.dropout > 0.0 {
        return Err(Error::config(
            "--workers",
            format!(
                "use 1 with --dropout {}: workers would draw dropout masks in no fixed order",
                cfg.dropout
            ),
        ));
    }
    Ok(workers)
}

impl DataParallel {
    /// `workers` in all, the caller's model being the first: builds `workers - 1`
    /// replicas of a `cfg` model on `device` that share the weights of `params`.
    pub fn new(cfg: &ModelConfig, device: Device, params: &FlatParams, workers: usize) -> Self {
        let replicas = (1..workers.max(1))
            .map(|_| {
                let mut vs = nn::VarStore::new(device);
                let model = Gpt::new(&vs.root(), cfg);
                vs.set_kind(params.kind()); // bf16 when the caller converted its model
                let grad = params.share_weights(&vs);
                Replica {
                    _vs: vs,
                    model,
                    grad,
                }
            })
            .collect();
        DataParallel { replicas }
    }

    /// The number of workers, the caller's model included.
    pub fn workers(&self) -> usize {
        self.replicas.len() + 1
    }

    /// Forward and backward of `model` and the replicas, each on its slice of the
    /// batch `x`, `y` (B, T), in parallel; the gradients end up in `params`, as if
    /// `(mean loss × scale).backward()` had run on the whole batch.
    pub fn forward_backward(
        &mut self,
        model: &mut Gpt,
        params: &mut FlatParams,
        x: &Tensor,
        y: &Tensor,
        scale: f64,
    ) -> ForwardBackward {
        let b = x.size()[0];
        let n = (self.workers() as i64).min(b);
        // Rows per worker: as even as can be, the first ones taking the remainder.
        let rows = |i: i64| b / n + i64::from(i < b % n);
        let mut start = 0;
        let jobs: Vec<_> = std::iter::once(model)
            .chain(self.replicas.iter_mut().map(|r| &mut r.model))
            .take(n as usize)
            .enumerate()
            .map(|(i, m)| {
                let len = rows(i as i64);
                let (xs, ys) = (x.narrow(0, start, len), y.narrow(0, start, len));
                start += len;
                let weight = scale * len as f64 / b as f64;
                move || {
                    let t0 = Instant::now();
                    let loss = Gpt::loss(&m.forward(&xs, true), &ys) * weight;
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    loss.backward();
                    (loss.detach(), ms)
                }
            })
            .collect();
        let results = one_thread_each(jobs);
        for r in self.replicas.iter_mut().take(n as usize - 1) {
            params.absorb_grads(&mut r.grad);
        }
        let ms_forward = results.iter().map(|r| r.1).sum::<f64>() / n as f64;
        let losses: Vec<Tensor> = results.into_iter().map(|r| r.0).collect();
        ForwardBackward {
            loss: Tensor::stack(&losses, 0).sum(tch::Kind::Float),
            ms_forward,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn workers_are_checked_against_the_model() {
        let cfg = Preset::Tiny.model(131);
        assert_eq!(check_workers(2, &cfg).unwrap(), 2);
        assert!(check_workers(0, &cfg)
            .unwrap_err()
            .to_string()
            .contains("--workers"));
        let with_dropout = ModelConfig {
            dropout: 0.1,
            ..cfg
        };
        assert_eq!(check_workers(1, &with_dropout).unwrap(), 1);
        assert!(check_workers(2, &with_dropout)
            .unwrap_err()
            .to_string()
            .contains("--dropout"));
    }
}
