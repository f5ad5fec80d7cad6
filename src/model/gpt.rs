//! The GPT: token and learned position embeddings, `n_layer` blocks, a final LayerNorm,
//! and a head that reuses the token embedding matrix (weight tying, Press & Wolf 2017:
//! the same vectors read tokens in and score them out, which saves `V·C` parameters and
//! trains better on small data). The architecture of nanoGPT's `model.py`.
//!
//! With the config's options ([`crate::config::Arch`]): no `wpe` when positions are
//! rotary (RoPE acts inside attention), RMSNorm for the norms, and an untied head, a
//! matrix `lm_head` (V, C) of its own. The speedrun starts that head at zero, and so do
//! we: every logit is 0 at step 0, the prediction is uniform (the loss exactly ln V),
//! and the head grows from the gradient alone instead of scoring with random vectors.
//! A zero head passes no gradient back at the first step, so that step trains the head
//! alone; the body follows from the second.

use crate::config::{ModelConfig, Positions};
use crate::model::kv_cache::KvCache;
use crate::model::{dropout, Block, Norm, Rope, INIT_STD};
use tch::{nn, Reduction, Tensor};

#[derive(Debug)]
pub struct Gpt {
    pub(super) wte: nn::Embedding,
    /// The learned positions, (block_size, C); `None` with RoPE.
    pub(super) wpe: Option<nn::Embedding>,
    pub(super) h: Vec<Block>,
    pub(super) ln_f: Norm,
    /// The untied head (V, C); `None` when the head is `wte` (tied, GPT-2).
    pub(super) lm_head: Option<Tensor>,
    cfg: ModelConfig,
}

/// What `forward_traced` records on the way through, for `explain`.
#[derive(Debug, Default)]
pub struct Trace {
    /// Per layer, the attention weights (B, H, T, T).
    pub attention: Vec<Tensor>,
    /// The residual stream (B, T, C): after the embeddings, then after each block.
    pub residual: Vec<Tensor>,
}

impl Gpt {
    /// Builds the model under `p` (usually `vs.root()`), initialised as GPT-2 is.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Self {
        let emb = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
            ..Default::default()
        };
        let learned = cfg.arch.pos == Positions::Learned;
        let rope = (!learned).then(|| Rope::new(cfg.block_size, cfg.head_dim(), p.device()));
        Gpt {
            wte: nn::embedding(p / "wte", cfg.vocab_size, cfg.n_embd, emb),
            wpe: learned.then(|| nn::embedding(p / "wpe", cfg.block_size, cfg.n_embd, emb)),
            h: (0..cfg.n_layer)
                .map(|i| Block::new(p / "h" / i, cfg, rope.as_ref()))
                .collect(),
            ln_f: Norm::new(p / "ln_f", cfg),
            lm_head: (!cfg.arch.tied_head).then(|| {
                let head = p / "lm_head";
                head.var(
                    "weight",
                    &[cfg.vocab_size, cfg.n_embd],
                    nn::Init::Const(0.0),
                )
            }),
            cfg: cfg.clone(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Token plus position embeddings for ids `idx` (B, T) at positions `pos0..pos0+T`
    /// (token embeddings alone with RoPE, whose positions enter in attention).
    fn embed(&self, idx: &Tensor, pos0: i64, train: bool) -> Tensor {
        let t = idx.size()[1];
        assert!(
            pos0 + t <= self.cfg.block_size,
            "positions {pos0}..{} exceed the context {}; callers crop or slide first",
            pos0 + t,
            self.cfg.block_size
        );
        let tokens = idx.apply(&self.wte); // (B, T, C)
        let x = match &self.wpe {
            Some(wpe) => tokens + wpe.ws.narrow(0, pos0, t), // rows pos0..pos0+T: (T, C)
            None => tokens,
        };
        dropout(x, self.cfg.dropout, train)
    }

    /// The head's matrix (V, C): `lm_head`, or `wte` when tied.
    pub fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte.ws)
    }

    /// The final norm and the head: (B, T, C) -> logits (B, T, V).
    pub fn head(&self, x: &Tensor) -> Tensor {
        self.ln_f
            .forward(x)
            .linear::<Tensor>(self.head_weight(), None)
    }

    /// The reference forward pass, no cache: ids (B, T) -> logits (B, T, V).
    pub fn forward(&self, idx: &Tensor, train: bool) -> Tensor {
        let mut x = self.embed(idx, 0, train);
        for block in &self.h {
            x = block.forward(&x, None, train);
        }
        self.head(&x)
    }

    /// The incremental forward pass: ids (B, T_new) of the positions after those already
    /// in `cache` -> logits (B, T_new, V). Appends their keys and values to the cache.
    /// Eval mode (no dropout). Equals the last `T_new` positions of `forward` on the
    /// whole sequence; `tests/generation.rs` holds it to that.
    pub fn forward_cached(&self, idx: &Tensor, cache: &mut KvCache) -> Tensor {
        let t_new = idx.size()[1];
        // A cache with fewer layers would be zipped short and silently skip blocks.
        assert_eq!(
            cache.n_layer(),
            self.h.len(),
            "a KV cache for {} layers cannot serve a {}-layer model",
            cache.n_layer(),
            self.h.len()
        );
        assert!(
            t_new <= cache.room(),
            "{t_new} new positions do not fit the {} left in the cache; callers slide first",
            cache.room()
        );
        let mut x = self.embed(idx, cache.pos(), false);
        for (block, layer) in self.h.iter().zip(cache.layers_mut()) {
            x = block.forward(&x, Some(layer), false);
        }
        cache.advance(t_new);
        self.head(&x)
    }

    /// The uncached forward in eval mode through the written-out attention, recording the
    /// attention weights and the residual stream of every layer.
    pub fn forward_traced(&self, idx: &Tensor) -> (Tensor, Trace) {
        let mut trace = Trace::default();
        let mut x = self.embed(idx, 0, false);
        trace.residual.push(x.shallow_clone());
        for block in &self.h {
            let (y, att) = block.forward_traced(&x);
            x = y;
            trace.attention.push(att);
            trace.residual.push(x.shallow_clone());
        }
        (self.head(&x), trace)
    }

    /// Mean cross-entropy of logits (B, T, V) against targets (B, T), in nats per token.
    pub fn loss(logits: &Tensor, targets: &Tensor) -> Tensor {
        let v = logits.size()[2];
        logits.reshape([-1, v]).cross_entropy_loss::<Tensor>(
            &targets.reshape([-1]),
            None,
            Reduction::Mean,
            -100,
            0.0,
        )
    }

    /// The device the weights live on.
    pub fn device(&self) -> tch::Device {
        self.wte.ws.device()
    }

    /// A fresh, empty KV cache sized for this model's context.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.n_layer as usize, self.cfg.block_size)
    }
}
