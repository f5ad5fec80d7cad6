//! Loss curves (`sympathy plot`, and `RUN_DIR/loss.png` after every training run):
//! train and validation loss of one or more runs against step, with the learning rate
//! on a second axis, and against tokens seen ([`loss_chart`], [`plot_runs`]). The
//! chart's size is fixed ([`LOSS_CHART_SIZE`]) so tests can check it.

use super::{fonts_available, plot_error, save, Area, DrawResult};
use crate::run::metrics::Record;
use crate::{Error, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;

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
        let records = crate::run::metrics::read(&file)?;
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
