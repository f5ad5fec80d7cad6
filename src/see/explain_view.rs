//! The JSON view of an [`Explanation`]: what the web page's inside view draws.
//!
//! `sympathy explain` prints tables from an [`Explanation`]; the page asks
//! `POST /v1/explain` and gets this view of the *same* value (one computation, two
//! views). It carries everything the tables show and the parts a terminal cannot:
//! every head's attention map as numbers, and the logit lens at every position.
//!
//! Attention rows are cut at the diagonal (row `t` holds the `t + 1` weights on
//! positions `0..=t`; the rest is masked to zero) and rounded to 4 decimals, which is
//! finer than a heat map's colour steps and keeps the small model's (L=4, H=4, T=128)
//! answer near half a megabyte.

use crate::model::nats_to_bits;
use crate::see::explain::{mean_loss, stage_name, Explanation, PositionReport, Prediction};
use crate::tokenizer::{TokenId, Tokenizer};
use serde::Serialize;

/// One token of the window the model read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenView {
    pub id: TokenId,
    /// The token's own text, decoded (a space is a space, `é` is `é`).
    pub text: String,
    /// As the CLI shows it (`␣` for a space, `\n` for a newline).
    pub display: String,
}

/// One stage of the logit lens at every position.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LensStage {
    /// `embeddings` or `block i`.
    pub stage: String,
    /// Per position, the top-k tokens this residual would predict next.
    pub positions: Vec<Vec<Prediction>>,
}

/// The whole inside view of one text.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExplainView {
    pub n_layer: usize,
    pub n_head: usize,
    pub tokens: Vec<TokenView>,
    /// Per position, the top-k next tokens and the rating of the real next token.
    pub positions: Vec<PositionReport>,
    /// Mean `-ln p(next)` over the positions whose next token is known (the training
    /// loss on this text), and the same in bits; `null` for a one-token text.
    pub mean_loss: Option<f64>,
    pub mean_bits: Option<f64>,
    /// `attention[layer][head][t]`: the `t + 1` weights query `t` puts on keys `0..=t`.
    pub attention: Vec<Vec<Vec<Vec<f32>>>>,
    /// Stage 0 after the embeddings, stage `i + 1` after block `i`; the last is the output.
    pub lens: Vec<LensStage>,
}

/// Rounds a weight to 4 decimals (the page shows at most 3).
fn round4(x: f32) -> f32 {
    (x * 1e4).round() / 1e4
}

/// One head's (T, T) map as rows cut at the diagonal.
fn lower_rows(map: &tch::Tensor) -> Vec<Vec<f32>> {
    let t = map.size()[0];
    (0..t)
        .map(|i| {
            let row = Vec::<f32>::try_from(map.get(i).narrow(0, 0, i + 1)).expect("f32 row");
            row.into_iter().map(round4).collect()
        })
        .collect()
}

/// Builds the page's view of `e` (computed by [`crate::see::explain::explain`]).
pub fn view(e: &Explanation, tokenizer: &Tokenizer) -> ExplainView {
    let attention: Vec<Vec<Vec<Vec<f32>>>> = e
        .attention
        .iter()
        .map(|layer| {
            let layer = layer.to_kind(tch::Kind::Float); // (H, T, T)
            (0..layer.size()[0])
                .map(|h| lower_rows(&layer.get(h)))
                .collect()
        })
        .collect();
    let mean = mean_loss(&e.positions);
    ExplainView {
        n_layer: attention.len(),
        n_head: attention.first().map_or(0, Vec::len),
        tokens: e
            .ids
            .iter()
            .zip(&e.labels)
            .map(|(&id, label)| TokenView {
                id,
                text: tokenizer.decode(&[id]),
                display: label.clone(),
            })
            .collect(),
        positions: e.positions.clone(),
        mean_loss: mean,
        mean_bits: mean.map(nats_to_bits),
        attention,
        lens: e
            .lens_grid
            .iter()
            .enumerate()
            .map(|(i, positions)| LensStage {
                stage: stage_name(i),
                positions: positions.clone(),
            })
            .collect(),
    }
}
