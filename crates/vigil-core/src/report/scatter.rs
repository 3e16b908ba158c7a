//! Scatter plots as SVG: panels of 2-D points coloured by group, e.g. signatures of flagged
//! inputs coloured by the backdoor that made them and by the cluster they fell in.

use plotters::prelude::*;

use super::bars::ChartError;
use super::lines::COLOURS;

/// One panel: points, the group of each, and the groups' legend names.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterPanel {
    /// Caption.
    pub title: String,
    /// `[x, y]` of every point.
    pub points: Vec<[f64; 2]>,
    /// Group of every point (an index into `group_names`).
    pub groups: Vec<usize>,
    /// Legend names of the groups.
    pub group_names: Vec<String>,
}

const PANEL_WIDTH: u32 = 460;
const PANEL_HEIGHT: u32 = 400;

/// `panels` in a grid of `columns` columns, each with its own axes and legend, as one SVG
/// document.
pub fn scatter_panels_svg(panels: &[ScatterPanel], columns: usize) -> Result<String, ChartError> {
    if panels.is_empty() || columns == 0 {
        return Err(ChartError::Invalid("no panels to draw".into()));
    }
    for panel in panels {
        if panel.points.is_empty()
            || panel.points.len() != panel.groups.len()
            || panel.groups.iter().any(|&g| g >= panel.group_names.len())
            || panel.points.iter().flatten().any(|v| !v.is_finite())
        {
            return Err(ChartError::Invalid(format!(
                "panel `{}`: {} points, {} groups, {} group names, or a value that is not finite",
                panel.title,
                panel.points.len(),
                panel.groups.len(),
                panel.group_names.len()
            )));
        }
    }
    let rows = panels.len().div_ceil(columns);
    let columns = columns.min(panels.len());
    let backend_error = |e: &dyn std::fmt::Display| ChartError::Backend(e.to_string());
    let mut svg = String::new();
    {
        let size = (PANEL_WIDTH * columns as u32, PANEL_HEIGHT * rows as u32);
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| backend_error(&e))?;
        for (panel, area) in panels.iter().zip(root.split_evenly((rows, columns))) {
            let range = |axis: usize| {
                let (low, high) = panel
                    .points
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| {
                        (l.min(p[axis]), h.max(p[axis]))
                    });
                let pad = ((high - low) * 0.05).max(1e-9);
                (low - pad)..(high + pad)
            };
            let mut chart = ChartBuilder::on(&area)
                .caption(&panel.title, ("sans-serif", 14))
                .margin(10)
                .x_label_area_size(28)
                .y_label_area_size(40)
                .build_cartesian_2d(range(0), range(1))
                .map_err(|e| backend_error(&e))?;
            chart
                .configure_mesh()
                .x_desc("component 1")
                .y_desc("component 2")
                .draw()
                .map_err(|e| backend_error(&e))?;
            for (g, name) in panel.group_names.iter().enumerate() {
                let (r, gr, b) = COLOURS[g % COLOURS.len()];
                let colour = RGBColor(r, gr, b).mix(0.7);
                let points = panel
                    .points
                    .iter()
                    .zip(&panel.groups)
                    .filter(|(_, group)| **group == g)
                    .map(|(p, _)| Circle::new((p[0], p[1]), 2, colour.filled()));
                chart
                    .draw_series(points)
                    .map_err(|e| backend_error(&e))?
                    .label(name.clone())
                    .legend(move |(x, y)| Circle::new((x + 7, y), 3, colour.filled()));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| backend_error(&e))?;
        }
        root.present().map_err(|e| backend_error(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_point_of_every_panel_and_refuses_bad_input() {
        let panel = ScatterPanel {
            title: "signatures".into(),
            points: vec![[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]],
            groups: vec![0, 1, 1],
            group_names: vec!["badnets".into(), "blended".into()],
        };
        let svg = scatter_panels_svg(&[panel.clone(), panel.clone(), panel.clone()], 2).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("badnets") && svg.contains("blended"));
        // Three points per panel and one legend marker per group, in three panels.
        assert_eq!(svg.matches("<circle").count(), 3 * (3 + 2), "{svg}");
        let ragged = ScatterPanel {
            groups: vec![0, 1],
            ..panel.clone()
        };
        assert!(scatter_panels_svg(&[ragged], 1).is_err());
        let unnamed = ScatterPanel {
            groups: vec![0, 1, 2],
            ..panel.clone()
        };
        assert!(scatter_panels_svg(&[unnamed], 1).is_err());
        let infinite = ScatterPanel {
            points: vec![[0.0, f64::INFINITY], [1.0, 2.0], [3.0, -1.0]],
            ..panel
        };
        assert!(scatter_panels_svg(&[infinite], 1).is_err());
        assert!(scatter_panels_svg(&[], 1).is_err());
    }
}
