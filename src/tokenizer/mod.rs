//! Tokenizers: text ⇄ token ids. A checkpoint records which one it was trained with
//! ([`Tokenizer`], saved in `state.json`), and every command that reads text goes
//! through it. Today there is one kind, [`char`](mod@char) (one id per ASCII character).

pub mod char;

pub use self::char::{CHAR_VOCAB_SIZE, EOS, PAD, UNK};
use serde::{Deserialize, Serialize};

/// The id of one token in the vocabulary.
pub type TokenId = u32;

/// What a checkpoint records about its tokenizer (`state.json` → `"tokenizer"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Tokenizer {
    Char { vocab_size: i64 },
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer::Char {
            vocab_size: CHAR_VOCAB_SIZE,
        }
    }
}

/// The result of encoding text: the ids, and how many characters became `<unk>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<TokenId>,
    pub unknown: usize,
}

impl Tokenizer {
    pub fn vocab_size(&self) -> i64 {
        match self {
            Tokenizer::Char { vocab_size } => *vocab_size,
        }
    }

    /// A short name for cache keys and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Char { .. } => "char",
        }
    }

    pub fn encode(&self, text: &str) -> Encoded {
        match self {
            Tokenizer::Char { .. } => self::char::encode(text),
        }
    }

    /// The character of one token: `None` for `<pad>` and `<eos>`, U+FFFD for `<unk>`.
    pub fn decode_one(&self, id: TokenId) -> Option<char> {
        match self {
            Tokenizer::Char { .. } => self::char::decode_one(id),
        }
    }

    pub fn decode(&self, ids: &[TokenId]) -> String {
        ids.iter().filter_map(|&id| self.decode_one(id)).collect()
    }

    /// How a token is shown in tables and on plot axes, where an invisible newline or
    /// an empty `<eos>` would be confusing.
    pub fn display(&self, id: TokenId) -> String {
        match self {
            Tokenizer::Char { .. } => self::char::display(id),
        }
    }
}
