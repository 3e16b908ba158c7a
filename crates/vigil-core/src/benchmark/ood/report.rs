//! The OOD benchmark's report as files: `report.json` (everything), `rows.csv` (one line per
//! model, score, setting and OOD set or average), `report.md` (tables for people) and
//! `auroc-<score>.svg` (mean AUROC of every model in every setting, one chart per score).

use std::fmt::Write as _;
use std::path::Path;

use super::{OodBenchmarkReport, OodRow, Setting};
use crate::benchmark::BenchmarkError;
use crate::io::{write_atomic, write_json_atomic};
use crate::report::bars::{BarSeries, grouped_bars_svg};

impl OodBenchmarkReport {
    /// Writes `report.json`, `rows.csv`, `report.md` and one `auroc-<score>.svg` per score into
    /// `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<(), BenchmarkError> {
        write_json_atomic(&dir.join("report.json"), self)?;
        write_atomic(&dir.join("rows.csv"), self.to_csv().as_bytes())?;
        write_atomic(&dir.join("report.md"), self.to_markdown().as_bytes())?;
        for score in self.score_names() {
            let svg = self.auroc_chart(&score)?;
            write_atomic(&dir.join(format!("auroc-{score}.svg")), svg.as_bytes())?;
        }
        Ok(())
    }

    /// The mean AUROC over OOD sets of every model (bars) in every setting (groups) for `score`.
    pub fn auroc_chart(&self, score: &str) -> Result<String, BenchmarkError> {
        let settings = self.settings();
        let categories: Vec<String> = settings.iter().map(|s| s.name().to_string()).collect();
        let series: Vec<BarSeries> = self
            .models()
            .into_iter()
            .map(|model| BarSeries {
                name: model.to_string(),
                values: settings
                    .iter()
                    .map(|&s| {
                        self.average(model, score, s, "mean")
                            .map(|r| r.metrics.auroc)
                    })
                    .collect(),
            })
            .collect();
        let title = format!("{score}: AUROC (OOD positive), mean over OOD sets");
        Ok(grouped_bars_svg(
            &title,
            "AUROC",
            &categories,
            &series,
            (0.0, 1.0),
        )?)
    }

    /// Every row and average, one per line.
    pub fn to_csv(&self) -> String {
        let mut out =
            String::from("model,score,setting,ood_set,auroc,fpr_at_95_tpr,aupr_in,aupr_out\n");
        for r in self.rows.iter().chain(&self.averages) {
            let m = &r.metrics;
            let _ = writeln!(
                out,
                "{},{},{},{},{:.6},{:.6},{:.6},{:.6}",
                r.model,
                r.score,
                r.setting.name(),
                r.ood_set,
                m.auroc,
                m.fpr_at_95_tpr,
                m.aupr_in,
                m.aupr_out
            );
        }
        out
    }

    /// Every score's name, the OOD scores' then MAD-FA's columns.
    pub fn score_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .config
            .scores
            .iter()
            .map(|s| s.name().to_string())
            .collect();
        if self.config.madfa.is_some() {
            names.extend(super::madfa::score_names());
        }
        names
    }

    /// The settings present, in report order.
    fn settings(&self) -> Vec<Setting> {
        Setting::ALL
            .into_iter()
            .filter(|s| self.rows.iter().any(|r| r.setting == *s))
            .collect()
    }

    fn models(&self) -> Vec<&str> {
        let mut models: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !models.contains(&r.model.as_str()) {
                models.push(&r.model);
            }
        }
        models
    }

    fn average(&self, model: &str, score: &str, setting: Setting, over: &str) -> Option<&OodRow> {
        self.averages.iter().find(|r| {
            r.model == model && r.score == score && r.setting == setting && r.ood_set == over
        })
    }

    /// Accuracy, then per score the mean AUROC and FPR@95TPR of every model in every setting,
    /// then per-set AUROC in the both-attacked setting.
    pub fn to_markdown(&self) -> String {
        let c = &self.config;
        let mut out = String::from("# OOD detection under attack\n\n");
        let _ = writeln!(
            out,
            "vigil {}; L-inf eps {:.5} ({:.2}/255), {} PGD steps of {:.5}, batch {}, seed {}. \
             ID: {} test images, scores fitted on {} training images. OOD is the positive class. \
             {:.0} s.\n",
            self.vigil_version,
            c.attack.eps,
            c.attack.eps * 255.0,
            c.attack.steps,
            c.attack.step_size,
            c.batch_size,
            c.seed,
            self.id_test_size,
            self.id_fit_size,
            self.seconds
        );
        out.push_str("| OOD set | group | images |\n|---|---|---|\n");
        for s in &self.ood_sets {
            let group = match s.group {
                crate::data::ood_sets::OodGroup::Near => "near",
                crate::data::ood_sets::OodGroup::Far => "far",
            };
            let _ = writeln!(out, "| {} | {} | {} |", s.name, group, s.size);
        }
        if let Some(source) = &self.transfer_source {
            let _ = writeln!(out, "\nTransfer attacks are crafted on `{source}`.");
        }
        out.push_str("\n## Accuracy on the ID test set\n\n| model | clean | under PGD (cross-entropy) |\n|---|---|---|\n");
        for a in &self.accuracy {
            let _ = writeln!(out, "| {} | {:.4} | {:.4} |", a.model, a.clean, a.robust);
        }
        let settings = self.settings();
        let header: Vec<&str> = settings.iter().map(|s| s.name()).collect();
        let names = self.score_names();
        for score in &names {
            let _ = writeln!(
                out,
                "\n## {score}: AUROC / FPR@95TPR, mean over OOD sets\n\n| model | {} |\n|---|{}",
                header.join(" | "),
                "---|".repeat(settings.len())
            );
            for model in self.models() {
                let cells: Vec<String> = settings
                    .iter()
                    .map(|&s| match self.average(model, score, s, "mean") {
                        Some(r) => {
                            format!("{:.4} / {:.3}", r.metrics.auroc, r.metrics.fpr_at_95_tpr)
                        }
                        None => "-".into(),
                    })
                    .collect();
                let _ = writeln!(out, "| {model} | {} |", cells.join(" | "));
            }
        }
        let sets: Vec<&str> = self.ood_sets.iter().map(|s| s.name.as_str()).collect();
        for setting in [Setting::Clean, Setting::BothAttacked] {
            if !settings.contains(&setting) {
                continue;
            }
            let _ = writeln!(
                out,
                "\n## AUROC per OOD set, {}\n\n| model | score | {} |\n|---|---|{}",
                setting.name(),
                sets.join(" | "),
                "---|".repeat(sets.len())
            );
            for model in self.models() {
                for score in &names {
                    let cells: Vec<String> = sets
                        .iter()
                        .map(|set| {
                            self.rows
                                .iter()
                                .find(|r| {
                                    r.model == model
                                        && r.score == *score
                                        && r.setting == setting
                                        && r.ood_set == *set
                                })
                                .map_or("-".into(), |r| format!("{:.4}", r.metrics.auroc))
                        })
                        .collect();
                    let _ = writeln!(out, "| {model} | {score} | {} |", cells.join(" | "));
                }
            }
        }
        if let Some(m) = &c.madfa {
            let _ = writeln!(
                out,
                "\n## MAD-FA\n\nTrusted and sampling sets: {} and {} held-out ID test images per \
                 class; {} chains, {}. Clean, attacked and transfer rows: one walk of exact traces \
                 per model. Adaptive rows: the score {} attacked through linearised \
                 traces of the defender's own chains (white box), {} steps of 2.5 eps / steps, no \
                 random start, on {} seeded inputs of the ID test set and of each OOD set, scored \
                 with the same linearised traces:\n",
                m.trusted_per_class,
                m.sampling_per_class,
                m.settings.chains,
                if m.settings.calibrate {
                    "calibrated"
                } else {
                    "the given chain settings"
                },
                super::madfa::score_name(m.adaptive_score.column()),
                m.adaptive_steps,
                m.adaptive_inputs,
            );
            if !self.madfa_adaptive.is_empty() {
                out.push_str(
                    "| model | OOD set | ID / OOD inputs | AUROC before | AUROC after |\n|---|---|---|---|---|\n",
                );
                for r in &self.madfa_adaptive {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} / {} | {:.4} | {:.4} |",
                        r.model,
                        r.ood_set,
                        r.id_inputs,
                        r.ood_inputs,
                        r.auroc_before,
                        r.auroc_after
                    );
                }
            }
        }
        out
    }
}
