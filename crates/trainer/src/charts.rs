//! PNG charts of a run: loss and accuracy per epoch (train and validation), and the confusion
//! matrix of an evaluation. Text uses an embedded font, so charts look the same everywhere.

use std::path::Path;
use std::sync::Once;

use anyhow::Context;
use plotters::coord::types::RangedCoordusize;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::history::EpochMetrics;

pub const LOSS_CHART: &str = "loss.png";
pub const ACCURACY_CHART: &str = "accuracy.png";
pub const CONFUSION_CHART: &str = "confusion.png";

pub(crate) const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (800, 500);
/// More epoch labels than this overlap on the x axis; plotters then labels round epochs.
const MAX_EPOCH_LABELS: usize = 20;

pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes = include_bytes!("../assets/DejaVuSansMono.ttf");
        plotters::style::register_font(FONT, FontStyle::Normal, bytes).ok();
    });
}

/// Writes `loss.png` and `accuracy.png` for the epochs in `history` into `dir`.
pub fn learning_curves(history: &[EpochMetrics], dir: &Path) -> anyhow::Result<()> {
    let series = |f: fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|m| Some((m.epoch as f64, f(m)?)))
            .collect()
    };
    let loss = [
        ("train", series(|m| m.train_loss)),
        ("valid", series(|m| m.valid_loss)),
    ];
    line_chart(&dir.join(LOSS_CHART), "Loss per epoch", "loss", &loss)?;
    let accuracy = [
        ("train", series(|m| m.train_accuracy)),
        ("valid", series(|m| m.valid_accuracy)),
    ];
    line_chart(
        &dir.join(ACCURACY_CHART),
        "Accuracy per epoch",
        "accuracy (%)",
        &accuracy,
    )
}

fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    register_font();
    let points = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if y_min > y_max {
        (y_min, y_max) = (0.0, 1.0);
    }
    let margin = ((y_max - y_min) * 0.05).max(1e-6);
    let mut pixels = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(1.0..x_max.max(2.0), (y_min - margin)..(y_max + margin))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_labels((x_max as usize).min(MAX_EPOCH_LABELS))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(y_label)
            .label_style((FONT, 14))
            .draw()
            .map_err(plot_error)?;
        for ((name, points), colour) in series.iter().zip([BLUE, RED]) {
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    save_rgb(path, SIZE, pixels)
}

/// Writes a heat map of `confusion[label][predicted]` counts, each cell labelled.
pub fn confusion_matrix(confusion: &[Vec<u64>], path: &Path) -> anyhow::Result<()> {
    register_font();
    const SIDE: u32 = 640;
    let classes = confusion.len();
    let largest_miss = confusion
        .iter()
        .enumerate()
        .flat_map(|(l, row)| {
            row.iter()
                .enumerate()
                .filter(move |(p, _)| *p != l)
                .map(|(_, n)| *n)
        })
        .max()
        .unwrap_or(0)
        .max(1);
    let mut pixels = vec![0u8; (SIDE * SIDE * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (SIDE, SIDE)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Confusion matrix (rows: label, columns: predicted)",
                (FONT, 18),
            )
            .margin(15)
            .x_label_area_size(30)
            .y_label_area_size(30)
            .build_cartesian_2d(0..classes, 0..classes)
            .map_err(plot_error)?;
        for (label, row) in confusion.iter().enumerate() {
            for (predicted, &count) in row.iter().enumerate() {
                let y = classes - 1 - label;
                // Correct cells in green; mistakes in shades of red, darkest for the largest.
                let colour = if label == predicted {
                    RGBColor(170, 220, 170)
                } else {
                    let shade = 255 - (200 * count / largest_miss) as u8;
                    RGBColor(255, shade, shade)
                };
                chart
                    .draw_series([Rectangle::new(
                        [(predicted, y), (predicted + 1, y + 1)],
                        colour.filled(),
                    )])
                    .map_err(plot_error)?;
                let centre = cell_centre(&chart, predicted, y);
                let text = (centre.0 - 14, centre.1 - 7);
                root.draw(&Text::new(count.to_string(), text, (FONT, 13)))
                    .map_err(plot_error)?;
            }
        }
        // Digits under the columns (predicted) and left of the rows (label).
        for class in 0..classes {
            let (x, _) = cell_centre(&chart, class, 0);
            let bottom = chart.backend_coord(&(class, 0)).1;
            root.draw(&Text::new(
                class.to_string(),
                (x - 4, bottom + 6),
                (FONT, 15),
            ))
            .map_err(plot_error)?;
            let (_, y) = cell_centre(&chart, 0, classes - 1 - class);
            let left = chart.backend_coord(&(0, 0)).0;
            root.draw(&Text::new(
                class.to_string(),
                (left - 18, y - 8),
                (FONT, 15),
            ))
            .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    save_rgb(path, (SIDE, SIDE), pixels)
}

type Grid<'a> =
    ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordusize, RangedCoordusize>>;

/// The pixel at the centre of the cell whose lower-left corner is (x, y).
fn cell_centre(chart: &Grid<'_>, x: usize, y: usize) -> (i32, i32) {
    let (left, top) = chart.backend_coord(&(x, y + 1));
    let (right, bottom) = chart.backend_coord(&(x + 1, y));
    ((left + right) / 2, (top + bottom) / 2)
}

/// Paints the square of `side` pixels at `(left, top)` of an RGB buffer `width` pixels wide.
pub(crate) fn fill_square(
    pixels: &mut [u8],
    width: u32,
    (left, top): (u32, u32),
    side: u32,
    colour: [u8; 3],
) {
    for row in top..top + side {
        let start = ((row * width + left) * 3) as usize;
        for pixel in pixels[start..start + (side * 3) as usize].chunks_exact_mut(3) {
            pixel.copy_from_slice(&colour);
        }
    }
}

pub(crate) fn save_rgb(
    path: &Path,
    (width, height): (u32, u32),
    pixels: Vec<u8>,
) -> anyhow::Result<()> {
    let image = image::RgbImage::from_raw(width, height, pixels).context("chart buffer size")?;
    save_png(path, &image::DynamicImage::ImageRgb8(image))
}

/// Writes `image` as a PNG file, atomically.
pub fn save_png(path: &Path, image: &image::DynamicImage) -> anyhow::Result<()> {
    vit_model::files::write_atomically(path, |file| {
        image
            .write_with_encoder(image::codecs::png::PngEncoder::new(file))
            .map_err(std::io::Error::other)
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw a chart: {error}")
}
