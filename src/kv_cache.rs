//! The KV cache: the keys and values of positions already seen, kept per layer.
//!
//! Generating token `t+1` needs attention over positions `0..=t`. Their keys and values
//! do not change once computed (the model is causal: position `i` never looks at a later
//! one), so recomputing them at every step makes generation cost O(T²) matmul rows
//! where O(T) suffice. The cache stores them, `(B, H, T, D)` per layer, and each decode
//! step runs the model on the one new token. It is an explicit value passed `&mut` into
//! [`crate::model::Gpt::forward_cached`] (as candle does), never state hidden in the
//! model, so the uncached forward stays the reference it is tested against.
//!
//! The cache grows by concatenation. A preallocated `(B, H, block_size, D)` buffer
//! written in place (llama.cpp, Hugging Face's `StaticCache`) saves the copies, but at
//! our context lengths the copy is a few kilobytes per layer and the growing tensor is
//! easier to read: its length *is* the number of cached positions.

use tch::Tensor;

/// One layer's keys and values, each (B, H, T_cached, D), or nothing yet.
#[derive(Debug, Default)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    /// How many positions are cached.
    pub fn len(&self) -> i64 {
        self.kv.as_ref().map_or(0, |(k, _)| k.size()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached keys and values, each (B, H, T_cached, D).
    pub fn get(&self) -> Option<(&Tensor, &Tensor)> {
        self.kv.as_ref().map(|(k, v)| (k, v))
    }

    /// Appends the new positions' k, v (B, H, T_new, D) and returns all of them,
    /// (B, H, T_cached + T_new, D).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let (k, v) = match self.kv.take() {
            None => (k.shallow_clone(), v.shallow_clone()),
            Some((k0, v0)) => (
                Tensor::cat(&[&k0, k], 2), // (B, H, T_cached + T_new, D)
                Tensor::cat(&[&v0, v], 2),
            ),
        };
        self.kv = Some((k.shallow_clone(), v.shallow_clone()));
        (k, v)
    }

    /// Keeps the batch rows `rows` (a 1-D Int64 index), in that order.
    fn select_rows(&mut self, rows: &Tensor) {
        if let Some((k, v)) = self.kv.take() {
            self.kv = Some((k.index_select(0, rows), v.index_select(0, rows)));
        }
    }
}

/// The cache of every layer plus the next position to fill. Every batch row sits at
/// the same position: rows are completions of one prompt that advance in lockstep.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    pos: i64,
    capacity: i64,
}

impl KvCache {
    /// An empty cache for `n_layer` layers that holds at most `capacity` positions.
    pub fn new(n_layer: usize, capacity: i64) -> Self {
        KvCache {
            layers: (0..n_layer).map(|_| LayerCache::default()).collect(),
            pos: 0,
            capacity,
        }
    }

    /// The position of the next token, i.e. how many are cached.
    pub fn pos(&self) -> i64 {
        self.pos
    }

    /// The most positions the cache may hold (at most the model's `block_size`).
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// How many more positions fit.
    pub fn room(&self) -> i64 {
        self.capacity - self.pos
    }

    /// How many layers it has room for (must equal the model's `n_layer`).
    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }

    /// `B`, the number of rows cached (0 while empty).
    pub fn batch_size(&self) -> i64 {
        self.layers
            .first()
            .and_then(LayerCache::get)
            .map_or(0, |(k, _)| k.size()[0])
    }

    pub fn layers(&self) -> &[LayerCache] {
        &self.layers
    }

    pub fn layers_mut(&mut self) -> impl Iterator<Item = &mut LayerCache> {
        self.layers.iter_mut()
    }

    pub(crate) fn advance(&mut self, n: i64) {
        self.pos += n;
    }

    /// Keeps only the batch rows listed in `rows` (a 1-D Int64 index into the current
    /// rows, repeats allowed), in that order, in every layer. Generation uses it to
    /// copy one prefilled prompt into N rows, and to drop rows that have finished so
    /// that the rest decode without computing dead rows.
    pub fn select_rows(&mut self, rows: &Tensor) {
        self.layers.iter_mut().for_each(|l| l.select_rows(rows));
    }

    /// Forgets everything, e.g. before re-filling a slid window.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| l.kv = None);
        self.pos = 0;
    }
}
