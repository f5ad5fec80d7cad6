//! The trainable parameters of a model, re-homed into flat buffers: all values in one
//! contiguous 1-D tensor, all gradients in another.
//!
//! A step touches every parameter several times (zero the gradients, take their global
//! norm, clip them, update them). Done tensor by tensor, each of those is ~50–150 small
//! ops, and on the CPU each op is a parallel region whose threads meet at a barrier. So
//! whoever trains the model moves its tensors into one allocation first: every
//! parameter becomes a view of the value buffer (the same tensor, new storage, so the
//! model code does not notice), and its `.grad` a view of the gradient buffer, into
//! which autograd then accumulates in place. Zeroing the gradients is then one `fill`,
//! the global norm one `norm`, clipping one `mul_`, and the optimizer
//! ([`super::optim::AdamW`]) can update everything in one pass over memory
//! ([`super::fused_adamw`]).
//!
//! Decayed tensors come first, so weight decay is one boundary in the buffer. The decay
//! groups are nanoGPT's: every tensor with 2 or more dimensions (the Linear weights and
//! the embeddings, an untied `lm_head` as `wte`) decays; biases and the gains of
//! LayerNorm, RMSNorm and QK-norm do not, since pulling a gain or a bias towards 0 is
//! not regularisation. With
//! [`Optimizer::Muon`], the hidden matrices ([`super::muon::is_hidden_matrix`]) go
//! last, after both AdamW groups, so that AdamW's part of every buffer is one prefix:
//!
//! ```text
//! values: [ AdamW, decayed | AdamW, not decayed | Muon ]
//!         0                n_decay              n_adamw           numel
//! ```
//!
//! Data-parallel replicas ([`super::data_parallel`]) share the value buffer and keep
//! gradient buffers of their own, laid out the same way ([`FlatParams::share_weights`]).

use super::muon::is_hidden_matrix;
use crate::config::Optimizer;
use tch::{nn, Device, Kind, Tensor};

/// One parameter: its name in the model, the tensor (a view of the value buffer),
/// whether AdamW decays it or Muon updates it, and where it starts in every flat buffer.
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub decay: bool,
    /// Updated by Muon, not AdamW (then `decay` is false: Muon does not decay).
    pub muon: bool,
    pub offset: i64,
}

/// A model's trainable tensors as views of one value buffer and one gradient buffer.
pub struct FlatParams {
    /// In name order, so saved state is stable.
    params: Vec<Param>,
    values: Tensor,
    grads: Tensor,
    /// Elements `[0, n_decay)` belong to decayed tensors, the rest to the others.
    n_decay: i64,
    /// Elements `[0, n_adamw)` are AdamW's, the rest Muon's.
    n_adamw: i64,
}

impl FlatParams {
    /// Takes every trainable variable of `vs` and moves it into the flat buffers: the
    /// model's tensors keep their values but share one allocation from here on, and
    /// each gets a zero `.grad`. Every parameter is AdamW's.
    pub fn new(vs: &nn::VarStore) -> Self {
        Self::grouped(vs, Optimizer::AdamW)
    }

    /// [`Self::new`], with the parameters laid out for `optimizer`: with
    /// [`Optimizer::Muon`], the hidden matrices last, as Muon's.
    pub fn grouped(vs: &nn::VarStore, optimizer: Optimizer) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let kind = vars.first().map_or(Kind::Float, |v| v.1.kind());
        let device = vars.first().map_or(Device::Cpu, |v| v.1.device());
        assert!(
            vars.iter()
                .all(|(_, t)| t.kind() == kind && t.device() == device),
            "training needs all parameters in one dtype on one device"
        );
        let params = layout(vars, optimizer);
        let numel = |keep: fn(&Param) -> bool| {
            let sizes = params.iter().filter(|p| keep(p));
            sizes.map(|p| p.tensor.numel() as i64).sum::<i64>()
        };
        let (total, n_decay, n_adamw) = (numel(|_| true), numel(|p| p.decay), numel(|p| !p.muon));
        let flat = FlatParams {
            values: Tensor::zeros([total], (kind, device)),
            grads: Tensor::zeros([total], (kind, device)),
            params,
            n_decay,
            n_adamw,
        };
        flat.rehome();
        flat
    }

    /// Copies every parameter into its slice of the value buffer and points the tensor
    /// (and its `.grad`) at the buffers.
    fn rehome(&self) {
        define_grads(&self.params.iter().map(|p| &p.tensor).collect::<Vec<_>>());
        tch::no_grad(|| {
            for p in &self.params {
                let mut view = view_at(&self.values, p.offset, &p.tensor);
                view.copy_(&p.tensor);
                // The parameter now lives in the buffer (same tensor, new storage).
                let _ = p.tensor.shallow_clone().set_source_tensor_(&view);
                let _ =
                    p.tensor
                        .grad()
                        .set_source_tensor_(&view_at(&self.grads, p.offset, &p.tensor));
            }
        });
        let _ = self.grads.shallow_clone().zero_();
    }

    /// The parameters, in name order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// All values, one 1-D buffer (decayed tensors first).
    pub fn values(&self) -> &Tensor {
        &self.values
    }

    /// All gradients, laid out as [`Self::values`].
    pub fn grads(&self) -> &Tensor {
        &self.grads
    }

    /// How many leading elements of the buffers belong to decayed tensors.
    pub fn n_decay(&self) -> i64 {
        self.n_decay
    }

    /// How many leading elements of the buffers are AdamW's (all, without Muon).
    pub fn n_adamw(&self) -> i64 {
        self.n_adamw
    }

    /// The dtype of the parameters (and of both buffers).
    pub fn kind(&self) -> Kind {
        self.values.kind()
    }

    /// The global L2 norm of all gradients, as one scalar tensor (no host sync): the
    /// norm of the flat gradient buffer, which is the norm of the per-tensor norms.
    pub fn grad_norm(&self) -> Tensor {
        self.grads.norm()
    }

    /// Scales every gradient by `max_norm / norm` when the global norm exceeds `max_norm`
    /// (Pascanu et al. 2013), as `torch.nn.utils.clip_grad_norm_` does.
    pub fn clip_grad_norm(&mut self, norm: f64, max_norm: f64) {
        let coef = max_norm / (norm + 1e-6);
        if max_norm > 0.0 && coef < 1.0 {
            tch::no_grad(|| {
                let _ = self.grads.g_mul_scalar_(coef);
            });
        }
    }

    /// Sets every gradient to zero: one fill of the gradient buffer, which every `.grad`
    /// is a view of (no reallocation per step).
    pub fn zero_grad(&mut self) {
        let _ = self.grads.zero_();
    }

    /// Makes `replica`, a VarStore holding a second copy of the same model, share these
    /// weights (its variables become views of the same buffer, so every update reaches
    /// it), and gives its gradients a flat buffer of their own, laid out like ours;
    /// returns that buffer. See [`super::data_parallel`].
    pub fn share_weights(&self, replica: &nn::VarStore) -> Tensor {
        let mut vars = replica.variables();
        let grad = self.grads.zeros_like();
        let replica_vars: Vec<&Tensor> = self.params.iter().map(|p| &vars[&p.name]).collect();
        define_grads(&replica_vars);
        tch::no_grad(|| {
            for p in &self.params {
                let var = vars
                    .get_mut(&p.name)
                    .expect("the replica has the same variables");
                let _ = var.set_source_tensor_(&p.tensor);
                let _ = var
                    .grad()
                    .set_source_tensor_(&view_at(&grad, p.offset, &p.tensor));
            }
        });
        grad
    }

    /// Adds a replica's gradients (the buffer [`Self::share_weights`] returned) into
    /// ours, and zeroes them for its next backward pass.
    pub fn absorb_grads(&mut self, replica_grad: &mut Tensor) {
        tch::no_grad(|| {
            let _ = self.grads.g_add_(replica_grad);
            let _ = replica_grad.zero_();
        });
    }
}

/// The parameters with their groups and offsets: AdamW's decayed tensors first in the
/// buffers, then AdamW's others, then (with [`Optimizer::Muon`]) Muon's; the list
/// itself kept in the order given.
fn layout(vars: Vec<(String, Tensor)>, optimizer: Optimizer) -> Vec<Param> {
    let muon = |name: &str, t: &Tensor| optimizer == Optimizer::Muon && is_hidden_matrix(name, t);
    // 0: AdamW with decay, 1: AdamW without, 2: Muon.
    let group = |(name, t): &(String, Tensor)| match (muon(name, t), t.dim() >= 2) {
        (true, _) => 2,
        (false, true) => 0,
        (false, false) => 1,
    };
    let mut offset = 0;
    let mut offsets = vec![0i64; vars.len()];
    for g in 0..3 {
        for (i, var) in vars.iter().enumerate() {
            if group(var) == g {
                offsets[i] = offset;
                offset += var.1.numel() as i64;
            }
        }
    }
    vars.into_iter()
        .zip(offsets)
        .map(|(var, offset)| Param {
            decay: group(&var) == 0,
            muon: group(&var) == 2,
            name: var.0,
            tensor: var.1,
            offset,
        })
        .collect()
}

/// Gives every tensor of `params` a `.grad` (zeros), so that it can be re-homed: one
/// backward through zero defines them all, since tch has no setter for `.grad`.
fn define_grads(params: &[&Tensor]) {
    // Summed in each tensor's own dtype, so each gradient has that dtype too.
    let touch: Vec<Tensor> = params.iter().map(|p| p.sum(p.kind())).collect();
    if !touch.is_empty() {
        let kind = touch[0].kind();
        (Tensor::stack(&touch, 0).sum(kind) * 0.0).backward();
    }
}

/// `buf[offset..offset + numel]` shaped like `like`.
pub fn view_at(buf: &Tensor, offset: i64, like: &Tensor) -> Tensor {
    buf.narrow(0, offset, like.numel() as i64)
        .view(like.size().as_slice())
}
