//! PNG pictures of a model and its training: attention maps (`sympathy explain`) and
//! loss curves (`sympathy plot`, and `RUN_DIR/loss.png` after every training run),
//! drawn with `plotters` into a bitmap.
//!
//! Text needs a system font (found through fontconfig). A machine without one still
//! gets every picture, without its labels: [`fonts_available`] is checked once and text
//! is skipped rather than failing the drawing, and the CLI says so.
//!
//! Image sizes are fixed functions of the content ([`attention_grid_size`],
//! [`attention_map_size`], [`LOSS_CHART_SIZE`]) so tests can check them.

use crate::metrics::Record;
use crate::{Error, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::OnceLock;
use tch::{Kind, Tensor};

/// Width and height of the loss chart.
pub const LOSS_CHART_SIZE: (u32, u32) = (1000, 900);

/// Colours of successive runs (the "tab10" palette).
const RUN_COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

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

fn save(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> DrawResult) -> Result<()> {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    draw(&root).map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
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

/// An axis label for a count: `12000` -> `12k`, `2500000` -> `2.5M`.
fn compact(v: f64) -> String {
    let (x, unit) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let s = format!("{x:.1}");
    format!("{}{unit}", s.strip_suffix(".0").unwrap_or(&s))
}

/// One run's metrics, and the name it has in the legend.
pub struct RunCurves {
    pub label: String,
    pub records: Vec<Record>,
}

/// `(lo, hi)` of finite values, padded so that a flat or single point still has a range.
fn range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(1e-9);
    (lo - pad * span, hi + pad * span)
}

/// Loss (y) against step or tokens seen (x), both as floats.
type LossAxes<'a> =
    ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One half of the loss chart: loss from `y_lo` to `y_hi` against x from 0 to `x_max`,
/// with room for tick labels on three sides (none without fonts) and the caption.
fn loss_axes<'a>(
    area: &Area<'a>,
    caption: &str,
    x_max: f64,
    (y_lo, y_hi): (f64, f64),
) -> std::result::Result<LossAxes<'a>, String> {
    let labels = fonts_available();
    let (label_x, label_y) = if labels { (40, 64) } else { (0, 0) };
    let mut b = ChartBuilder::on(area);
    b.margin(12)
        .x_label_area_size(label_x)
        .y_label_area_size(label_y)
        .right_y_label_area_size(label_y);
    if labels {
        b.caption(caption, ("sans-serif", 18));
    }
    b.build_cartesian_2d(0f64..x_max, y_lo..y_hi)
        .map_err(|e| e.to_string())
}

/// The grid and the loss axes' names and tick labels (`x_ticks` reads an x value), or
/// the bare grid without fonts. Drawn after any secondary axis is set, which takes the
/// right-hand label room from the primary one.
fn draw_loss_mesh(
    chart: &mut LossAxes,
    x_desc: &str,
    x_ticks: &dyn Fn(&f64) -> String,
) -> DrawResult {
    let mut mesh = chart.configure_mesh();
    if fonts_available() {
        mesh.x_desc(x_desc)
            .y_desc("loss (nats/char)")
            .x_label_formatter(x_ticks);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| e.to_string())
}

/// One run's losses against `x` of its records: train faint, validation bold with a dot
/// per evaluation. The legend entries show only on a chart that draws its legend.
fn draw_losses(
    chart: &mut LossAxes,
    run: &RunCurves,
    color: RGBColor,
    x: impl Fn(&Record) -> f64,
) -> DrawResult {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let points = |loss: fn(&Record) -> Option<f64>| -> Vec<(f64, f64)> {
        run.records
            .iter()
            .filter_map(|r| Some((x(r), loss(r)?)))
            .collect()
    };
    let (train, val) = (points(|r| r.loss), points(|r| r.val_loss));
    chart
        .draw_series(LineSeries::new(train, color.mix(0.35).stroke_width(1)))
        .map_err(err)?
        .label(format!("{} train", run.label))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.mix(0.35)));
    chart
        .draw_series(LineSeries::new(val.clone(), color.stroke_width(2)))
        .map_err(err)?
        .label(format!("{} val", run.label))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .draw_series(val.into_iter().map(|p| Circle::new(p, 3, color.filled())))
        .map_err(err)?;
    Ok(())
}

/// Train and validation loss against step (with the learning rate on a second axis)
/// and, below, against tokens seen: runs with different batch sizes compare fairly
/// only per token. One colour per run.
pub fn loss_chart(path: &Path, runs: &[RunCurves]) -> Result<()> {
    if runs.iter().all(|r| r.records.is_empty()) {
        return Err(plot_error(
            path,
            "no metrics to plot; train for a step first",
        ));
    }
    let all = || runs.iter().flat_map(|r| r.records.iter());
    let losses = all().flat_map(|r| [r.loss, r.val_loss]).flatten();
    let (y_lo, y_hi) = range(losses, 0.05);
    let y_lo = y_lo.max(0.0);
    let max_step = all().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
    let max_tokens = all().map(|r| r.tokens_seen).max().unwrap_or(1).max(1) as f64;
    let max_lr = all().map(|r| r.lr).fold(0.0, f64::max).max(1e-12) * 1.05;
    let labels = fonts_available();

    save(path, LOSS_CHART_SIZE, |root| {
        let (upper, lower) = root.split_vertically(LOSS_CHART_SIZE.1 / 2);
        let err = |e: DrawingAreaErrorKind<_>| e.to_string();

        // Upper: loss and learning rate against step.
        let mut chart = loss_axes(
            &upper,
            "loss against step (dashed: learning rate, right axis)",
            max_step,
            (y_lo, y_hi),
        )?
        .set_secondary_coord(0f64..max_step, 0f64..max_lr);
        draw_loss_mesh(&mut chart, "step", &|v: &f64| format!("{v:.0}"))?;
        let mut secondary = chart.configure_secondary_axes();
        if labels {
            secondary
                .y_desc("learning rate")
                .y_label_formatter(&|v: &f64| format!("{v:.1e}"));
        } else {
            secondary.x_labels(0).y_labels(0);
        }
        secondary.draw().map_err(err)?;
        for (i, run) in runs.iter().enumerate() {
            let color = RUN_COLORS[i % RUN_COLORS.len()];
            draw_losses(&mut chart, run, color, |r| r.step as f64)?;
            let lr: Vec<(f64, f64)> = run.records.iter().map(|r| (r.step as f64, r.lr)).collect();
            chart
                .draw_secondary_series(DashedLineSeries::new(
                    lr,
                    6,
                    4,
                    color.mix(0.8).stroke_width(1),
                ))
                .map_err(err)?
                .label(format!("{} lr", run.label))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 8, y)], color.mix(0.8)));
        }
        if labels {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(err)?;
        }

        // Lower: loss against tokens seen.
        let mut chart = loss_axes(&lower, "loss against tokens seen", max_tokens, (y_lo, y_hi))?;
        draw_loss_mesh(&mut chart, "tokens seen", &|v: &f64| compact(*v))?;
        for (i, run) in runs.iter().enumerate() {
            let color = RUN_COLORS[i % RUN_COLORS.len()];
            draw_losses(&mut chart, run, color, |r| r.tokens_seen as f64)?;
        }
        Ok(())
    })
}

/// Reads `RUN_DIR/metrics.jsonl` of each run and draws [`loss_chart`] to `out`.
pub fn plot_runs(run_dirs: &[std::path::PathBuf], out: &Path) -> Result<()> {
    let mut runs = Vec::new();
    for dir in run_dirs {
        let file = dir.join("metrics.jsonl");
        if !file.is_file() {
            return Err(Error::config(
                "RUN_DIR",
                format!(
                    "{} has no metrics.jsonl; pass a folder that `sympathy train --out` wrote",
                    dir.display()
                ),
            ));
        }
        let records = crate::metrics::read(&file)?;
        if records.is_empty() {
            return Err(Error::config(
                "RUN_DIR",
                format!(
                    "{} has no complete line; train for a step first",
                    file.display()
                ),
            ));
        }
        let label = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        runs.push(RunCurves { label, records });
    }
    loss_chart(out, &runs)
}
