//! One decode step of many independent sequences, the step of continuous batching.
//!
//! [`Gpt::decode_rows`] advances every row of a [`SlotCache`] by one token. Unlike
//! [`Gpt::forward_cached`], whose rows share one position, each row here sits at its own
//! position `pos[b]` (requests joined at different times, with prompts of different
//! lengths), so three things are per row: the position (a gather of `wpe` rows, or of
//! RoPE's cos and sin rows), where the new key and value are written (an indexed store at `(b, pos[b])`),
//! and which cached keys the query may see (a mask `j ≤ pos[b]` over the longest row).
//! Everything else is the same matrix products as a batch of one-token sequences: the
//! weights stream from memory once per step, however many rows there are, which is
//! why batching pays. `tests/serve.rs` holds every row to the uncached [`Gpt::forward`].

use super::attention::{sdpa, Mask};
use super::rope::At;
use super::slot_cache::SlotCache;
use super::{project, Block, CausalSelfAttention, Gpt};
use tch::{Kind, Tensor};

/// What every layer of one step needs to know about the rows.
struct Rows {
    /// Batch rows `0..B` of the cache buffers, (B,) Int64.
    index: Tensor,
    /// Each row's position, (B,) Int64.
    pos: Tensor,
    /// Keys `0..keys` are read: one past the furthest row's position.
    keys: i64,
    /// (B, 1, 1, keys) booleans: row b may see key j when j ≤ pos[b].
    allowed: Tensor,
}

impl Gpt {
    /// One decode step of every row of `cache`: `tokens[b]` is row b's newest token, at
    /// position `cache.lens()[b]` -> logits (B, V). Every row must have room.
    pub fn decode_rows(&self, tokens: &[i64], cache: &mut SlotCache) -> Tensor {
        let b = tokens.len();
        assert!(b > 0 && b == cache.rows(), "one token per row of the cache");
        let lens = cache.lens();
        assert!(
            lens.iter().all(|&l| l < cache.capacity()),
            "a row is full; the caller shifts its context first"
        );
        let device = self.device();
        let pos = Tensor::from_slice(lens).to(device); // (B,)
        let keys = lens.iter().max().copied().unwrap_or(0) + 1;
        let key_pos = Tensor::arange(keys, (Kind::Int64, device)); // (keys,)
        let rows = Rows {
            index: Tensor::arange(b as i64, (Kind::Int64, device)),
            allowed: key_pos
                .unsqueeze(0)
                .le_tensor(&pos.unsqueeze(1))
                .view([b as i64, 1, 1, keys]),
            pos,
            keys,
        };
        let ids = Tensor::from_slice(tokens).to(device);
        let tokens = self.wte.ws.index_select(0, &ids); // (B, C)
        let mut x = match &self.wpe {
            Some(wpe) => tokens + wpe.ws.index_select(0, &rows.pos),
            None => tokens,
        };
        for (i, block) in self.h.iter().enumerate() {
            x = block.decode_rows(&x, cache.layer(i), &rows);
        }
        cache.advance_all();
        self.ln_f.forward(&x).matmul(&self.head_weight().tr()) // (B, C) · (C, V) -> (B, V)
    }
}

impl Block {
    /// One decode step of independent rows: x (B, C) -> (B, C).
    fn decode_rows(&self, x: &Tensor, kv: &Tensor, rows: &Rows) -> Tensor {
        let x = x + self.attn.decode_rows(&self.ln_1.forward(x), kv, rows);
        &x + self.mlp.forward(&self.ln_2.forward(&x), false)
    }
}

impl CausalSelfAttention {
    /// x (B, C), each row's newest normalised residual; `kv` the layer's cache buffer
    /// (2, S, H, capacity, D) -> (B, C).
    fn decode_rows(&self, x: &Tensor, kv: &Tensor, rows: &Rows) -> Tensor {
        let (b, c) = x.size2().expect("decode input is (B, C)");
        let d = c / self.n_head;
        let qkv = project(x, &self.c_attn)
            .view([b, 3, self.n_head, d]) // (B, 3C) -> (B, 3, H, D)
            .transpose(0, 1)
            .unsqueeze(3); // -> (3, B, H, 1, D)
        let (q, kv_new) = self.place(&qkv, At::Rows(&rows.pos)); // (B, H, 1, D), (2, B, H, 1, D)
                                                                 // Store row b's key and value at (b, pos[b]): indexing dims 1 and 3 of the buffer
                                                                 // addresses a (B, 2, H, D) block.
        let kv_new = kv_new.squeeze_dim(3).transpose(0, 1); // (2, B, H, D) -> (B, 2, H, D)
        let mut kv = kv.shallow_clone();
        let at = [None, Some(&rows.index), None, Some(&rows.pos)];
        let _ = kv.index_put_(&at, &kv_new, false);
        let past = kv.narrow(1, 0, b).narrow(3, 0, rows.keys); // (2, B, H, keys, D)
        let y = sdpa(
            &q,
            &past.get(0),
            &past.get(1),
            Mask::Allowed(rows.allowed.shallow_clone()),
            0.0,
        ); // (B, H, 1, D)
        project(&y.reshape([b, c]), &self.c_proj)
    }
}
