//! Model checkpoints: safetensors files in PyTorch's layout, with vigil's metadata beside.
//!
//! The tensors are named and laid out exactly as the PyTorch reference model's `state_dict`
//! (Linear weights `[out, in]`, BatchNorm `weight`/`bias`/`running_mean`/`running_var`), so
//! `safetensors.torch.load_file` reads a vigil checkpoint and vigil reads a PyTorch one. PyTorch's
//! `num_batches_tracked` counters are accepted and ignored (vigil's BatchNorm uses a fixed
//! momentum, as PyTorch does by default). The header metadata holds the [`ModelSpec`], the
//! training configuration and the vigil version, so `vigil info` and `load_classifier` need
//! nothing else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    ApplyResult, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore,
};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::io::{IoError, write_atomic};
use crate::models::{Classifier, ModelError, ModelSpec};

/// Metadata key of the model spec (JSON).
pub const SPEC_KEY: &str = "vigil.model_spec";
/// Metadata key of the training configuration (JSON), if any.
pub const TRAINING_KEY: &str = "vigil.training";
/// Metadata key of the vigil version that wrote the file.
pub const VERSION_KEY: &str = "vigil.version";

/// Errors reading or writing a checkpoint; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read.
    #[error("cannot read checkpoint {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a safetensors file, or a corrupt one.
    #[error("{path} is not a valid safetensors file: {reason}")]
    Format {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file has no vigil model spec, so the architecture must be given.
    #[error(
        "{path} has no vigil model spec in its metadata (a plain PyTorch state_dict?): give the architecture, input shape and classes explicitly"
    )]
    NoSpec {
        /// File.
        path: PathBuf,
    },
    /// The spec in the metadata is not valid JSON for this version of vigil.
    #[error("{path}: bad model spec in metadata: {reason}")]
    BadSpec {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The spec describes a model vigil cannot build.
    #[error("{path}: {source}")]
    Model {
        /// File.
        path: PathBuf,
        /// Cause.
        source: ModelError,
    },
    /// Tensors the model needs are absent from the file.
    #[error("{path} lacks {count} tensors the {arch} model needs, e.g. {examples}")]
    Missing {
        /// File.
        path: PathBuf,
        /// Architecture being loaded.
        arch: String,
        /// How many are missing.
        count: usize,
        /// A few of their names.
        examples: String,
    },
    /// Tensors whose shape or type differs from the model's.
    #[error("{path} does not fit the {arch} model: {details}")]
    Mismatch {
        /// File.
        path: PathBuf,
        /// Architecture being loaded.
        arch: String,
        /// Which tensors and how.
        details: String,
    },
    /// The file holds tensors the model does not have (other than `num_batches_tracked`).
    #[error("{path} has {count} tensors the {arch} model does not, e.g. {examples}")]
    Unused {
        /// File.
        path: PathBuf,
        /// Architecture being loaded.
        arch: String,
        /// How many.
        count: usize,
        /// A few of their names.
        examples: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// What a checkpoint's header says about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The model, if written by vigil.
    pub spec: Option<ModelSpec>,
    /// Training configuration as written, if any.
    pub training: Option<serde_json::Value>,
    /// vigil version that wrote it, if any.
    pub vigil_version: Option<String>,
    /// Tensor names with shapes and dtypes, sorted by name.
    pub tensors: Vec<TensorEntry>,
    /// All metadata key/value pairs.
    pub metadata: HashMap<String, String>,
}

/// One tensor listed in a safetensors header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Name.
    pub name: String,
    /// Element type as safetensors spells it (`F32`, `I64`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
}

/// Serialises a classifier to safetensors bytes with metadata.
pub fn to_bytes(
    classifier: &Classifier,
    training: Option<&serde_json::Value>,
) -> Result<Vec<u8>, String> {
    let spec = serde_json::to_string(&classifier.spec).map_err(|e| e.to_string())?;
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true)
        .metadata(SPEC_KEY, spec)
        .metadata(VERSION_KEY, env!("CARGO_PKG_VERSION"));
    if let Some(training) = training {
        store = store.metadata(TRAINING_KEY, training.to_string());
    }
    // `valid()` drops autodiff and folds pending BatchNorm running-stat updates into the values.
    classifier
        .network
        .valid()
        .save_into(&mut store)
        .map_err(|e| e.to_string())?;
    store.get_bytes().map_err(|e| e.to_string())
}

/// Every tensor of `classifier` (parameters and BatchNorm buffers) under its checkpoint name,
/// in file order, with the checkpoint's metadata: the classifier as [`save_classifier`] would
/// write it, in memory.
pub fn classifier_tensors(classifier: &Classifier) -> Result<TensorFile, CheckpointError> {
    let name = Path::new("in-memory checkpoint");
    let bytes = to_bytes(classifier, None).map_err(|reason| CheckpointError::Format {
        path: name.to_path_buf(),
        reason,
    })?;
    TensorFile::from_bytes(name, &bytes)
}

/// Writes a classifier checkpoint atomically.
pub fn save_classifier(
    path: &Path,
    classifier: &Classifier,
    training: Option<&serde_json::Value>,
) -> Result<(), CheckpointError> {
    let bytes = to_bytes(classifier, training).map_err(|reason| CheckpointError::Format {
        path: path.to_path_buf(),
        reason,
    })?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// Reads a checkpoint written by vigil: the spec comes from its metadata.
pub fn load_classifier(path: &Path, device: &Device) -> Result<Classifier, CheckpointError> {
    let bytes = read(path)?;
    let info = inspect_bytes(path, &bytes)?;
    let spec = info.spec.ok_or_else(|| CheckpointError::NoSpec {
        path: path.to_path_buf(),
    })?;
    load_with_spec_bytes(path, bytes, spec, device)
}

/// Reads a checkpoint for a given spec: the way to load a plain PyTorch `state_dict`.
pub fn load_with_spec(
    path: &Path,
    spec: ModelSpec,
    device: &Device,
) -> Result<Classifier, CheckpointError> {
    let bytes = read(path)?;
    inspect_bytes(path, &bytes)?;
    load_with_spec_bytes(path, bytes, spec, device)
}

/// Loads safetensors `bytes` (named `path` in errors) into a fresh classifier of `spec`.
pub fn load_with_spec_bytes(
    path: &Path,
    bytes: Vec<u8>,
    spec: ModelSpec,
    device: &Device,
) -> Result<Classifier, CheckpointError> {
    let arch = spec.architecture.name().to_string();
    let mut classifier =
        Classifier::new(spec, device).map_err(|source| CheckpointError::Model {
            path: path.to_path_buf(),
            source,
        })?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(PyTorchToBurnAdapter)
        .with_key_remapping(DATA_PARALLEL_PREFIX, "")
        .skip_enum_variants(true)
        .allow_partial(true)
        .validate(false);
    let result = classifier
        .network
        .load_from(&mut store)
        .map_err(|e| CheckpointError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    check_applied(path, &arch, &result)?;
    Ok(classifier)
}

/// `nn.DataParallel` saves every key under `module.`; the reference models have no such level.
const DATA_PARALLEL_PREFIX: &str = r"^module\.";

/// Where a PyTorch checkpoint file may nest its `state_dict`: at the top (HALO), under `model`
/// (BackdoorBench's `attack_result.pt`), or under the usual training-script keys.
const STATE_DICT_KEYS: [Option<&str>; 4] = [
    None,
    Some("model"),
    Some("state_dict"),
    Some("model_state_dict"),
];

/// Loads a PyTorch `.pt`/`.pth` file (a pickled `state_dict`, read without running pickle code)
/// into a fresh classifier of `spec`. The state dict may sit at the top level or under `model`,
/// `state_dict` or `model_state_dict`; a `module.` prefix (DataParallel) is stripped. Every
/// tensor must fit the architecture, as for safetensors.
pub fn load_pytorch_file(
    path: &Path,
    spec: ModelSpec,
    device: &Device,
) -> Result<Classifier, CheckpointError> {
    let arch = spec.architecture.name().to_string();
    let mut first_error = None;
    for key in STATE_DICT_KEYS {
        let mut classifier =
            Classifier::new(spec.clone(), device).map_err(|source| CheckpointError::Model {
                path: path.to_path_buf(),
                source,
            })?;
        let mut store = PytorchStore::from_file(path)
            .with_key_remapping(DATA_PARALLEL_PREFIX, "")
            .map_indices_contiguous(false)
            .allow_partial(true)
            .validate(false);
        if let Some(key) = key {
            store = store.with_top_level_key(key);
        }
        let outcome = classifier
            .network
            .load_from(&mut store)
            .map_err(|e| CheckpointError::Format {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
            .and_then(|result| check_applied(path, &arch, &result));
        match outcome {
            Ok(()) => return Ok(classifier),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| CheckpointError::Format {
        path: path.to_path_buf(),
        reason: "no state dict found".into(),
    }))
}

/// Fails unless loading applied every tensor of the file to the module and left none of the
/// module's tensors unset (PyTorch's `num_batches_tracked` counters aside).
fn check_applied(path: &Path, arch: &str, result: &ApplyResult) -> Result<(), CheckpointError> {
    if !result.errors.is_empty() {
        let details = result
            .errors
            .iter()
            .take(3)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            arch: arch.to_string(),
            details,
        });
    }
    if !result.missing.is_empty() {
        return Err(CheckpointError::Missing {
            path: path.to_path_buf(),
            arch: arch.to_string(),
            count: result.missing.len(),
            examples: examples(result.missing.iter().map(|(name, _)| name.as_str())),
        });
    }
    let unused: Vec<&str> = result
        .unused
        .iter()
        .map(String::as_str)
        .filter(|name| !name.ends_with("num_batches_tracked"))
        .collect();
    if !unused.is_empty() {
        return Err(CheckpointError::Unused {
            path: path.to_path_buf(),
            arch: arch.to_string(),
            count: unused.len(),
            examples: examples(unused.into_iter()),
        });
    }
    Ok(())
}

/// Writes any module atomically under burn's own tensor names, with `training` as metadata: the
/// auxiliary networks an attack trains beside the classifier, for its resume folder.
pub fn save_module<M: Module>(
    path: &Path,
    module: &M,
    training: &serde_json::Value,
) -> Result<(), CheckpointError> {
    let format = |reason: String| CheckpointError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let mut store = SafetensorsStore::from_bytes(None)
        .metadata(TRAINING_KEY, training.to_string())
        .metadata(VERSION_KEY, env!("CARGO_PKG_VERSION"));
    module
        .valid()
        .save_into(&mut store)
        .map_err(|e| format(e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| format(e.to_string()))?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// Loads a file written by [`save_module`] into `module` (named `what` in errors), which must
/// have exactly the file's tensors; returns the module and the file's `training` metadata.
pub fn load_module<M: Module>(
    path: &Path,
    mut module: M,
    what: &str,
) -> Result<(M, Option<serde_json::Value>), CheckpointError> {
    let bytes = read(path)?;
    let info = inspect_bytes(path, &bytes)?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .allow_partial(true)
        .validate(false);
    let result = module
        .load_from(&mut store)
        .map_err(|e| CheckpointError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    check_applied(path, what, &result)?;
    Ok((module, info.training))
}

/// Header of a checkpoint file: spec, training config, version, tensor list.
pub fn inspect(path: &Path) -> Result<CheckpointInfo, CheckpointError> {
    let bytes = read(path)?;
    inspect_bytes(path, &bytes)
}

/// Parses a safetensors header from bytes (`path` only names the source in errors).
pub fn inspect_bytes(path: &Path, bytes: &[u8]) -> Result<CheckpointInfo, CheckpointError> {
    let format = |reason: String| CheckpointError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let header = parse_header(bytes).map_err(format)?;
    let mut metadata = HashMap::new();
    let mut tensors = Vec::new();
    let serde_json::Value::Object(map) = header else {
        return Err(format("header is not a JSON object".into()));
    };
    for (name, value) in map {
        if name == "__metadata__" {
            if let serde_json::Value::Object(meta) = value {
                for (k, v) in meta {
                    if let serde_json::Value::String(v) = v {
                        metadata.insert(k, v);
                    }
                }
            }
            continue;
        }
        let entry: RawEntry =
            serde_json::from_value(value).map_err(|e| format(format!("tensor `{name}`: {e}")))?;
        tensors.push(TensorEntry {
            name,
            dtype: entry.dtype,
            shape: entry.shape,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let bad_spec = |reason: String| CheckpointError::BadSpec {
        path: path.to_path_buf(),
        reason,
    };
    let spec = metadata
        .get(SPEC_KEY)
        .map(|s| serde_json::from_str::<ModelSpec>(s).map_err(|e| bad_spec(e.to_string())))
        .transpose()?;
    let training = metadata
        .get(TRAINING_KEY)
        .map(|s| serde_json::from_str(s).map_err(|e| bad_spec(e.to_string())))
        .transpose()?;
    Ok(CheckpointInfo {
        spec,
        training,
        vigil_version: metadata.get(VERSION_KEY).cloned(),
        tensors,
        metadata,
    })
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
}

/// The JSON header of a safetensors file: an 8-byte little-endian length, then that many bytes.
fn parse_header(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            format!(
                "truncated: {} bytes, the header length needs 8",
                bytes.len()
            )
        })?;
    let len = u64::from_le_bytes(len_bytes);
    let end = 8u64
        .checked_add(len)
        .filter(|end| *end <= bytes.len() as u64)
        .ok_or_else(|| {
            format!(
                "header claims {len} bytes but the file has {} after the length",
                bytes.len() - 8
            )
        })? as usize;
    serde_json::from_slice(&bytes[8..end]).map_err(|e| format!("header is not JSON: {e}"))
}

fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    std::fs::read(path).map_err(|source| CheckpointError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn examples<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.take(3).collect::<Vec<_>>().join(", ")
}

/// Named `f32` tensors (flat, with a shape) for files vigil writes beside models: optimiser state,
/// loss traces. Stored as safetensors so any safetensors reader opens them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TensorFile {
    /// `(name, shape, values)`; `values.len()` is the product of `shape`.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Header metadata.
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Serialises to safetensors bytes (tensors in the order given, little-endian `F32`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        if !self.metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::json!(self.metadata));
        }
        let mut offset = 0usize;
        for (name, shape, values) in &self.tensors {
            let end = offset + 4 * values.len();
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut json = serde_json::Value::Object(header).to_string().into_bytes();
        // safetensors pads the header with spaces to an 8-byte boundary.
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + json.len() + offset);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for (_, _, values) in &self.tensors {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Parses safetensors bytes holding only `F32` tensors (`path` names the source in errors).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, CheckpointError> {
        let format = |reason: String| CheckpointError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let header = parse_header(bytes).map_err(format)?;
        let data_start = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) as usize;
        let data = &bytes[data_start..];
        let serde_json::Value::Object(map) = header else {
            return Err(format("header is not a JSON object".into()));
        };
        let mut file = TensorFile::default();
        let mut entries = Vec::new();
        for (name, value) in map {
            if name == "__metadata__" {
                if let serde_json::Value::Object(meta) = value {
                    for (k, v) in meta {
                        if let serde_json::Value::String(v) = v {
                            file.metadata.insert(k, v);
                        }
                    }
                }
                continue;
            }
            let entry: OffsetEntry = serde_json::from_value(value)
                .map_err(|e| format(format!("tensor `{name}`: {e}")))?;
            if entry.dtype != "F32" {
                return Err(format(format!(
                    "tensor `{name}` is {}, expected F32",
                    entry.dtype
                )));
            }
            let [start, end] = entry.data_offsets;
            let numel: usize = entry.shape.iter().product();
            if end < start || end > data.len() || end - start != 4 * numel {
                return Err(format(format!(
                    "tensor `{name}`: offsets {start}..{end} do not hold {numel} f32 values within {} data bytes",
                    data.len()
                )));
            }
            let values = data[start..end]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            entries.push((start, name, entry.shape, values));
        }
        entries.sort_by_key(|e| e.0);
        file.tensors = entries.into_iter().map(|(_, n, s, v)| (n, s, v)).collect();
        Ok(file)
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        write_atomic(path, &self.to_bytes())?;
        Ok(())
    }

    /// Reads a file written by [`TensorFile::save`].
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = read(path)?;
        Self::from_bytes(path, &bytes)
    }
}

#[derive(Deserialize)]
struct OffsetEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}
