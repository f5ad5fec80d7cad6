//! Choosing the next token from the model's logits: temperature, top-k, top-p
//! (nucleus), repetition penalty, all seeded.
//!
//! The model gives a score (logit) per vocabulary entry; softmax turns scores into a
//! distribution. Temperature divides the logits first (below 1 sharpens, above 1
//! flattens, 0 means always the argmax). Top-k keeps the k most likely tokens (Fan et
//! al. 2018); top-p keeps the smallest set whose probability reaches p (Holtzman et al.
//! 2020), which adapts to how sure the model is. Both cut the long tail of unlikely
//! tokens that makes sampled text derail. Everything here is on plain `f32`/`f64` slices:
//! the vocabulary is small and the code is meant to be read.

use crate::tokenizer::TokenId;
use crate::{Error, Result};
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// 0 = greedy (argmax).
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    /// > 1 discourages tokens already in the context (Keskar et al. 2019, CTRL); 1 = off.
    pub repetition_penalty: f64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.8,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
        }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::config(
                "--temperature",
                format!("must be 0 (greedy) or positive, got {}", self.temperature),
            ));
        }
        if self.top_k == Some(0) {
            return Err(Error::config("--top-k", "must be at least 1"));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::config(
                    "--top-p",
                    format!("must be in (0, 1], got {p}"),
                ));
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::config(
                "--repetition-penalty",
                format!("must be positive, got {}", self.repetition_penalty),
            ));
        }
        Ok(())
    }
}

/// A sampler with its own seeded random stream: the same seed, model and prompt give
/// the same text.
pub struct Sampler {
    cfg: SamplingConfig,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig, seed: u64) -> Self {
        Sampler {
            cfg,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    /// The next token given the last position's logits (V,) and the tokens so far.
    pub fn sample(&mut self, logits: &[f32], history: &[TokenId]) -> TokenId {
        let mut logits = logits.to_vec();
        apply_repetition_penalty(&mut logits, history, self.cfg.repetition_penalty);
        if self.cfg.temperature == 0.0 {
            return argmax(&logits) as TokenId;
        }
        let mut probs = softmax(&logits, self.cfg.temperature);
        if let Some(k) = self.cfg.top_k {
            keep_top_k(&mut probs, k);
        }
        if let Some(p) = self.cfg.top_p {
            keep_top_p(&mut probs, p);
        }
        sample_from(&probs, self.rng.random::<f64>()) as TokenId
    }
}

/// Divides positive logits of seen tokens by `penalty` and multiplies negative ones, so
/// either way the token becomes less likely (CTRL's rule).
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[TokenId], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &t in history {
        if let Some(s) = seen.get_mut(t as usize) {
            *s = true;
        }
    }
    for (l, _) in logits.iter_mut().zip(seen).filter(|(_, s)| *s) {
        *l = if *l > 0.0 {
            (*l as f64 / penalty) as f32
        } else {
            (*l as f64 * penalty) as f32
        };
    }
}

/// The index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// softmax(logits / temperature), computed in f64 after subtracting the max so that
/// exp never overflows.
pub fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let exps: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Indices sorted by probability, most likely first (ties: lower index first).
fn ranked(probs: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order
}

fn renormalise(probs: &mut [f64]) {
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
}

/// Zeroes all but the `k` most likely tokens and renormalises.
pub fn keep_top_k(probs: &mut [f64], k: usize) {
    for &i in ranked(probs).iter().skip(k) {
        probs[i] = 0.0;
    }
    renormalise(probs);
}

/// Keeps the smallest set of most likely tokens whose total probability reaches `p`,
/// zeroes the rest and renormalises. The most likely token always stays.
pub fn keep_top_p(probs: &mut [f64], p: f64) {
    let mut mass = 0.0;
    let mut cut = false;
    for i in ranked(probs) {
        if cut {
            probs[i] = 0.0;
        } else {
            mass += probs[i];
            cut = mass >= p;
        }
    }
    renormalise(probs);
}

/// Inverse-CDF sampling: the first index whose cumulative probability exceeds `u` ∈ [0, 1).
pub fn sample_from(probs: &[f64], u: f64) -> usize {
    let mut cumulative = 0.0;
    let mut last_nonzero = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cumulative += p;
            last_nonzero = i;
            if u < cumulative {
                return i;
            }
        }
    }
    last_nonzero // rounding left u just above the total
}
