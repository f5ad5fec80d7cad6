//! The KV cache of a server: one row per request in flight, each at its own position.
//!
//! [`KvCache`] serves one prompt's completions, whose rows advance in lockstep. A
//! server's requests arrive at different times with prompts of different lengths, so
//! each row here keeps its own length. Continuous batching needs three more things of it:
//! a request *joins* by copying its prefilled one-row [`KvCache`] into a free row, a
//! finished one *leaves* by moving the last row into its place (so rows `0..rows` are
//! always the batch, and a decode step reads them as one view without gathering), and a
//! row that fills the context is *refilled* from a fresh prefill (the context shift
//! [`crate::infer::generate`] does, row by row).
//!
//! Per layer one buffer (2, S, H, capacity, D), allocated on the first join: keys at
//! index 0, values at 1, `S` the most rows (`--max-batch`).

use super::kv_cache::KvCache;
use tch::{Kind, Tensor};

#[derive(Debug)]
pub struct SlotCache {
    /// Per layer, (2, S, H, capacity, D) once allocated.
    layers: Vec<Option<Tensor>>,
    /// Per row in use, how many positions it holds.
    lens: Vec<i64>,
    slots: i64,
    capacity: i64,
}

impl SlotCache {
    /// An empty cache of `slots` rows, each holding at most `capacity` positions.
    pub fn new(n_layer: usize, slots: i64, capacity: i64) -> Self {
        SlotCache {
            layers: (0..n_layer).map(|_| None).collect(),
            lens: Vec::new(),
            slots,
            capacity,
        }
    }

    /// How many rows are in use (the batch of the next decode step).
    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Whether another row fits.
    pub fn has_room(&self) -> bool {
        (self.lens.len() as i64) < self.slots
    }

    /// Positions cached per row, in row order.
    pub fn lens(&self) -> &[i64] {
        &self.lens
    }

    /// The most positions a row can hold.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Adds a row holding the keys and values of `prefilled` (one row, as a prefill of
    /// one prompt leaves it) and returns its index.
    pub fn push_row(&mut self, prefilled: &KvCache) -> usize {
        assert!(self.has_room(), "all {} rows are in use", self.slots);
        self.lens.push(0);
        let row = self.lens.len() - 1;
        self.refill_row(row, prefilled);
        row
    }

    /// Replaces row `row`'s positions by those of `prefilled` (one row).
    pub fn refill_row(&mut self, row: usize, prefilled: &KvCache) {
        let (slots, capacity) = (self.slots, self.capacity);
        for (buf, layer) in self.layers.iter_mut().zip(prefilled.layers()) {
            let kv = layer.filled().expect("the prefill filled every layer"); // (2, 1, H, T, D)
            let size = kv.size();
            let buf = buf.get_or_insert_with(|| {
                let full = [2, slots, size[2], capacity, size[4]];
                Tensor::zeros(full, (kv.kind(), kv.device()))
            });
            buf.narrow(1, row as i64, 1)
                .narrow(3, 0, size[3])
                .copy_(&kv);
        }
        self.lens[row] = prefilled.pos();
    }

    /// Removes row `row`: the last row moves into its place (as `Vec::swap_remove`,
    /// which callers apply to their own per-row state to keep the two in step).
    pub fn swap_remove(&mut self, row: usize) {
        let last = self.lens.len() - 1;
        if row != last {
            for buf in self.layers.iter().flatten() {
                let moved = buf.narrow(1, last as i64, 1).copy();
                buf.narrow(1, row as i64, 1).copy_(&moved);
            }
        }
        self.lens.swap_remove(row);
    }

    /// Layer `i`'s buffer, (2, S, H, capacity, D).
    pub(crate) fn layer(&self, i: usize) -> &Tensor {
        self.layers[i]
            .as_ref()
            .expect("a row joined before the first decode step")
    }

    /// After a decode step wrote one position in every row.
    pub(crate) fn advance_all(&mut self) {
        self.lens.iter_mut().for_each(|l| *l += 1);
    }

    /// The element type of the cached keys (the model's dtype).
    pub fn kind(&self) -> Option<Kind> {
        self.layers.iter().flatten().next().map(Tensor::kind)
    }
}
