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
//! Each layer's keys and values live in one buffer allocated once at full size,
//! `(2, B, H, capacity, D)`: keys at index 0, values at 1. A step writes its new
//! positions in place, with one copy for both (they arrive together from the fused qkv
//! projection), and attention reads the filled prefix `0..len` as views. Growing by
//! concatenation instead would copy the whole cache at every token (O(T²) bytes over a
//! window) and churn the allocator; a profile of a one-token step showed that copy at
//! ~5 % of its time. (llama.cpp and Hugging Face's `StaticCache` preallocate for the
//! same reason.)

use tch::Tensor;

/// One layer's keys and values: a buffer (2, B, H, capacity, D) of which the first
/// `len` positions are filled.
#[derive(Debug)]
pub struct LayerCache {
    kv: Option<Tensor>,
    len: i64,
    capacity: i64,
}

impl LayerCache {
    /// An empty layer cache for at most `capacity` positions; the buffer is allocated
    /// on first use, when the batch size, device and dtype are known.
    pub fn new(capacity: i64) -> Self {
        LayerCache {
            kv: None,
            len: 0,
            capacity,
        }
    }

    /// How many positions are cached.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the new positions' keys and values, stacked as (2, B, H, T_new, D), after
    /// the cached ones and returns views of all of them, each (B, H, len + T_new, D).
    pub fn append(&mut self, kv_new: &Tensor) -> (Tensor, Tensor) {
        let size = kv_new.size();
        let [two, b, h, t_new, d] = size[..] else {
            panic!("new keys and values are (2, B, H, T, D), got {size:?}")
        };
        assert!(
            self.len + t_new <= self.capacity,
            "{t_new} new positions overflow a cache of {} holding {}",
            self.capacity,
            self.len
        );
        let full = [two, b, h, self.capacity, d];
        if self.kv.as_ref().is_none_or(|buf| buf.size() != full) {
            assert_eq!(self.len, 0, "the batch changed shape under a filled cache");
            self.kv = Some(Tensor::zeros(full, (kv_new.kind(), kv_new.device())));
        }
        let buf = self.kv.as_ref().expect("allocated above");
        buf.narrow(3, self.len, t_new).copy_(kv_new); // in place: positions len..len+T_new
        self.len += t_new;
        split(&buf.narrow(3, 0, self.len))
    }

    /// The filled positions' keys and values stacked, (2, B, H, len, D), as a view;
    /// `None` before the first append.
    pub fn filled(&self) -> Option<Tensor> {
        self.kv.as_ref().map(|kv| kv.narrow(3, 0, self.len))
    }

    /// Keeps the batch rows `rows` (a 1-D Int64 index), in that order.
    fn select_rows(&mut self, rows: &Tensor) {
        if let Some(kv) = self.kv.take() {
            self.kv = Some(kv.index_select(1, rows));
        }
    }
}

/// (2, …) -> the keys and the values, as views.
fn split(kv: &Tensor) -> (Tensor, Tensor) {
    (kv.get(0), kv.get(1))
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
            layers: (0..n_layer).map(|_| LayerCache::new(capacity)).collect(),
            pos: 0,
            capacity,
        }
    }

    /// The position of the next token, i.e. how many are cached.
    pub fn pos(&self) -> i64 {
        self.pos
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
            .and_then(|l| l.kv.as_ref())
            .map_or(0, |kv| kv.size()[1])
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

    /// Forgets every position, e.g. before re-filling a slid window. The buffers stay
    /// allocated for reuse.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| l.len = 0);
        self.pos = 0;
    }
}
