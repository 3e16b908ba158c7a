//! One identity for every piece of reusable state in an output folder.
//!
//! Long runs keep state to reuse: MAD-FA chain checkpoints and its calibration, the stages of
//! a benchmark. Reusing state made by another model, other data or other settings gives a
//! result that looks right and is not, so every output folder that holds reusable state
//! carries a [`RunIdentity`] in [`IDENTITY_FILE`]: what ran (the kind of run), content hashes
//! of the weights and of every data set, the settings, and the vigil version. [`claim`] is the
//! one gate: it compares a run's identity with the folder's before anything is read back or
//! written, names what differs, and on a refusal leaves the folder exactly as it was.
//!
//! Hashes are BLAKE3 over the exact bytes (tensor names, shapes and `f32` bits; image shape,
//! pixels and labels), so any change to a weight or a pixel changes the identity, and the
//! order of samples counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::data::ImageSet;
use crate::io::{IoError, write_json_atomic};
use crate::madfa::MadTask;
use crate::models::Classifier;

/// Name of the identity file in an output folder.
pub const IDENTITY_FILE: &str = "run-identity.json";

/// Why an output folder cannot be used for a run.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The folder holds state of a run that is not this one.
    #[error(
        "{dir} holds a run of {what}; nothing was written. Choose another output folder, or delete that one to start over"
    )]
    Mismatch {
        /// The output folder.
        dir: PathBuf,
        /// What differs, in words ("another model (weights of `model` differ)", ...).
        what: String,
    },
    /// The folder holds reusable files but no identity (written by an older vigil, or by hand).
    #[error(
        "{dir} already holds {files} but no {IDENTITY_FILE} saying which model, data and settings made them; nothing was written. Choose another output folder, or delete those files"
    )]
    Unidentified {
        /// The output folder.
        dir: PathBuf,
        /// The files found, comma-separated.
        files: String,
    },
    /// The identity file exists but cannot be read.
    #[error("cannot read the run identity {path}: {reason}")]
    Unreadable {
        /// The identity file.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// A model's tensors could not be read to hash them.
    #[error("cannot read the model's tensors to identify it: {0}")]
    Model(String),
    /// Writing the identity file failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// What made (or will make) the reusable state in a folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// The kind of run (`madfa-sample`, `madfa-calibrate`, `ood-benchmark`, ...).
    pub kind: String,
    /// Version of vigil that wrote it: a newer vigil may draw differently from the same seed.
    pub vigil_version: String,
    /// Content hash of each model's weights and spec, by role (`model`, `transfer source`).
    pub weights: BTreeMap<String, String>,
    /// Content hash of each data set, by role (`trusted`, `sampling`, `test`, ...).
    pub data: BTreeMap<String, String>,
    /// The settings that change what the run computes (seeds included).
    pub settings: serde_json::Value,
}

impl RunIdentity {
    /// An identity of this vigil version, with no weights or data yet.
    pub fn new(kind: &str, settings: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            vigil_version: env!("CARGO_PKG_VERSION").into(),
            weights: BTreeMap::new(),
            data: BTreeMap::new(),
            settings,
        }
    }

    /// Adds the hash of `model` under `role`.
    pub fn with_model(mut self, role: &str, model: &Classifier) -> Result<Self, IdentityError> {
        self.weights.insert(role.into(), hash_classifier(model)?);
        Ok(self)
    }

    /// Adds a hash of any other weights ([`hash_module`]) under `role`.
    pub fn with_weights_hash(mut self, role: &str, hash: String) -> Self {
        self.weights.insert(role.into(), hash);
        self
    }

    /// Adds the hash of `set` under `role`.
    pub fn with_images(mut self, role: &str, set: &ImageSet) -> Self {
        self.data.insert(role.into(), hash_images(set));
        self
    }

    /// Adds a hash of any other data (flags, ids) under `role`.
    pub fn with_data_hash(mut self, role: &str, hash: String) -> Self {
        self.data.insert(role.into(), hash);
        self
    }

    /// The identity of a MAD-FA run (`kind`: `madfa-sample`, `madfa-calibrate`) of `settings`
    /// on `model` and `task`: the weights, every set of the task, the anomaly flags and the
    /// samples' ids (all of which end up in the run's files).
    pub fn for_madfa_task(
        kind: &str,
        model: &Classifier,
        task: &MadTask,
        settings: serde_json::Value,
    ) -> Result<Self, IdentityError> {
        Ok(Self::new(kind, settings)
            .with_model("model", model)?
            .with_images("trusted", &task.trusted)
            .with_images("sampling", &task.sampling)
            .with_images("test", &task.test)
            .with_data_hash(
                "test anomaly flags and sample ids",
                hash_json(&(&task.test_is_anomalous, &task.trusted_ids, &task.test_ids)),
            ))
    }

    /// What differs between `self` (the saved run) and `other` (the one asking), in words;
    /// `None` when they are the same run.
    pub fn difference(&self, other: &RunIdentity) -> Option<String> {
        if self.kind != other.kind {
            return Some(format!("another kind ({}, not {})", self.kind, other.kind));
        }
        let changed = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
        };
        let weights = changed(&self.weights, &other.weights);
        if !weights.is_empty() {
            return Some(format!(
                "another model (weights of {} differ)",
                weights.join(", ")
            ));
        }
        let data = changed(&self.data, &other.data);
        if !data.is_empty() {
            return Some(format!("other data ({} differ)", data.join(", ")));
        }
        if self.settings != other.settings {
            return Some(format!(
                "other settings ({})",
                settings_difference(&self.settings, &other.settings)
            ));
        }
        if self.vigil_version != other.vigil_version {
            return Some(format!(
                "another vigil version (written by {}, this is {}), which may draw differently from the same seed",
                self.vigil_version, other.vigil_version
            ));
        }
        None
    }
}

/// The leaves that differ between two settings objects, as `path: saved -> asked`.
fn settings_difference(saved: &serde_json::Value, asked: &serde_json::Value) -> String {
    fn walk(
        path: &str,
        a: Option<&serde_json::Value>,
        b: Option<&serde_json::Value>,
        out: &mut Vec<String>,
    ) {
        use serde_json::Value;
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(&p, x.get(k), y.get(k), out);
                }
            }
            (x, y) if x != y => {
                let show = |v: Option<&Value>| v.map_or_else(|| "unset".into(), Value::to_string);
                out.push(format!("{path}: {} here, {} asked", show(x), show(y)));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", Some(saved), Some(asked), &mut out);
    const SHOWN: usize = 4;
    let more = out.len().saturating_sub(SHOWN);
    out.truncate(SHOWN);
    if more > 0 {
        out.push(format!("and {more} more"));
    }
    out.join("; ")
}

/// How [`claim`] found the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderState {
    /// No earlier run: the identity was written.
    Fresh,
    /// The same run was there before: its state may be reused.
    Resuming,
}

/// Claims `dir` for the run `identity`, before anything in it is read back or written.
///
/// - The folder's identity equals `identity`: [`FolderState::Resuming`].
/// - It holds another run's identity: [`IdentityError::Mismatch`], naming what differs.
/// - It has no identity but holds one of `reusable` (file or folder names of the run's state):
///   [`IdentityError::Unidentified`], since nothing says whose state it is.
/// - Otherwise the folder is created if needed, the identity written, and [`FolderState::Fresh`].
///
/// On an error nothing has been written.
pub fn claim(
    dir: &Path,
    identity: &RunIdentity,
    reusable: &[&str],
) -> Result<FolderState, IdentityError> {
    let path = dir.join(IDENTITY_FILE);
    match crate::io::read_if_present(&path) {
        Ok(Some(bytes)) => {
            let saved: RunIdentity =
                serde_json::from_slice(&bytes).map_err(|e| IdentityError::Unreadable {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            match saved.difference(identity) {
                None => Ok(FolderState::Resuming),
                Some(what) => Err(IdentityError::Mismatch {
                    dir: dir.to_path_buf(),
                    what,
                }),
            }
        }
        Ok(None) => {
            let found: Vec<&str> = reusable
                .iter()
                .copied()
                .filter(|name| dir.join(name).exists())
                .collect();
            if !found.is_empty() {
                return Err(IdentityError::Unidentified {
                    dir: dir.to_path_buf(),
                    files: found.join(", "),
                });
            }
            write_json_atomic(&path, identity)?;
            Ok(FolderState::Fresh)
        }
        Err(e) => Err(IdentityError::Unreadable {
            path,
            reason: e.to_string(),
        }),
    }
}

/// BLAKE3 of a model's tensors (names, shapes, `f32` values in order) and its spec
/// (architecture, input shape, class names, normalisation), as hex.
pub fn hash_classifier(model: &Classifier) -> Result<String, IdentityError> {
    let file =
        checkpoint::classifier_tensors(model).map_err(|e| IdentityError::Model(e.to_string()))?;
    let mut hasher = blake3::Hasher::new();
    let spec = serde_json::to_vec(&model.spec).map_err(|e| IdentityError::Model(e.to_string()))?;
    hash_field(&mut hasher, &spec);
    for (name, shape, values) in &file.tensors {
        hash_tensor(&mut hasher, name, shape, values);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// One named tensor into `hasher`: its name, rank, dimensions and `f32` values.
fn hash_tensor(hasher: &mut blake3::Hasher, name: &str, shape: &[usize], values: &[f32]) {
    hash_field(hasher, name.as_bytes());
    hasher.update(&(shape.len() as u64).to_le_bytes());
    for &d in shape {
        hasher.update(&(d as u64).to_le_bytes());
    }
    hash_f32s(hasher, values);
}

/// BLAKE3 of every float tensor of a module (dotted path, shape, `f32` values in order), as
/// hex: the weights of a model that is not a [`Classifier`], such as a language model.
pub fn hash_module<M: Module>(module: &M) -> String {
    struct Tensors<'a> {
        hasher: &'a mut blake3::Hasher,
        paths: std::vec::IntoIter<crate::optim::ParamInfo>,
    }
    impl ModuleVisitor for Tensors<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let path = self.paths.next().map(|p| p.path).unwrap_or_default();
            let value = param.val();
            let shape = value.dims();
            let values: Vec<f32> = value.into_data().iter::<f32>().collect();
            hash_tensor(self.hasher, &path, &shape, &values);
        }
    }
    let mut hasher = blake3::Hasher::new();
    let paths = crate::optim::param_infos(module).into_iter();
    module.visit(&mut Tensors {
        hasher: &mut hasher,
        paths,
    });
    hasher.finalize().to_hex().to_string()
}

/// BLAKE3 of an image set: shape, number of images, pixels (`f32` bits), labels and class
/// names, as hex.
pub fn hash_images(set: &ImageSet) -> String {
    let mut hasher = blake3::Hasher::new();
    let s = set.shape();
    for d in [s.channels, s.height, s.width, set.len()] {
        hasher.update(&(d as u64).to_le_bytes());
    }
    hash_f32s(&mut hasher, set.pixels());
    for &label in set.labels() {
        hasher.update(&u64::from(label).to_le_bytes());
    }
    for name in set.class_names() {
        hash_field(&mut hasher, name.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// BLAKE3 of any serialisable value (its JSON), as hex: flags, ids, small tables.
pub fn hash_json<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    blake3::hash(&bytes).to_hex().to_string()
}

/// A length-prefixed field, so that ("ab", "c") and ("a", "bc") hash differently.
fn hash_field(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// `f32` values as their little-endian bits, in chunks (no copy of the whole slice).
fn hash_f32s(hasher: &mut blake3::Hasher, values: &[f32]) {
    hasher.update(&(values.len() as u64).to_le_bytes());
    let mut buffer = Vec::with_capacity(4 * 4096);
    for chunk in values.chunks(4096) {
        buffer.clear();
        buffer.extend(chunk.iter().flat_map(|v| v.to_bits().to_le_bytes()));
        hasher.update(&buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ImageSet, ImageShape};

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vigil-identity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn set(pixels: Vec<f32>, labels: Vec<u16>) -> ImageSet {
        let names = vec!["a".to_string(), "b".to_string()];
        ImageSet::new(pixels, labels, ImageShape::new(1, 1, 2), names, "test").unwrap()
    }

    fn identity(settings: serde_json::Value, data: &ImageSet) -> RunIdentity {
        RunIdentity::new("test-run", settings).with_images("trusted", data)
    }

    #[test]
    fn image_hash_sees_every_pixel_label_and_the_order() {
        let base = set(vec![0.1, 0.2, 0.3, 0.4], vec![0, 1]);
        let h = hash_images(&base);
        assert_eq!(h, hash_images(&base.clone()));
        // A pixel moved by one ulp, a label, and the two samples swapped: all new hashes.
        let nudged = set(
            vec![f32::from_bits(0.1f32.to_bits() + 1), 0.2, 0.3, 0.4],
            vec![0, 1],
        );
        let relabelled = set(vec![0.1, 0.2, 0.3, 0.4], vec![1, 1]);
        let swapped = set(vec![0.3, 0.4, 0.1, 0.2], vec![1, 0]);
        for other in [nudged, relabelled, swapped] {
            assert_ne!(hash_images(&other), h);
        }
    }

    #[test]
    fn claim_writes_once_resumes_same_run_and_refuses_another_without_writing() {
        let dir = scratch("claim");
        let data = set(vec![0.1, 0.2, 0.3, 0.4], vec![0, 1]);
        let first = identity(serde_json::json!({"draws": 50, "seed": 0}), &data);
        assert_eq!(claim(&dir, &first, &[]).unwrap(), FolderState::Fresh);
        let written = std::fs::read(dir.join(IDENTITY_FILE)).unwrap();
        assert_eq!(claim(&dir, &first, &[]).unwrap(), FolderState::Resuming);

        // Other settings: named, and the folder is untouched.
        let other = identity(serde_json::json!({"draws": 60, "seed": 0}), &data);
        let err = claim(&dir, &other, &[]).unwrap_err().to_string();
        assert!(
            err.contains("other settings (draws: 50 here, 60 asked)"),
            "{err}"
        );
        assert!(err.contains("nothing was written"), "{err}");
        assert_eq!(std::fs::read(dir.join(IDENTITY_FILE)).unwrap(), written);

        // Other data.
        let other_data = set(vec![0.1, 0.2, 0.3, 0.5], vec![0, 1]);
        let err = claim(&dir, &identity(first.settings.clone(), &other_data), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("other data (`trusted` differ)"), "{err}");

        // Another vigil version.
        let mut newer = first.clone();
        newer.vigil_version = "99.0.0".into();
        let err = claim(&dir, &newer, &[]).unwrap_err().to_string();
        assert!(err.contains("another vigil version"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unidentified_state_is_refused_and_left_alone() {
        let dir = scratch("unidentified");
        std::fs::create_dir_all(dir.join("resume")).unwrap();
        let data = set(vec![0.0; 4], vec![0, 1]);
        let err = claim(
            &dir,
            &identity(serde_json::json!({}), &data),
            &["resume", "x.npz"],
        )
        .unwrap_err();
        assert!(matches!(err, IdentityError::Unidentified { ref files, .. } if files == "resume"));
        assert!(!dir.join(IDENTITY_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn settings_difference_names_nested_leaves() {
        let a = serde_json::json!({"sgld": {"lr": 1e-6, "gamma": 1e4}, "chains": 2});
        let b = serde_json::json!({"sgld": {"lr": 2e-6, "gamma": 1e4}, "chains": 2, "x": true});
        assert_eq!(
            settings_difference(&a, &b),
            "sgld.lr: 1e-6 here, 2e-6 asked; x: unset here, true asked"
        );
    }
}
