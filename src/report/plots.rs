//! Plots of a collapse, as SVG and PNG: accuracy against blocks removed, and accuracy against
//! MACs, with the chosen network marked.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::collapse::CollapseReport;
use crate::fsutil::write_atomic_with;
use crate::report::sweep::SweepReport;

/// DejaVu Sans (Bitstream Vera licence, `assets/fonts/LICENSE-DejaVu`), so PNGs render the same on
/// every machine without system fonts.
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

const SIZE: (u32, u32) = (720, 440);

fn ensure_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        if register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            tracing::warn!("could not register the embedded font; plot text may be missing");
        }
    });
}

/// What can go wrong writing a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The plot could not be drawn or encoded.
    #[error("{0}: {1}")]
    Draw(std::path::PathBuf, String),
    /// The file could not be written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One plot: labelled accuracy curves in percent, each its own (x, y) points, and the points to
/// mark (the chosen network, or a Pareto frontier).
struct Series<'a> {
    title: &'a str,
    x_label: &'a str,
    /// Whether x counts something (ticks only at whole numbers, labelled without decimals).
    integer_x: bool,
    curves: Vec<(String, Vec<(f64, f64)>)>,
    marked: Vec<(f64, f64)>,
    marked_label: &'a str,
    /// Where the legend goes: the corner the curves leave clear.
    legend: SeriesLabelPosition,
}

/// Writes `accuracy_vs_blocks.{svg,png}` and `accuracy_vs_macs.{svg,png}` into `dir`: accuracy on
/// the selection split (which decides) and on the test split (reported), the chosen step marked.
pub fn write_collapse_plots(dir: &Path, report: &CollapseReport) -> Result<(), PlotError> {
    let accuracy_at = |xs: &[f64]| -> Vec<(String, Vec<(f64, f64)>)> {
        vec![
            (
                format!("{} (decides)", report.selection_split),
                xs.iter()
                    .zip(&report.steps)
                    .map(|(&x, s)| (x, 100.0 * s.selection.accuracy))
                    .collect(),
            ),
            (
                "test (reported)".to_string(),
                xs.iter()
                    .zip(&report.steps)
                    .map(|(&x, s)| (x, 100.0 * s.test.accuracy))
                    .collect(),
            ),
        ]
    };
    let blocks: Vec<f64> = report
        .steps
        .iter()
        .map(|s| s.blocks_removed as f64)
        .collect();
    let macs: Vec<f64> = report.steps.iter().map(|s| s.macs as f64 / 1e6).collect();
    let chosen = &report.steps[report.chosen];
    let chosen_accuracy = 100.0 * chosen.selection.accuracy;
    write_plot(
        dir,
        "accuracy_vs_blocks",
        &Series {
            title: "Accuracy as blocks are removed (no finetuning)",
            x_label: "blocks removed",
            integer_x: true,
            curves: accuracy_at(&blocks),
            marked: vec![(blocks[report.chosen], chosen_accuracy)],
            marked_label: "chosen",
            // Accuracy falls to the right as blocks go: the lower left stays clear.
            legend: SeriesLabelPosition::LowerLeft,
        },
    )?;
    write_plot(
        dir,
        "accuracy_vs_macs",
        &Series {
            title: "Accuracy against cost",
            x_label: "MACs per image (M, conv + linear + attention)",
            integer_x: false,
            curves: accuracy_at(&macs),
            marked: vec![(macs[report.chosen], chosen_accuracy)],
            marked_label: "chosen",
            // Accuracy falls to the right as blocks go: the lower left stays clear.
            legend: SeriesLabelPosition::LowerLeft,
        },
    )
}

/// Writes a sweep's `test_accuracy_vs_macs.{svg,png}` and `test_accuracy_vs_latency.{svg,png}`
/// into `dir`: one curve per λ (mean test accuracy over seeds after each removal), the Pareto
/// frontier (chosen on the selection split) marked.
pub fn write_sweep_plots(dir: &Path, report: &SweepReport) -> Result<(), PlotError> {
    let curves = |x: &dyn Fn(&crate::report::sweep::StepSummary) -> f64| {
        report
            .lambdas
            .iter()
            .map(|summary| {
                (
                    format!("λ = {}", summary.lambda),
                    summary
                        .steps
                        .iter()
                        .map(|step| (x(step), 100.0 * step.test_accuracy.mean))
                        .collect(),
                )
            })
            .collect::<Vec<_>>()
    };
    let frontier = |x: &dyn Fn(&crate::report::sweep::StepSummary) -> f64| {
        report
            .frontier
            .iter()
            .map(|point| {
                let step = &report.lambdas[point.lambda_index].steps[point.blocks_removed];
                (x(step), 100.0 * step.test_accuracy.mean)
            })
            .collect::<Vec<_>>()
    };
    let macs = |step: &crate::report::sweep::StepSummary| step.macs.mean / 1e6;
    let latency = |step: &crate::report::sweep::StepSummary| step.latency_batch64_ms.mean;
    write_plot(
        dir,
        "test_accuracy_vs_macs",
        &Series {
            title: "Test accuracy against MACs, one curve per λ",
            x_label: "MACs per image (M)",
            integer_x: false,
            curves: curves(&macs),
            marked: frontier(&macs),
            marked_label: "Pareto frontier (validation)",
            // Accuracy rises with cost: the lower right stays clear.
            legend: SeriesLabelPosition::LowerRight,
        },
    )?;
    write_plot(
        dir,
        "test_accuracy_vs_latency",
        &Series {
            title: "Test accuracy against measured latency, one curve per λ",
            x_label: "latency at batch 64 (ms, median)",
            integer_x: false,
            curves: curves(&latency),
            marked: frontier(&latency),
            marked_label: "Pareto frontier (validation)",
            // Accuracy rises with cost: the lower right stays clear.
            legend: SeriesLabelPosition::LowerRight,
        },
    )
}

/// Writes `dir/NAME.svg` and `dir/NAME.png`, each atomically.
fn write_plot(dir: &Path, name: &str, series: &Series) -> Result<(), PlotError> {
    ensure_font();
    let svg = dir.join(format!("{name}.svg"));
    write_atomic_with(&svg, |path| {
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        draw(&root, series).map_err(|e| PlotError::Draw(svg.clone(), e))
    })?;
    let png = dir.join(format!("{name}.png"));
    let mut pixels = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        draw(&root, series).map_err(|e| PlotError::Draw(png.clone(), e))?;
    }
    let image =
        image::RgbImage::from_raw(SIZE.0, SIZE.1, pixels).expect("buffer of the right size");
    write_atomic_with(&png, |path| {
        image
            .save_with_format(path, image::ImageFormat::Png)
            .map_err(|e| PlotError::Draw(png.clone(), e.to_string()))
    })
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, series: &Series) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(error)?;
    let xs: Vec<f64> = series
        .curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .collect();
    let (x_min, x_max) = bounds(&xs, 0.0);
    // MACs and milliseconds are never negative: no room left of zero.
    let x_min = if xs.iter().all(|&x| x >= 0.0) {
        x_min.max(0.0)
    } else {
        x_min
    };
    // At least 10 points of accuracy, so that a flat curve looks flat.
    let (y_min, y_max) = bounds(&ys, ACCURACY_SPAN);
    let mut chart = ChartBuilder::on(root)
        .caption(series.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x_min..x_max, y_min..y_max)
        .map_err(error)?;
    let x_format = |v: &f64| {
        if !series.integer_x {
            format!("{v:.1}")
        } else if (v - v.round()).abs() < 1e-9 {
            format!("{v:.0}")
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_label_formatter(&x_format)
        .x_desc(series.x_label)
        .y_desc("accuracy (%)")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(error)?;
    let colours = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    for (index, (label, points)) in series.curves.iter().enumerate() {
        let colour = colours[index % colours.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(error)?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new([(x - 8, y), (x + 8, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(error)?;
    }
    let highlight = RGBColor(214, 39, 40);
    chart
        .draw_series(
            series
                .marked
                .iter()
                .map(|&p| Circle::new(p, 9, highlight.stroke_width(3))),
        )
        .map_err(error)?
        .label(series.marked_label)
        .legend(move |(x, y)| Circle::new((x, y), 6, highlight.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(series.legend.clone())
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(error)?;
    root.present().map_err(error)
}

/// The smallest accuracy range (percentage points) a plot shows.
const ACCURACY_SPAN: f64 = 10.0;

/// A padded range around the values (never empty), widened about its centre to at least
/// `min_span`.
fn bounds(values: &[f64], min_span: f64) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // At least half a unit (a point of accuracy, a block), or 8 % of the values' size when they
    // are small (MACs in millions of a tiny network).
    let pad = ((max - min) * 0.08)
        .max(0.5f64.min(0.08 * max.abs().max(min.abs())))
        .max(1e-9);
    let (low, high) = (min - pad, max + pad);
    let widen = ((min_span - (high - low)) / 2.0).max(0.0);
    (low - widen, high + widen)
}
