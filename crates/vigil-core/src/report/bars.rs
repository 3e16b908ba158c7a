//! Grouped bar charts as SVG (plotters' SVG backend: text stays text, no font is rasterised).

use plotters::prelude::*;

/// One coloured series of bars: a value per category, `None` where it has none.
#[derive(Debug, Clone, PartialEq)]
pub struct BarSeries {
    /// Legend label.
    pub name: String,
    /// One value per category.
    pub values: Vec<Option<f64>>,
}

/// Errors of drawing a chart.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// Nothing to draw, or values that do not fit the categories.
    #[error("cannot draw the chart: {0}")]
    Invalid(String),
    /// The plotting backend failed.
    #[error("drawing the chart failed: {0}")]
    Backend(String),
}

/// Width of a chart with up to 11 groups; more groups get 80 pixels each, so labels stay apart.
const WIDTH: u32 = 900;
const PER_GROUP: u32 = 80;
const HEIGHT: u32 = 420;

/// A chart with one group of bars per category (`categories` along x), one bar per series in
/// each group, y from `y_range.0` to `y_range.1` (values outside are clipped to it), as an SVG
/// document.
pub fn grouped_bars_svg(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[BarSeries],
    y_range: (f64, f64),
) -> Result<String, ChartError> {
    if categories.is_empty() || series.is_empty() {
        return Err(ChartError::Invalid("no categories or no series".into()));
    }
    if let Some(s) = series.iter().find(|s| s.values.len() != categories.len()) {
        return Err(ChartError::Invalid(format!(
            "series {} has {} values for {} categories",
            s.name,
            s.values.len(),
            categories.len()
        )));
    }
    let (low, high) = y_range;
    if !(low.is_finite() && high.is_finite() && low < high) {
        return Err(ChartError::Invalid(format!("bad y range {low}..{high}")));
    }
    let backend_error = |e: &dyn std::fmt::Display| ChartError::Backend(e.to_string());
    let mut svg = String::new();
    {
        let n = categories.len();
        let width = WIDTH.max(PER_GROUP.saturating_mul(n as u32));
        let root = SVGBackend::with_string(&mut svg, (width, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| backend_error(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..n as f64, low..high)
            .map_err(|e| backend_error(&e))?;
        let labels = categories.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                // Category names under the middle of each group.
                let i = x.floor();
                if (x - i - 0.5).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                    labels[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .draw()
            .map_err(|e| backend_error(&e))?;
        let width = 0.8 / series.len() as f64;
        for (k, s) in series.iter().enumerate() {
            let colour = Palette99::pick(k).to_rgba();
            let bars = s.values.iter().enumerate().filter_map(|(i, v)| {
                let v = (*v)?.clamp(low, high);
                let left = i as f64 + 0.1 + k as f64 * width;
                Some(Rectangle::new(
                    [(left, low), (left + width * 0.95, v)],
                    colour.filled(),
                ))
            });
            chart
                .draw_series(bars)
                .map_err(|e| backend_error(&e))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
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
    fn draws_one_bar_per_value_and_refuses_bad_input() {
        let categories = vec!["clean".to_string(), "attacked".to_string()];
        let series = vec![
            BarSeries {
                name: "std".into(),
                values: vec![Some(0.9), Some(0.5)],
            },
            BarSeries {
                name: "halo".into(),
                values: vec![Some(0.95), None],
            },
        ];
        let svg = grouped_bars_svg("AUROC", "AUROC", &categories, &series, (0.0, 1.0)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("halo") && svg.contains("attacked"));
        // 3 bars + 2 legend swatches, besides the background and plot frame.
        let filled = svg.matches("<rect").count();
        assert!(filled >= 5, "{filled} rects");
        let short = vec![BarSeries {
            name: "x".into(),
            values: vec![Some(1.0)],
        }];
        assert!(grouped_bars_svg("t", "y", &categories, &short, (0.0, 1.0)).is_err());
        assert!(grouped_bars_svg("t", "y", &categories, &series, (1.0, 1.0)).is_err());
        assert!(grouped_bars_svg("t", "y", &[], &series, (0.0, 1.0)).is_err());
    }
}
