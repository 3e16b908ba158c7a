//! Attack records summarised for a table (`vigil table`): what each record's attack changed
//! from its defaults, its measured outcome, and, against a clean model, how often the trigger
//! alone (without a backdoor) sends an image to the target.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::backdoor::record::{self, AttackManifest, AttackResults, RecordError, files};
use super::backdoor::{AttackParams, TargetRule};
use crate::checkpoint::{self, CheckpointError};
use crate::inference::evaluate;
use crate::models::{BnMode, Classifier};

/// Batch size of the clean model's pass over a triggered test set.
const EVAL_BATCH: usize = 512;

/// Errors of summarising records.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// The clean model cannot be loaded.
    #[error("loading the clean model {}", .path.display())]
    CleanModel {
        /// Its checkpoint.
        path: PathBuf,
        /// Why (boxed: a checkpoint error is large).
        #[source]
        source: Box<CheckpointError>,
    },
    /// The clean run's metrics cannot be read.
    #[error("reading {}/metrics.jsonl", .dir.display())]
    Metrics {
        /// The run folder.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The clean run has no finished epoch.
    #[error("empty metrics.jsonl")]
    EmptyMetrics,
    /// The clean run's last metrics line is not JSON.
    #[error(transparent)]
    MetricsLine(#[from] serde_json::Error),
    /// The clean model's header cannot be read (boxed: a checkpoint error is large).
    #[error(transparent)]
    Checkpoint(Box<CheckpointError>),
    /// A record file cannot be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A record's triggered test set cannot be read.
    #[error("reading the triggered test set of {}", .dir.display())]
    TriggeredSet {
        /// The record.
        dir: PathBuf,
        /// Why.
        #[source]
        source: RecordError,
    },
}

/// A clean training run (`vigil train`'s folder) to compare records against.
pub struct CleanRun {
    /// Its model.
    pub model: Classifier,
    /// Its architecture's name, when the checkpoint records it.
    pub architecture: Option<String>,
    /// Test accuracy after its last epoch, when recorded.
    pub test_accuracy: Option<f64>,
}

impl CleanRun {
    /// Loads the run in `dir`: its model and its last epoch's test accuracy.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, SummaryError> {
        let path = dir.join(crate::train::files::MODEL);
        let model = checkpoint::load_classifier(&path, device).map_err(|source| {
            SummaryError::CleanModel {
                path: path.clone(),
                source: Box::new(source),
            }
        })?;
        let metrics =
            std::fs::read_to_string(dir.join(crate::train::files::METRICS)).map_err(|source| {
                SummaryError::Metrics {
                    dir: dir.to_path_buf(),
                    source,
                }
            })?;
        let last = metrics.lines().last().ok_or(SummaryError::EmptyMetrics)?;
        let epoch: serde_json::Value = serde_json::from_str(last)?;
        let info = checkpoint::inspect(&path).map_err(|e| SummaryError::Checkpoint(Box::new(e)))?;
        Ok(Self {
            model,
            architecture: info.spec.map(|s| s.architecture.name().to_string()),
            test_accuracy: epoch["test_accuracy"].as_f64(),
        })
    }
}

/// One record, as a table row shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSummary {
    /// What was attacked and how.
    pub manifest: AttackManifest,
    /// The trigger parameters that differ from the attack's defaults, as `name value` pairs
    /// (`default` when none do), so two rows of one attack can be told apart.
    pub changed_settings: String,
    /// The measured outcome; `None` while the record is unfinished.
    pub results: Option<AttackResults>,
    /// The clean model's accuracy against the target labels of the record's triggered test
    /// set: `None` without a clean model, `Some(None)` if the images do not fit it.
    pub clean_model_asr: Option<Option<f64>>,
}

impl RecordSummary {
    /// The target rule in words: `all-to-one K`, `all-to-all` or `untargeted`.
    pub fn target(&self) -> String {
        match self.manifest.rule {
            TargetRule::AllToOne { target } => format!("all-to-one {target}"),
            TargetRule::AllToAll => "all-to-all".to_string(),
            TargetRule::Untargeted => "untargeted".to_string(),
        }
    }
}

/// Reads the record in `dir` and, for a finished one with a `clean` run given, measures the
/// trigger alone on the clean model.
pub fn summarize_record(
    dir: &Path,
    clean: Option<&CleanRun>,
    device: &Device,
) -> Result<RecordSummary, SummaryError> {
    let manifest: AttackManifest = record::read_json(dir, files::MANIFEST)?;
    let results: Option<AttackResults> = dir
        .join(files::RESULTS)
        .exists()
        .then(|| record::read_json(dir, files::RESULTS))
        .transpose()?;
    let clean_model_asr = match (&results, clean) {
        (Some(_), Some(clean)) => Some(trigger_alone(&clean.model, dir, device)?),
        _ => None,
    };
    Ok(RecordSummary {
        changed_settings: changed_settings(&manifest),
        manifest,
        results,
        clean_model_asr,
    })
}

/// The trigger parameters of a record that differ from the attack's defaults (see
/// [`RecordSummary::changed_settings`]).
pub fn changed_settings(manifest: &AttackManifest) -> String {
    let defaults = AttackParams::defaults(&manifest.attack, manifest.seed)
        .ok()
        .and_then(|d| serde_json::to_value(d).ok());
    let mut changed = Vec::new();
    if let Some(defaults) = defaults {
        diff("", &manifest.params, &defaults, &mut changed);
    }
    if changed.is_empty() {
        "default".into()
    } else {
        changed.join(", ")
    }
}

/// Leaves of `value` that differ from `default` (the clean model's path is not a setting).
fn diff(
    prefix: &str,
    value: &serde_json::Value,
    default: &serde_json::Value,
    out: &mut Vec<String>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                if key == "clean_model" {
                    continue;
                }
                let d = default.get(key).unwrap_or(&serde_json::Value::Null);
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                diff(&name, v, d, out);
            }
        }
        _ if value != default => {
            let shown = match value.as_f64() {
                Some(x) => format!("{}", (x * 1e4).round() / 1e4),
                None => value.to_string(),
            };
            out.push(format!("{prefix} {shown}"));
        }
        _ => {}
    }
}

/// The clean model's accuracy against the target labels of the record's triggered test set
/// (`None` if the images do not fit the model).
fn trigger_alone(
    model: &Classifier,
    dir: &Path,
    device: &Device,
) -> Result<Option<f64>, SummaryError> {
    let triggered =
        record::read_backdoor_test(dir).map_err(|source| SummaryError::TriggeredSet {
            dir: dir.to_path_buf(),
            source,
        })?;
    let s = triggered.images.shape();
    if [s.channels, s.height, s.width] != model.spec.input_shape || triggered.images.is_empty() {
        return Ok(None);
    }
    let outputs = evaluate(
        model,
        &triggered.images,
        None,
        EVAL_BATCH,
        BnMode::Eval,
        device,
    );
    Ok(Some(outputs.accuracy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_settings_name_the_leaves_that_differ_from_the_defaults() {
        let mut out = Vec::new();
        let value = serde_json::json!({"size": 4, "clean_model": "x", "blend": {"alpha": 0.12345}});
        let default = serde_json::json!({"size": 3, "blend": {"alpha": 0.2}});
        diff("", &value, &default, &mut out);
        assert_eq!(out, ["blend.alpha 0.1235", "size 4"]);
    }
}
