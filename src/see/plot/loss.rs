//! Loss curves (`sympathy plot`, and `RUN_DIR/loss.png` after every training run):
//! train and validation loss of one or more runs against step, with the learning rate
//! on a second axis, and against bytes seen, tokens seen or training time
//! ([`loss_chart`], [`plot_runs`], [`XAxis`]). The chart's size is fixed
//! ([`LOSS_CHART_SIZE`]) so tests can check it.
//!
//! Losses are in bits per byte when every run recorded its bytes (`bytes_seen`,
//! `val_bpb` in `metrics.jsonl`), so a char run and a BPE run compare on one scale;
//! older runs are drawn in nats per token.

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

/// What the lower chart's x axis counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XAxis {
    /// Bytes of training text seen: runs with different tokenizers compare fairly.
    #[default]
    Bytes,
    /// Tokens seen: runs with different batch sizes (same tokenizer) compare fairly.
    Tokens,
    /// Wall-clock training time in seconds: what a budget buys.
    Time,
}

impl XAxis {
    fn value(self, r: &Record) -> f64 {
        match self {
            XAxis::Bytes => r.bytes_seen.unwrap_or(r.tokens_seen) as f64,
            XAxis::Tokens => r.tokens_seen as f64,
            XAxis::Time => r.elapsed_s,
        }
    }

    fn name(self) -> &'static str {
        match self {
            XAxis::Bytes => "bytes seen",
            XAxis::Tokens => "tokens seen",
            XAxis::Time => "training time (s)",
        }
    }
}

/// The losses as drawn: bits per byte when the records allow it, else nats per token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Units {
    BitsPerByte,
    NatsPerToken,
}

impl Units {
    fn of(runs: &[RunCurves]) -> Self {
        let per_byte = runs.iter().flat_map(|r| &r.records).all(|r| {
            r.bytes_seen.is_some_and(|b| b > 0) && (r.val_loss.is_none() || r.val_bpb.is_some())
        });
        if per_byte {
            Units::BitsPerByte
        } else {
            Units::NatsPerToken
        }
    }

    fn train(self, r: &Record) -> Option<f64> {
        match self {
            Units::NatsPerToken => r.loss,
            Units::BitsPerByte => {
                let bytes_per_token = r.bytes_seen? as f64 / r.tokens_seen.max(1) as f64;
                Some(crate::model::bits_per_byte(r.loss?, bytes_per_token))
            }
        }
    }

    fn val(self, r: &Record) -> Option<f64> {
        match self {
            Units::NatsPerToken => r.val_loss,
            Units::BitsPerByte => r.val_bpb,
        }
    }

    fn desc(self) -> &'static str {
        match self {
            Units::BitsPerByte => "loss (bits/byte)",
            Units::NatsPerToken => "loss (nats/token)",
        }
    }
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
    units: Units,
    x_desc: &str,
    x_ticks: &dyn Fn(&f64) -> String,
) -> DrawResult {
    let mut mesh = chart.configure_mesh();
    if fonts_available() {
        mesh.x_desc(x_desc)
            .y_desc(units.desc())
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
    units: Units,
    x: impl Fn(&Record) -> f64,
) -> DrawResult {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let points = |loss: &dyn Fn(&Record) -> Option<f64>| -> Vec<(f64, f64)> {
        run.records
            .iter()
            .filter_map(|r| Some((x(r), loss(r)?)))
            .collect()
    };
    let (train, val) = (points(&|r| units.train(r)), points(&|r| units.val(r)));
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
/// and, below, against `x` (bytes seen, tokens seen or time). One colour per run.
pub fn loss_chart(path: &Path, runs: &[RunCurves], x: XAxis) -> Result<()> {
    if runs.iter().all(|r| r.records.is_empty()) {
        return Err(plot_error(
            path,
            "no metrics to plot; train for a step first",
        ));
    }
    let all = || runs.iter().flat_map(|r| r.records.iter());
    let units = Units::of(runs);
    let losses = all().flat_map(|r| [units.train(r), units.val(r)]).flatten();
    let (y_lo, y_hi) = range(losses, 0.05);
    let y_lo = y_lo.max(0.0);
    let max_step = all().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
    let max_x = all().map(|r| x.value(r)).fold(0.0, f64::max).max(1e-9);
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
        draw_loss_mesh(&mut chart, units, "step", &|v: &f64| format!("{v:.0}"))?;
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
            draw_losses(&mut chart, run, color, units, |r| r.step as f64)?;
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

        // Lower: loss against bytes, tokens or time.
        let caption = format!("loss against {}", x.name());
        let mut chart = loss_axes(&lower, &caption, max_x, (y_lo, y_hi))?;
        draw_loss_mesh(&mut chart, units, x.name(), &|v: &f64| compact(*v))?;
        for (i, run) in runs.iter().enumerate() {
            let color = RUN_COLORS[i % RUN_COLORS.len()];
            draw_losses(&mut chart, run, color, units, |r| x.value(r))?;
        }
        Ok(())
    })
}

/// Reads `RUN_DIR/metrics.jsonl` of each run and draws [`loss_chart`] to `out`.
pub fn plot_runs(run_dirs: &[std::path::PathBuf], out: &Path, x: XAxis) -> Result<()> {
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
    loss_chart(out, &runs, x)
}
