//! Line charts as SVG (plotters' SVG backend), e.g. ROC curves.

use plotters::prelude::*;

use super::bars::ChartError;

/// One coloured line: its points in drawing order.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
}

/// Line colours: matplotlib's tab20, dark shades first, so up to ten lines stay distinct.
pub(crate) const COLOURS: [(u8, u8, u8); 20] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
];

const WIDTH: u32 = 640;
const HEIGHT: u32 = 560;

/// A chart of `series` as lines over `x_range` by `y_range`, with a dashed diagonal from the
/// lower-left to the upper-right corner when `diagonal` (chance level on a ROC chart), as an
/// SVG document.
pub fn line_chart_svg(
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Line],
    (x_range, y_range): ((f64, f64), (f64, f64)),
    diagonal: bool,
) -> Result<String, ChartError> {
    if series.is_empty() || series.iter().any(|s| s.points.is_empty()) {
        return Err(ChartError::Invalid(
            "no series, or a series without points".into(),
        ));
    }
    for (low, high) in [x_range, y_range] {
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(ChartError::Invalid(format!("bad range {low}..{high}")));
        }
    }
    let backend_error = |e: &dyn std::fmt::Display| ChartError::Backend(e.to_string());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| backend_error(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
            .map_err(|e| backend_error(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| backend_error(&e))?;
        if diagonal {
            let dashes = DashedLineSeries::new(
                [(x_range.0, y_range.0), (x_range.1, y_range.1)],
                6,
                4,
                BLACK.mix(0.4).stroke_width(1),
            );
            chart.draw_series(dashes).map_err(|e| backend_error(&e))?;
        }
        for (k, s) in series.iter().enumerate() {
            let (r, g, b) = COLOURS[k % COLOURS.len()];
            let colour = RGBColor(r, g, b).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| backend_error(&e))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| backend_error(&e))?;
        root.present().map_err(|e| backend_error(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_path_per_series_and_refuses_bad_input() {
        let series = vec![
            Line {
                name: "madfa.clc".into(),
                points: vec![(0.0, 0.0), (0.1, 0.9), (1.0, 1.0)],
            },
            Line {
                name: "strip".into(),
                points: vec![(0.0, 0.0), (1.0, 1.0)],
            },
        ];
        let unit = ((0.0, 1.0), (0.0, 1.0));
        let svg = line_chart_svg("ROC", ("FPR", "TPR"), &series, unit, true).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("madfa.clc") && svg.contains("strip"));
        // Two lines and two legend strokes at least.
        assert!(svg.matches("<polyline").count() >= 4, "{svg}");
        assert!(line_chart_svg("t", ("x", "y"), &[], unit, false).is_err());
        let bad = ((0.0, 0.0), (0.0, 1.0));
        assert!(line_chart_svg("t", ("x", "y"), &series, bad, false).is_err());
    }
}
