//! The backdoor benchmark's report as files: `report.json` (everything), `rows.csv` (one line
//! per record, detector and column), `report.md` (tables for people), `der.svg` (mean DER and
//! AUROC per detector column) and `roc-<record>.svg` (every column's ROC curve on a record).

use std::fmt::Write as _;
use std::path::Path;

use super::{BackdoorBenchmarkReport, BackdoorRow};
use crate::benchmark::BenchmarkError;
use crate::io::{write_atomic, write_json_atomic};
use crate::report::bars::{BarSeries, grouped_bars_svg};
use crate::report::csv_field;
use crate::report::lines::{Line, line_chart_svg};

/// What a table shows of a row.
type Cell = fn(&BackdoorRow) -> String;

impl BackdoorBenchmarkReport {
    /// Writes `report.json`, `rows.csv`, `report.md`, `der.svg` and one `roc-<record>.svg` per
    /// record into `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<(), BenchmarkError> {
        write_json_atomic(&dir.join("report.json"), self)?;
        write_atomic(&dir.join("rows.csv"), self.to_csv().as_bytes())?;
        write_atomic(&dir.join("report.md"), self.to_markdown().as_bytes())?;
        if self.means.iter().any(|m| m.primary) {
            write_atomic(&dir.join("der.svg"), self.der_chart()?.as_bytes())?;
        }
        for record in &self.records {
            if let Some(svg) = self.roc_chart(&record.name)? {
                write_atomic(
                    &dir.join(format!("roc-{}.svg", record.name)),
                    svg.as_bytes(),
                )?;
            }
        }
        Ok(())
    }

    /// Every row, one per line (DER's accuracy and ASR before and after beside it).
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "record,attack,detector,column,auroc,aupr,fpr_at_95_tpr,threshold,tpr,fpr,der,acc_before,acc_after,asr_before,asr_after,seconds\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.1}",
                csv_field(&r.record),
                csv_field(&r.attack),
                r.detector,
                r.column,
                r.auroc,
                r.aupr,
                r.fpr_at_95_tpr,
                r.threshold,
                r.tpr,
                r.fpr,
                r.der.der,
                r.der.before.acc,
                r.der.after.acc,
                r.der.before.asr,
                r.der.after.asr,
                r.seconds
            );
        }
        out
    }

    /// Tables: mean AUROC and DER per detector column, then AUROC, DER and TPR / FPR at the
    /// trusted-set threshold per record ("n/a" where a detector does not apply).
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let t = &self.config.detect.thresholds;
        let _ = writeln!(
            md,
            "# Backdoor detection benchmark\n\n{} records; split per class {} trusted, {} sampling, {} test (seed {}); thresholds at a {:.0}% target FPR on {}; positive class: {}.\n",
            self.records.len(),
            self.config.split.trusted,
            self.config.split.sampling,
            self.config.split.test,
            self.config.split_seed,
            t.target_fpr * 100.0,
            t.split.describe(),
            self.positive_class
        );
        md.push_str("| record | attack | trusted kept | clean inputs | triggered inputs |\n|---|---|---|---|---|\n");
        for r in &self.records {
            let s = &r.split;
            let _ = writeln!(
                md,
                "| {} | {} | {}/{} | {}/{} | {}/{} |",
                r.name,
                r.attack,
                s.trusted.1,
                s.trusted.0,
                s.clean_test.1,
                s.clean_test.0,
                s.triggered_test.1,
                s.triggered_test.0
            );
        }
        md.push_str("\n## Per detector: its primary column, by mean DER\n\n| detector | column | records | mean AUROC | mean DER | mean TPR | mean FPR |\n|---|---|---|---|---|---|---|\n");
        let mut primary: Vec<_> = self.means.iter().filter(|m| m.primary).collect();
        primary.sort_by(|a, b| b.der.total_cmp(&a.der));
        for m in primary {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.4} | {:.4} | {:.3} | {:.3} |",
                m.detector, m.column, m.records, m.auroc, m.der, m.tpr, m.fpr
            );
        }
        for d in &self.config.detect.detectors {
            if !self.means.iter().any(|m| m.detector == d.name()) {
                let _ = writeln!(
                    md,
                    "| {} | {} | 0 | n/a | n/a | n/a | n/a |",
                    d.name(),
                    d.primary_column()
                );
            }
        }
        md.push_str("\n## Means over records, every column\n\n| detector | column | records | AUROC | DER | TPR | FPR |\n|---|---|---|---|---|---|---|\n");
        for m in &self.means {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.4} | {:.4} | {:.3} | {:.3} |",
                m.detector, m.column, m.records, m.auroc, m.der, m.tpr, m.fpr
            );
        }
        let tables: [(&str, Cell); 3] = [
            ("AUROC", |r| format!("{:.4}", r.auroc)),
            ("DER", |r| format!("{:.4}", r.der.der)),
            ("TPR / FPR at the trusted-set threshold", |r| {
                format!("{:.3} / {:.3}", r.tpr, r.fpr)
            }),
        ];
        for (title, cell) in tables {
            let _ = writeln!(md, "\n## {title}\n");
            md.push_str(&self.matrix(cell));
        }
        if !self.no_scores.is_empty() {
            md.push_str("\n## No scores (n/a)\n\n");
            for n in &self.no_scores {
                let _ = writeln!(md, "- {} on {}: {}", n.detector, n.record, n.reason);
            }
        }
        md
    }

    /// One row per detector column, one column per record.
    fn matrix(&self, cell: Cell) -> String {
        let mut md = String::from("| detector.column |");
        for r in &self.records {
            let _ = write!(md, " {} |", r.name);
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(self.records.len()));
        md.push('\n');
        for (detector, column) in self.score_columns() {
            let _ = write!(md, "| {detector}.{column} |");
            for record in &self.records {
                let row = self.rows.iter().find(|r| {
                    r.record == record.name && r.detector == detector && r.column == column
                });
                let na = self
                    .no_scores
                    .iter()
                    .any(|n| n.record == record.name && n.detector == detector);
                let text = match row {
                    Some(row) => cell(row),
                    None if na => "n/a".into(),
                    None => "-".into(),
                };
                let _ = write!(md, " {text} |");
            }
            md.push('\n');
        }
        md
    }

    /// Every (detector, column) in first-seen order, detectors that never applied included
    /// (with their detector name as the column).
    fn score_columns(&self) -> Vec<(String, String)> {
        let mut columns: Vec<(String, String)> = Vec::new();
        for d in self.config.detect.detectors.iter().map(|d| d.name()) {
            let mut found = false;
            for r in self.rows.iter().filter(|r| r.detector == d) {
                found = true;
                if !columns.iter().any(|(a, b)| a == d && *b == r.column) {
                    columns.push((d.to_string(), r.column.clone()));
                }
            }
            if !found {
                columns.push((d.to_string(), d.to_string()));
            }
        }
        columns
    }

    /// Mean DER and mean AUROC (bars) per detector, its primary column (groups).
    pub fn der_chart(&self) -> Result<String, BenchmarkError> {
        let primary: Vec<_> = self.means.iter().filter(|m| m.primary).collect();
        let categories: Vec<String> = primary
            .iter()
            .map(|m| {
                if m.detector == m.column {
                    m.detector.clone()
                } else {
                    format!("{}.{}", m.detector, m.column)
                }
            })
            .collect();
        let series = vec![
            BarSeries {
                name: "mean DER".into(),
                values: primary.iter().map(|m| Some(m.der)).collect(),
            },
            BarSeries {
                name: "mean AUROC".into(),
                values: primary.iter().map(|m| Some(m.auroc)).collect(),
            },
        ];
        let title = format!(
            "Mean over {} attack records (DER at the trusted-set threshold)",
            self.records.len()
        );
        Ok(grouped_bars_svg(
            &title,
            "DER / AUROC",
            &categories,
            &series,
            (0.0, 1.0),
        )?)
    }

    /// Every detector's ROC curve on `record` (its primary column), or `None` when no detector
    /// produced one.
    pub fn roc_chart(&self, record: &str) -> Result<Option<String>, BenchmarkError> {
        let primary: Vec<String> = self
            .means
            .iter()
            .filter(|m| m.primary)
            .map(|m| format!("{}.{}", m.detector, m.column))
            .collect();
        let lines: Vec<Line> = self
            .roc
            .iter()
            .filter(|c| c.record == record && primary.contains(&c.score))
            .map(|c| Line {
                name: c.score.clone(),
                points: c.points.clone(),
            })
            .collect();
        if lines.is_empty() {
            return Ok(None);
        }
        let attack = self
            .records
            .iter()
            .find(|r| r.name == record)
            .map_or("", |r| r.attack.as_str());
        let title = format!("{record} ({attack}): ROC, triggered inputs positive");
        Ok(Some(line_chart_svg(
            &title,
            (
                "false-positive rate (clean flagged)",
                "true-positive rate (triggered flagged)",
            ),
            &lines,
            ((0.0, 1.0), (0.0, 1.0)),
            true,
        )?))
    }
}
