//! Tokenizers: text ⇄ token ids. A checkpoint records which one it was trained with
//! ([`Tokenizer`], saved in `state.json`, a BPE's vocabulary beside it in
//! `tokenizer.json`), and every command that reads text goes through it. Two kinds:
//! [`char`](mod@char) (one id per ASCII character, the default) and [`bpe`] (byte-level
//! BPE trained on the corpus). Both map every id to bytes; [`stream`] turns a stream of
//! those bytes into whole characters.

pub mod bpe;
pub mod char;
pub mod stream;

pub use self::bpe::Bpe;
pub use self::char::{CHAR_VOCAB_SIZE, EOS, PAD, UNK};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The id of one token in the vocabulary.
pub type TokenId = u32;

/// What a checkpoint records about its tokenizer (`state.json` → `"tokenizer"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Tokenizer {
    Char {
        vocab_size: i64,
    },
    /// In `state.json` as `{"kind": "bpe", "vocab_size": N, "file": "tokenizer.json"}`.
    Bpe(#[serde(with = "bpe_in_state")] Bpe),
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
            Tokenizer::Bpe(b) => b.vocab_size(),
        }
    }

    /// A short name for cache keys and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Char { .. } => "char",
            Tokenizer::Bpe(_) => "bpe",
        }
    }

    /// The name with the vocabulary size, for reports: `char`, `bpe-4096`.
    pub fn label(&self) -> String {
        match self {
            Tokenizer::Char { .. } => "char".into(),
            Tokenizer::Bpe(b) => format!("bpe-{}", b.vocab_size()),
        }
    }

    pub fn encode(&self, text: &str) -> Encoded {
        match self {
            Tokenizer::Char { .. } => self::char::encode(text),
            Tokenizer::Bpe(b) => Encoded {
                ids: b.encode(text),
                unknown: 0,
            },
        }
    }

    /// The id written after every file (and the start of an empty prompt).
    pub fn eos(&self) -> TokenId {
        match self {
            Tokenizer::Char { .. } => EOS,
            Tokenizer::Bpe(_) => bpe::BPE_EOS,
        }
    }

    pub fn pad(&self) -> TokenId {
        match self {
            Tokenizer::Char { .. } => PAD,
            Tokenizer::Bpe(_) => bpe::BPE_PAD,
        }
    }

    /// The character of one char-tokenizer token: `None` for `<pad>` and `<eos>`,
    /// U+FFFD for `<unk>`. A BPE token is bytes, not one character: for it this is the
    /// token's text when that is exactly one whole character, else `None`; use
    /// [`Tokenizer::token_bytes`] and [`stream::Utf8Stream`] to decode a stream.
    pub fn decode_one(&self, id: TokenId) -> Option<char> {
        match self {
            Tokenizer::Char { .. } => self::char::decode_one(id),
            Tokenizer::Bpe(b) => {
                let text = std::str::from_utf8(b.token_bytes(id)).ok()?;
                let mut chars = text.chars();
                chars.next().filter(|_| chars.next().is_none())
            }
        }
    }

    /// The UTF-8 bytes one token stands for: none for the specials; for `<unk>` those
    /// of U+FFFD; a BPE token's may be part of a character.
    pub fn token_bytes(&self, id: TokenId) -> Cow<'_, [u8]> {
        match self {
            Tokenizer::Char { .. } => match self::char::decode_one(id) {
                Some(c) => Cow::Owned(c.to_string().into_bytes()),
                None => Cow::Borrowed(&[]),
            },
            Tokenizer::Bpe(b) => Cow::Borrowed(b.token_bytes(id)),
        }
    }

    /// The bytes of a sequence of tokens.
    pub fn decode_bytes(&self, ids: &[TokenId]) -> Vec<u8> {
        ids.iter()
            .flat_map(|&id| self.token_bytes(id).into_owned())
            .collect()
    }

    /// The text of a sequence of tokens; bytes that are not UTF-8 (a BPE sequence cut in
    /// the middle of a character) become U+FFFD.
    pub fn decode(&self, ids: &[TokenId]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }

    /// How a token is shown in tables and on plot axes, where an invisible newline or
    /// an empty `<eos>` would be confusing.
    pub fn display(&self, id: TokenId) -> String {
        match self {
            Tokenizer::Char { .. } => self::char::display(id),
            Tokenizer::Bpe(b) => b.display(id),
        }
    }

    /// What identifies this exact vocabulary in cache keys: the name, the size, and for
    /// a BPE its merges.
    pub fn fingerprint_bytes(&self) -> Vec<u8> {
        let mut out = self.name().as_bytes().to_vec();
        out.extend_from_slice(&self.vocab_size().to_le_bytes());
        if let Tokenizer::Bpe(b) = self {
            out.extend_from_slice(b.to_json().as_bytes());
        }
        out
    }
}

/// A BPE in `state.json`: size and file name out; in, the file's text is expected in
/// the spec (put there by `checkpoint::read_state`).
mod bpe_in_state {
    use super::bpe::{Bpe, BpeSpec};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(b: &Bpe, s: S) -> Result<S::Ok, S::Error> {
        BpeSpec::from(b.clone()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bpe, D::Error> {
        Bpe::try_from(BpeSpec::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
