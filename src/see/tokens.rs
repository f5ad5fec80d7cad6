//! The text as the model sees it: token boundaries marked, for `sympathy tokenize`.
//! On a terminal every token gets a background colour (alternating, so neighbours
//! differ); elsewhere each token is in brackets, `[def][ squares][(]`.
//!
//! A byte-level BPE token may hold part of a character; such tokens are shown joined
//! with the next ones until the bytes make whole characters, so every mark is text.

use crate::tokenizer::{TokenId, Tokenizer};
use serde::Serialize;

/// What `tokenize --json` prints.
#[derive(Debug, Serialize)]
pub struct TokenReport {
    pub tokenizer: String,
    pub ids: Vec<TokenId>,
    /// Each token as [`Tokenizer::display`] shows it.
    pub tokens: Vec<String>,
    pub bytes: usize,
    pub bytes_per_token: f64,
}

impl TokenReport {
    pub fn new(tokenizer: &Tokenizer, text: &str) -> Self {
        let ids = tokenizer.encode(text).ids;
        TokenReport {
            tokenizer: tokenizer.label(),
            tokens: ids.iter().map(|&id| tokenizer.display(id)).collect(),
            bytes: text.len(),
            bytes_per_token: text.len() as f64 / ids.len().max(1) as f64,
            ids,
        }
    }
}

/// Background colours for alternate tokens (ANSI 256-colour: pale blue, pale yellow,
/// pale green, pale pink), with black text, readable on dark and light terminals.
const BACKGROUNDS: [u8; 4] = [153, 229, 194, 218];

/// The pieces of text the ids stand for, each made of whole characters (see the module
/// docs), with how many tokens went into each.
pub fn pieces(tokenizer: &Tokenizer, ids: &[TokenId]) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let (mut bytes, mut n) = (Vec::new(), 0);
    for (i, &id) in ids.iter().enumerate() {
        bytes.extend_from_slice(&tokenizer.token_bytes(id));
        n += 1;
        // At most 4 tokens make one character; past that, show what there is.
        let whole = std::str::from_utf8(&bytes).is_ok();
        if whole || n >= 4 || i + 1 == ids.len() {
            out.push((String::from_utf8_lossy(&bytes).into_owned(), n));
            bytes.clear();
            n = 0;
        }
    }
    out
}

/// The text with its token boundaries marked: colours when `colour`, else brackets.
pub fn mark_boundaries(tokenizer: &Tokenizer, ids: &[TokenId], colour: bool) -> String {
    let mut out = String::new();
    for (i, (text, _)) in pieces(tokenizer, ids).iter().enumerate() {
        if colour {
            // Colour each line of a token separately: a newline inside a coloured span
            // would paint the rest of the terminal line.
            let bg = BACKGROUNDS[i % BACKGROUNDS.len()];
            let parts: Vec<String> = text
                .split('\n')
                .map(|p| {
                    if p.is_empty() {
                        String::new()
                    } else {
                        format!("\x1b[30;48;5;{bg}m{p}\x1b[0m")
                    }
                })
                .collect();
            out.push_str(&parts.join("\n"));
        } else {
            out.push('[');
            out.push_str(text);
            out.push(']');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_around_every_char_token() {
        let t = Tokenizer::default();
        let ids = t.encode("ab\n").ids;
        assert_eq!(mark_boundaries(&t, &ids, false), "[a][b][\n]");
        let report = TokenReport::new(&t, "ab\n");
        assert_eq!(report.bytes_per_token, 1.0);
        assert_eq!(report.tokens, vec!["a", "b", "\\n"]);
    }
}
