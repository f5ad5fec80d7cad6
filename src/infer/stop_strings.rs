//! Stop strings in a stream: `--stop "\n\n"` must end the output *before* the stop
//! string, yet text should reach the screen as soon as it is sampled.
//!
//! The two pull against each other when a piece might be the start of a stop string:
//! after `"\n"` we cannot know yet whether `"\n\n"` follows. [`StopMatcher`] shows
//! everything that can no longer become part of a stop string and holds back only the
//! shortest tail that still could (what llama.cpp's server does with partial stop
//! matches), so the held text is never longer than the longest stop string.

/// Releases text as it is generated, holding back only what might still turn out to be
/// the beginning of a stop string.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// A matcher for `stops` (copied, so that it can live as long as its request);
    /// empty strings among them never match.
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.to_vec(),
            pending: String::new(),
        }
    }

    /// Adds `piece`; returns the text that is now safe to show and whether a stop
    /// string was completed (the text then ends right before it).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // The earliest suffix of `pending` that a stop string starts with must wait.
        let hold = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.pending[i..])))
            .unwrap_or(self.pending.len());
        let out = self.pending[..hold].to_string();
        self.pending.drain(..hold);
        (out, false)
    }

    /// The text held back, once generation ended without completing a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_is_held_back_and_cut() {
        let stops = vec!["\n\n".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("a"), ("a".to_string(), false));
        assert_eq!(
            m.push("\n"),
            (String::new(), false),
            "a newline may start the stop string"
        );
        assert_eq!(m.push("b"), ("\nb".to_string(), false));
        assert_eq!(m.push("\n"), (String::new(), false));
        assert_eq!(m.push("\n"), (String::new(), true));
    }

    #[test]
    fn earliest_of_several_stops_wins_and_flush_returns_the_rest() {
        let stops = vec!["return".to_string(), "ur".to_string(), String::new()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("x = 1; r"), ("x = 1; ".to_string(), false));
        assert_eq!(m.push("et"), (String::new(), false));
        // "ur" completes inside "retur" before "return" can: the output ends at "ret".
        assert_eq!(m.push("ur"), ("ret".to_string(), true));
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("abc r"), ("abc ".to_string(), false));
        assert_eq!(m.flush(), "r");
    }
}
