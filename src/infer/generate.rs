//! Autoregressive generation: feed the prompt, sample a token, append it, repeat.
//!
//! Two paths produce the same tokens. With `use_cache: true` the prompt runs through
//! the model once (prefill), then one token per step against the [`KvCache`] (decode).
//! With `use_cache: false` every step recomputes the whole window, as nanoGPT's
//! `generate` does: the simple reference that tests hold the cache to.
//!
//! [`generate_batch`] makes N completions of one prompt in one batch: the prompt is
//! prefilled once and its cache copied into N rows, each row samples with its own seed
//! (`seed + i`) and stops on its own; a finished row leaves the batch so the others do
//! not pay for it. [`generate`] is the same loop with N = 1.
//!
//! Past the context (`block_size`), learned absolute positions cannot shift inside a
//! cache (every cached key was computed with its old position embedding), so the cached
//! path keeps the last half of the window, clears the cache and prefills that half again
//! (a "context shift", as llama.cpp does on overflow): one prefill of T/2 tokens per
//! T/2 generated tokens instead of a full forward per token. The uncached path crops to
//! the last `block_size` tokens at every step instead, so past the context the two paths
//! legitimately see different windows (the tests check each against its own policy).

use crate::infer::sampling::{Sampler, SamplingConfig};
use crate::infer::stop_strings::StopMatcher;
use crate::model::kv_cache::KvCache;
use crate::model::Gpt;
use crate::runtime::torch_ext::InferenceMode;
use crate::tokenizer::stream::Utf8Stream;
use crate::tokenizer::{TokenId, Tokenizer};
use crate::{Error, Result};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// Tokens to generate at most (per completion).
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Completion `i` of a batch samples with seed `seed + i`.
    pub seed: u64,
    /// Generation ends *before* the first occurrence of any of these strings.
    pub stop: Vec<String>,
    pub use_cache: bool,
    /// Positions of context to use, at most the model's; `None` = the model's.
    pub block_size: Option<i64>,
    /// Never end at `<eos>`: its logit is set to -inf before sampling (llama.cpp's
    /// `--ignore-eos`), so exactly `max_tokens` come out unless a stop string ends it.
    /// The benchmark needs this to time a known number of tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            max_tokens: 200,
            sampling: SamplingConfig::default(),
            seed: 1337,
            stop: Vec::new(),
            use_cache: true,
            block_size: None,
            ignore_eos: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    MaxTokens,
    Eos,
    StopString,
}

/// One finished completion and how fast it was made.
#[derive(Clone, Debug, Serialize)]
pub struct Completion {
    /// Which completion of the batch (0-based).
    pub sample: usize,
    /// The seed its sampler used.
    pub seed: u64,
    /// The generated text; with a stop string it ends right before it.
    pub text: String,
    /// The generated tokens, including any that completed a stop string.
    pub tokens: Vec<TokenId>,
    pub tokens_generated: usize,
    pub prompt_tokens: usize,
    /// Prompt tokens over the time of the prefill (shared by the whole batch, which
    /// runs it once).
    pub prefill_tokens_per_s: f64,
    /// Tokens generated over the time from the end of the prefill until this completion
    /// finished.
    pub decode_tokens_per_s: f64,
    pub stop_reason: StopReason,
}

/// A prompt turned into ids that fit the model, and what had to change on the way.
pub struct PreparedPrompt {
    pub ids: Vec<TokenId>,
    pub notes: Vec<String>,
}

/// Encodes `prompt` for a model with context `block_size`. Characters outside the
/// vocabulary become `<unk>`; an empty prompt starts from `<eos>` (what precedes every
/// file in training, so the model writes a new file); a prompt longer than the context
/// keeps its last `block_size` tokens.
pub fn prepare_prompt(tokenizer: &Tokenizer, prompt: &str, block_size: i64) -> PreparedPrompt {
    let encoded = tokenizer.encode(prompt);
    let mut notes = Vec::new();
    if encoded.unknown > 0 {
        notes.push(format!(
            "prompt: {} character(s) outside the vocabulary were replaced by <unk>",
            encoded.unknown
        ));
    }
    let mut ids = encoded.ids;
    if ids.is_empty() {
        notes.push("prompt: empty, starting from <eos> (a new file)".to_string());
        ids.push(tokenizer.eos());
    }
    let max = block_size as usize;
    if ids.len() > max {
        notes.push(format!(
            "prompt: {} tokens is longer than the context {max}; keeping the last {max}",
            ids.len()
        ));
        ids.drain(..ids.len() - max);
    }
    PreparedPrompt { ids, notes }
}

/// One completion in the making.
struct Row {
    sampler: Sampler,
    /// Token bytes -> whole characters (a BPE token may end inside one).
    utf8: Utf8Stream,
    stops: StopMatcher,
    /// Prompt and generated tokens: the repetition penalty's history and the source of
    /// the next window.
    context: Vec<TokenId>,
    generated: Vec<TokenId>,
    text: String,
    /// Why and when (seconds into the decode) it finished.
    done: Option<(StopReason, f64)>,
}

impl Row {
    /// Completion `i` of `prompt`, with its own seed.
    fn new(prompt: &[TokenId], cfg: &GenerateConfig, i: usize) -> Self {
        Row {
            sampler: Sampler::new(cfg.sampling.clone(), cfg.seed.wrapping_add(i as u64)),
            utf8: Utf8Stream::new(),
            stops: StopMatcher::new(&cfg.stop),
            context: prompt.to_vec(),
            generated: Vec::new(),
            text: String::new(),
            done: None,
        }
    }

    /// The finished row as completion `i`.
    fn finish(
        self,
        i: usize,
        cfg: &GenerateConfig,
        prompt_tokens: usize,
        prefill_tokens_per_s: f64,
    ) -> Completion {
        let (stop_reason, decode_s) = self.done.expect("the loop ends when all rows are done");
        let n_gen = self.generated.len();
        Completion {
            sample: i,
            seed: cfg.seed.wrapping_add(i as u64),
            text: self.text,
            tokens_generated: n_gen,
            tokens: self.generated,
            prompt_tokens,
            prefill_tokens_per_s,
            decode_tokens_per_s: n_gen as f64 / decode_s.max(1e-9),
            stop_reason,
        }
    }

    /// Samples the next token from `logits` (V,) and emits its text; returns why the
    /// row is finished, if it is.
    fn step(
        &mut self,
        logits: &[f32],
        cfg: &GenerateConfig,
        tokenizer: &Tokenizer,
        on_text: &mut dyn FnMut(&str),
    ) -> Option<StopReason> {
        if self.generated.len() >= cfg.max_tokens {
            return Some(StopReason::MaxTokens); // only reached with --max-tokens 0
        }
        let next = if cfg.ignore_eos {
            let mut banned = logits.to_vec();
            if let Some(l) = banned.get_mut(tokenizer.eos() as usize) {
                *l = f32::NEG_INFINITY;
            }
            self.sampler.sample(&banned, &self.context)
        } else {
            self.sampler.sample(logits, &self.context)
        };
        if next == tokenizer.eos() {
            return Some(StopReason::Eos);
        }
        self.generated.push(next);
        self.context.push(next);
        let piece = self.utf8.push(&tokenizer.token_bytes(next));
        let (out, stopped) = self.stops.push(&piece);
        self.emit(&out, on_text);
        if stopped {
            Some(StopReason::StopString)
        } else if self.generated.len() == cfg.max_tokens {
            Some(StopReason::MaxTokens) // no forward pass for a token nobody samples
        } else {
            None
        }
    }

    /// At the end without a stop string: an unfinished character (U+FFFD) and the text
    /// held back for a stop string that never completed.
    fn flush(&mut self, on_text: &mut dyn FnMut(&str)) {
        let tail = self.utf8.finish();
        let (out, stopped) = self.stops.push(&tail);
        self.emit(&out, on_text);
        if !stopped {
            let rest = self.stops.flush();
            self.emit(&rest, on_text);
        }
    }

    fn emit(&mut self, out: &str, on_text: &mut dyn FnMut(&str)) {
        if !out.is_empty() {
            self.text.push_str(out);
            on_text(out);
        }
    }
}

/// The last position's logits of `logits` (B, T, V), one `Vec` of V per row, on the CPU.
fn last_logits(logits: &Tensor) -> Vec<Vec<f32>> {
    let (_, t, v) = logits.size3().expect("logits are (B, T, V)");
    let last = logits.select(1, t - 1).contiguous().view([-1]); // (B, T, V) -> (B·V,)
    logits_vec(&last)
        .chunks(v as usize)
        .map(<[f32]>::to_vec)
        .collect()
}

/// Logits, one dimension -> a `Vec` on the CPU (no conversion calls when they already
/// are fp32 CPU values, as in a CPU decode step).
fn logits_vec(logits: &Tensor) -> Vec<f32> {
    let on_cpu = if logits.device() == Device::Cpu && logits.kind() == Kind::Float {
        logits.shallow_clone()
    } else {
        logits.to_kind(Kind::Float).to_device(Device::Cpu)
    };
    Vec::<f32>::try_from(on_cpu).expect("logits are a float vector")
}

/// Equal-length token rows -> ids (B, T) on `device`.
fn ids_tensor(rows: &[&[TokenId]], device: Device) -> Tensor {
    let t = rows.first().map_or(0, |r| r.len()) as i64;
    let ids: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&i| i as i64))
        .collect();
    Tensor::from_slice(&ids)
        .view([rows.len() as i64, t])
        .to(device) // (B, T)
}

/// The context window generation uses: `cfg.block_size` checked against the model's.
pub fn context_window(model: &Gpt, cfg: &GenerateConfig) -> Result<i64> {
    check_context(cfg.block_size, model.config().block_size)
}

/// `--block-size` against a model's context `model_block`: between 1 and it, and
/// the model's own when unset.
pub fn check_context(block_size: Option<i64>, model_block: i64) -> Result<i64> {
    match block_size {
        Some(b) if b < 1 || b > model_block => Err(Error::config(
            "--block-size",
            format!("{b} must be between 1 and the model's context {model_block}"),
        )),
        Some(b) => Ok(b),
        None => Ok(model_block),
    }
}

/// `--num-samples`: at least one completion.
pub fn check_num_samples(num_samples: usize) -> Result<()> {
    if num_samples == 0 {
        return Err(Error::config("--num-samples", "must be at least 1"));
    }
    Ok(())
}

/// How many of the newest tokens the cached path keeps when its window is full: half
/// the window, and at least one (the token whose successor we need).
pub fn context_shift_keep(block: i64) -> usize {
    (block as usize / 2).max(1)
}

/// Generates up to `cfg.max_tokens` tokens after `prompt` (already prepared), calling
/// `on_text` with each piece of text as soon as it is final.
pub fn generate(
    model: &Gpt,
    tokenizer: &Tokenizer,
    prompt: &[TokenId],
    cfg: &GenerateConfig,
    mut on_text: impl FnMut(&str),
) -> Result<Completion> {
    let mut all = generate_batch(model, tokenizer, prompt, cfg, 1, |_, s| on_text(s))?;
    Ok(all.remove(0))
}

/// Generates `num_samples` completions of `prompt` in one batch; completion `i` samples
/// with seed `cfg.seed + i`. `on_text(i, piece)` receives each piece of completion `i`
/// as soon as it is final.
pub fn generate_batch(
    model: &Gpt,
    tokenizer: &Tokenizer,
    prompt: &[TokenId],
    cfg: &GenerateConfig,
    num_samples: usize,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Vec<Completion>> {
    let block = check_request(model, prompt, cfg, num_samples)?;
    // No autograd anywhere below, not even its bookkeeping (see `torch_ext`).
    let _inference = InferenceMode::enter();
    let device = model.device();
    let n = num_samples;
    let mut rows: Vec<Row> = (0..n).map(|i| Row::new(prompt, cfg, i)).collect();
    // Batch row j of the cache and of `logits` holds completion `active[j]`.
    let mut active: Vec<usize> = (0..n).collect();
    let mut cache = KvCache::new(model.config().n_layer as usize, block);

    // Prefill. Every completion starts from the same prompt, so it runs once (B = 1)
    // and the cache is copied into N rows.
    let started = Instant::now();
    let mut logits = prefill(model, &mut cache, prompt, cfg.use_cache, n);
    let prefill_s = started.elapsed().as_secs_f64();
    let decode_started = Instant::now();

    loop {
        // Sample: one token for every row still running.
        for (j, &i) in active.iter().enumerate() {
            let row = &mut rows[i];
            let mut emit = |s: &str| on_text(i, s);
            if let Some(reason) = row.step(&logits[j], cfg, tokenizer, &mut emit) {
                if reason != StopReason::StopString {
                    row.flush(&mut emit);
                }
                row.done = Some((reason, decode_started.elapsed().as_secs_f64()));
            }
        }
        // Finished rows leave the batch.
        let keep: Vec<usize> = (0..active.len())
            .filter(|&j| rows[active[j]].done.is_none())
            .collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            if cfg.use_cache {
                let idx: Vec<i64> = keep.iter().map(|&j| j as i64).collect();
                cache.select_rows(&Tensor::from_slice(&idx).to(device));
            }
            active = keep.iter().map(|&j| active[j]).collect();
        }
        // Forward: the logits of the next position of every running row.
        let contexts: Vec<&[TokenId]> = active.iter().map(|&i| &rows[i].context[..]).collect();
        logits = next_logits(model, &mut cache, &contexts, cfg.use_cache, block);
    }

    let prefill_tokens_per_s = prompt.len() as f64 / prefill_s.max(1e-9);
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, row)| row.finish(i, cfg, prompt.len(), prefill_tokens_per_s))
        .collect())
}

/// The checks every request passes before any work: sampling, sample count, context,
/// and a prompt that fits it. Returns the context window.
fn check_request(
    model: &Gpt,
    prompt: &[TokenId],
    cfg: &GenerateConfig,
    num_samples: usize,
) -> Result<i64> {
    cfg.sampling.validate()?;
    check_num_samples(num_samples)?;
    let block = context_window(model, cfg)?;
    if prompt.is_empty() || prompt.len() > block as usize {
        return Err(Error::config(
            "--prompt",
            format!(
                "must hold 1..={block} tokens after preparation, got {}",
                prompt.len()
            ),
        ));
    }
    Ok(block)
}

/// The prompt's forward pass. Every completion starts from the same prompt, so it runs
/// once (B = 1) and the cache is copied into `n` rows. Returns each row's logits (V,).
fn prefill(
    model: &Gpt,
    cache: &mut KvCache,
    prompt: &[TokenId],
    use_cache: bool,
    n: usize,
) -> Vec<Vec<f32>> {
    let device = model.device();
    let ids = ids_tensor(&[prompt], device); // (1, T)
    let first = if use_cache {
        let logits = model.forward_cached(&ids, cache);
        cache.select_rows(&Tensor::zeros([n as i64], (Kind::Int64, device))); // B: 1 -> N
        last_logits(&logits)
    } else {
        last_logits(&model.forward(&ids, false))
    };
    vec![first[0].clone(); n]
}

/// One decode step for rows whose token histories (all the same length) are
/// `contexts`: logits (V,) per row for the position after their last token.
fn next_logits(
    model: &Gpt,
    cache: &mut KvCache,
    contexts: &[&[TokenId]],
    use_cache: bool,
    block: i64,
) -> Vec<Vec<f32>> {
    let device = model.device();
    let len = contexts[0].len();
    let tail = |n: usize| -> Vec<&[TokenId]> { contexts.iter().map(|c| &c[len - n..]).collect() };
    if !use_cache {
        // The reference: the whole window, every step.
        let window = tail(len.min(block as usize));
        last_logits(&model.forward(&ids_tensor(&window, device), false))
    } else if cache.room() == 0 {
        // Context shift: keep the newest half of the window and prefill it again.
        let keep = tail(context_shift_keep(block));
        cache.clear();
        last_logits(&model.forward_cached(&ids_tensor(&keep, device), cache))
    } else if contexts.len() == 1 {
        // Decode one sequence: the fast path for its newest token.
        let token = *contexts[0].last().expect("contexts are never empty") as i64;
        vec![logits_vec(&model.decode_one(token, cache))]
    } else {
        // Decode: only the newest token; its keys and values join the cache.
        last_logits(&model.forward_cached(&ids_tensor(&tail(1), device), cache))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_preparation_reports_changes() {
        let t = Tokenizer::default();
        let p = prepare_prompt(&t, "", 8);
        assert_eq!(p.ids, vec![t.eos()]);
        let p = prepare_prompt(&t, "0123456789", 4);
        assert_eq!(t.decode(&p.ids), "6789");
        assert_eq!(p.notes.len(), 1);
        let p = prepare_prompt(&t, "π=3", 8);
        assert_eq!(p.ids.len(), 3);
        assert!(p.notes[0].contains("<unk>"));
    }
}
