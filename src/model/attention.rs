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

use crate::config::ModelConfig;
use crate::kv_cache::LayerCache;
use crate::model::{dropout, linear, project, residual_std, INIT_STD};
use tch::{nn, Kind, Tensor};

#[derive(Debug)]
pub struct CausalSelfAttention {
    /// C -> 3C: queries, keys and values in one matmul.
    c_attn: nn::Linear,
    /// C -> C: mixes the heads back into the residual stream.
    c_proj: nn::Linear,
    n_head: i64,
    dropout: f64,
}

impl CausalSelfAttention {
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let c = cfg.n_embd;
        CausalSelfAttention {
            c_attn: linear(&p / "c_attn", c, 3 * c, cfg, INIT_STD),
            c_proj: linear(&p / "c_proj", c, c, cfg, residual_std(cfg)),
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
        let q = qkv.get(0);
        let t_new = q.size()[2];
        let (k, v, t_past) = match cache {
            None => (qkv.get(1), qkv.get(2), 0),
            Some(cache) => {
                let t_past = cache.len();
                let (k, v) = cache.append(&qkv.narrow(0, 1, 2)); // (B, H, T_past + T, D)
                (k, v, t_past)
            }
        };
        let p_attn = if train { self.dropout } else { 0.0 };
        let y = if t_past == 0 {
            // Square causal mask: the kernel builds it itself.
            Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, p_attn, true, None, false,
            )
        } else if t_new == 1 {
            // One new query at the last position may see every cached key: no mask.
            Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, p_attn, false, None, false,
            )
        } else {
            // Several new queries after a cached prefix: query i sits at t_past + i.
            let mask = causal_mask(t_new, t_past, q.device());
            Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&mask),
                p_attn,
                false,
                None,
                false,
            )
        };
        self.merge(y, train)
    }

    /// One decode step of one sequence: x (C,), the newest position's normalised
    /// residual -> (C,). The same arithmetic as `forward` on a (1, 1, C) input with a
    /// cache, in fewer library calls (see `Gpt::decode_one`).
    pub fn decode_one(&self, x: &Tensor, cache: &mut LayerCache) -> Tensor {
        let c = x.size()[0];
        let d = c / self.n_head;
        // For B = T = 1 the (3C,) projection already is (3, B, H, T, D) in memory.
        let qkv = project(x, &self.c_attn).view([3, 1, self.n_head, 1, d]);
        let (k, v) = cache.append(&qkv.narrow(0, 1, 2)); // (1, H, T_past + 1, D)
        let y = Tensor::scaled_dot_product_attention::<Tensor>(
            &qkv.get(0),
            &k,
            &v,
            None,
            0.0,
            false, // the one query is the newest position: it may see every key
            None,
            false,
        ); // (1, H, 1, D)
        project(&y.view([c]), &self.c_proj)
    }

    /// The same as `forward` without a cache, through the written-out reference kernel;
    /// also returns the attention weights, (B, H, T, T), rows summing to 1.
    pub fn forward_traced(&self, x: &Tensor) -> (Tensor, Tensor) {
        let qkv = self.qkv(x);
        let (y, att) = attention_reference(&qkv.get(0), &qkv.get(1), &qkv.get(2));
        (self.merge(y, false), att)
    }
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
