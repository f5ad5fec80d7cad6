//! The character tokenizer: one id per ASCII character, and the id *is* the character
//! code (`'a'` → 97), so a token stream can be read in a hex dump. Three special ids
//! follow: `<pad>` = 128, `<eos>` = 129 (written after every file, so the model learns
//! where files end and generation can stop there) and `<unk>` = 130.
//!
//! Characters outside ASCII become `<unk>`, one per character. Dropping them would
//! silently shift every later position; a byte fallback would double the vocabulary
//! for a few accented letters and emoji in the stdlib and let the model emit invalid
//! UTF-8. With `<unk>` the model still sees *that* something was there, and decoding
//! prints U+FFFD (�) for it.

use super::{Encoded, TokenId};

pub const PAD: TokenId = 128;
pub const EOS: TokenId = 129;
pub const UNK: TokenId = 130;
pub const CHAR_VOCAB_SIZE: i64 = 131;

/// Text -> ids, counting the characters that became `<unk>`.
pub fn encode(text: &str) -> Encoded {
    let mut ids = Vec::with_capacity(text.len());
    let mut unknown = 0;
    for c in text.chars() {
        if c.is_ascii() {
            ids.push(c as TokenId);
        } else {
            ids.push(UNK);
            unknown += 1;
        }
    }
    Encoded { ids, unknown }
}

/// The character of one token: `None` for `<pad>` and `<eos>`, U+FFFD for `<unk>`.
pub fn decode_one(id: TokenId) -> Option<char> {
    match id {
        0..=127 => Some(id as u8 as char),
        PAD | EOS => None,
        _ => Some('\u{FFFD}'),
    }
}

/// How a token is shown in tables and on plot axes, where an invisible newline or an
/// empty `<eos>` would be confusing.
pub fn display(id: TokenId) -> String {
    match id {
        PAD => "<pad>".into(),
        EOS => "<eos>".into(),
        UNK => "<unk>".into(),
        10 => "\\n".into(),
        9 => "\\t".into(),
        13 => "\\r".into(),
        32 => "␣".into(),
        0..=127 if (id as u8).is_ascii_control() => format!("\\x{id:02x}"),
        _ => decode_one(id).map(String::from).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    #[test]
    fn ascii_ids_are_character_codes() {
        let t = Tokenizer::default();
        assert_eq!(t.encode("a").ids, vec![97]);
        assert_eq!(t.encode("\n").ids, vec![10]);
        assert_eq!(t.decode(&[100, 101, 102]), "def");
    }

    #[test]
    fn non_ascii_becomes_unk_and_is_counted() {
        let t = Tokenizer::default();
        let e = t.encode("é=1");
        assert_eq!(e.ids, vec![UNK, b'=' as TokenId, b'1' as TokenId]);
        assert_eq!(e.unknown, 1);
        assert_eq!(t.decode(&e.ids), "\u{FFFD}=1");
    }

    #[test]
    fn specials_decode_to_nothing_visible() {
        let t = Tokenizer::default();
        assert_eq!(t.decode(&[b'x' as TokenId, EOS, PAD]), "x");
        assert_eq!(t.display(EOS), "<eos>");
    }
}
