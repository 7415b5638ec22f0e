//! One chart per scenario, as SVG and PNG: the Palisade breaker states of
//! the failing servers as bands, the success rate and the p99 latency of
//! every client per 250 ms bucket, and the fault window shaded.

use std::path::{Path, PathBuf};
use std::sync::Once;

use palisade_core::BoxError;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::breakers::BreakerState;
use crate::clients::ClientKind;
use crate::metrics::BUCKET;
use crate::run::ScenarioResult;

/// The chart's size in pixels.
pub const SIZE: (u32, u32) = (960, 600);

/// The font family every text of the chart uses (DejaVu Sans, registered
/// from the `dejavu` crate's bytes, so no system font is needed).
pub const FONT: &str = "sans-serif";

/// The line colour of a client.
pub fn client_color(client: ClientKind) -> RGBColor {
    match client {
        ClientKind::Bare => RGBColor(214, 39, 40),
        ClientKind::Tower => RGBColor(31, 119, 180),
        ClientKind::Palisade => RGBColor(44, 160, 44),
    }
}

/// The band colour of a breaker state.
pub fn breaker_color(state: BreakerState) -> RGBColor {
    match state {
        BreakerState::Closed => RGBColor(199, 233, 192),
        BreakerState::Open => RGBColor(251, 106, 74),
        BreakerState::HalfOpen => RGBColor(253, 174, 107),
    }
}

/// The shade of the fault window.
pub const FAULT_COLOR: RGBColor = RGBColor(255, 236, 179);

fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // The bytes are a valid TrueType font; a failure would only lose text.
        let _ = register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// The files of one scenario's chart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChartFiles {
    /// The SVG.
    pub svg: PathBuf,
    /// The PNG.
    pub png: PathBuf,
}

/// Writes `<out>/<scenario>.svg` and `.png`.
pub fn write(result: &ScenarioResult, out: &Path) -> Result<ChartFiles, BoxError> {
    register_fonts();
    std::fs::create_dir_all(out)?;
    let svg = out.join(format!("{}.svg", result.scenario));
    let png = out.join(format!("{}.png", result.scenario));
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        draw(&root, result).map_err(|e| format!("drawing {}: {e}", svg.display()))?;
        root.present().map_err(|e| format!("writing {}: {e}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        draw(&root, result).map_err(|e| format!("drawing {}: {e}", png.display()))?;
        root.present().map_err(|e| format!("writing {}: {e}", png.display()))?;
    }
    Ok(ChartFiles { svg, png })
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, result: &ScenarioResult) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let title = format!("{}: {}", result.scenario, result.description);
    let root = root.titled(&title, (FONT, 20))?;
    let bands = result.breakers.len().max(1) as u32;
    let (breakers, rest) = root.split_vertically(40 + 22 * bands);
    let (success, latency) = rest.split_vertically((rest.dim_in_pixel().1 as f64 * 0.55) as u32);
    let x_end = result.run_s;
    draw_breakers(&breakers, result, x_end)?;
    draw_success(&success, result, x_end)?;
    draw_latency(&latency, result, x_end)?;
    Ok(())
}

fn fault_rect(result: &ScenarioResult, y0: f64, y1: f64) -> Option<Rectangle<(f64, f64)>> {
    result
        .fault_s
        .map(|(a, b)| Rectangle::new([(a, y0), (b, y1)], FAULT_COLOR.filled()))
}

fn draw_breakers<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    result: &ScenarioResult,
    x_end: f64,
) -> DrawResult<DB> {
    let rows = result.breakers.len();
    let mut chart = ChartBuilder::on(area)
        .margin_left(10)
        .margin_right(20)
        .margin_top(4)
        .y_label_area_size(60)
        .caption("Palisade breaker of the failing server(s)", (FONT, 14))
        .build_cartesian_2d(0f64..x_end, 0f64..rows.max(1) as f64)?;
    if rows == 0 {
        chart.draw_series(std::iter::once(Text::new(
            "no failing server in this scenario",
            (x_end * 0.02, 0.5),
            (FONT, 13),
        )))?;
        return Ok(());
    }
    for (row, track) in result.breakers.iter().enumerate() {
        let y0 = row as f64 + 0.15;
        let y1 = row as f64 + 0.85;
        chart.draw_series(
            track
                .intervals
                .iter()
                .map(|(from, to, state)| Rectangle::new([(*from, y0), (*to, y1)], breaker_color(*state).filled())),
        )?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{} breaker", track.server),
            (x_end * 0.005, y1 - 0.1),
            (FONT, 12),
        )))?;
    }
    // The legend of the band colours, right of the caption, in pixels.
    let width = area.dim_in_pixel().0 as i32;
    for (i, state) in [BreakerState::Closed, BreakerState::HalfOpen, BreakerState::Open]
        .into_iter()
        .enumerate()
    {
        let x = width - 300 + 95 * i as i32;
        area.draw(&Rectangle::new([(x, 4), (x + 14, 16)], breaker_color(state).filled()))?;
        area.draw(&Text::new(state.name(), (x + 18, 4), (FONT, 12)))?;
    }
    Ok(())
}

/// Runs of consecutive defined points: a line breaks where a bucket had none.
fn segments(points: impl Iterator<Item = (f64, Option<f64>)>) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = Vec::new();
    for (x, y) in points {
        match y {
            Some(y) => current.push((x, y)),
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn draw_lines<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    result: &ScenarioResult,
    value: impl Fn(&crate::metrics::Point) -> Option<f64>,
) -> DrawResult<DB> {
    let half = BUCKET.as_secs_f64() / 2.0;
    for client in &result.clients {
        let color = client_color(client.client);
        let points = client.metrics.series.iter().map(|p| (p.t + half, value(p)));
        for (i, segment) in segments(points).into_iter().enumerate() {
            let series = chart.draw_series(LineSeries::new(segment, color.stroke_width(2)))?;
            if i == 0 {
                series
                    .label(client.client.name())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            }
        }
    }
    Ok(())
}

fn draw_success<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    result: &ScenarioResult,
    x_end: f64,
) -> DrawResult<DB> {
    let mut chart = ChartBuilder::on(area)
        .margin_left(10)
        .margin_right(20)
        .x_label_area_size(24)
        .y_label_area_size(60)
        .caption("success rate per 250 ms (calls by scheduled time)", (FONT, 14))
        .build_cartesian_2d(0f64..x_end, 0f64..105f64)?;
    chart
        .configure_mesh()
        .y_desc("success %")
        .label_style((FONT, 12))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart.draw_series(fault_rect(result, 0.0, 105.0))?;
    draw_lines(&mut chart, result, |p| p.success.map(|s| s * 100.0))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn draw_latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    result: &ScenarioResult,
    x_end: f64,
) -> DrawResult<DB> {
    let top = result
        .clients
        .iter()
        .flat_map(|c| c.metrics.series.iter().filter_map(|p| p.p99_ms))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .margin_left(10)
        .margin_right(20)
        .margin_bottom(6)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption("p99 latency of served calls per 250 ms", (FONT, 14))
        .build_cartesian_2d(0f64..x_end, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("p99 ms")
        .label_style((FONT, 12))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart.draw_series(fault_rect(result, 0.0, top))?;
    draw_lines(&mut chart, result, |p| p.p99_ms)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_break_where_a_bucket_has_no_value() {
        let points = [
            (0.0, Some(1.0)),
            (1.0, None),
            (2.0, Some(2.0)),
            (3.0, Some(3.0)),
            (4.0, None),
        ];
        assert_eq!(
            segments(points.into_iter()),
            vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]
        );
    }
}
