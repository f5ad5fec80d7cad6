//! `sympathy bench generate`: decode speed with and without the KV cache, measured at
//! several output lengths in one run.
//!
//! Without the cache every new token recomputes the whole window, so its cost per token
//! grows with the window until the window is full; with the cache a token costs one
//! position's worth of work plus attention over the cached keys. The gap is the reason
//! the cache exists, and this is where it is measured rather than asserted. Both paths
//! run the same [`generate`] loop with the same seed, sampling settings, prompt (a new
//! file: `<eos>`) and thread count, with `<eos>` banned so each run produces exactly the
//! requested number of tokens. A short warm-up of each path comes first, so that
//! one-time allocations and libtorch's kernel selection are not timed, and each figure
//! is the fastest of `repeats` runs: on a shared machine other processes only ever
//! slow a run down, so the fastest is the least disturbed estimate (the reasoning of
//! Python's `timeit`).

use crate::infer::generate::{generate, GenerateConfig};
use crate::model::Gpt;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde::Serialize;

/// The default output lengths: short, a couple of windows, and well past the context.
pub const DEFAULT_LENGTHS: [usize; 3] = [64, 256, 1024];

/// The result, one entry per length in every `Vec` (the order of `lengths`).
#[derive(Clone, Debug, Serialize)]
pub struct GenerateBench {
    pub lengths: Vec<usize>,
    pub cached_tokens_per_s: Vec<f64>,
    pub uncached_tokens_per_s: Vec<f64>,
    /// cached / uncached.
    pub speedup: Vec<f64>,
    /// The model's context: past it the cached path slides its window (see `generate`).
    pub block_size: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_embd: i64,
    pub device: String,
    /// libtorch's intra-op threads, the same for both paths.
    pub threads: i32,
    /// Runs per figure; each figure is the fastest.
    pub repeats: usize,
}

/// Measures decode tokens/s of `model` for each output length, cached and uncached.
/// `on_progress` receives one line per finished measurement.
pub fn bench_generate(
    model: &Gpt,
    tokenizer: &Tokenizer,
    lengths: &[usize],
    repeats: usize,
    mut on_progress: impl FnMut(&str),
) -> Result<GenerateBench> {
    if repeats == 0 {
        return Err(Error::config("--repeats", "must be at least 1"));
    }
    if lengths.is_empty() || lengths.contains(&0) {
        return Err(Error::config(
            "--lengths",
            format!("needs positive token counts, like 64,256,1024; got {lengths:?}"),
        ));
    }
    let prompt = [tokenizer.eos()];
    let run = |tokens: usize, use_cache: bool| -> Result<f64> {
        let cfg = GenerateConfig {
            max_tokens: tokens,
            use_cache,
            ignore_eos: true,
            ..GenerateConfig::default()
        };
        let done = generate(model, tokenizer, &prompt, &cfg, |_| {})?;
        // Banning <eos> without stop strings must give every token asked for; a
        // shorter run would make the rate mean something else.
        assert_eq!(done.tokens_generated, tokens, "the bench run ended early");
        Ok(done.decode_tokens_per_s)
    };
    run(16, true)?;
    run(16, false)?;

    let cfg = model.config();
    let mut bench = GenerateBench {
        lengths: lengths.to_vec(),
        cached_tokens_per_s: Vec::new(),
        uncached_tokens_per_s: Vec::new(),
        speedup: Vec::new(),
        block_size: cfg.block_size,
        n_layer: cfg.n_layer,
        n_head: cfg.n_head,
        n_embd: cfg.n_embd,
        device: format!("{:?}", model.device()),
        threads: tch::get_num_threads(),
        repeats,
    };
    for &n in lengths {
        let (mut cached, mut uncached) = (0.0_f64, 0.0_f64);
        for _ in 0..repeats {
            cached = cached.max(run(n, true)?);
            uncached = uncached.max(run(n, false)?);
        }
        on_progress(&format!(
            "{n} tokens: cached {cached:.0} tok/s, uncached {uncached:.0} tok/s ({:.1}x)",
            cached / uncached
        ));
        bench.cached_tokens_per_s.push(cached);
        bench.uncached_tokens_per_s.push(uncached);
        bench.speedup.push(cached / uncached);
    }
    Ok(bench)
}

impl GenerateBench {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "decode tokens/s (fastest of {}): {} layers, {} heads, n_embd {}, context {}; {}, {} threads\n\
             {:>8} {:>12} {:>12} {:>8}\n",
            self.repeats,
            self.n_layer,
            self.n_head,
            self.n_embd,
            self.block_size,
            self.device,
            self.threads,
            "tokens",
            "cached",
            "uncached",
            "speedup"
        );
        for i in 0..self.lengths.len() {
            out.push_str(&format!(
                "{:>8} {:>12.0} {:>12.0} {:>7.1}x\n",
                self.lengths[i],
                self.cached_tokens_per_s[i],
                self.uncached_tokens_per_s[i],
                self.speedup[i]
            ));
        }
        out
    }
}
