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
pub fn ranked<P: Copy + Into<f64>>(probs: &[P]) -> Vec<usize> {
    let p = |i: usize| -> f64 { probs[i].into() };
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| p(b).total_cmp(&p(a)).then(a.cmp(&b)));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed logits with distinct probabilities, most likely token at index 3.
    const LOGITS: [f32; 6] = [0.5, -0.5, 1.2, 2.0, 0.0, -1.0];

    fn sampler(cfg: SamplingConfig, seed: u64) -> Sampler {
        Sampler::new(cfg, seed)
    }

    fn cfg(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> SamplingConfig {
        SamplingConfig {
            temperature,
            top_k,
            top_p,
            repetition_penalty: 1.0,
        }
    }

    #[test]
    fn top_k_keeps_exactly_k() {
        for k in 1..=LOGITS.len() {
            let mut p = softmax(&LOGITS, 1.0);
            keep_top_k(&mut p, k);
            assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), k, "k = {k}");
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            // The survivors are the k largest logits.
            let mut by_logit: Vec<usize> = (0..LOGITS.len()).collect();
            by_logit.sort_by(|&a, &b| LOGITS[b].total_cmp(&LOGITS[a]));
            assert!(by_logit[..k].iter().all(|&i| p[i] > 0.0));
        }
        // Ties do not let extra tokens through.
        let mut flat = vec![0.25; 4];
        keep_top_k(&mut flat, 2);
        assert_eq!(flat, vec![0.5, 0.5, 0.0, 0.0]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        let probs = [0.1, 0.4, 0.2, 0.3];
        // Ranked: 0.4, 0.3, 0.2, 0.1; cumulative 0.4, 0.7, 0.9, 1.0.
        for (p, kept) in [(0.3, 1), (0.4, 1), (0.5, 2), (0.7, 2), (0.71, 3), (0.95, 4)] {
            let mut q = probs.to_vec();
            keep_top_p(&mut q, p);
            let n = q.iter().filter(|&&x| x > 0.0).count();
            assert_eq!(n, kept, "p = {p}");
            // The kept set reaches p and dropping its least likely member would not.
            let mut mass: Vec<f64> = probs.to_vec();
            mass.sort_by(|a, b| b.total_cmp(a));
            assert!(mass[..n].iter().sum::<f64>() >= p - 1e-12);
            assert!(mass[..n - 1].iter().sum::<f64>() < p);
            // What survives is renormalised in proportion.
            let kept_sum: f64 = mass[..n].iter().sum();
            assert!((q[1] - 0.4 / kept_sum).abs() < 1e-12);
        }
    }

    #[test]
    fn temperature_zero_and_near_zero_are_argmax() {
        let mut greedy = sampler(cfg(0.0, None, None), 1);
        let mut cold = sampler(cfg(1e-4, None, None), 2);
        for _ in 0..100 {
            assert_eq!(greedy.sample(&LOGITS, &[]), 3);
            assert_eq!(cold.sample(&LOGITS, &[]), 3);
        }
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1, "ties go to the first");
    }

    #[test]
    fn same_seed_same_draws_other_seed_other_draws() {
        let c = cfg(1.0, None, None);
        let draw = |seed| -> Vec<TokenId> {
            let mut s = sampler(c.clone(), seed);
            (0..200).map(|_| s.sample(&LOGITS, &[])).collect()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn repetition_penalty_lowers_seen_tokens_either_sign() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    /// Counts of `draws` samples per token.
    fn histogram(cfg: SamplingConfig, draws: usize) -> Vec<usize> {
        let mut s = sampler(cfg, 2024);
        let mut counts = vec![0; LOGITS.len()];
        for _ in 0..draws {
            counts[s.sample(&LOGITS, &[]) as usize] += 1;
        }
        counts
    }

    /// Each count of N = 10 000 draws is Binomial(N, p_i): mean N·p_i, standard deviation
    /// σ_i = sqrt(N·p_i·(1 − p_i)). A correct sampler lands beyond 5σ with probability
    /// below 6e-7 per token (normal tail; the binomial is near-normal here since every
    /// kept N·p_i ≥ 140 with these logits and temperatures), so over 6 tokens a false
    /// failure is under 4e-6; the seed is fixed, so the test is deterministic anyway. A wrong temperature or a shifted CDF
    /// moves some count by far more: at N = 10 000, 5σ is at most 250 draws (2.5 points
    /// of probability).
    fn assert_matches(counts: &[usize], probs: &[f64]) {
        let n: usize = counts.iter().sum();
        for (i, (&c, &p)) in counts.iter().zip(probs).enumerate() {
            let mean = n as f64 * p;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (c as f64 - mean).abs() <= 5.0 * sigma,
                "token {i}: {c} draws, expected {mean:.1} ± 5·{sigma:.1}"
            );
            if p == 0.0 {
                assert_eq!(c, 0, "token {i} was cut and must never be drawn");
            }
        }
    }

    #[test]
    fn ten_thousand_draws_match_the_softmax() {
        for t in [1.0, 0.7, 1.5] {
            let probs = softmax(&LOGITS, t);
            assert_matches(&histogram(cfg(t, None, None), 10_000), &probs);
        }
    }

    #[test]
    fn ten_thousand_draws_match_the_truncated_softmax() {
        // top-k 4 then top-p 0.8 at temperature 1: the expected distribution is the
        // softmax with the cut tokens zeroed and the rest renormalised.
        let mut probs = softmax(&LOGITS, 1.0);
        keep_top_k(&mut probs, 4);
        keep_top_p(&mut probs, 0.8);
        assert!(probs.iter().filter(|&&p| p > 0.0).count() < 4);
        assert_matches(&histogram(cfg(1.0, Some(4), Some(0.8)), 10_000), &probs);
    }

    #[test]
    fn invalid_settings_name_their_flag() {
        let bad = [
            (cfg(-1.0, None, None), "--temperature"),
            (cfg(1.0, Some(0), None), "--top-k"),
            (cfg(1.0, None, Some(1.5)), "--top-p"),
            (cfg(1.0, None, Some(0.0)), "--top-p"),
        ];
        for (c, flag) in bad {
            assert!(c.validate().unwrap_err().to_string().starts_with(flag));
        }
        let mut c = cfg(1.0, None, None);
        c.repetition_penalty = 0.0;
        assert!(c.validate().is_err());
    }
}
