//! AdamW (Loshchilov & Hutter 2019) and the learning-rate schedule, written out.
//!
//! tch ships an AdamW, but it cannot export its moments, and a run that cannot save its
//! optimizer cannot resume exactly. Here the state is plain tensors with names, saved
//! to `optimizer.safetensors` next to the weights. The update is the one of PyTorch's
//! `torch.optim.AdamW` (single-tensor path), line for line, so the parity test can hold
//! it to a PyTorch trajectory.
//!
//! The optimizer owns its moments and nothing else: the parameters and gradients it
//! updates are the trainer's ([`super::params::FlatParams`], which also groups them for
//! weight decay), handed to every step. [`AdamW::step_reference`] is the update, one
//! parameter at a time, for reading. [`AdamW::step`] computes the same thing through
//! [`super::fused_adamw`]: the moments are flat buffers laid out like the parameters',
//! and the update is one pass over all four (a test holds the two to each other).
//!
//! [`Optimizers`] is what a run steps: this AdamW, or with `--optimizer muon` Muon for
//! the hidden matrices ([`super::muon`]) and this AdamW for the rest.

use super::fused_adamw::{self, Flat, StepScalars};
use super::muon::Muon;
use super::params::{view_at, FlatParams, Param};
use crate::config::{Optimizer, Schedule, TrainConfig};
use crate::run::checkpoint::OptimizerState;
use crate::{Error, Result, Step};
use std::f64::consts::PI;
use std::path::Path;
use tch::Tensor;

/// One parameter's two moment estimates (views of the flat moment buffers).
struct Moments {
    /// The parameter's name, which names the moments in the saved state.
    name: String,
    /// First moment, the running mean of gradients.
    m: Tensor,
    /// Second moment, the running mean of squared gradients.
    v: Tensor,
}

pub struct AdamW {
    /// Per AdamW parameter, in the order of [`FlatParams::params`].
    moments: Vec<Moments>,
    /// All first and second moments, laid out like AdamW's part of
    /// [`FlatParams::values`] (all of it, unless Muon has the hidden matrices).
    m: Tensor,
    v: Tensor,
    /// Updates done so far; the bias corrections depend on it.
    step: i64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// Zero moments for every AdamW parameter of `params` (the model is not touched).
    pub fn new(params: &FlatParams, cfg: &TrainConfig) -> Self {
        let m = params.values().narrow(0, 0, params.n_adamw()).zeros_like();
        let v = m.zeros_like();
        let moments = adamw_params(params)
            .map(|p| Moments {
                name: p.name.clone(),
                m: view_at(&m, p.offset, &p.tensor),
                v: view_at(&v, p.offset, &p.tensor),
            })
            .collect();
        AdamW {
            moments,
            m,
            v,
            step: 0,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        }
    }

    /// Updates done so far.
    pub fn steps_done(&self) -> i64 {
        self.step
    }

    /// The scalars of update number `self.step` at learning rate `lr`.
    fn scalars(&self, lr: f64) -> StepScalars {
        let t = self.step as i32;
        StepScalars {
            decay: 1.0 - lr * self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            bias_correction2_sqrt: (1.0 - self.beta2.powi(t)).sqrt(),
            step_size: lr / (1.0 - self.beta1.powi(t)),
            eps: self.eps,
        }
    }

    /// AdamW's part of `params`' values and gradients.
    fn own_part(params: &FlatParams) -> (Tensor, Tensor) {
        let n = params.n_adamw();
        (
            params.values().narrow(0, 0, n),
            params.grads().narrow(0, 0, n),
        )
    }

    /// The flat buffers of one update: AdamW's part of `params`' values and gradients
    /// (`own`, from [`Self::own_part`]), and our moments.
    fn flat<'a>(&'a self, params: &FlatParams, own: &'a (Tensor, Tensor)) -> Flat<'a> {
        Flat {
            param: &own.0,
            grad: &own.1,
            m: &self.m,
            v: &self.v,
            n_decay: params.n_decay(),
        }
    }

    /// One AdamW update of `params` at learning rate `lr`: [`Self::step_reference`]'s
    /// arithmetic in one pass over the flat buffers.
    pub fn step(&mut self, params: &mut FlatParams, lr: f64) {
        self.step += 1;
        let own = Self::own_part(params);
        fused_adamw::step(&self.flat(params, &own), &self.scalars(lr));
    }

    /// [`Self::step`] through the flat buffers with tensor ops, the path CUDA and bf16
    /// take; public so tests can compare it with the CPU loop.
    pub fn step_flat_ops(&mut self, params: &mut FlatParams, lr: f64) {
        self.step += 1;
        let own = Self::own_part(params);
        fused_adamw::step_tensor_ops(&self.flat(params, &own), &self.scalars(lr));
    }

    /// One AdamW update at learning rate `lr`, written out one parameter at a time as
    /// PyTorch's single-tensor `AdamW` does. The reference for [`Self::step`].
    pub fn step_reference(&mut self, params: &mut FlatParams, lr: f64) {
        self.step += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let bias_correction1 = 1.0 - b1.powi(self.step as i32);
        let bias_correction2 = 1.0 - b2.powi(self.step as i32);
        let step_size = lr / bias_correction1;
        tch::no_grad(|| {
            for (param, p) in adamw_params(params).zip(&mut self.moments) {
                let mut theta = param.tensor.shallow_clone();
                let g = theta.grad();
                if !g.defined() {
                    continue; // a parameter the loss did not reach
                }
                if param.decay {
                    // Decoupled decay: shrink the weight itself, not the gradient.
                    let _ = theta.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = p.m.lerp_(&g, 1.0 - b1); // m ← β1·m + (1-β1)·g
                let _ = p.v.g_mul_scalar_(b2).addcmul_(&(&g * (1.0 - b2)), &g); // v ← β2·v + (1-β2)·g²
                let denom = p.v.sqrt() / bias_correction2.sqrt() + self.eps;
                let _ = theta.addcdiv_(&(&p.m * -step_size), &denom); // θ ← θ - lr·m̂/(√v̂ + ε)
            }
        });
    }
}

/// The parameters AdamW updates, in order.
fn adamw_params(params: &FlatParams) -> impl Iterator<Item = &Param> {
    params.params().iter().filter(|p| !p.muon)
}

/// The moments `m.{name}`, `v.{name}` of every parameter, and `step`.
impl OptimizerState for AdamW {
    /// The state to save: `m.{name}`, `v.{name}` for every parameter, and `step`.
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.moments.len() + 1);
        for p in &self.moments {
            out.push((format!("m.{}", p.name), p.m.shallow_clone()));
            out.push((format!("v.{}", p.name), p.v.shallow_clone()));
        }
        out.push(("step".to_string(), Tensor::from_slice(&[self.step])));
        out
    }

    /// Restores what `state_tensors` saved; every name and shape must match.
    fn load_state(&mut self, tensors: &[(String, Tensor)], source: &Path) -> Result<()> {
        for p in &mut self.moments {
            restore(tensors, &format!("m.{}", p.name), &mut p.m, source)?;
            restore(tensors, &format!("v.{}", p.name), &mut p.v, source)?;
        }
        let step = find(tensors, "step", source)?;
        self.step = step
            .f_int64_value(&[0])
            .map_err(|e| Error::checkpoint(source, format!("optimizer step is unreadable: {e}")))?;
        Ok(())
    }
}

/// The saved tensor `key` of `tensors` (read from `source`).
fn find<'a>(tensors: &'a [(String, Tensor)], key: &str, source: &Path) -> Result<&'a Tensor> {
    let found = tensors.iter().find(|(n, _)| n == key).map(|(_, t)| t);
    found.ok_or_else(|| Error::checkpoint(source, format!("optimizer state has no tensor {key}")))
}

/// Copies the saved tensor `key` of `tensors` (read from `source`) into `slot`, whose
/// shape it must have.
pub(crate) fn restore(
    tensors: &[(String, Tensor)],
    key: &str,
    slot: &mut Tensor,
    source: &Path,
) -> Result<()> {
    let t = find(tensors, key, source)?;
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
    tch::no_grad(|| slot.copy_(&t.to_kind(slot.kind())));
    Ok(())
}

/// The optimizers of one run, each over its part of the flat buffers: AdamW alone, or
/// with [`Optimizer::Muon`] Muon for the hidden matrices and AdamW for the rest (see
/// [`super::params`] for the layout, [`super::muon`] for Muon).
pub struct Optimizers {
    pub adamw: AdamW,
    pub muon: Option<Muon>,
    /// AdamW's and Muon's peak rates: Muon's rate is AdamW's scaled by their ratio.
    lr: f64,
    muon_lr: f64,
}

impl Optimizers {
    /// Fresh state for the parameters of `params`, which must be grouped for
    /// `cfg.optimizer` ([`FlatParams::grouped`]).
    pub fn new(params: &FlatParams, cfg: &TrainConfig) -> Self {
        let muon = cfg.optimizer == Optimizer::Muon;
        assert_eq!(
            muon,
            params.n_adamw() < params.values().numel() as i64,
            "the parameters are grouped for --optimizer {}",
            cfg.optimizer.name()
        );
        Optimizers {
            adamw: AdamW::new(params, cfg),
            muon: muon.then(|| Muon::new(params, cfg)),
            lr: cfg.lr,
            muon_lr: cfg.muon_lr,
        }
    }

    /// Updates done so far.
    pub fn steps_done(&self) -> i64 {
        self.adamw.steps_done()
    }

    /// One update of every parameter: AdamW's at `lr`, the schedule's rate now, and
    /// Muon's at `--muon-lr` times the same factor of the schedule, `lr / --lr`.
    pub fn step(&mut self, params: &mut FlatParams, lr: f64) {
        self.adamw.step(params, lr);
        if let Some(muon) = &mut self.muon {
            muon.step(params, self.muon_lr * (lr / self.lr));
        }
    }
}

/// AdamW's state, then Muon's.
impl OptimizerState for Optimizers {
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = self.adamw.state_tensors();
        if let Some(muon) = &self.muon {
            out.extend(muon.state_tensors());
        }
        out
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)], source: &Path) -> Result<()> {
        self.adamw.load_state(tensors, source)?;
        match &mut self.muon {
            Some(muon) => muon.load_state(tensors, source),
            None => Ok(()),
        }
    }
}

/// Linear warmup to the peak, then a decay to `min_lr` at the run's end. Warmup keeps
/// the first, noisy Adam updates small while the second-moment estimates are still poor.
///
/// [`Schedule::Cosine`] decays along a cosine to `total` steps (Loshchilov & Hutter
/// 2017, as nanoGPT). [`Schedule::Budget`] is warmup-stable-decay (Hu et al. 2024,
/// "MiniCPM"; Hägele et al. 2024): the peak until the run is `1 - DECAY_FRACTION` of
/// the way to its end, then a straight line down. How far along the run is counts steps
/// and, with a time budget, seconds, whichever is further: the decay starts and ends by
/// the clock on a slow machine and by the step count on a fast one, and both are saved
/// in every checkpoint (`step`, `elapsed_s`), so a resumed run continues the same plan.
#[derive(Clone, Debug)]
pub struct LrSchedule {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup: Step,
    pub total: Step,
    pub shape: Schedule,
    /// The training-time budget in seconds ([`Schedule::Budget`] only).
    pub budget_s: Option<f64>,
}

/// The share of the run spent decaying under [`Schedule::Budget`]; 20–30 % matches a
/// cosine's final loss in Hägele et al.'s measurements.
pub const DECAY_FRACTION: f64 = 0.3;

impl LrSchedule {
    pub fn new(cfg: &TrainConfig) -> Self {
        LrSchedule {
            max_lr: cfg.lr,
            min_lr: cfg.min_lr,
            warmup: cfg.warmup_steps,
            total: cfg.max_steps,
            shape: cfg.schedule,
            budget_s: match cfg.schedule {
                Schedule::Budget => cfg.max_minutes.map(|m| m * 60.0),
                Schedule::Cosine => None,
            },
        }
    }

    /// How far the run is toward its end, from 0 to 1: by steps, or by training time
    /// when there is a budget and the clock is further along.
    pub fn progress(&self, step: Step, elapsed_s: f64) -> f64 {
        let by_steps = step as f64 / self.total.max(1) as f64;
        let by_time = self.budget_s.map_or(0.0, |b| elapsed_s / b);
        by_steps.max(by_time).min(1.0)
    }

    /// Whether the learning rate has left its peak for the final decay.
    pub fn is_decaying(&self, step: Step, elapsed_s: f64) -> bool {
        self.progress(step, elapsed_s) >= 1.0 - DECAY_FRACTION
    }

    /// Ends the plan early (`--target-bpb` was met): the decay starts at `step`,
    /// `elapsed_s` seconds in, and lasts `DECAY_FRACTION / (1 - DECAY_FRACTION)` of the
    /// run so far, counted in steps and, with a time budget, in seconds; whichever end
    /// comes first ends it, as always.
    pub fn end_early(&mut self, step: Step, elapsed_s: f64) {
        let stretch = 1.0 / (1.0 - DECAY_FRACTION);
        // The guard keeps 7 / 0.7 = 10.000000000000002 at 10 steps.
        let steps = (step as f64 * stretch - 1e-9).ceil() as Step;
        self.total = self.total.min(steps.max(step + 1));
        self.budget_s = self.budget_s.map(|b| b.min(elapsed_s * stretch));
    }

    /// Whether the run has reached its end (the time budget's; `max_steps` is checked by
    /// the loop itself).
    pub fn out_of_time(&self, elapsed_s: f64) -> bool {
        self.budget_s.is_some_and(|b| elapsed_s >= b)
    }

    /// The learning rate for update number `step` (0-based), `elapsed_s` seconds of
    /// training into the run.
    pub fn at(&self, step: Step, elapsed_s: f64) -> f64 {
        if step < self.warmup {
            return self.max_lr * (step + 1) as f64 / (self.warmup + 1) as f64;
        }
        match self.shape {
            Schedule::Cosine => self.cosine(step),
            Schedule::Budget => {
                let left = 1.0 - self.progress(step, elapsed_s); // 1 → 0
                let decay = (left / DECAY_FRACTION).min(1.0); // 1 while stable, then → 0
                self.min_lr + decay * (self.max_lr - self.min_lr)
            }
        }
    }

    fn cosine(&self, step: Step) -> f64 {
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
            shape: Schedule::Cosine,
            budget_s: None,
        }
    }

    fn budget(seconds: f64) -> LrSchedule {
        LrSchedule {
            shape: Schedule::Budget,
            budget_s: Some(seconds),
            total: 1000,
            ..schedule()
        }
    }

    #[test]
    fn warmup_is_linear_from_a_small_value() {
        let s = schedule();
        assert!((s.at(0, 0.0) - 1e-3 / 11.0).abs() < 1e-15);
        assert!((s.at(4, 0.0) - 5e-3 / 11.0).abs() < 1e-15);
        assert!((s.at(9, 0.0) - 10e-3 / 11.0).abs() < 1e-15);
    }

    #[test]
    fn cosine_hits_peak_middle_and_floor() {
        let s = schedule();
        assert!(
            (s.at(10, 0.0) - 1e-3).abs() < 1e-15,
            "peak right after warmup"
        );
        assert!(
            (s.at(60, 0.0) - 5.5e-4).abs() < 1e-12,
            "halfway is the mean of peak and floor"
        );
        assert!((s.at(110, 0.0) - 1e-4).abs() < 1e-15);
        assert!(
            (s.at(5000, 0.0) - 1e-4).abs() < 1e-15,
            "stays at the floor after the end"
        );
        assert!(s.at(30, 0.0) > s.at(31, 0.0), "decays monotonically");
    }

    #[test]
    fn budget_holds_the_peak_then_decays_by_whichever_end_is_nearer() {
        let s = budget(100.0);
        let (max, min) = (1e-3, 1e-4);
        assert_eq!(s.at(100, 10.0), max, "10 % along: stable");
        assert_eq!(s.at(690, 69.0), max, "just before the decay: stable");
        let halfway_down = min + 0.5 * (max - min);
        // 85 % along leaves half of the decay's 30 %, by the clock or by the steps.
        assert!(
            (s.at(100, 85.0) - halfway_down).abs() < 1e-15,
            "slow machine"
        );
        assert!(
            (s.at(850, 1.0) - halfway_down).abs() < 1e-15,
            "fast machine"
        );
        assert!(
            (s.at(400, 100.0) - min).abs() < 1e-18,
            "annealed at the deadline"
        );
        assert!(
            (s.at(1000, 3.0) - min).abs() < 1e-18,
            "annealed at max_steps"
        );
        assert!(s.out_of_time(100.0) && !s.out_of_time(99.9));
        assert!(!schedule().out_of_time(1e9), "cosine has no deadline");
    }

    #[test]
    fn budget_never_raises_the_rate_after_warmup_and_warmup_ignores_the_clock() {
        let s = budget(60.0);
        assert_eq!(
            s.at(3, 59.0),
            schedule().at(3, 0.0),
            "warmup is by steps only"
        );
        let mut last = f64::INFINITY;
        // The clock runs unevenly (a machine slowing down and speeding up).
        let mut elapsed = 0.0;
        for step in 10..1000u64 {
            elapsed += if (step / 50) % 2 == 0 { 0.01 } else { 0.2 };
            let lr = s.at(step, elapsed);
            assert!(lr <= last, "step {step}: {lr} > {last}");
            last = lr;
        }
        assert!((last - 1e-4).abs() < 1e-18, "ends at the floor: {last}");
    }

    #[test]
    fn an_early_end_decays_from_the_peak_over_three_sevenths_of_the_run_so_far() {
        // Met at step 70, 35 s into a 1000-step, 600 s plan.
        let mut s = budget(600.0);
        assert!(!s.is_decaying(70, 35.0));
        s.end_early(70, 35.0);
        assert_eq!(s.total, 100, "70 steps are the stable 70 % of 100");
        assert!((s.budget_s.unwrap() - 50.0).abs() < 1e-12);
        assert!((s.at(69, 34.0) - 1e-3).abs() < 1e-15, "the peak until then");
        assert!(s.is_decaying(70, 35.0));
        // Halfway through the decay by steps (the clock is behind): halfway down.
        assert!((s.at(85, 40.0) - 5.5e-4).abs() < 1e-12);
        // The clock ends it first when it runs ahead; the steps when they do.
        assert!(s.out_of_time(50.0));
        assert_eq!(s.at(100, 45.0), 1e-4);
        // 7 / 0.7 is 10.000000000000002 in floating point: still 10 steps.
        let mut s = budget(600.0);
        s.end_early(7, 1.0);
        assert_eq!(s.total, 10);
        // Without a time budget only the steps end it.
        let mut s = LrSchedule {
            shape: Schedule::Budget,
            ..schedule()
        };
        s.end_early(70, 35.0);
        assert_eq!((s.total, s.budget_s), (100, None));
    }
}
