//! Autoregressive generation: feed the prompt, sample a token, append it, repeat.
//!
//! Two paths produce the same tokens. [`generate`] with `use_cache: true` runs the
//! prompt through the model once (prefill), then one token per step against the
//! [`KvCache`] (decode). With `use_cache: false` every step recomputes the whole window,
//! as nanoGPT's `generate` does: the simple reference that tests hold the cache to.
//!
//! Past the context (`block_size`), learned absolute positions cannot shift inside a
//! cache, so the cached path keeps the last half of the window, clears the cache and
//! prefills that half again (a "context shift" as llama.cpp does on overflow): one
//! prefill of T/2 tokens per T/2 generated tokens instead of a full forward per token.
//! The uncached path crops to the last `block_size` tokens at every step instead, so
//! past the context the two paths legitimately see different windows.

use crate::model::Gpt;
use crate::sampling::{Sampler, SamplingConfig};
use crate::tokenizer::{TokenId, Tokenizer, EOS};
use crate::{Error, Result};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct GenerateConfig {
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    pub seed: u64,
    /// Generation ends *before* the first occurrence of any of these strings.
    pub stop: Vec<String>,
    pub use_cache: bool,
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
    pub text: String,
    pub tokens: Vec<TokenId>,
    pub tokens_generated: usize,
    pub prefill_tokens_per_s: f64,
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
        ids.push(EOS);
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

/// Releases text as it is generated, holding back only what might still turn out to be
/// the beginning of a stop string.
struct StopMatcher<'a> {
    stops: &'a [String],
    pending: String,
}

impl<'a> StopMatcher<'a> {
    /// Adds `piece`; returns the text that is now safe to show and whether a stop
    /// string was completed (the text then ends right before it).
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // The earliest suffix of `pending` that a stop string starts with must wait.
        let hold = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.pending[i..])))
            .unwrap_or(self.pending.len());
        let out = self.pending[..hold].to_string();
        self.pending.drain(..hold);
        (out, false)
    }

    fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// The logits (V,) of the last position of `logits` (B=1, T, V), on the CPU.
fn last_logits(logits: &Tensor) -> Vec<f32> {
    let t = logits.size()[1];
    let last = logits
        .get(0)
        .get(t - 1)
        .to_kind(Kind::Float)
        .to_device(Device::Cpu);
    Vec::<f32>::try_from(last).expect("logits are a float vector")
}

fn ids_tensor(ids: &[TokenId], device: Device) -> Tensor {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_slice(&ids).to(device).unsqueeze(0) // (1, T)
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
    cfg.sampling.validate()?;
    let block = model.config().block_size as usize;
    if prompt.is_empty() || prompt.len() > block {
        return Err(Error::config(
            "--prompt",
            format!(
                "must hold 1..={block} tokens after preparation, got {}",
                prompt.len()
            ),
        ));
    }
    let device = model.device();
    let mut sampler = Sampler::new(cfg.sampling.clone(), cfg.seed);
    let mut stops = StopMatcher {
        stops: &cfg.stop,
        pending: String::new(),
    };
    let mut context: Vec<TokenId> = prompt.to_vec();
    let mut text = String::new();
    let mut cache = model.new_cache();

    let started = Instant::now();
    let mut logits = tch::no_grad(|| {
        if cfg.use_cache {
            last_logits(&model.forward_cached(&ids_tensor(&context, device), &mut cache))
        } else {
            last_logits(&model.forward(&ids_tensor(&context, device), false))
        }
    });
    let prefill_s = started.elapsed().as_secs_f64();
    let decode_started = Instant::now();

    let mut generated = Vec::new();
    let mut reason = StopReason::MaxTokens;
    while generated.len() < cfg.max_tokens {
        let next = sampler.sample(&logits, &context);
        if next == EOS {
            reason = StopReason::Eos;
            break;
        }
        generated.push(next);
        context.push(next);
        let piece = tokenizer.decode(&[next]);
        let (out, stopped) = stops.push(&piece);
        text.push_str(&out);
        on_text(&out);
        if stopped {
            reason = StopReason::StopString;
            break;
        }
        if generated.len() == cfg.max_tokens {
            break;
        }
        logits = tch::no_grad(|| {
            if !cfg.use_cache {
                let window = &context[context.len().saturating_sub(block)..];
                last_logits(&model.forward(&ids_tensor(window, device), false))
            } else if cache.room() == 0 {
                // Context shift: keep the newest half of the window and prefill it again.
                let keep = &context[context.len() - block / 2..];
                cache.clear();
                last_logits(&model.forward_cached(&ids_tensor(keep, device), &mut cache))
            } else {
                last_logits(&model.forward_cached(&ids_tensor(&[next], device), &mut cache))
            }
        });
    }
    if reason != StopReason::StopString {
        let rest = stops.flush();
        text.push_str(&rest);
        on_text(&rest);
    }
    let decode_s = decode_started.elapsed().as_secs_f64();
    let decode_tokens_per_s = generated.len() as f64 / decode_s.max(1e-9);
    Ok(Completion {
        text,
        tokens_generated: generated.len(),
        tokens: generated,
        prefill_tokens_per_s: prompt.len() as f64 / prefill_s.max(1e-9),
        decode_tokens_per_s,
        stop_reason: reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_is_held_back_and_cut() {
        let stops = vec!["\n\n".to_string()];
        let mut m = StopMatcher {
            stops: &stops,
            pending: String::new(),
        };
        assert_eq!(m.push("a"), ("a".to_string(), false));
        assert_eq!(
            m.push("\n"),
            (String::new(), false),
            "a newline may start the stop string"
        );
        assert_eq!(m.push("b"), ("\nb".to_string(), false));
        assert_eq!(m.push("\n"), (String::new(), false));
        assert_eq!(m.push("\n"), (String::new(), true));
    }

    #[test]
    fn prompt_preparation_reports_changes() {
        let t = Tokenizer::default();
        let p = prepare_prompt(&t, "", 8);
        assert_eq!(p.ids, vec![EOS]);
        let p = prepare_prompt(&t, "0123456789", 4);
        assert_eq!(t.decode(&p.ids), "6789");
        assert_eq!(p.notes.len(), 1);
        let p = prepare_prompt(&t, "π=3", 8);
        assert_eq!(p.ids.len(), 3);
        assert!(p.notes[0].contains("<unk>"));
    }
}
