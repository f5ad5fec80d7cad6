//! `sympathy explain`: what the model believes at every position of a prompt.
//!
//! Three views, all from one pass of the model's own traced forward
//! ([`Gpt::forward_traced`], the same blocks with the written-out attention kernel):
//!
//! - **Predictions.** At each position, the top-k next characters with their
//!   probabilities, and the probability the model gave the character that actually
//!   comes next in the prompt. Its negative log is exactly that position's term of the
//!   training loss, so the table is the loss made visible.
//! - **Attention.** Per layer, the (H, T, T) weights: row `t` says how much position `t`
//!   takes from each earlier position (drawn by [`crate::see::plot`]).
//! - **The logit lens** (nostalgebraist 2020). The residual stream after the embeddings
//!   and after every block, at every position, decoded by the final `ln_f` and the
//!   tied head as if the model ended there. The last row is the model's real output;
//!   earlier rows show how the prediction forms layer by layer.
//!
//! One computation, two views: [`render`] prints the tables of `sympathy explain`
//! (the lens at the last position), and [`crate::see::explain_view`] turns the same
//! [`Explanation`] into the JSON the web page draws (the lens at every position).

use crate::infer::sampling::ranked;
use crate::model::nats_to_bits;
use crate::model::Gpt;
use crate::tokenizer::{TokenId, Tokenizer};
use crate::{Error, Result};
use serde::Serialize;
use std::fmt::Write;
use tch::{Device, Kind, Tensor};

/// One candidate next token and its probability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub token: TokenId,
    /// As [`Tokenizer::display`] shows it (`␣` for a space, `\n` for a newline).
    pub text: String,
    pub prob: f64,
}

/// What the model predicted after reading the prompt up to `pos`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PositionReport {
    pub pos: usize,
    /// The token at `pos`, as displayed.
    pub token: String,
    /// The `k` most likely next tokens, most likely first.
    pub top: Vec<Prediction>,
    /// The token that actually follows in the prompt (none after the last position).
    pub actual: Option<Prediction>,
    /// Its rank among all tokens, 1 = the model's first choice.
    pub actual_rank: Option<usize>,
}

/// What one residual stream (after the embeddings, or after block `i`) would predict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LensRow {
    /// `embeddings` or `block i`.
    pub stage: String,
    pub top: Vec<Prediction>,
}

/// Everything `explain` computed for one prompt. Tensors are on the CPU.
#[derive(Debug)]
pub struct Explanation {
    pub ids: Vec<TokenId>,
    /// The prompt's tokens as displayed, one per position (plot axes).
    pub labels: Vec<String>,
    /// Next-token probabilities at every position, (T, V).
    pub probs: Tensor,
    /// Per shown position (the last `N`, or all).
    pub positions: Vec<PositionReport>,
    /// Per layer, the attention weights (H, T, T); rows sum to 1, zero above the diagonal.
    pub attention: Vec<Tensor>,
    /// The residual stream at the last position decoded by `ln_f` + head, (L + 1, V):
    /// row 0 after the embeddings, row `i + 1` after block `i`.
    pub lens_logits: Tensor,
    /// The lens at the last position, one row per stage (what the CLI prints); equal to
    /// the last column of `lens_grid`.
    pub lens: Vec<LensRow>,
    /// The lens at every position: `lens_grid[stage][pos]` is the top-k of that
    /// residual decoded by `ln_f` + head, stage 0 after the embeddings.
    pub lens_grid: Vec<Vec<Vec<Prediction>>>,
}

/// The `k` largest entries of a probability row (V,), most likely first.
fn top_k(probs: &[f32], k: usize, tokenizer: &Tokenizer) -> Vec<Prediction> {
    ranked(probs)
        .into_iter()
        .take(k)
        .map(|i| prediction(i as TokenId, probs, tokenizer))
        .collect()
}

fn prediction(token: TokenId, probs: &[f32], tokenizer: &Tokenizer) -> Prediction {
    Prediction {
        token,
        text: tokenizer.display(token),
        prob: probs[token as usize] as f64,
    }
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let t = t.to_kind(Kind::Float).to_device(Device::Cpu);
    (0..t.size()[0])
        .map(|i| Vec::<f32>::try_from(t.get(i)).expect("a float row"))
        .collect()
}

/// Runs the traced forward on `ids` (1 ≤ len ≤ the model's context) and gathers the
/// three views. `last`: report only the last this many positions (all when `None`).
pub fn explain(
    model: &Gpt,
    tokenizer: &Tokenizer,
    ids: &[TokenId],
    k: usize,
    last: Option<usize>,
) -> Result<Explanation> {
    check_request(model.config().block_size as usize, ids.len(), k, last)?;
    let t = ids.len();
    let as_i64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let idx = Tensor::from_slice(&as_i64).to(model.device()).unsqueeze(0); // (1, T)

    let (probs, attention, lens_all) = tch::no_grad(|| {
        let (logits, trace) = model.forward_traced(&idx); // (1, T, V)
        let probs = logits.get(0).softmax(-1, Kind::Float).to(Device::Cpu); // (T, V)
        let attention: Vec<Tensor> = trace
            .attention
            .iter()
            .map(|a| a.get(0).to(Device::Cpu)) // (1, H, T, T) -> (H, T, T)
            .collect();
        // The logit lens: every residual (1, T, C) through the model's own final norm
        // and tied head -> (T, V), one stage at a time (a (L + 1, T, V) stack of a
        // large vocabulary would not fit).
        let lens: Vec<Tensor> = trace
            .residual
            .iter()
            .map(|x| model.head(x).get(0).to_kind(Kind::Float).to(Device::Cpu))
            .collect();
        (probs, attention, lens)
    });

    let prob_rows = rows(&probs);
    let shown = last.unwrap_or(t).min(t);
    let positions = (t - shown..t)
        .map(|pos| position_report(pos, ids, &prob_rows[pos], k, tokenizer))
        .collect();
    let lens_grid: Vec<Vec<Vec<Prediction>>> = lens_all
        .iter()
        .map(|logits| {
            rows(&logits.softmax(-1, Kind::Float)) // (T, V)
                .iter()
                .map(|row| top_k(row, k, tokenizer))
                .collect()
        })
        .collect();
    // The last position of every stage, (L + 1, V).
    let lens_logits = Tensor::stack(
        &lens_all
            .iter()
            .map(|l| l.get(t as i64 - 1))
            .collect::<Vec<_>>(),
        0,
    );
    let lens = lens_grid
        .iter()
        .enumerate()
        .map(|(i, stage)| LensRow {
            stage: stage_name(i),
            top: stage[t - 1].clone(),
        })
        .collect();
    Ok(Explanation {
        ids: ids.to_vec(),
        labels: ids.iter().map(|&i| tokenizer.display(i)).collect(),
        probs,
        positions,
        attention,
        lens_logits,
        lens,
        lens_grid,
    })
}

/// The prompt fits the context, and `k` and `last` ask for at least one row.
fn check_request(block: usize, t: usize, k: usize, last: Option<usize>) -> Result<()> {
    if t == 0 || t > block {
        return Err(Error::config(
            "--prompt",
            format!("must hold 1..={block} tokens after preparation, got {t}"),
        ));
    }
    if k == 0 {
        return Err(Error::config("--top-k", "must be at least 1"));
    }
    if last == Some(0) {
        return Err(Error::config("--last", "must be at least 1"));
    }
    Ok(())
}

/// Mean `-ln p` over `probs`, the probabilities given to the tokens that came (the
/// training loss of those predictions); `None` when there are none.
pub fn mean_nll(probs: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = probs.into_iter().fold((0.0, 0usize), |(sum, n), p| {
        (sum - p.max(f64::MIN_POSITIVE).ln(), n + 1)
    });
    (n > 0).then(|| sum / n as f64)
}

/// The mean loss over the shown positions whose next token is known, in nats.
pub fn mean_loss(positions: &[PositionReport]) -> Option<f64> {
    mean_nll(
        positions
            .iter()
            .filter_map(|p| p.actual.as_ref())
            .map(|a| a.prob),
    )
}

/// `embeddings` for stage 0, `block i` for the residual after block `i`.
pub fn stage_name(stage: usize) -> String {
    match stage {
        0 => "embeddings".to_string(),
        i => format!("block {}", i - 1),
    }
}

/// Position `pos`'s top-k next tokens from its probability row (V,), and how the model
/// rated the token that actually follows.
fn position_report(
    pos: usize,
    ids: &[TokenId],
    row: &[f32],
    k: usize,
    tokenizer: &Tokenizer,
) -> PositionReport {
    let actual = ids
        .get(pos + 1)
        .map(|&next| prediction(next, row, tokenizer));
    let actual_rank = actual
        .as_ref()
        .map(|a| row.iter().filter(|&&p| p as f64 > a.prob).count() + 1);
    PositionReport {
        pos,
        token: tokenizer.display(ids[pos]),
        top: top_k(row, k, tokenizer),
        actual,
        actual_rank,
    }
}

fn predictions(top: &[Prediction]) -> String {
    top.iter()
        .map(|p| format!("{:<5} {:.3}", p.text, p.prob))
        .collect::<Vec<_>>()
        .join("  ")
}

/// The tables `sympathy explain` prints.
pub fn render(e: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "next-token predictions ({} positions of {})",
        e.positions.len(),
        e.ids.len()
    );
    let _ = writeln!(
        s,
        "{:>4}  {:<5} {:<5} {:>7} {:>6} {:>5}   top predictions",
        "pos", "seen", "next", "p(next)", "-ln p", "rank"
    );
    for p in &e.positions {
        let (next, prob, nll, rank) = match (&p.actual, p.actual_rank) {
            (Some(a), Some(r)) => {
                let nll = -a.prob.max(f64::MIN_POSITIVE).ln();
                (
                    a.text.clone(),
                    format!("{:.3}", a.prob),
                    format!("{nll:.2}"),
                    r.to_string(),
                )
            }
            _ => ("".into(), "".into(), "".into(), "".into()),
        };
        let _ = writeln!(
            s,
            "{:>4}  {:<5} {:<5} {:>7} {:>6} {:>5}   {}",
            p.pos,
            p.token,
            next,
            prob,
            nll,
            rank,
            predictions(&p.top)
        );
    }
    if let Some(mean) = mean_loss(&e.positions) {
        let n = e.positions.iter().filter(|p| p.actual.is_some()).count();
        let _ = writeln!(
            s,
            "mean loss over the {n} known next tokens: {mean:.4} nats ({:.3} bits/token)",
            nats_to_bits(mean)
        );
    }
    let last = e.labels.last().map(String::as_str).unwrap_or("");
    let _ = writeln!(
        s,
        "\nlogit lens at the last position ({last}): each layer's residual decoded by ln_f + head"
    );
    let n_lens = e.lens.len();
    for (i, row) in e.lens.iter().enumerate() {
        let stage = if i + 1 == n_lens {
            format!("{} (output)", row.stage)
        } else {
            row.stage.clone()
        };
        let _ = writeln!(s, "  {stage:<16}  {}", predictions(&row.top));
    }
    s
}
