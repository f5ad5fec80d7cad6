//! Causal multi-head self-attention (Vaswani et al. 2017, §3.2.2), the one place where
//! positions exchange information.
//!
//! Each position emits a query, a key and a value (one fused Linear, `c_attn`, as in
//! GPT-2). Position `t` mixes the values of positions `≤ t`, weighted by
//! `softmax(q·k / sqrt(D))`; the causal mask is what makes the model a *language* model,
//! since it may never peek at the token it is asked to predict.
//!
//! Two kernels compute the same thing. [`attention_reference`] writes the mask and the
//! softmax out and returns the attention weights (used by `explain`, and as the
//! reference in tests). The forward pass uses libtorch's fused
//! `scaled_dot_product_attention`, which never materialises the (T, T) matrix in
//! memory-efficient or flash form. A test checks that the two agree.
//!
//! Two options change what q and k are before they meet (`CausalSelfAttention::place`):
//! QK-norm (RMSNorm over each head's D values, with a learned gain per dimension, as in
//! the speedrun and nanochat) bounds every score by the gains' norms, so that a large
//! learning rate cannot blow the softmax up into one-hot; RoPE ([`super::rope`]) rotates
//! them to their positions. Without either, q and k are the projection's, as in GPT-2.

use crate::config::ModelConfig;
use crate::model::kv_cache::LayerCache;
use crate::model::rope::{At, Rope};
use crate::model::{dropout, fused, linear, project, residual_std, RmsNorm, INIT_STD};
use tch::{nn, Kind, Tensor};

#[derive(Debug)]
pub struct CausalSelfAttention {
    /// C -> 3C: queries, keys and values in one matmul.
    pub(super) c_attn: nn::Linear,
    /// C -> C: mixes the heads back into the residual stream.
    pub(super) c_proj: nn::Linear,
    /// QK-norm's RMSNorms over D, one for the queries and one for the keys.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// RoPE's tables (shared with every layer) when positions are rotary.
    rope: Option<Rope>,
    pub(super) n_head: i64,
    dropout: f64,
}

impl CausalSelfAttention {
    /// The layer under `p`; `rope` is the model's table when `cfg.arch.pos` is rope.
    pub fn new(p: nn::Path, cfg: &ModelConfig, rope: Option<&Rope>) -> Self {
        let (c, d) = (cfg.n_embd, cfg.head_dim());
        let qk_norm = |name| cfg.arch.qk_norm.then(|| RmsNorm::new(&p / name, d));
        CausalSelfAttention {
            c_attn: linear(&p / "c_attn", c, 3 * c, cfg, INIT_STD),
            c_proj: linear(&p / "c_proj", c, c, cfg, residual_std(cfg)),
            q_norm: qk_norm("q_norm"),
            k_norm: qk_norm("k_norm"),
            rope: rope.map(Rope::share),
            n_head: cfg.n_head,
            dropout: cfg.dropout,
        }
    }

    /// (B, T, C) -> q, k, v stacked: (3, B, H, T, D).
    fn qkv(&self, x: &Tensor) -> Tensor {
        let (b, t, c) = x.size3().expect("attention input is (B, T, C)");
        let d = c / self.n_head;
        // One view and one permute instead of a split and three reshapes: in a decode
        // step every libtorch call costs about a microsecond, as much as the arithmetic.
        project(x, &self.c_attn)
            .view([b, t, 3, self.n_head, d]) // (B, T, 3C) -> (B, T, 3, H, D)
            .permute([2, 0, 3, 1, 4]) // -> (3, B, H, T, D)
    }

    /// The new positions' q, k, v (3, B, H, T, D), at positions `at` -> the queries
    /// (B, H, T, D) and the keys and values stacked (2, B, H, T, D), as a cache takes
    /// them (see [`CausalSelfAttention::place_qk`]); untouched views for GPT-2.
    pub(super) fn place(&self, qkv: &Tensor, at: At) -> (Tensor, Tensor) {
        if self.q_norm.is_none() && self.rope.is_none() {
            return (qkv.get(0), qkv.narrow(0, 1, 2));
        }
        let (q, k) = self.place_qk(qkv.get(0), qkv.get(1), at);
        (q, Tensor::stack(&[k, qkv.get(2)], 0))
    }

    /// q, k (B, H, T, D) at positions `at`, as attention compares them: normalised per
    /// head (QK-norm), then rotated to their positions (RoPE), where the config says
    /// so. Both at once in the fused kernel where it applies.
    fn place_qk(&self, q: Tensor, k: Tensor, at: At) -> (Tensor, Tensor) {
        if let (Some(q_norm), Some(k_norm), Some(rope), At::Start(start)) =
            (&self.q_norm, &self.k_norm, &self.rope, at)
        {
            if fused::applies(&q) {
                let tables = rope.tables(start, q.size()[2]);
                let rotated = (&tables.0, &tables.1);
                return (
                    q_norm.forward_rotated(&q, rotated),
                    k_norm.forward_rotated(&k, rotated),
                );
            }
        }
        let (mut q, mut k) = (q, k);
        if let (Some(q_norm), Some(k_norm)) = (&self.q_norm, &self.k_norm) {
            (q, k) = (q_norm.forward(&q), k_norm.forward(&k));
        }
        if let Some(rope) = &self.rope {
            (q, k) = (rope.rotate(&q, at), rope.rotate(&k, at));
        }
        (q, k)
    }

    /// (B, H, T, D) -> (B, T, C), then the output projection (and residual dropout).
    fn merge(&self, y: Tensor, train: bool) -> Tensor {
        let (b, h, t, d) = y.size4().expect("attention output is (B, H, T, D)");
        let y = y.transpose(1, 2).reshape([b, t, h * d]); // (B, H, T, D) -> (B, T, C)
        dropout(project(&y, &self.c_proj), self.dropout, train)
    }

    /// x: (B, T, C) -> (B, T, C). With a cache, `x` holds only the new positions; their
    /// keys and values are appended to the cache and the queries attend to all of them.
    pub fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>, train: bool) -> Tensor {
        let qkv = self.qkv(x);
        let dropout = if train { self.dropout } else { 0.0 };
        let Some(cache) = cache else {
            // One `unbind` rather than three `get`s: autograd then assembles the
            // gradient of qkv in one stack, not three zero-filled copies added up.
            let [q, k, v] = <[Tensor; 3]>::try_from(qkv.unbind(0)).expect("q, k, v");
            let (q, k) = self.place_qk(q, k, At::Start(0));
            return self.merge(sdpa(&q, &k, &v, Mask::Causal, dropout), train);
        };
        let t_past = cache.len();
        let (q, kv_new) = self.place(&qkv, At::Start(t_past));
        let t_new = q.size()[2];
        let (k, v) = cache.append(&kv_new); // (B, H, T_past + T, D)
        let mask = if t_past == 0 {
            Mask::Causal // square: the kernel builds the mask itself
        } else if t_new == 1 {
            Mask::None // one new query at the last position may see every cached key
        } else {
            // Several new queries after a cached prefix: query i sits at t_past + i.
            Mask::Allowed(causal_mask(t_new, t_past, q.device()))
        };
        let y = sdpa(&q, &k, &v, mask, dropout); // (B, H, T, D)
        self.merge(y, train)
    }

    /// The same as `forward` without a cache, through the written-out reference kernel;
    /// also returns the attention weights, (B, H, T, T), rows summing to 1.
    pub fn forward_traced(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (q, kv) = self.place(&self.qkv(x), At::Start(0));
        let (y, att) = attention_reference(&q, &kv.get(0), &kv.get(1));
        (self.merge(y, false), att)
    }
}

/// Which keys each query may attend to.
pub(crate) enum Mask {
    /// Every key (one query at the newest position).
    None,
    /// Key `j` from query `i` when `j ≤ i` (queries and keys are the same positions).
    Causal,
    /// Where the boolean (T_new, T_keys) tensor is true (see [`causal_mask`]).
    Allowed(Tensor),
}

/// softmax(q·kᵀ / √D + mask)·v, with dropout `dropout` on the weights: libtorch's fused
/// `scaled_dot_product_attention` with its eight positional arguments named.
/// q (B, H, T_new, D), k and v (B, H, T_keys, D) -> (B, H, T_new, D).
pub(crate) fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask, dropout: f64) -> Tensor {
    let (allowed, is_causal) = match mask {
        Mask::None => (None, false),
        Mask::Causal => (None, true),
        Mask::Allowed(m) => (Some(m), false),
    };
    let scale = None; // the default, 1/√D
    let enable_gqa = false; // as many key/value heads as query heads
    Tensor::scaled_dot_product_attention(q, k, v, allowed, dropout, is_causal, scale, enable_gqa)
}

/// `(T_new, T_past + T_new)` booleans, true where query `i` (at position `t_past + i`)
/// may attend to key `j`: the lower triangle shifted right by `t_past`.
pub fn causal_mask(t_new: i64, t_past: i64, device: tch::Device) -> Tensor {
    Tensor::ones([t_new, t_past + t_new], (Kind::Bool, device)).tril(t_past)
}

/// Attention written out: q, k, v (B, H, T, D) -> output (B, H, T, D) and weights
/// (B, H, T, T). Scores above the diagonal are set to -inf before the softmax, so those
/// weights are exactly 0.
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
    let (t, d) = (q.size()[2], q.size()[3]);
    let scores = q.matmul(&k.transpose(-2, -1)) / (d as f64).sqrt(); // (B, H, T, T)
    let mask = causal_mask(t, 0, q.device());
    let scores = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    let att = scores.softmax(-1, Kind::Float);
    (att.matmul(v), att)
}
