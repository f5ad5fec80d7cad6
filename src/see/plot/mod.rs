//! PNG pictures of a model and its training: attention maps (`sympathy explain`,
//! `attention.rs`) and loss curves (`sympathy plot`, and `RUN_DIR/loss.png` after every
//! training run, `loss.rs`), drawn with `plotters` into a bitmap. This file holds what
//! both share: the font check, text drawing and saving a picture.
//!
//! Text needs a system font (found through fontconfig). A machine without one still
//! gets every picture, without its labels: [`fonts_available`] is checked once and text
//! is skipped rather than failing the drawing, and the CLI says so.
//!
//! Image sizes are fixed functions of the content ([`attention_grid_size`],
//! [`attention_map_size`], [`LOSS_CHART_SIZE`]) so tests can check them.

mod attention;
mod loss;

pub use attention::{
    attention_grid, attention_grid_size, attention_map, attention_map_cell_center,
    attention_map_size, heat, MASKED,
};
pub use loss::{loss_chart, plot_runs, RunCurves, XAxis, LOSS_CHART_SIZE};

use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::Pos;
use std::path::Path;
use std::sync::OnceLock;

/// Whether a sans-serif and a monospace font can be loaded (checked once).
pub fn fonts_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        [FontFamily::SansSerif, FontFamily::Monospace]
            .into_iter()
            .all(|f| {
                FontDesc::new(f, 12.0, FontStyle::Normal)
                    .box_size("Ag0")
                    .is_ok()
            })
    })
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), String>;

fn text(
    area: &Area,
    s: &str,
    at: (i32, i32),
    size: f64,
    anchor: Pos,
    family: FontFamily,
) -> DrawResult {
    if !fonts_available() {
        return Ok(());
    }
    let style = TextStyle::from((family, size).into_font()).pos(anchor);
    area.draw(&Text::new(s.to_string(), at, style))
        .map_err(|e| e.to_string())
}

fn save(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> DrawResult) -> Result<()> {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    draw(&root).map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}
