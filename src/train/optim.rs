//! AdamW (Loshchilov & Hutter 2019) and the learning-rate schedule, written out.
//!
//! tch ships an AdamW, but it cannot export its moments, and a run that cannot save its
//! optimizer cannot resume exactly. Here the state is plain tensors with names, saved
//! to `optimizer.safetensors` next to the weights. The update is the one of PyTorch's
//! `torch.optim.AdamW` (single-tensor path), line for line, so the parity test can hold
//! it to a PyTorch trajectory.
//!
//! Weight decay groups (as nanoGPT): every tensor with 2 or more dimensions (the Linear
//! weights and the embeddings, tied head included) decays; biases and LayerNorm gains
//! do not, since pulling a gain towards 0 or a bias towards 0 is not regularisation.
//!
//! [`AdamW::step_reference`] is that update, one parameter at a time, for reading.
//! [`AdamW::step`] computes the same thing through [`crate::train::fused_adamw`]: the
//! optimizer keeps all parameters, gradients and moments in flat buffers and updates
//! them in one pass (a test holds the two to each other).

use crate::config::TrainConfig;
use crate::run::checkpoint::OptimizerState;
use crate::train::fused_adamw::{self, Flat, Hyper};
use crate::{Error, Result, Step};
use std::f64::consts::PI;
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// One parameter and its two moment estimates (views into the flat buffers).
struct ParamState {
    name: String,
    param: Tensor,
    /// First moment, the running mean of gradients.
    m: Tensor,
    /// Second moment, the running mean of squared gradients.
    v: Tensor,
    decay: bool,
    /// Where it starts in the flat buffers.
    offset: i64,
}

pub struct AdamW {
    params: Vec<ParamState>,
    /// The same parameters, gradients and moments as one buffer each.
    flat: Flat,
    /// Updates done so far; the bias corrections depend on it.
    step: i64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// Takes every trainable variable of `vs`, in name order so the state file is stable,
    /// and moves them into the optimizer's flat buffers (see [`crate::train::fused_adamw`]):
    /// the model's tensors keep their values but share one allocation from here on,
    /// and each gets a zero `.grad`.
    pub fn new(vs: &nn::VarStore, cfg: &TrainConfig) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors: Vec<(Tensor, bool)> = vars
            .iter()
            .map(|(_, t)| (t.shallow_clone(), t.dim() >= 2))
            .collect();
        let (flat, slots) = fused_adamw::flatten(&mut tensors);
        let params = vars
            .into_iter()
            .zip(tensors)
            .zip(slots)
            .map(|(((name, _), (param, decay)), slot)| ParamState {
                m: slot.m,
                v: slot.v,
                offset: slot.offset,
                decay,
                name,
                param,
            })
            .collect();
        AdamW {
            params,
            flat,
            step: 0,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        }
    }

    /// Makes `replica`, a VarStore holding a second copy of the same model, share this
    /// optimizer's weights (its variables become views of the same buffer, so every
    /// update reaches it), and gives its gradients a flat buffer of their own, laid out
    /// like ours; returns that buffer. See [`crate::train::data_parallel`].
    pub fn share_weights(&self, replica: &nn::VarStore) -> Tensor {
        let mut vars = replica.variables();
        let grad = self.flat.grad.zeros_like();
        let replica_vars: Vec<&Tensor> = self.params.iter().map(|p| &vars[&p.name]).collect();
        fused_adamw::define_grads(&replica_vars);
        tch::no_grad(|| {
            for p in &self.params {
                let var = vars
                    .get_mut(&p.name)
                    .expect("the replica has the same variables");
                let _ = var.set_source_tensor_(&p.param);
                let _ = var
                    .grad()
                    .set_source_tensor_(&fused_adamw::view_at(&grad, p.offset, &p.param));
            }
        });
        grad
    }

    /// Adds a replica's gradients (the buffer [`Self::share_weights`] returned) into
    /// ours, and zeroes them for its next backward pass.
    pub fn absorb_grads(&mut self, replica_grad: &mut Tensor) {
        tch::no_grad(|| {
            let _ = self.flat.grad.g_add_(replica_grad);
            let _ = replica_grad.zero_();
        });
    }

    /// The dtype of the parameters (and of every flat buffer).
    pub fn kind(&self) -> Kind {
        self.flat.param.kind()
    }

    /// Updates done so far.
    pub fn steps_done(&self) -> i64 {
        self.step
    }

    /// The global L2 norm of all gradients, as one scalar tensor (no host sync): the
    /// norm of the flat gradient buffer, which is the norm of the per-tensor norms.
    pub fn grad_norm(&self) -> Tensor {
        self.flat.grad.norm()
    }

    /// Scales every gradient by `max_norm / norm` when the global norm exceeds `max_norm`
    /// (Pascanu et al. 2013), as `torch.nn.utils.clip_grad_norm_` does.
    pub fn clip_grad_norm(&mut self, norm: f64, max_norm: f64) {
        let coef = max_norm / (norm + 1e-6);
        if max_norm > 0.0 && coef < 1.0 {
            tch::no_grad(|| {
                let _ = self.flat.grad.g_mul_scalar_(coef);
            });
        }
    }

    /// The scalars of update number `self.step` at learning rate `lr`.
    fn hyper(&self, lr: f64) -> Hyper {
        let t = self.step as i32;
        Hyper {
            decay: 1.0 - lr * self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            bias_correction2_sqrt: (1.0 - self.beta2.powi(t)).sqrt(),
            step_size: lr / (1.0 - self.beta1.powi(t)),
            eps: self.eps,
        }
    }

    /// One AdamW update at learning rate `lr`: [`Self::step_reference`]'s arithmetic in
    /// one pass over the flat buffers.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let hyper = self.hyper(lr);
        fused_adamw::step(&mut self.flat, &hyper);
    }

    /// [`Self::step`] through the flat buffers with tensor ops, the path CUDA and bf16
    /// take; public so tests can compare it with the CPU loop.
    pub fn step_flat_ops(&mut self, lr: f64) {
        self.step += 1;
        let hyper = self.hyper(lr);
        fused_adamw::step_tensor_ops(&mut self.flat, &hyper);
    }

    /// One AdamW update at learning rate `lr`, written out one parameter at a time as
    /// PyTorch's single-tensor `AdamW` does. The reference for [`Self::step`].
    pub fn step_reference(&mut self, lr: f64) {
        self.step += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let bias_correction1 = 1.0 - b1.powi(self.step as i32);
        let bias_correction2 = 1.0 - b2.powi(self.step as i32);
        let step_size = lr / bias_correction1;
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.param.grad();
                if !g.defined() {
                    continue; // a parameter the loss did not reach
                }
                if p.decay {
                    // Decoupled decay: shrink the weight itself, not the gradient.
                    let _ = p.param.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = p.m.lerp_(&g, 1.0 - b1); // m ← β1·m + (1-β1)·g
                let _ = p.v.g_mul_scalar_(b2).addcmul_(&(&g * (1.0 - b2)), &g); // v ← β2·v + (1-β2)·g²
                let denom = p.v.sqrt() / bias_correction2.sqrt() + self.eps;
                let _ = p.param.addcdiv_(&(&p.m * -step_size), &denom); // θ ← θ - lr·m̂/(√v̂ + ε)
            }
        });
    }

    /// Sets every gradient to zero: one fill of the flat gradient buffer, which every
    /// `.grad` is a view of (no reallocation per step).
    pub fn zero_grad(&mut self) {
        let _ = self.flat.grad.zero_();
    }
}

/// The moments `m.{name}`, `v.{name}` of every parameter, and `step`.
impl OptimizerState for AdamW {
    /// The state to save: `m.{name}`, `v.{name}` for every parameter, and `step`.
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for p in &self.params {
            out.push((format!("m.{}", p.name), p.m.shallow_clone()));
            out.push((format!("v.{}", p.name), p.v.shallow_clone()));
        }
        out.push(("step".to_string(), Tensor::from_slice(&[self.step])));
        out
    }

    /// Restores what `state_tensors` saved; every name and shape must match.
    fn load_state(&mut self, tensors: &[(String, Tensor)], source: &Path) -> Result<()> {
        let find = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let missing =
            |name: &str| Error::checkpoint(source, format!("optimizer state has no tensor {name}"));
        tch::no_grad(|| {
            for p in &mut self.params {
                for (key, slot) in [
                    (format!("m.{}", p.name), &mut p.m),
                    (format!("v.{}", p.name), &mut p.v),
                ] {
                    let t = find(&key).ok_or_else(|| missing(&key))?;
                    if t.size() != slot.size() {
                        return Err(Error::checkpoint(
                            source,
                            format!(
                                "optimizer tensor {key} has shape {:?}, the model needs {:?}",
                                t.size(),
                                slot.size()
                            ),
                        ));
                    }
                    slot.copy_(&t.to_kind(Kind::Float));
                }
            }
            Ok(())
        })?;
        let step = find("step").ok_or_else(|| missing("step"))?;
        self.step = step
            .f_int64_value(&[0])
            .map_err(|e| Error::checkpoint(source, format!("optimizer step is unreadable: {e}")))?;
        Ok(())
    }
}

/// Linear warmup to the peak, then cosine decay to `min_lr` at `total` steps
/// (Loshchilov & Hutter 2017, as nanoGPT). Warmup keeps the first, noisy Adam updates
/// small while the second-moment estimates are still poor.
#[derive(Clone, Debug)]
pub struct LrSchedule {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup: Step,
    pub total: Step,
}

impl LrSchedule {
    pub fn new(cfg: &TrainConfig) -> Self {
        LrSchedule {
            max_lr: cfg.lr,
            min_lr: cfg.min_lr,
            warmup: cfg.warmup_steps,
            total: cfg.max_steps,
        }
    }

    /// The learning rate for update number `step` (0-based).
    pub fn at(&self, step: Step) -> f64 {
        if step < self.warmup {
            return self.max_lr * (step + 1) as f64 / (self.warmup + 1) as f64;
        }
        if step >= self.total {
            return self.min_lr;
        }
        let progress = (step - self.warmup) as f64 / (self.total - self.warmup).max(1) as f64;
        let cosine = 0.5 * (1.0 + (PI * progress).cos()); // 1 → 0
        self.min_lr + cosine * (self.max_lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> LrSchedule {
        LrSchedule {
            max_lr: 1e-3,
            min_lr: 1e-4,
            warmup: 10,
            total: 110,
        }
    }

    #[test]
    fn warmup_is_linear_from_a_small_value() {
        let s = schedule();
        assert!((s.at(0) - 1e-3 / 11.0).abs() < 1e-15);
        assert!((s.at(4) - 5e-3 / 11.0).abs() < 1e-15);
        assert!((s.at(9) - 10e-3 / 11.0).abs() < 1e-15);
    }

    #[test]
    fn cosine_hits_peak_middle_and_floor() {
        let s = schedule();
        assert!((s.at(10) - 1e-3).abs() < 1e-15, "peak right after warmup");
        assert!(
            (s.at(60) - 5.5e-4).abs() < 1e-12,
            "halfway is the mean of peak and floor"
        );
        assert!((s.at(110) - 1e-4).abs() < 1e-15);
        assert!(
            (s.at(5000) - 1e-4).abs() < 1e-15,
            "stays at the floor after the end"
        );
        assert!(s.at(30) > s.at(31), "decays monotonically");
    }
}
