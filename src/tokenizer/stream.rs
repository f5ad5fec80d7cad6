//! Bytes arriving token by token -> text that is safe to print. A byte-level BPE token
//! can end in the middle of a UTF-8 character (`é` is `c3 a9`; one token may hold `c3`
//! and the next `a9`), so decoding each token alone would print two U+FFFD where one
//! `é` belongs. [`Utf8Stream`] releases every complete character as soon as its last
//! byte arrives and holds back only an incomplete tail (at most 3 bytes); bytes that can
//! never become a character are released as U+FFFD, once each.

/// Incremental UTF-8 decoding of a byte stream.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    /// The start of a character whose remaining bytes have not arrived yet.
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes`; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut used = 0;
        for chunk in self.pending.utf8_chunks() {
            out.push_str(chunk.valid());
            used += chunk.valid().len();
            let bad = chunk.invalid();
            if bad.is_empty() {
                continue;
            }
            // The last chunk's invalid bytes may be a character still arriving: they
            // stay, unless they already cannot start one.
            let at_end = used + bad.len() == self.pending.len();
            if at_end && could_continue(bad) {
                break;
            }
            out.push('\u{FFFD}');
            used += bad.len();
        }
        self.pending.drain(..used);
        out
    }

    /// At the end of the stream: an incomplete character is U+FFFD, or nothing.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        if rest.is_empty() {
            String::new()
        } else {
            '\u{FFFD}'.to_string()
        }
    }
}

/// Whether `bytes` (which `utf8_chunks` called invalid at the very end of the input) is
/// the first part of a character: a lead byte and fewer continuation bytes than it
/// announces, within the ranges UTF-8 allows.
fn could_continue(bytes: &[u8]) -> bool {
    let need = match bytes[0] {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return false,
    };
    // Appending any continuation bytes makes it valid iff it is a valid prefix: test
    // with the smallest and the largest continuation byte.
    bytes.len() < need
        && [0x80u8, 0xBF].iter().any(|&fill| {
            let mut whole = bytes.to_vec();
            whole.resize(need, fill);
            std::str::from_utf8(&whole).is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` split at every position into pieces of `size` bytes.
    fn pieces(bytes: &[u8], size: usize) -> String {
        let mut s = Utf8Stream::new();
        let mut out: String = bytes.chunks(size).map(|c| s.push(c)).collect();
        out.push_str(&s.finish());
        out
    }

    #[test]
    fn every_split_of_valid_text_gives_the_text_back() {
        let text = "é = \"naïve\" # 日本語 🐍 end";
        for size in 1..=text.len() {
            assert_eq!(pieces(text.as_bytes(), size), text, "pieces of {size}");
        }
    }

    #[test]
    fn incomplete_character_is_held_then_released_once() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(b"a\xc3"), "a");
        assert_eq!(s.push(b"\xa9b"), "\u{e9}b");
        assert_eq!(s.push(b"\xf0\x9f"), "");
        assert_eq!(s.push(b"\x90"), "");
        assert_eq!(s.push(b"\x8d"), "\u{1F40D}");
    }

    #[test]
    fn invalid_bytes_match_lossy_decoding() {
        for bytes in [
            &b"\xff\xfeab"[..],
            b"a\xc3(b",
            b"\xe2\x82",
            b"\xed\xa0\x80x",
            b"\xf0\x9f\x90",
            b"\x80\x80z",
            b"\xc0\xaf",
        ] {
            let lossy = String::from_utf8_lossy(bytes);
            for size in 1..=bytes.len() {
                assert_eq!(pieces(bytes, size), lossy, "{bytes:x?} in pieces of {size}");
            }
        }
    }
}
