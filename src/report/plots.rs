//! Plots of a collapse, as SVG and PNG: accuracy against blocks removed, and accuracy against
//! MACs, with the chosen network marked.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::collapse::CollapseReport;
use crate::fsutil::write_atomic_with;

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

/// One plot: x values, accuracy curves in percent (the selection split's first, then the test
/// split's), and the chosen index.
struct Series<'a> {
    title: &'a str,
    x_label: &'a str,
    /// Whether x counts something (ticks only at whole numbers, labelled without decimals).
    integer_x: bool,
    xs: Vec<f64>,
    curves: Vec<(String, Vec<f64>)>,
    chosen: usize,
}

/// Writes `accuracy_vs_blocks.{svg,png}` and `accuracy_vs_macs.{svg,png}` into `dir`: accuracy on
/// the selection split (which decides) and on the test split (reported), the chosen step marked.
pub fn write_collapse_plots(dir: &Path, report: &CollapseReport) -> Result<(), PlotError> {
    ensure_font();
    let curves = vec![
        (
            format!("{} (decides)", report.selection_split),
            report
                .steps
                .iter()
                .map(|s| 100.0 * s.selection.accuracy)
                .collect::<Vec<_>>(),
        ),
        (
            "test (reported)".to_string(),
            report
                .steps
                .iter()
                .map(|s| 100.0 * s.test.accuracy)
                .collect(),
        ),
    ];
    let plots = [
        (
            "accuracy_vs_blocks",
            Series {
                title: "Accuracy as blocks are removed (no finetuning)",
                x_label: "blocks removed",
                integer_x: true,
                xs: report
                    .steps
                    .iter()
                    .map(|s| s.blocks_removed as f64)
                    .collect(),
                curves: curves.clone(),
                chosen: report.chosen,
            },
        ),
        (
            "accuracy_vs_macs",
            Series {
                title: "Accuracy against cost",
                x_label: "MACs per image (M, conv + linear + attention)",
                integer_x: false,
                xs: report.steps.iter().map(|s| s.macs as f64 / 1e6).collect(),
                curves,
                chosen: report.chosen,
            },
        ),
    ];
    for (name, series) in plots {
        let svg = dir.join(format!("{name}.svg"));
        write_atomic_with(&svg, |path| {
            let root = SVGBackend::new(path, SIZE).into_drawing_area();
            draw(&root, &series).map_err(|e| PlotError::Draw(svg.clone(), e))
        })?;
        let png = dir.join(format!("{name}.png"));
        let mut pixels = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
            draw(&root, &series).map_err(|e| PlotError::Draw(png.clone(), e))?;
        }
        let image =
            image::RgbImage::from_raw(SIZE.0, SIZE.1, pixels).expect("buffer of the right size");
        write_atomic_with(&png, |path| {
            image
                .save_with_format(path, image::ImageFormat::Png)
                .map_err(|e| PlotError::Draw(png.clone(), e.to_string()))
        })?;
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, series: &Series) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(error)?;
    let xs = &series.xs;
    let ys: Vec<f64> = series
        .curves
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .collect();
    let (x_min, x_max) = bounds(xs, 0.0);
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
    let colours = [RGBColor(31, 119, 180), RGBColor(255, 127, 14)];
    for ((label, curve), colour) in series.curves.iter().zip(colours) {
        let points: Vec<(f64, f64)> = xs.iter().copied().zip(curve.iter().copied()).collect();
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
    let chosen = (xs[series.chosen], series.curves[0].1[series.chosen]);
    let highlight = RGBColor(214, 39, 40);
    chart
        .draw_series([Circle::new(chosen, 9, highlight.stroke_width(3))])
        .map_err(error)?
        .label("chosen")
        .legend(move |(x, y)| Circle::new((x, y), 6, highlight.stroke_width(3)));
    // Lower left: accuracy curves start high and fall to the right, so that corner stays clear.
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
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
    let pad = ((max - min) * 0.08).max(0.5);
    let (low, high) = (min - pad, max + pad);
    let widen = ((min_span - (high - low)) / 2.0).max(0.0);
    (low - widen, high + widen)
}
