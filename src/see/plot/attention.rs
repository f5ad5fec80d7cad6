//! Attention maps (`sympathy explain`): one layer's heads as a grid of heat maps
//! ([`attention_grid`]) or one head as a single large map ([`attention_map`]). Row `q`
//! of a map is what position `q` attends to; the cells above the diagonal, which a
//! query may not see, are grey.
//!
//! The image sizes are fixed functions of the head count and the prompt length
//! ([`attention_grid_size`], [`attention_map_size`]), and the cell centres are known
//! ([`attention_map_cell_center`]), so tests can check the pixels.

use super::{plot_error, save, text, Area, DrawResult};
use crate::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use tch::{Kind, Tensor};

/// Cells above the diagonal: positions a query may not see.
pub const MASKED: RGBColor = RGBColor(215, 215, 215);
// Margins of one attention panel, in pixels.
const LEFT: u32 = 44;
const RIGHT: u32 = 10;
const TOP: u32 = 24;
const BOTTOM: u32 = 36;
const TITLE: u32 = 34;
/// Heads per row in a layer's grid.
const GRID_COLS: u32 = 4;
/// Pictures are at least this wide, so that the title fits above a short prompt.
const MIN_WIDTH: u32 = 720;

/// Side of one attention cell in pixels: big enough to read, small enough that a grid
/// of a long prompt stays a reasonable picture.
fn cell_px(t: u32, budget: u32, min: u32, max: u32) -> u32 {
    (budget / t.max(1)).clamp(min, max)
}

fn grid_cell(t: u32) -> u32 {
    cell_px(t, 384, 2, 24)
}

fn map_cell(t: u32) -> u32 {
    cell_px(t, 768, 3, 48)
}

fn panel_size(t: u32, cell: u32) -> (u32, u32) {
    (LEFT + t * cell + RIGHT, TOP + t * cell + BOTTOM)
}

/// The size of the PNG [`attention_grid`] draws for `n_head` heads over `t` positions.
pub fn attention_grid_size(n_head: u32, t: u32) -> (u32, u32) {
    let cols = n_head.clamp(1, GRID_COLS);
    let rows = n_head.div_ceil(cols).max(1);
    let (w, h) = panel_size(t, grid_cell(t));
    ((cols * w).max(MIN_WIDTH), TITLE + rows * h)
}

/// The size of the PNG [`attention_map`] draws for one head over `t` positions.
pub fn attention_map_size(t: u32) -> (u32, u32) {
    let (w, h) = panel_size(t, map_cell(t));
    (w.max(MIN_WIDTH), TITLE + h)
}

/// The pixel at the centre of cell (query `q`, key `k`) in [`attention_map`]'s picture
/// of `t` positions.
pub fn attention_map_cell_center(t: u32, q: u32, k: u32) -> (u32, u32) {
    let cell = map_cell(t);
    (
        LEFT + k * cell + cell / 2,
        TITLE + TOP + q * cell + cell / 2,
    )
}

/// The colour of an attention weight: white (0) to dark blue (1). The shade follows the
/// square root of the weight: over a long prompt a head spreads weights of about 1/T,
/// which a linear scale would paint all but white.
pub fn heat(w: f32) -> RGBColor {
    let w = (w.clamp(0.0, 1.0) as f64).sqrt();
    let stops = [
        (255.0, 255.0, 255.0),
        (107.0, 174.0, 214.0),
        (8.0, 48.0, 107.0),
    ];
    let (i, f) = if w < 0.5 {
        (0, w * 2.0)
    } else {
        (1, (w - 0.5) * 2.0)
    };
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(
        mix(stops[i].0, stops[i + 1].0),
        mix(stops[i].1, stops[i + 1].1),
        mix(stops[i].2, stops[i + 1].2),
    )
}

/// One heat map of weights `w` (T×T, row = query) at pixel `origin` of `area`.
fn draw_panel(
    area: &Area,
    origin: (i32, i32),
    w: &[Vec<f32>],
    labels: &[String],
    cell: u32,
    caption: &str,
) -> DrawResult {
    let t = w.len();
    let (x0, y0) = (origin.0 + LEFT as i32, origin.1 + TOP as i32);
    let c = cell as i32;
    for (q, row) in w.iter().enumerate() {
        for (k, &v) in row.iter().enumerate() {
            let color = if k > q { MASKED } else { heat(v) };
            let (x, y) = (x0 + k as i32 * c, y0 + q as i32 * c);
            area.draw(&Rectangle::new([(x, y), (x + c, y + c)], color.filled()))
                .map_err(|e| e.to_string())?;
        }
    }
    let side = t as i32 * c;
    area.draw(&Rectangle::new(
        [(x0, y0), (x0 + side, y0 + side)],
        BLACK.stroke_width(1),
    ))
    .map_err(|e| e.to_string())?;
    text(
        area,
        caption,
        (x0 + side / 2, origin.1 + 4),
        14.0,
        Pos::new(HPos::Center, VPos::Top),
        FontFamily::SansSerif,
    )?;
    // Characters on the axes; with small cells only every `every`-th one fits.
    let size = (cell as f64 * 0.8).clamp(8.0, 16.0);
    let every = (10 / cell.max(1)).max(1) as usize;
    for (i, label) in labels.iter().enumerate().filter(|(i, _)| i % every == 0) {
        let mid = i as i32 * c + c / 2;
        text(
            area,
            label,
            (x0 - 4, y0 + mid),
            size,
            Pos::new(HPos::Right, VPos::Center),
            FontFamily::Monospace,
        )?;
        text(
            area,
            label,
            (x0 + mid, y0 + side + 3),
            size,
            Pos::new(HPos::Center, VPos::Top),
            FontFamily::Monospace,
        )?;
    }
    text(
        area,
        "key (attended to) →",
        (x0 + side / 2, y0 + side + BOTTOM as i32 - 14),
        11.0,
        Pos::new(HPos::Center, VPos::Top),
        FontFamily::SansSerif,
    )
}

fn checked_maps(att: &Tensor, labels: &[String], path: &Path) -> Result<Vec<Vec<Vec<f32>>>> {
    let size = att.size();
    if size.len() != 3 || size[1] != size[2] || size[1] as usize != labels.len() {
        return Err(plot_error(
            path,
            format!(
                "attention must be (H, T, T) with T = {} labels, got {size:?}",
                labels.len()
            ),
        ));
    }
    let att = att.to_kind(Kind::Float).to_device(tch::Device::Cpu);
    Ok((0..size[0])
        .map(|h| {
            (0..size[1])
                .map(|q| Vec::<f32>::try_from(att.get(h).get(q)).expect("a float row"))
                .collect()
        })
        .collect())
}

/// The picture's title, top left.
fn draw_title(area: &Area, title: &str) -> DrawResult {
    text(
        area,
        title,
        (8, 8),
        18.0,
        Pos::new(HPos::Left, VPos::Top),
        FontFamily::SansSerif,
    )
}

/// One layer's attention, a grid of its heads: `att` (H, T, T), `labels` the T tokens.
/// Row `q` of a head is what position `q` attends to; grey cells are masked (future).
pub fn attention_grid(path: &Path, att: &Tensor, labels: &[String], title: &str) -> Result<()> {
    let maps = checked_maps(att, labels, path)?;
    let (n_head, t) = (maps.len() as u32, labels.len() as u32);
    let cell = grid_cell(t);
    let (pw, ph) = panel_size(t, cell);
    let cols = n_head.clamp(1, GRID_COLS);
    save(path, attention_grid_size(n_head, t), |root| {
        draw_title(root, title)?;
        for (h, w) in maps.iter().enumerate() {
            let (col, row) = (h as u32 % cols, h as u32 / cols);
            let origin = ((col * pw) as i32, (TITLE + row * ph) as i32);
            draw_panel(root, origin, w, labels, cell, &format!("head {h}"))?;
        }
        Ok(())
    })
}

/// One head's attention (T, T) as a single large map.
pub fn attention_map(path: &Path, att: &Tensor, labels: &[String], title: &str) -> Result<()> {
    let maps = checked_maps(&att.unsqueeze(0), labels, path)?;
    let t = labels.len() as u32;
    save(path, attention_map_size(t), |root| {
        draw_title(root, title)?;
        draw_panel(
            root,
            (0, TITLE as i32),
            &maps[0],
            labels,
            map_cell(t),
            "row: the query; column: the key it attends to",
        )
    })
}
