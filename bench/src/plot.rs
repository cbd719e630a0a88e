//! PNG plots of benchmark results: latency distributions (percentile plots, the tail
//! stretched out) and throughput against connections.
//!
//! Text is drawn with a TrueType font from the system (DejaVu Sans by default,
//! `CHRONICLE_BENCH_FONT` to name another), so the plots need no C font libraries.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT_FAMILY: &str = "sans-serif";
const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Registers the font once; an error names what is missing.
fn font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let candidates: Vec<String> = std::env::var("CHRONICLE_BENCH_FONT")
                .into_iter()
                .chain(FONT_PATHS.iter().map(|p| (*p).to_owned()))
                .collect();
            let bytes = candidates
                .iter()
                .find_map(|path| std::fs::read(path).ok())
                .ok_or_else(|| {
                    format!(
                        "no TrueType font found (tried {candidates:?}; set CHRONICLE_BENCH_FONT)"
                    )
                })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| "the font file could not be read".to_owned())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// One line of a plot.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// The percentile at position `x` of the x axis, which is `-log10(1 - p)`: 90, 99 and
/// 99.9 sit evenly spaced at 1, 2 and 3, so the tail gets the room it deserves.
fn percentile_at(x: f64) -> f64 {
    100.0 * (1.0 - 10f64.powf(-x))
}

/// A percentile plot: for each series, latency (ms, log scale) at percentiles from 0
/// to 99.9. `samples` are sorted latencies in milliseconds.
pub fn latency_percentiles(
    path: &Path,
    title: &str,
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    font()?;
    let lines: Vec<Series> = series
        .iter()
        .filter(|(_, samples)| !samples.is_empty())
        .map(|(label, samples)| {
            let points = (0..=300)
                .map(|step| {
                    let x = f64::from(step) / 100.0;
                    let percentile = percentile_at(x);
                    let rank = ((percentile / 100.0) * (samples.len() - 1) as f64).round();
                    (x, samples[rank as usize].max(0.001))
                })
                .collect();
            Series {
                label: label.clone(),
                points,
            }
        })
        .collect();
    let (low, high) = bounds(&lines, |p| p.1);
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_FAMILY, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..3.05, (low / 1.5..high * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log scale)")
        .x_labels(4)
        .x_label_formatter(&|x| format!("p{}", trim(percentile_at(*x))))
        .y_label_formatter(&|y| trim(*y))
        .label_style((FONT_FAMILY, 15))
        .axis_desc_style((FONT_FAMILY, 16))
        .draw()?;
    draw_lines(&mut chart, &lines)?;
    root.present()?;
    Ok(())
}

/// Throughput (operations/s) against connections, one line per system, both axes log.
pub fn throughput(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    font()?;
    let (low, high) = bounds(series, |p| p.1);
    let (left, right) = bounds(series, |p| p.0);
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_FAMILY, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (left / 1.3..right * 1.3).log_scale(),
            (low / 2.0..high * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("connections (log scale)")
        .y_desc("operations/s (log scale)")
        .x_label_formatter(&|x| trim(*x))
        .y_label_formatter(&|y| trim(*y))
        .label_style((FONT_FAMILY, 15))
        .axis_desc_style((FONT_FAMILY, 16))
        .draw()?;
    draw_lines(&mut chart, series)?;
    root.present()?;
    Ok(())
}

/// Values over a run's time (in `time_unit`), one line per series, linear axes from zero.
pub fn over_time(
    path: &Path,
    title: &str,
    time_unit: &str,
    unit: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    font()?;
    let (_, high) = bounds(series, |p| p.1);
    let (_, right) = bounds(series, |p| p.0);
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_FAMILY, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..right.max(1e-9), 0.0..high.max(1e-9) * 1.1)?;
    chart
        .configure_mesh()
        .x_desc(time_unit)
        .y_desc(unit)
        .x_label_formatter(&|x| trim(*x))
        .y_label_formatter(&|y| trim(*y))
        .label_style((FONT_FAMILY, 15))
        .axis_desc_style((FONT_FAMILY, 16))
        .draw()?;
    draw_lines(&mut chart, series)?;
    root.present()?;
    Ok(())
}

type Chart<'a, X, Y> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>;

fn draw_lines<X, Y>(chart: &mut Chart<'_, X, Y>, series: &[Series]) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (index, line) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(line.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        if line.points.len() < 20 {
            chart.draw_series(
                line.points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, colour.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT_FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn bounds(series: &[Series], value: impl Fn(&(f64, f64)) -> f64) -> (f64, f64) {
    let values = series.iter().flat_map(|s| s.points.iter().map(&value));
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    if low > high {
        (1.0, 10.0)
    } else {
        (low.max(1e-3), high.max(low * 1.01))
    }
}

/// A number without trailing zeros: 0.5, 12, 99.9.
fn trim(value: f64) -> String {
    let text = if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_axis_spaces_nines_evenly() {
        assert!((percentile_at(1.0) - 90.0).abs() < 1e-9);
        assert!((percentile_at(2.0) - 99.0).abs() < 1e-9);
        assert!((percentile_at(3.0) - 99.9).abs() < 1e-9);
        assert_eq!(trim(99.9), "99.9");
        assert_eq!(trim(0.5), "0.5");
        assert_eq!(trim(1200.0), "1200");
    }
}
