//! Byte-level BPE (Sennrich et al. 2016; GPT-2's byte-level variant, Radford et al.
//! 2019): text is UTF-8 bytes, and training merges the most frequent adjacent pair of
//! tokens into a new token, again and again, until the vocabulary has the size asked.
//! On Python code the first merges are runs of spaces and `self`, so a token holds ~3
//! bytes on average and a window of 128 tokens sees ~3× more code than 128 characters.
//!
//! Training and encoding use the Hugging Face `tokenizers` crate, and the tokenizer is
//! stored in its native JSON format: the file loads unchanged in Python's `tokenizers`
//! and in `transformers`. Two special tokens come first: `<eos>` = 0 (written after
//! every file, as with the char tokenizer) and `<pad>` = 1; then the 256 bytes, then
//! the merges.
//!
//! Decoding is ours: every id maps to the bytes it stands for ([`Bpe::token_bytes`]),
//! so a stream of ids becomes a stream of bytes that `tokenizer::stream` turns into
//! whole characters. A token may end in the middle of a character (`é` is two bytes,
//! and a merge may take only the first).

use super::TokenId;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, ModelWrapper};

pub const EOS_TOKEN: &str = "<eos>";
pub const PAD_TOKEN: &str = "<pad>";
/// `<eos>` and `<pad>` are the first ids of every BPE vocabulary.
pub const BPE_EOS: TokenId = 0;
pub const BPE_PAD: TokenId = 1;
/// The smallest vocabulary: two specials and the 256 bytes (no merges at all).
pub const MIN_VOCAB_SIZE: i64 = 258;

/// A trained byte-level BPE tokenizer, cheap to clone (shared, immutable).
#[derive(Clone)]
pub struct Bpe {
    inner: Arc<tokenizers::Tokenizer>,
    /// The bytes of every id, in id order (specials: empty).
    bytes: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for Bpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bpe {{ vocab_size: {} }}", self.bytes.len())
    }
}

impl PartialEq for Bpe {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

/// How a BPE tokenizer appears in `state.json`: its size and the file beside it. The
/// file's text travels in `json` only while `checkpoint::read_state` deserialises.
#[derive(Serialize, Deserialize)]
pub struct BpeSpec {
    pub vocab_size: i64,
    pub file: String,
    #[serde(skip_serializing, default)]
    pub json: Option<String>,
}

/// The name of the tokenizer file in a checkpoint and in an export.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

impl From<Bpe> for BpeSpec {
    fn from(b: Bpe) -> Self {
        BpeSpec {
            vocab_size: b.vocab_size(),
            file: TOKENIZER_FILE.into(),
            json: None,
        }
    }
}

impl TryFrom<BpeSpec> for Bpe {
    type Error = String;
    fn try_from(spec: BpeSpec) -> std::result::Result<Self, String> {
        let json = spec
            .json
            .ok_or_else(|| format!("{} was not read with the state", spec.file))?;
        let bpe = Bpe::from_json(&json).map_err(|e| format!("{}: {e}", spec.file))?;
        if bpe.vocab_size() != spec.vocab_size {
            return Err(format!(
                "{} has {} tokens but state.json says vocab_size {}",
                spec.file,
                bpe.vocab_size(),
                spec.vocab_size
            ));
        }
        Ok(bpe)
    }
}

impl Bpe {
    /// Trains a vocabulary of `vocab_size` ids on `texts` (whole files).
    pub fn train(texts: &[String], vocab_size: i64) -> Result<Self> {
        check_vocab_size(vocab_size)?;
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size as usize)
            .min_frequency(0)
            .show_progress(false)
            .special_tokens(vec![
                AddedToken::from(EOS_TOKEN, true),
                AddedToken::from(PAD_TOKEN, true),
            ])
            // All 256 bytes, seen or not: any text can be encoded.
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::from(trainer);
        let mut tok = tokenizers::Tokenizer::new(ModelWrapper::from(BPE::default()));
        // GPT-2's split (words, numbers, punctuation, runs of spaces) before the merges;
        // no space is added in front, so decode(encode(x)) == x byte for byte.
        tok.with_pre_tokenizer(Some(
            ByteLevel::default().add_prefix_space(false).use_regex(true),
        ));
        tok.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
        tok.with_decoder(Some(ByteLevel::default()));
        tok.train(&mut trainer, texts.iter())
            .map_err(|e| Error::config("--vocab-size", format!("BPE training failed: {e}")))?;
        Self::from_tokenizer(tok).map_err(|m| Error::config("--vocab-size", m))
    }

    /// Reads a tokenizer file written by [`Bpe::save`] (or by Python's `tokenizers`,
    /// when it is a byte-level BPE with `<eos>` and `<pad>` first).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|m| Error::config(path.display().to_string(), m))
    }

    /// Parses a tokenizer's JSON and checks that it is one we can use.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let tok: tokenizers::Tokenizer = text.parse().map_err(|e| {
            format!("is not a Hugging Face tokenizer file ({e}); train one with `sympathy tokenizer train`")
        })?;
        Self::from_tokenizer(tok)
    }

    /// Checks kind, specials and byte alphabet, and builds the id → bytes table.
    fn from_tokenizer(tok: tokenizers::Tokenizer) -> std::result::Result<Self, String> {
        if !matches!(tok.get_model(), ModelWrapper::BPE(_)) {
            return Err("is a tokenizer of another kind; sympathy reads byte-level BPE".into());
        }
        let bytes = id_bytes(&tok.get_vocab(true))?;
        for (id, name) in [(BPE_EOS, EOS_TOKEN), (BPE_PAD, PAD_TOKEN)] {
            if tok.id_to_token(id).as_deref() != Some(name) {
                return Err(format!("id {id} is not {name}; sympathy's BPE puts <eos> and <pad> first (train with `sympathy tokenizer train`)"));
            }
        }
        let single: std::collections::HashSet<&[u8]> = bytes
            .iter()
            .filter(|b| b.len() == 1)
            .map(Vec::as_slice)
            .collect();
        if single.len() < 256 {
            return Err(format!(
                "has tokens for only {} of the 256 bytes; it is not a byte-level BPE",
                single.len()
            ));
        }
        // `<eos>` typed in a prompt or present in a file is text, not the special token:
        // every text round-trips (Python: `tokenizer.encode_special_tokens = True`).
        let mut tok = tok;
        tok.set_encode_special_tokens(true);
        Ok(Bpe {
            inner: Arc::new(tok),
            bytes: Arc::new(bytes),
        })
    }

    /// Writes the tokenizer in its native JSON (pretty, so a diff shows the merges).
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json()).map_err(|e| Error::io(path, e))
    }

    pub fn to_json(&self) -> String {
        self.inner
            .to_string(true)
            .expect("a loaded tokenizer serialises")
    }

    pub fn vocab_size(&self) -> i64 {
        self.bytes.len() as i64
    }

    pub fn encode(&self, text: &str) -> Vec<TokenId> {
        // Without special tokens added: `<eos>` typed in a prompt is text, not a token.
        match self.inner.encode_fast(text, false) {
            Ok(e) => e.get_ids().to_vec(),
            Err(_) => unreachable!("byte-level BPE encodes any UTF-8 text"),
        }
    }

    /// The bytes token `id` stands for: empty for the specials and for ids past the
    /// vocabulary.
    pub fn token_bytes(&self, id: TokenId) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// How a token is shown in tables: its text with spaces as `␣` and newlines as
    /// `\n`, bytes that are not a whole character as `<xx>` hex.
    pub fn display(&self, id: TokenId) -> String {
        match id {
            BPE_EOS => return EOS_TOKEN.into(),
            BPE_PAD => return PAD_TOKEN.into(),
            _ => {}
        }
        let mut out = String::new();
        for chunk in self.token_bytes(id).utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    ' ' => out.push('␣'),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                    c => out.push(c),
                }
            }
            for b in chunk.invalid() {
                out.push_str(&format!("<{b:02x}>"));
            }
        }
        out
    }
}

/// `--vocab-size`: room for the 256 bytes and both specials, and ids that fit the
/// widest token cache (u32).
pub fn check_vocab_size(vocab_size: i64) -> Result<()> {
    if vocab_size < MIN_VOCAB_SIZE {
        return Err(Error::config(
            "--vocab-size",
            format!("{vocab_size} is smaller than the {MIN_VOCAB_SIZE} ids every byte-level BPE needs (256 bytes + <eos> + <pad>); use at least {MIN_VOCAB_SIZE}, e.g. 2048"),
        ));
    }
    if vocab_size > 1i64 << 32 {
        return Err(Error::config(
            "--vocab-size",
            format!(
                "{vocab_size} ids do not fit the token cache's 32-bit integers; use at most {}",
                1i64 << 32
            ),
        ));
    }
    Ok(())
}

/// The byte-level alphabet: GPT-2 shows each byte as a printable character (the
/// printable Latin-1 ones as themselves, the rest shifted past U+0100), so that a
/// token's bytes can be a JSON string. This is its inverse: character -> byte.
fn char_to_byte() -> HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut map = HashMap::new();
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            b as char
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("below U+0200")
        };
        map.insert(c, b);
    }
    map
}

/// id -> bytes for a vocabulary in the byte-level alphabet; specials map to no bytes.
fn id_bytes(vocab: &HashMap<String, TokenId>) -> std::result::Result<Vec<Vec<u8>>, String> {
    let n = vocab.len();
    let alphabet = char_to_byte();
    let mut table: Vec<Option<Vec<u8>>> = vec![None; n];
    for (token, &id) in vocab {
        let slot = table.get_mut(id as usize).ok_or_else(|| {
            format!("has id {id} for {token:?} in a vocabulary of {n}; ids must be 0..{n}")
        })?;
        *slot = Some(if token == EOS_TOKEN || token == PAD_TOKEN {
            Vec::new()
        } else {
            token
                .chars()
                .map(|c| alphabet.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| format!("token {token:?} is not in the byte-level alphabet; it is not a byte-level BPE"))?
        });
    }
    table
        .into_iter()
        .enumerate()
        .map(|(id, b)| {
            b.ok_or_else(|| format!("has no token with id {id}; the vocabulary has gaps"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Bpe {
        let texts: Vec<String> = (0..20)
            .map(|i| format!("def f_{i}(self):\n        return self.x + {i}  # café 日本 🐍\n"))
            .collect();
        Bpe::train(&texts, 300).unwrap()
    }

    #[test]
    fn specials_first_then_bytes_and_merges() {
        let b = small();
        assert_eq!(b.vocab_size(), 300);
        assert_eq!(b.display(BPE_EOS), "<eos>");
        assert!(b.token_bytes(BPE_PAD).is_empty());
        // Merges happened: the repeated line takes far fewer tokens than bytes.
        let text = "        return self.x + 3  # café 日本 🐍\n";
        let ids = b.encode(text);
        assert!(ids.len() * 2 < text.len(), "{} tokens", ids.len());
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| b.token_bytes(i).to_vec())
            .collect();
        assert_eq!(bytes, text.as_bytes());
    }

    #[test]
    fn our_byte_table_agrees_with_the_library_decoder() {
        // The library decodes a token to text (lossy); wherever a token is whole UTF-8,
        // our table's bytes must be exactly that text.
        let b = small();
        let mut whole = 0;
        for id in 2..b.vocab_size() as TokenId {
            let theirs = b.inner.decode(&[id], false).unwrap();
            if let Ok(ours) = std::str::from_utf8(b.token_bytes(id)) {
                assert_eq!(ours, theirs, "id {id}");
                whole += 1;
            }
        }
        assert!(whole > 100);
    }

    #[test]
    fn display_marks_spaces_newlines_and_partial_characters() {
        let b = small();
        let ids = b.encode("é");
        let shown: String = ids.iter().map(|&i| b.display(i)).collect();
        assert!(shown == "é" || shown == "<c3><a9>", "{shown}");
        let nl = b.encode("\n")[0];
        assert_eq!(b.display(nl), "\\n");
        let sp = b.encode(" ")[0];
        assert_eq!(b.display(sp), "␣");
    }

    #[test]
    fn the_json_round_trips_and_other_files_are_refused() {
        let b = small();
        let again = Bpe::from_json(&b.to_json()).unwrap();
        assert_eq!(again, b);
        assert!(Bpe::from_json("{")
            .unwrap_err()
            .contains("not a Hugging Face tokenizer"));
        assert!(check_vocab_size(257).is_err());
        assert!(check_vocab_size(258).is_ok());
        assert!(check_vocab_size((1i64 << 32) + 1).is_err());
    }
}
