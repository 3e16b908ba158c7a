//! The attack record: one folder per backdoored model, read by everything downstream
//! (detection, reports).
//!
//! Files, each written atomically:
//! - `attack.json`: [`AttackManifest`]: attack name and parameters, target rule, poisoning rate,
//!   seed, dataset, vigil version;
//! - `poison.json`: the [`PoisonPlan`] (which training indices were altered, their labels, how);
//!   `poison-second.json` the same for a second backdoor, when the record has one;
//! - `backdoor_test.safetensors` + `backdoor_test.json`: the triggered test set (every test image
//!   the rule covers, triggered, with its original index, original label and target label);
//! - `results.json`: [`AttackResults`] (clean accuracy, attack success rate, timings);
//! - `examples.png`: clean images, their triggered versions and the amplified difference;
//! - `model.safetensors`, `metrics.jsonl`, `resume/`: the training run (see [`crate::train`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{PoisonPlan, TargetRule, TriggeredTestSet};
use crate::checkpoint::{CheckpointError, TensorFile};
use crate::data::{ImageSet, ImageShape, Label};
use crate::io::{IoError, write_json_atomic};

/// File names inside an attack record.
pub mod files {
    /// The attack's configuration.
    pub const MANIFEST: &str = "attack.json";
    /// The poisoning plan.
    pub const POISON: &str = "poison.json";
    /// Triggered test images.
    pub const BACKDOOR_TEST_IMAGES: &str = "backdoor_test.safetensors";
    /// Their indices and labels.
    pub const BACKDOOR_TEST_INDEX: &str = "backdoor_test.json";
    /// Clean accuracy and attack success rate.
    pub const RESULTS: &str = "results.json";
    /// Clean vs triggered examples.
    pub const EXAMPLES: &str = "examples.png";
    /// The second backdoor's poisoning plan, in two-backdoor records.
    pub const SECOND_POISON: &str = "poison-second.json";
}

/// Errors reading or writing an attack record; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// File.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A tensor file is malformed.
    #[error(transparent)]
    Tensors(#[from] CheckpointError),
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// What was attacked and how: enough to rebuild the poisoned data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackManifest {
    /// Registry name of the attack.
    pub attack: String,
    /// Its parameters, as the attack serialises them.
    pub params: serde_json::Value,
    /// Target rule.
    pub rule: TargetRule,
    /// Fraction of training samples poisoned.
    pub rate: f64,
    /// Seed of the poisoning choice and of the trigger.
    pub seed: u64,
    /// Dataset name.
    pub dataset: String,
    /// vigil version that wrote the record.
    pub vigil_version: String,
    /// A second backdoor planted in the same model, when there is one (several mechanisms in
    /// one model); its triggered images follow the first's in the backdoor test set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second: Option<SecondBackdoorManifest>,
}

impl AttackManifest {
    /// Names of the record's backdoors, indexed by [`TriggeredTestSet::mechanisms`].
    pub fn mechanism_names(&self) -> Vec<String> {
        let mut names = vec![self.attack.clone()];
        names.extend(self.second.iter().map(|s| s.attack.clone()));
        names
    }
}

/// The second backdoor of a two-backdoor record: its attack, parameters and target rule (rate
/// and seed are the record's; see [`super::experiment::poison_two`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondBackdoorManifest {
    /// Registry name of the attack.
    pub attack: String,
    /// Its parameters, as the attack serialises them.
    pub params: serde_json::Value,
    /// Its target rule.
    pub rule: TargetRule,
}

/// The outcome of an attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackResults {
    /// Accuracy of the backdoored model on the clean test set.
    pub clean_accuracy: f64,
    /// Fraction of triggered test images classified as their target.
    pub attack_success_rate: f64,
    /// Clean test images evaluated.
    pub clean_test_size: usize,
    /// Triggered test images evaluated.
    pub backdoor_test_size: usize,
    /// Training samples altered with the trigger.
    pub poisoned_samples: usize,
    /// Training samples altered with a noise trigger (WaNet's noise mode).
    pub noise_samples: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// Attack success rate of each backdoor of a two-backdoor record, in mechanism order
    /// (empty for one backdoor, whose rate is `attack_success_rate`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mechanism_success_rates: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BackdoorTestIndex {
    original_indices: Vec<usize>,
    original_labels: Vec<Label>,
    target_labels: Vec<Label>,
    class_names: Vec<String>,
    /// Which backdoor made each image (absent in single-backdoor records: all 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mechanisms: Vec<u8>,
}

/// Writes `value` as `dir/name` (pretty JSON, atomically).
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), RecordError> {
    Ok(write_json_atomic(&dir.join(name), value)?)
}

/// Reads `dir/name` as JSON.
pub fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Result<T, RecordError> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| RecordError::Read {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| RecordError::Read {
        path,
        reason: e.to_string(),
    })
}

/// Writes the triggered test set (images as safetensors, indices and labels as JSON).
pub fn write_backdoor_test(dir: &Path, set: &TriggeredTestSet) -> Result<(), RecordError> {
    let s = set.images.shape();
    let mut file = TensorFile::default();
    file.tensors.push((
        "images".into(),
        vec![set.images.len(), s.channels, s.height, s.width],
        set.images.pixels().to_vec(),
    ));
    file.save(&dir.join(files::BACKDOOR_TEST_IMAGES))?;
    let index = BackdoorTestIndex {
        original_indices: set.original_indices.clone(),
        original_labels: set.original_labels.clone(),
        target_labels: set.images.labels().to_vec(),
        class_names: set.images.class_names().to_vec(),
        mechanisms: if set.mechanisms.iter().all(|&m| m == 0) {
            Vec::new()
        } else {
            set.mechanisms.clone()
        },
    };
    write_json(dir, files::BACKDOOR_TEST_INDEX, &index)
}

/// Reads the triggered test set written by [`write_backdoor_test`].
pub fn read_backdoor_test(dir: &Path) -> Result<TriggeredTestSet, RecordError> {
    let path = dir.join(files::BACKDOOR_TEST_IMAGES);
    let file = TensorFile::load(&path)?;
    let index: BackdoorTestIndex = read_json(dir, files::BACKDOOR_TEST_INDEX)?;
    let bad = |reason: String| RecordError::Read {
        path: path.clone(),
        reason,
    };
    let (_, shape, pixels) = file
        .tensors
        .into_iter()
        .find(|(name, _, _)| name == "images")
        .ok_or_else(|| bad("no `images` tensor".into()))?;
    let [n, c, h, w] = <[usize; 4]>::try_from(shape.as_slice()).map_err(|_| {
        bad(format!(
            "images have shape {shape:?}, expected [n, c, h, w]"
        ))
    })?;
    let mechanisms = if index.mechanisms.is_empty() {
        vec![0; n]
    } else {
        index.mechanisms
    };
    if index.target_labels.len() != n
        || index.original_labels.len() != n
        || index.original_indices.len() != n
        || mechanisms.len() != n
    {
        return Err(bad(format!(
            "{n} images but {} target labels, {} original labels, {} original indices and {} mechanisms in {}",
            index.target_labels.len(),
            index.original_labels.len(),
            index.original_indices.len(),
            mechanisms.len(),
            files::BACKDOOR_TEST_INDEX
        )));
    }
    let images = ImageSet::new(
        pixels,
        index.target_labels,
        ImageShape::new(c, h, w),
        index.class_names,
        "backdoor test set",
    )
    .map_err(|e| bad(e.to_string()))?;
    Ok(TriggeredTestSet {
        images,
        original_indices: index.original_indices,
        original_labels: index.original_labels,
        mechanisms,
    })
}

/// Writes the poisoning plan.
pub fn write_plan(dir: &Path, plan: &PoisonPlan) -> Result<(), RecordError> {
    write_json(dir, files::POISON, plan)
}
