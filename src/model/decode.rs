//! The one-token fast path of generation: one decode step of one sequence, with the
//! residual stream a (C,) vector instead of a (1, 1, C) batch.
//!
//! [`Gpt::forward_cached`] on a (1, 1) input computes the same, but a one-token step
//! does so little arithmetic that the ~140 library calls it makes cost as much as the
//! arithmetic. Here the embeddings are two row selections (no id tensor), the
//! projections matrix-vector products (`project`) with no reshapes around
//! them, the head one more (no (B, T, V) logits to slice): ~80 calls in all. Each layer
//! gets a `decode_one` beside its `forward`, kept in this file so the reference path
//! reads on its own; `tests/generation.rs` holds this one to the uncached
//! [`Gpt::forward`] at every position.

use super::attention::{sdpa, Mask};
use super::kv_cache::{KvCache, LayerCache};
use super::rope::At;
use super::{project, Block, CausalSelfAttention, Gpt};
use tch::Tensor;

impl Gpt {
    /// One decode step of one sequence, the fast path of generation: the id of the token
    /// after those in `cache` (whose batch must be 1) -> its logits (V,).
    pub fn decode_one(&self, token: i64, cache: &mut KvCache) -> Tensor {
        assert!(
            cache.room() >= 1 && cache.batch_size() <= 1,
            "decode_one needs room in a cache of one row; callers slide first"
        );
        let token = self.wte.ws.get(token); // (C,), a view of the weights: never add in place
        let mut x = match &self.wpe {
            Some(wpe) => token + wpe.ws.get(cache.pos()),
            None => token,
        };
        for (block, layer) in self.h.iter().zip(cache.layers_mut()) {
            x = block.decode_one(&x, layer);
        }
        cache.advance(1);
        self.head_weight().mv(&self.ln_f.forward(&x)) // (V, C) · (C,) -> (V,)
    }
}

impl Block {
    /// One decode step of one sequence: x (C,) -> (C,) (see [`Gpt::decode_one`]).
    pub fn decode_one(&self, x: &Tensor, cache: &mut LayerCache) -> Tensor {
        let x = x + self.attn.decode_one(&self.ln_1.forward(x), cache);
        &x + self.mlp.forward(&self.ln_2.forward(&x), false)
    }
}

impl CausalSelfAttention {
    /// One decode step of one sequence: x (C,), the newest position's normalised
    /// residual -> (C,). The same arithmetic as `forward` on a (1, 1, C) input with a
    /// cache, in fewer library calls (see [`Gpt::decode_one`]).
    pub fn decode_one(&self, x: &Tensor, cache: &mut LayerCache) -> Tensor {
        let c = x.size()[0];
        let d = c / self.n_head;
        // For B = T = 1 the (3C,) projection already is (3, B, H, T, D) in memory.
        let qkv = project(x, &self.c_attn).view([3, 1, self.n_head, 1, d]);
        let (q, kv_new) = self.place(&qkv, At::Start(cache.len()));
        let (k, v) = cache.append(&kv_new); // (1, H, T_past + 1, D)
                                            // The one query is the newest position: it may see every key, so no mask.
        let y = sdpa(&q, &k, &v, Mask::None, 0.0); // (1, H, 1, D)
        project(&y.view([c]), &self.c_proj)
    }
}
