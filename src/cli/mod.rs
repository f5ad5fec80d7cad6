//! The command line layer, kept thin: each command parses its flags (clap), calls the
//! library, and prints the result. Errors are `anyhow` here at the edge only; `main`
//! turns them into one line. One file per group of commands; the helpers they share
//! are below.

use anyhow::{bail, Result};
use sympathy::see::plot;

pub mod bench;
pub mod generate;
pub mod inspect;
pub mod interop;
pub mod serve;
pub mod tokenizer;
pub mod train;

/// Applies `Some` overrides to a config, naming each field once.
macro_rules! override_fields {
    ($cfg:expr, $flags:expr, [$($field:ident),*]) => {
        $( if let Some(v) = $flags.$field { $cfg.$field = v; } )*
    };
}
pub(crate) use override_fields;

/// `--threads`: at least 1; unset leaves libtorch's default.
pub(crate) fn set_threads(threads: Option<i32>) -> Result<()> {
    match threads {
        Some(n) if n < 1 => bail!("--threads: must be at least 1, got {n}"),
        Some(n) => tch::set_num_threads(n),
        None => {}
    }
    Ok(())
}

pub(crate) fn warn_if_no_fonts() {
    if !plot::fonts_available() {
        eprintln!("warning: no system font found (fontconfig); pictures are drawn without labels");
    }
}
