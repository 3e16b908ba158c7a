//! The files a detection run writes into its output folder: `scores.csv` (one row per input),
//! `report.json` (the whole [`super::experiment::DetectReport`]) and `report.html` (the page of [`super::page`]).

use std::path::{Path, PathBuf};

use super::DetectError;
use super::page::{PageData, detect_page};
use crate::io::{write_atomic, write_json_atomic};

/// Per input: its scores, flags and attributions.
pub const SCORES: &str = "scores.csv";
/// The whole report.
pub const REPORT: &str = "report.json";
/// The HTML page.
pub const PAGE: &str = "report.html";

/// The paths of the files [`save`] writes in `dir`.
pub fn paths(dir: &Path) -> [PathBuf; 3] {
    [SCORES, REPORT, PAGE].map(|name| dir.join(name))
}

/// Writes `scores.csv`, `report.json` and `report.html` of `page.report` into `dir`, each
/// atomically, naming inputs and trusted samples as `page` does.
pub fn save(dir: &Path, page: &PageData<'_>) -> Result<(), DetectError> {
    let [scores, report, html] = paths(dir);
    let csv = page
        .report
        .scores_csv(page.input_names, page.truth, page.trusted_names);
    write_atomic(&scores, csv.as_bytes())?;
    write_json_atomic(&report, page.report)?;
    write_atomic(&html, detect_page(page)?.as_bytes())?;
    Ok(())
}
