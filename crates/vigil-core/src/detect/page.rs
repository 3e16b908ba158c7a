//! `vigil detect`'s HTML page: one self-contained file (images inlined as PNG data URIs, charts
//! as inline SVG) with the detectors' thresholds and measurements, a histogram of every score
//! column with its threshold, and the flagged inputs as images, each beside the trusted images
//! MAD-FA attributes it most and least to.

use std::fmt::Write as _;

use base64::Engine as _;

use super::experiment::{DetectReport, DetectorResult};
use super::{DetectError, GroundTruth};
use crate::data::ImageSet;
use crate::report::grid::image_grid_png;

/// What the page shows.
pub struct PageData<'a> {
    /// The experiment's report.
    pub report: &'a DetectReport,
    /// The inputs, in report order.
    pub inputs: &'a ImageSet,
    /// The whole trusted set (attributions index it).
    pub trusted: &'a ImageSet,
    /// Which inputs are anomalous, when known.
    pub truth: Option<&'a GroundTruth>,
    /// A name per input (file path), or empty.
    pub input_names: &'a [String],
    /// A name per trusted sample, or empty.
    pub trusted_names: &'a [String],
    /// At most this many flagged inputs are shown as images.
    pub max_shown: usize,
}

/// Bins of each histogram.
const BINS: usize = 40;

/// The page as HTML.
pub fn detect_page(page: &PageData<'_>) -> Result<String, DetectError> {
    let report = page.report;
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>vigil detect</title>\n<style>\
body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #bbb;padding:.2em .5em;text-align:right}th{background:#eee}td.l,th.l{text-align:left}\
.hists{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ccc;border-radius:4px;padding:6px;margin:6px;display:inline-block;vertical-align:top;font-size:12px;max-width:460px}\
.card.anomalous{border-color:#c33}img.px{image-rendering:pixelated;width:56px;height:56px;border:1px solid #ddd;margin:1px}\
.row{display:flex;align-items:center;gap:4px;flex-wrap:wrap}.att{text-align:center;font-size:10px}\
</style></head><body>\n",
    );
    let _ = writeln!(
        html,
        "<h1>vigil detect</h1><p>{} inputs{}; thresholds at a {:.1}% target false-positive rate, set on {} (never on the inputs). Higher scores are more anomalous; inputs at or above a threshold are flagged.</p>",
        report.inputs,
        report
            .anomalous
            .map_or(String::new(), |a| format!(", {a} known anomalous")),
        report.config.thresholds.target_fpr * 100.0,
        report.config.thresholds.split.describe()
    );
    html.push_str(&summary_table(report));
    html.push_str("<h2>Score histograms</h2><p>");
    html.push_str(if page.truth.is_some() {
        "Clean inputs blue, anomalous inputs red; the dashed line is the threshold.</p><div class=\"hists\">"
    } else {
        "All inputs; the dashed line is the threshold.</p><div class=\"hists\">"
    });
    for d in &report.detectors {
        for c in &d.columns {
            if let Some(values) = d.scores.column(&c.column) {
                html.push_str(&histogram_svg(
                    &format!("{}.{}", d.detector, c.column),
                    values,
                    page.truth.map(|t| t.is_anomalous.as_slice()),
                    c.threshold,
                ));
            }
        }
    }
    html.push_str("</div>\n");
    html.push_str(&gallery(page)?);
    html.push_str("</body></html>\n");
    Ok(html)
}

fn summary_table(report: &DetectReport) -> String {
    let known = report.anomalous.is_some();
    let mut t = String::from(
        "<h2>Detectors</h2><table><tr><th class=\"l\">detector.column</th><th>threshold</th><th>flagged</th>",
    );
    if known {
        t.push_str("<th>AUROC</th><th>TPR at threshold</th><th>FPR at threshold</th>");
    }
    t.push_str("<th>seconds</th></tr>\n");
    for d in &report.detectors {
        if let Some(why) = &d.no_scores {
            let _ = writeln!(
                t,
                "<tr><td class=\"l\">{}</td><td class=\"l\" colspan=\"{}\">n/a: {}</td></tr>",
                escape(&d.detector),
                if known { 6 } else { 3 },
                escape(why)
            );
            continue;
        }
        for c in &d.columns {
            let _ = write!(
                t,
                "<tr><td class=\"l\">{}.{}</td><td>{:.4e}</td><td>{}</td>",
                escape(&d.detector),
                escape(&c.column),
                c.threshold,
                c.flagged
            );
            if let Some(e) = &c.evaluation {
                let _ = write!(
                    t,
                    "<td>{:.4}</td><td>{:.3}</td><td>{:.3}</td>",
                    e.auroc, e.tpr, e.fpr
                );
            }
            let _ = writeln!(t, "<td>{:.0}</td></tr>", d.seconds);
        }
    }
    t.push_str("</table>\n");
    t
}

/// A histogram of `values` (split by truth when known) with a dashed threshold line, as SVG.
fn histogram_svg(title: &str, values: &[f64], truth: Option<&[bool]>, threshold: f64) -> String {
    let (w, h, pad) = (320.0, 150.0, 18.0);
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\"><text x=\"4\" y=\"13\" font-size=\"12\">{}</text>",
        h + 2.0 * pad,
        escape(title)
    );
    // The range covers the middle 99% of the scores, so a few far outliers (Mahalanobis
    // distances of triggered inputs) do not squeeze the rest into one bin; values outside
    // fall into the end bins.
    let mut sorted = finite.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = (q * sorted.len().saturating_sub(1) as f64).round() as usize;
        sorted.get(i).copied().unwrap_or(0.0)
    };
    let (lo, hi) = (at(0.005), at(0.995));
    if finite.is_empty() || lo >= hi {
        svg.push_str("<text x=\"4\" y=\"40\" font-size=\"11\">all scores equal</text></svg>");
        return svg;
    }
    let bin = |v: f64| (((v - lo) / (hi - lo) * BINS as f64).max(0.0) as usize).min(BINS - 1);
    let mut counts = [[0usize; BINS]; 2];
    for (i, &v) in values.iter().enumerate() {
        if v.is_finite() {
            let class = truth.and_then(|t| t.get(i)).map_or(0, |&a| usize::from(a));
            counts[class][bin(v)] += 1;
        }
    }
    let peak = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let bar_w = w / BINS as f64;
    let colours = if truth.is_some() {
        ["rgba(40,90,200,0.55)", "rgba(210,40,40,0.55)"]
    } else {
        ["rgba(90,90,90,0.6)", "rgba(90,90,90,0.6)"]
    };
    for (class, colour) in colours.iter().enumerate() {
        for (b, &n) in counts[class].iter().enumerate() {
            if n > 0 {
                let bh = n as f64 / peak * h;
                let _ = write!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
                    b as f64 * bar_w,
                    pad + h - bh,
                    bar_w,
                    bh
                );
            }
        }
    }
    if threshold.is_finite() {
        let x = ((threshold - lo) / (hi - lo)).clamp(0.0, 1.0) * w;
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{pad}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"black\" stroke-dasharray=\"4 3\"/>",
            pad + h
        );
    }
    let _ = write!(
        svg,
        "<text x=\"2\" y=\"{0}\" font-size=\"10\">{lo:.3e}</text><text x=\"{1}\" y=\"{0}\" font-size=\"10\" text-anchor=\"end\">{hi:.3e}</text></svg>",
        h + 2.0 * pad - 4.0,
        w - 2.0
    );
    svg
}

/// The flagged inputs, most often flagged first, with their attributions.
fn gallery(page: &PageData<'_>) -> Result<String, DetectError> {
    let report = page.report;
    let mut votes = vec![0usize; report.inputs];
    for d in &report.detectors {
        for c in &d.columns {
            for (v, &f) in votes.iter_mut().zip(&c.flags) {
                *v += usize::from(f);
            }
        }
    }
    let mut flagged: Vec<usize> = (0..report.inputs).filter(|&i| votes[i] > 0).collect();
    flagged.sort_by(|&a, &b| votes[b].cmp(&votes[a]).then(a.cmp(&b)));
    let columns: usize = report.detectors.iter().map(|d| d.columns.len()).sum();
    let mut html = format!(
        "<h2>Flagged inputs</h2><p>{} of {} inputs are flagged by at least one of {columns} columns; the {} flagged by the most columns are shown{}.</p>\n",
        flagged.len(),
        report.inputs,
        flagged.len().min(page.max_shown),
        if page.truth.is_some() {
            " (a red border marks a known anomalous input)"
        } else {
            ""
        }
    );
    let attributing: Option<&DetectorResult> = report
        .detectors
        .iter()
        .find(|d| d.scores.attributions.is_some());
    for &i in flagged.iter().take(page.max_shown) {
        let anomalous = page
            .truth
            .and_then(|t| t.is_anomalous.get(i))
            .copied()
            .unwrap_or(false);
        let by: Vec<String> = report
            .detectors
            .iter()
            .flat_map(|d| {
                d.columns
                    .iter()
                    .filter(|c| c.flags.get(i).copied().unwrap_or(false))
                    .map(move |c| format!("{}.{}", d.detector, c.column))
            })
            .collect();
        let name = page
            .input_names
            .get(i)
            .filter(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("input #{i}"));
        let _ = write!(
            html,
            "<div class=\"card{}\"><div class=\"row\">{}<div><b>{}</b>{}<br>flagged by {}</div></div>",
            if anomalous { " anomalous" } else { "" },
            img(page.inputs, i)?,
            escape(&name),
            if anomalous { " (anomalous)" } else { "" },
            escape(&by.join(", "))
        );
        if let Some(a) = attributing.and_then(|d| d.scores.attributions.as_ref()) {
            for (label, list) in [("most", &a.most), ("least", &a.least)] {
                let Some(list) = list.get(i) else { continue };
                let _ = write!(
                    html,
                    "<div class=\"row\">{label} attributed ({}):",
                    attributing.map_or("", |d| d.detector.as_str())
                );
                for at in list {
                    let tname = page
                        .trusted_names
                        .get(at.trusted)
                        .cloned()
                        .unwrap_or_else(|| format!("trusted #{}", at.trusted));
                    let _ = write!(
                        html,
                        "<div class=\"att\" title=\"{}\">{}<br>r {:.2}</div>",
                        escape(&tname),
                        img(page.trusted, at.trusted)?,
                        at.correlation
                    );
                }
                html.push_str("</div>");
            }
        }
        html.push_str("</div>\n");
    }
    Ok(html)
}

/// Image `i` of `set` as an inline PNG.
fn img(set: &ImageSet, i: usize) -> Result<String, DetectError> {
    if i >= set.len() {
        return Ok(String::new());
    }
    let png =
        image_grid_png(&[vec![set.image(i)]], set.shape(), 1).map_err(|e| DetectError::Fit {
            detector: "page".into(),
            reason: e.to_string(),
        })?;
    Ok(format!(
        "<img class=\"px\" alt=\"\" src=\"data:image/png;base64,{}\">",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_split_by_truth_and_mark_the_threshold() {
        let svg = histogram_svg(
            "m.c",
            &[0.0, 0.1, 0.9, 1.0],
            Some(&[false, false, true, true]),
            0.5,
        );
        assert!(svg.contains("rgba(40,90,200") && svg.contains("rgba(210,40,40"));
        // The threshold halfway across a 320-pixel plot.
        assert!(svg.contains("x1=\"160.0\""), "{svg}");
        // One far outlier does not squeeze the others into the first bin.
        let mut wide: Vec<f64> = (0..400).map(|i| f64::from(i) / 400.0).collect();
        wide.push(1e6);
        let svg = histogram_svg("m.c", &wide, None, 0.5);
        assert!(svg.matches("<rect").count() >= 30, "{svg}");
        let flat = histogram_svg("m.c", &[1.0, 1.0], None, 1.0);
        assert!(flat.contains("all scores equal"));
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
