//! The KV cache: the keys and values of positions already seen, kept per layer.
//!
//! Generating token `t+1` needs attention over positions `0..=t`. Their keys and values
//! do not change once computed (the model is causal), so recomputing them every step
//! makes generation O(T²) in matmuls. The cache stores them, `(B, H, T, D)` per layer, and
//! each step runs the model on the one new token. It is an explicit value passed `&mut`
//! into [`crate::model::Gpt::forward_cached`] (as candle does), never state hidden in the
//! model, so the uncached forward stays the reference it is tested against.

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

    /// Appends the new positions' k, v (B, H, T_new, D) and returns all of them,
    /// (B, H, T_cached + T_new, D).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let (k, v) = match self.kv.take() {
            None => (k.shallow_clone(), v.shallow_clone()),
            Some((k0, v0)) => (
                Tensor::cat(&[k0, k.shallow_clone()], 2),
                Tensor::cat(&[v0, v.shallow_clone()], 2),
            ),
        };
        self.kv = Some((k.shallow_clone(), v.shallow_clone()));
        (k, v)
    }
}

/// The cache of every layer plus the next position to fill.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    pos: i64,
    capacity: i64,
}

impl KvCache {
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

    /// The most positions the model can hold (its `block_size`).
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// How many more positions fit.
    pub fn room(&self) -> i64 {
        self.capacity - self.pos
    }

    pub fn layers_mut(&mut self) -> impl Iterator<Item = &mut LayerCache> {
        self.layers.iter_mut()
    }

    pub(crate) fn advance(&mut self, n: i64) {
        self.pos += n;
    }

    /// Forgets everything, e.g. before re-filling a slid window.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| l.kv = None);
        self.pos = 0;
    }
}
