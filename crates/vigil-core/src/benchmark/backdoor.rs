//! Backdoor detection over several attack records: for every record the reference split of its
//! clean test set (trusted, sampling and test parts per class; `docs/madfa.md`), every detector
//! fitted on the trusted part with thresholds at a target false-positive rate on trusted scores
//! out of fold ([`crate::detect::experiment`]), and the inputs (the test part's correctly
//! classified clean images and its successfully triggered copies) scored, flagged and measured.
//!
//! Per record, detector and score column: AUROC, AUPR and FPR at 95% TPR (**anomalous = the
//! positive class**), the TPR and actual FPR at the trusted-set threshold, and DER, the
//! defense effectiveness rating of rejecting what is flagged (`docs/detectors.md`): computed on
//! the whole test part, so clean images the model gets wrong and triggered images the attack
//! fails on count in the accuracy and ASR before, and can only stay wrong or fail after.
//!
//! Each (record, detector) result is saved as it finishes (`parts/<record>/<detector>.json`,
//! the store shared with the OOD benchmark, [`super::parts`]): a stopped run continues where it
//! stopped and computes nothing twice. A part is reused only for the same record contents
//! (weights and split images) and the same detector settings; otherwise the run stops.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::BenchmarkError;
use super::parts::PartStore;
use crate::detect::experiment::{
    self, DetectConfig, DetectData, DetectProgress, DetectorResult, POSITIVE_CLASS,
};
use crate::detect::{DetectError, GroundTruth};
use crate::identity::{self, RunIdentity};
use crate::madfa::{RecordTask, SplitSizes, TaskSummary, record_task};
use crate::metrics::{CleanOutcome, RejectionDer, TriggeredOutcome, rejection_der};
use crate::progress;

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackdoorBenchmarkConfig {
    /// Detectors, thresholds, batch size and seed, as `vigil detect` takes them.
    pub detect: DetectConfig,
    /// Per-class sizes of the trusted, sampling and test parts of each record's clean test set.
    pub split: SplitSizes,
    /// Seed of the split.
    pub split_seed: u64,
}

/// One attack record to run on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackdoorRecord {
    /// Its name in reports and its folder of saved parts (the record folder's name by default).
    pub name: String,
    /// The record folder written by `vigil attack`.
    pub path: PathBuf,
}

impl BackdoorRecord {
    /// A record named after its folder.
    pub fn from_path(path: &Path) -> Result<Self, BenchmarkError> {
        // `runs/x/.` and `runs/x/..` name their folder only once resolved.
        let resolved = path.canonicalize().ok();
        let name = resolved
            .as_deref()
            .and_then(Path::file_name)
            .or_else(|| path.file_name())
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                BenchmarkError::Invalid(format!("{} does not name a record folder", path.display()))
            })?;
        Ok(Self {
            name: name.to_string(),
            path: path.to_path_buf(),
        })
    }
}

/// A record as the benchmark found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordSummary {
    /// Its name.
    pub name: String,
    /// Its folder.
    pub path: PathBuf,
    /// The attack (`attack.json`).
    pub attack: String,
    /// What the split kept.
    pub split: TaskSummary,
}

/// One score column on one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackdoorRow {
    /// The record.
    pub record: String,
    /// Its attack.
    pub attack: String,
    /// The detector.
    pub detector: String,
    /// The score column.
    pub column: String,
    /// Area under the ROC curve, anomalous positive.
    pub auroc: f64,
    /// Area under the precision-recall curve, anomalous positive.
    pub aupr: f64,
    /// FPR at 95% TPR (exact threshold).
    pub fpr_at_95_tpr: f64,
    /// Threshold set on trusted scores the detector was not fitted on.
    pub threshold: f64,
    /// How many trusted scores set it (all the trusted samples, or the held-back part).
    #[serde(default)]
    pub threshold_samples: usize,
    /// Fraction of triggered inputs flagged at the threshold.
    pub tpr: f64,
    /// Fraction of clean inputs flagged at the threshold.
    pub fpr: f64,
    /// Accuracy and ASR on the record's test part before and after rejecting flagged inputs,
    /// and the DER.
    pub der: RejectionDer,
    /// Seconds the detector took on this record (fit, thresholds and scores).
    pub seconds: f64,
}

/// A detector that gave no scores on a record: it does not apply to the record's model, or could
/// not be fitted on its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoScores {
    /// The record.
    pub record: String,
    /// The detector.
    pub detector: String,
    /// Why.
    pub reason: String,
}

/// A score column over every record it applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnMean {
    /// The detector.
    pub detector: String,
    /// The score column.
    pub column: String,
    /// Records it ran on.
    pub records: usize,
    /// Mean AUROC.
    pub auroc: f64,
    /// Mean DER.
    pub der: f64,
    /// Mean TPR at the trusted-set threshold.
    pub tpr: f64,
    /// Mean actual FPR at the trusted-set threshold.
    pub fpr: f64,
    /// Whether this is the detector's primary column
    /// ([`crate::detect::DetectorSettings::primary_column`]), the one charts show.
    #[serde(default)]
    pub primary: bool,
}

/// Everything one benchmark run found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackdoorBenchmarkReport {
    /// vigil's version.
    pub vigil_version: String,
    /// The settings.
    pub config: BackdoorBenchmarkConfig,
    /// What the evaluation counts as positive.
    pub positive_class: String,
    /// The records, in the order given.
    pub records: Vec<RecordSummary>,
    /// One row per record, detector and column.
    pub rows: Vec<BackdoorRow>,
    /// Detectors that gave no scores on a record, and why.
    #[serde(alias = "not_applicable")]
    pub no_scores: Vec<NoScores>,
    /// Per detector and column, means over the records.
    pub means: Vec<ColumnMean>,
    /// ROC curves per record, detector and column (`(fpr, tpr)` points, thinned for drawing).
    pub roc: Vec<RocCurve>,
    /// Wall-clock seconds of this invocation (parts loaded from disk cost nothing).
    pub seconds: f64,
}

/// One ROC curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocCurve {
    /// The record.
    pub record: String,
    /// `<detector>.<column>`.
    pub score: String,
    /// `(fpr, tpr)` points from `(0, 0)` to `(1, 1)`.
    pub points: Vec<(f64, f64)>,
}

/// What the run is doing (for progress lines; [`progress::Progress`]).
pub enum Progress<'a> {
    /// A record is loaded and split.
    Record(&'a RecordSummary),
    /// A detector's result on a record was read back from an earlier run.
    Loaded {
        /// The record.
        record: &'a str,
        /// The detector.
        detector: &'a str,
    },
    /// A detector is running on a record.
    Detect {
        /// The record.
        record: &'a str,
        /// What it is doing.
        event: DetectProgress<'a>,
    },
}

/// A (record, detector) result as saved on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    /// Content hash of the record's model and split ([`record_key`]).
    record: String,
    result: DetectorResult,
}

/// Runs every detector on every record; with `out`, each finished (record, detector) is saved
/// under `out/parts` and reused by a later run of the same settings. `progress` is asked before
/// each detector that runs whether to stop ([`BenchmarkError::Stopped`]).
pub fn run(
    config: &BackdoorBenchmarkConfig,
    records: &[BackdoorRecord],
    data_dir: Option<&Path>,
    out: Option<&Path>,
    device: &Device,
    progress: &mut dyn for<'e> progress::Progress<Progress<'e>>,
) -> Result<BackdoorBenchmarkReport, BenchmarkError> {
    let started = Instant::now();
    check_settings(config, records)?;
    let store = match out {
        Some(out) => {
            // The detectors are not part of the identity: each part carries its own settings,
            // so detectors and records can be added to a folder later.
            let settings = serde_json::json!({
                "thresholds": config.detect.thresholds,
                "batch_size": config.detect.batch_size,
                "seed": config.detect.seed,
                "split": config.split,
                "split_seed": config.split_seed,
            });
            let identity = RunIdentity::new("backdoor-benchmark", settings);
            let groups: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
            Some(PartStore::open(out, &identity, &groups)?)
        }
        None => None,
    };
    let mut report = BackdoorBenchmarkReport {
        vigil_version: env!("CARGO_PKG_VERSION").into(),
        config: config.clone(),
        positive_class: POSITIVE_CLASS.into(),
        records: Vec::new(),
        rows: Vec::new(),
        no_scores: Vec::new(),
        means: Vec::new(),
        roc: Vec::new(),
        seconds: 0.0,
    };
    for record in records {
        let loaded = load_record(config, record, data_dir, device)?;
        let summary = RecordSummary {
            name: record.name.clone(),
            path: record.path.clone(),
            attack: loaded.manifest.attack.clone(),
            split: loaded.summary.clone(),
        };
        progress.report(Progress::Record(&summary));
        let key = record_key(&loaded)?;
        let truth = GroundTruth {
            is_anomalous: loaded.task.test_is_anomalous.clone().ok_or_else(|| {
                BenchmarkError::Invalid(format!("{}: the split has no ground truth", record.name))
            })?,
        };
        let data = DetectData {
            model: &loaded.classifier,
            trusted: &loaded.task.trusted,
            sampling: &loaded.task.sampling,
            inputs: &loaded.task.test,
            truth: Some(&truth),
        };
        for settings in &config.detect.detectors {
            let name = settings.name();
            let saved = match &store {
                Some(store) => store.load::<Part>(&record.name, name)?,
                None => None,
            };
            let result = match saved {
                Some(part) if part.record == key && &part.result.settings == settings => {
                    progress.report(Progress::Loaded {
                        record: &record.name,
                        detector: name,
                    });
                    part.result
                }
                Some(part) => {
                    let what = if part.record != key {
                        format!("the model or data of record {} changed", record.name)
                    } else {
                        format!("other settings of {name} on record {}", record.name)
                    };
                    return Err(BenchmarkError::Mismatch {
                        dir: out.map(Path::to_path_buf).unwrap_or_default(),
                        what,
                    });
                }
                None => {
                    if progress.should_stop() {
                        return Err(BenchmarkError::Stopped);
                    }
                    let result = experiment::run_detector(
                        settings,
                        &config.detect,
                        &data,
                        device,
                        &mut OnRecord {
                            outer: &mut *progress,
                            record: &record.name,
                        },
                    )
                    .map_err(|e| detect_error(&record.name, e))?;
                    if let Some(store) = &store {
                        store.save(
                            &record.name,
                            name,
                            &Part {
                                record: key.clone(),
                                result: result.clone(),
                            },
                        )?;
                    }
                    result
                }
            };
            add_result(&mut report, &summary, &truth, &result)?;
        }
        report.records.push(summary);
    }
    report.means = means(&report.rows);
    for m in &mut report.means {
        m.primary = config
            .detect
            .detectors
            .iter()
            .any(|d| d.name() == m.detector && d.primary_column() == m.column);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A detector's progress on `record`, reported as the benchmark's [`Progress::Detect`].
struct OnRecord<'a, P: ?Sized> {
    outer: &'a mut P,
    record: &'a str,
}

impl<'e, P> progress::Progress<DetectProgress<'e>> for OnRecord<'_, P>
where
    P: for<'x> progress::Progress<Progress<'x>> + ?Sized,
{
    fn report(&mut self, event: DetectProgress<'e>) {
        self.outer.report(Progress::Detect {
            record: self.record,
            event,
        });
    }

    fn should_stop(&mut self) -> bool {
        self.outer.should_stop()
    }
}

/// Refuses what cannot make a benchmark before any record is loaded.
fn check_settings(
    config: &BackdoorBenchmarkConfig,
    records: &[BackdoorRecord],
) -> Result<(), BenchmarkError> {
    if records.is_empty() {
        return Err(BenchmarkError::Invalid("no attack records given".into()));
    }
    if config.detect.detectors.is_empty() {
        return Err(BenchmarkError::Invalid("no detectors given".into()));
    }
    config.split.validate().map_err(invalid)?;
    config.detect.thresholds.validate().map_err(invalid)?;
    for settings in &config.detect.detectors {
        settings.clone().build().map_err(invalid)?;
    }
    for (i, r) in records.iter().enumerate() {
        if let Some(other) = records[..i].iter().find(|o| o.name == r.name) {
            return Err(BenchmarkError::Invalid(format!(
                "two records are named {} ({} and {}): rename one folder",
                r.name,
                other.path.display(),
                r.path.display()
            )));
        }
    }
    let mut names: Vec<&str> = config.detect.detectors.iter().map(|d| d.name()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(BenchmarkError::Invalid(format!(
            "detector {} is given twice",
            w[0]
        )));
    }
    Ok(())
}

fn invalid(e: impl std::fmt::Display) -> BenchmarkError {
    BenchmarkError::Invalid(e.to_string())
}

fn detect_error(record: &str, e: DetectError) -> BenchmarkError {
    BenchmarkError::Invalid(format!("record {record}: {e}"))
}

fn load_record(
    config: &BackdoorBenchmarkConfig,
    record: &BackdoorRecord,
    data_dir: Option<&Path>,
    device: &Device,
) -> Result<RecordTask, BenchmarkError> {
    record_task(
        &record.path,
        data_dir,
        config.split,
        config.split_seed,
        config.detect.batch_size,
        device,
    )
    .map_err(|e| {
        BenchmarkError::Invalid(format!(
            "preparing the attack record {}: {e}",
            record.path.display()
        ))
    })
}

/// What a saved part of a record must match: the model's weights and the split's images.
fn record_key(loaded: &RecordTask) -> Result<String, BenchmarkError> {
    let weights = identity::hash_classifier(&loaded.classifier)?;
    let sets = [
        &loaded.task.trusted,
        &loaded.task.sampling,
        &loaded.task.test,
    ]
    .map(identity::hash_images);
    Ok(identity::hash_json(&(
        weights,
        sets,
        &loaded.task.test_is_anomalous,
    )))
}

/// Adds one detector's result on one record to the report: rows with DER, ROC curves, or the
/// reason it does not apply.
fn add_result(
    report: &mut BackdoorBenchmarkReport,
    record: &RecordSummary,
    truth: &GroundTruth,
    result: &DetectorResult,
) -> Result<(), BenchmarkError> {
    if let Some(reason) = &result.no_scores {
        report.no_scores.push(NoScores {
            record: record.name.clone(),
            detector: result.detector.clone(),
            reason: reason.clone(),
        });
        return Ok(());
    }
    for column in &result.columns {
        let evaluation = column.evaluation.as_ref().ok_or_else(|| {
            BenchmarkError::Invalid(format!(
                "{} on {}: no evaluation against the truth",
                result.detector, record.name
            ))
        })?;
        let der = der_on_test_part(&record.split, &truth.is_anomalous, &column.flags)?;
        let scores = result.scores.column(&column.column).unwrap_or_default();
        let (normal, anomalous) = truth.split_scores(scores);
        let points = crate::metrics::roc_curve(&normal, &anomalous).map_err(invalid)?;
        report.roc.push(RocCurve {
            record: record.name.clone(),
            score: format!("{}.{}", result.detector, column.column),
            points: thin(points, 200),
        });
        report.rows.push(BackdoorRow {
            record: record.name.clone(),
            attack: record.attack.clone(),
            detector: result.detector.clone(),
            column: column.column.clone(),
            auroc: evaluation.auroc,
            aupr: evaluation.aupr,
            fpr_at_95_tpr: evaluation.fpr_at_95_tpr,
            threshold: column.threshold,
            threshold_samples: result.threshold_samples,
            tpr: evaluation.tpr,
            fpr: evaluation.fpr,
            der,
            seconds: result.seconds,
        });
    }
    Ok(())
}

/// DER of rejecting the flagged inputs, on the record's whole test part: the scored inputs are
/// the correctly classified clean images and the triggered images the attack succeeds on; the
/// rest of the test part (clean images the model gets wrong, triggered images that miss the
/// target) count as wrong and as failed attacks both before and after, whatever a detector
/// would say about them.
pub fn der_on_test_part(
    split: &TaskSummary,
    is_anomalous: &[bool],
    flags: &[bool],
) -> Result<RejectionDer, BenchmarkError> {
    if is_anomalous.len() != flags.len() {
        return Err(BenchmarkError::Invalid(format!(
            "{} flags for {} inputs",
            flags.len(),
            is_anomalous.len()
        )));
    }
    let (clean_total, clean_kept) = split.clean_test;
    let (triggered_total, triggered_kept) = split.triggered_test;
    let mut clean = Vec::with_capacity(clean_total);
    let mut triggered = Vec::with_capacity(triggered_total);
    for (&anomalous, &flagged) in is_anomalous.iter().zip(flags) {
        if anomalous {
            triggered.push(TriggeredOutcome {
                hit_target: true,
                flagged,
            });
        } else {
            clean.push(CleanOutcome {
                correct: true,
                flagged,
            });
        }
    }
    if clean.len() != clean_kept || triggered.len() != triggered_kept {
        return Err(BenchmarkError::Invalid(format!(
            "the inputs ({} clean, {} triggered) do not match the split ({clean_kept}, {triggered_kept})",
            clean.len(),
            triggered.len()
        )));
    }
    // Misclassified clean images and failed triggers: wrong either way; their flags cannot
    // change the rates, so they are counted as unflagged.
    clean.resize(
        clean_total.max(clean_kept),
        CleanOutcome {
            correct: false,
            flagged: false,
        },
    );
    triggered.resize(
        triggered_total.max(triggered_kept),
        TriggeredOutcome {
            hit_target: false,
            flagged: false,
        },
    );
    rejection_der(&clean, &triggered).map_err(invalid)
}

/// At most about `max` points of a curve, always keeping its first and last.
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points;
    }
    let step = points.len().div_ceil(max - 1);
    let last = points.len() - 1;
    points
        .iter()
        .enumerate()
        .filter(|&(i, _)| i % step == 0 || i == last)
        .map(|(_, &p)| p)
        .collect()
}

/// Means over records per detector and column, in the order the columns first appear.
pub fn means(rows: &[BackdoorRow]) -> Vec<ColumnMean> {
    let mut means: Vec<ColumnMean> = Vec::new();
    for row in rows {
        let entry = match means
            .iter_mut()
            .find(|m| m.detector == row.detector && m.column == row.column)
        {
            Some(entry) => entry,
            None => {
                means.push(ColumnMean {
                    detector: row.detector.clone(),
                    column: row.column.clone(),
                    records: 0,
                    auroc: 0.0,
                    der: 0.0,
                    tpr: 0.0,
                    fpr: 0.0,
                    primary: false,
                });
                means.last_mut().expect("just pushed")
            }
        };
        entry.records += 1;
        entry.auroc += row.auroc;
        entry.der += row.der.der;
        entry.tpr += row.tpr;
        entry.fpr += row.fpr;
    }
    for m in &mut means {
        let n = m.records as f64;
        m.auroc /= n;
        m.der /= n;
        m.tpr /= n;
        m.fpr /= n;
    }
    means
}

mod report;

#[cfg(test)]
mod tests;
