//! Model checkpoints: safetensors files in PyTorch's layout, with vigil's metadata beside.
//!
//! The tensors are named and laid out exactly as the PyTorch reference model's `state_dict`
//! (Linear weights `[out, in]`, BatchNorm `weight`/`bias`/`running_mean`/`running_var`), so
//! `safetensors.torch.load_file` reads a vigil checkpoint and vigil reads a PyTorch one. PyTorch's
//! `num_batches_tracked` counters are accepted and ignored (vigil's BatchNorm uses a fixed
//! momentum, as PyTorch does by default). The header metadata holds the [`ModelSpec`], the
//! training configuration and the vigil version, so `vigil info` and `load_classifier` need
//! nothing else.
//!
//! PyTorch pickles (`.pt`/`.pth`) load and list too, read without running pickle code. Whatever
//! the file, its tensors enter the model through one function (`apply_file_tensors`), which
//! casts f16, bf16 and f64 weights to the f32 vigil computes in.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::pytorch_reader::{
    DType as PytorchDType, FileFormat, PickleValue, PytorchError, PytorchReader,
};
use burn::store::{
    ApplyError, ApplyResult, BurnToPyTorchAdapter, FloatCastAdapter, ModuleAdapter, ModuleSnapshot,
    ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::{DType, Device};
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
    /// The file's tensor names differ from the model's: some it needs are absent, or the file
    /// holds some it has no place for (other than `num_batches_tracked`). Both lists are shown,
    /// so a renamed prefix or another architecture is visible at a glance. Boxed: the lists
    /// would make every `Result` carrying this error large.
    #[error("{0}")]
    Keys(Box<KeyDiff>),
    /// Tensors whose shape or type differs from the model's; shapes in the file's own layout
    /// (PyTorch's `[out, in]` for Linear weights), as its `state_dict` shows them.
    #[error("{path} does not fit the {arch} model: {details}")]
    Mismatch {
        /// File.
        path: PathBuf,
        /// Architecture being loaded.
        arch: String,
        /// Which tensors and how.
        details: String,
    },
    /// A PyTorch pickle that could not be read.
    #[error("{path} is not a readable PyTorch checkpoint: {reason}")]
    PyTorch {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// How a file's tensor names differ from a model's, for [`CheckpointError::Keys`].
#[derive(Debug)]
pub struct KeyDiff {
    /// File.
    pub path: PathBuf,
    /// Architecture being loaded.
    pub arch: String,
    /// Every tensor name the model has, sorted.
    pub expected: Vec<String>,
    /// Those the file lacks, sorted.
    pub missing: Vec<String>,
    /// Every tensor name the file holds, sorted.
    pub held: Vec<String>,
    /// Those the model does not use, sorted (`num_batches_tracked` counters left out).
    pub unused: Vec<String>,
    /// Tensors present on both sides with another shape or type, described as in
    /// [`CheckpointError::Mismatch`].
    pub shapes: Vec<String>,
}

impl std::fmt::Display for KeyDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} does not fit the {} model:\n  {}\n  {}{}",
            self.path.display(),
            self.arch,
            expected_line(self.expected.len(), &self.missing),
            held_line(self.held.len(), &self.unused),
            shapes_line(&self.shapes)
        )
    }
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
    if FileKind::of(&bytes) == FileKind::PyTorch {
        return Err(CheckpointError::NoSpec {
            path: path.to_path_buf(),
        });
    }
    let info = inspect_bytes(path, &bytes)?;
    let spec = info.spec.ok_or_else(|| CheckpointError::NoSpec {
        path: path.to_path_buf(),
    })?;
    load_with_spec_bytes(path, bytes, spec, device)
}

/// Reads a checkpoint for a given spec: the way to load a plain PyTorch `state_dict`, saved as
/// safetensors or pickled (`.pt`/`.pth`, told apart by content, as [`load_pytorch_file`] reads it).
pub fn load_with_spec(
    path: &Path,
    spec: ModelSpec,
    device: &Device,
) -> Result<Classifier, CheckpointError> {
    let bytes = read(path)?;
    if FileKind::of(&bytes) == FileKind::PyTorch {
        return load_pytorch_file(path, spec, device);
    }
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
    let mut classifier = new_classifier(path, spec, device)?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_key_remapping(DATA_PARALLEL_PREFIX, "")
        .skip_enum_variants(true);
    let tensors = store
        .get_all_tensors()
        .map_err(|e| CheckpointError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    apply_file_tensors(
        path,
        &arch,
        &mut classifier.network,
        tensors,
        Layout::PyTorch,
    )?;
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
/// tensor must fit the architecture, as for safetensors. When no place fits, the error is the
/// one of the place that came closest (a shape mismatch before a missing name).
pub fn load_pytorch_file(
    path: &Path,
    spec: ModelSpec,
    device: &Device,
) -> Result<Classifier, CheckpointError> {
    let arch = spec.architecture.name().to_string();
    let mut closest: Option<CheckpointError> = None;
    for key in STATE_DICT_KEYS {
        let mut classifier = new_classifier(path, spec.clone(), device)?;
        let mut store = PytorchStore::from_file(path)
            .with_key_remapping(DATA_PARALLEL_PREFIX, "")
            .map_indices_contiguous(false);
        if let Some(key) = key {
            store = store.with_top_level_key(key);
        }
        let outcome = match store.get_all_tensors() {
            Ok(tensors) => apply_file_tensors(
                path,
                &arch,
                &mut classifier.network,
                tensors,
                Layout::PyTorch,
            ),
            Err(e) => Err(CheckpointError::PyTorch {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        };
        match outcome {
            Ok(()) => return Ok(classifier),
            Err(e) => {
                if closest.as_ref().is_none_or(|c| e.distance() < c.distance()) {
                    closest = Some(e);
                }
            }
        }
    }
    Err(closest.unwrap_or_else(|| CheckpointError::PyTorch {
        path: path.to_path_buf(),
        reason: "no state dict found".into(),
    }))
}

impl CheckpointError {
    /// How far a load came from fitting, to pick the most telling of several attempts: wrong
    /// shapes under the right names are closest, then fewer missing names, then unreadable.
    fn distance(&self) -> usize {
        match self {
            CheckpointError::Mismatch { .. } => 0,
            CheckpointError::Keys(diff) => 1 + diff.missing.len() + diff.unused.len(),
            _ => usize::MAX,
        }
    }
}

fn new_classifier(
    path: &Path,
    spec: ModelSpec,
    device: &Device,
) -> Result<Classifier, CheckpointError> {
    Classifier::new(spec, device).map_err(|source| CheckpointError::Model {
        path: path.to_path_buf(),
        source,
    })
}

/// How a file names and lays out its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// PyTorch's `state_dict`: Linear weights `[out, in]`, no enum variants in names.
    PyTorch,
    /// burn's own, as [`save_module`] writes it.
    Burn,
}

/// The one place a file's tensors enter a module, whatever the format: the layout is converted,
/// and every float tensor (f16, bf16, f64...) is cast to the f32 vigil computes in, so no
/// half-precision or double parameter ever reaches a kernel. Integer tensors pass unchanged
/// (PyTorch's `num_batches_tracked` counters have no place in the model and are ignored).
/// Fails unless every tensor of the module was set and every tensor of the file used.
fn apply_file_tensors<M: ModuleSnapshot>(
    path: &Path,
    what: &str,
    module: &mut M,
    tensors: &BTreeMap<String, PackTensor>,
    layout: Layout,
) -> Result<(), CheckpointError> {
    let to_f32 = FloatCastAdapter::to(DType::F32);
    let adapter: Box<dyn ModuleAdapter> = match layout {
        Layout::PyTorch => Box::new(PyTorchToBurnAdapter.chain(to_f32)),
        Layout::Burn => Box::new(to_f32),
    };
    let result = module.apply(
        tensors.values().cloned().collect(),
        None,
        Some(adapter),
        layout == Layout::PyTorch,
    );
    check_applied(path, what, &result, tensors)
}

/// Applies tensors named and laid out as a PyTorch `state_dict` to any module, through the same
/// conversion and checks as a classifier's: the language models' loaders (`lm::weights`).
pub(crate) fn apply_pytorch_tensors<M: ModuleSnapshot>(
    path: &Path,
    what: &str,
    module: &mut M,
    tensors: &BTreeMap<String, PackTensor>,
) -> Result<(), CheckpointError> {
    apply_file_tensors(path, what, module, tensors, Layout::PyTorch)
}

/// The tensors of a safetensors file, by name, as the file lays them out.
pub(crate) fn safetensors_tensors(
    path: &Path,
    bytes: Vec<u8>,
) -> Result<BTreeMap<String, PackTensor>, CheckpointError> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    store
        .get_all_tensors()
        .cloned()
        .map_err(|e| CheckpointError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// How many names an error lists of each kind; the rest are counted.
const SAMPLE: usize = 8;

/// Fails unless loading applied every tensor of the file to the module and left none of the
/// module's tensors unset (PyTorch's `num_batches_tracked` counters aside).
fn check_applied(
    path: &Path,
    arch: &str,
    result: &ApplyResult,
    tensors: &BTreeMap<String, PackTensor>,
) -> Result<(), CheckpointError> {
    let shapes: Vec<String> = result
        .errors
        .iter()
        .map(|e| describe_apply_error(e, tensors))
        .collect();
    let mut unused: Vec<String> = result
        .unused
        .iter()
        .filter(|name| !name.ends_with("num_batches_tracked"))
        .cloned()
        .collect();
    // Names first: when they differ, the file is for another model (or under a prefix), and
    // that says more than the shapes of the few names that happen to agree.
    if !result.missing.is_empty() || !unused.is_empty() {
        let mut missing: Vec<String> = result.missing.iter().map(|(n, _)| n.clone()).collect();
        let mut expected: Vec<String> = result
            .applied
            .iter()
            .chain(&missing)
            .cloned()
            .chain(
                result
                    .errors
                    .iter()
                    .map(|e| apply_error_path(e).to_string()),
            )
            .collect();
        for list in [&mut missing, &mut unused, &mut expected] {
            list.sort();
            list.dedup();
        }
        return Err(CheckpointError::Keys(Box::new(KeyDiff {
            path: path.to_path_buf(),
            arch: arch.to_string(),
            expected,
            missing,
            held: tensors.keys().cloned().collect(),
            unused,
            shapes,
        })));
    }
    if !shapes.is_empty() {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            arch: arch.to_string(),
            details: sample(&shapes, "; "),
        });
    }
    Ok(())
}

/// The tensor an apply error is about.
fn apply_error_path(error: &ApplyError) -> &str {
    match error {
        ApplyError::ShapeMismatch { path, .. }
        | ApplyError::DTypeMismatch { path, .. }
        | ApplyError::AdapterError { path, .. }
        | ApplyError::LoadError { path, .. } => path,
    }
}

/// One tensor that does not fit, with shapes as the file holds them. burn compares Linear
/// weights after turning PyTorch's `[out, in]` into its `[in, out]`; a user compares against
/// their `state_dict`, so when the adapter transposed the file's tensor, the model's shape is
/// transposed back.
fn describe_apply_error(error: &ApplyError, tensors: &BTreeMap<String, PackTensor>) -> String {
    match error {
        ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        } => match tensors.get(path).map(|t| t.shape.to_vec()) {
            Some(in_file) => {
                let transposed = in_file != found.to_vec();
                let mut needed = expected.to_vec();
                if transposed {
                    needed.reverse();
                }
                format!("{path}: the file has {in_file:?}, the model needs {needed:?}")
            }
            None => format!(
                "{path}: the file has {:?}, the model needs {:?} (in burn's layout)",
                found.to_vec(),
                expected.to_vec()
            ),
        },
        ApplyError::DTypeMismatch {
            path,
            expected,
            found,
        } => format!("{path}: the file holds {found:?} values, the model needs {expected:?}"),
        other => other.to_string(),
    }
}

/// "the model expects N tensors, of which the file lacks M: a, b, ..." for [`CheckpointError::Keys`].
fn expected_line(count: usize, missing: &[String]) -> String {
    if missing.is_empty() {
        format!("the model expects {count} tensors, all in the file")
    } else {
        format!(
            "the model expects {count} tensors, of which the file lacks {}: {}",
            missing.len(),
            sample(missing, ", ")
        )
    }
}

/// "the file holds N tensors, of which the model does not use M: a, b, ..." for [`CheckpointError::Keys`].
fn held_line(count: usize, unused: &[String]) -> String {
    if unused.is_empty() {
        format!("the file holds {count} tensors, all used")
    } else {
        format!(
            "the file holds {count} tensors, of which the model does not use {}: {}",
            unused.len(),
            sample(unused, ", ")
        )
    }
}

/// The first [`SAMPLE`] items joined by `separator`, and how many more there are.
fn sample(items: &[String], separator: &str) -> String {
    let mut text = items
        .iter()
        .take(SAMPLE)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(separator);
    if items.len() > SAMPLE {
        text.push_str(&format!("{separator}... ({} more)", items.len() - SAMPLE));
    }
    text
}

/// The shape differences beside a [`CheckpointError::Keys`], if any, on a line of their own.
fn shapes_line(shapes: &[String]) -> String {
    if shapes.is_empty() {
        String::new()
    } else {
        format!(
            "\n  and {} of the names both share hold another shape or type: {}",
            shapes.len(),
            sample(shapes, "; ")
        )
    }
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
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let tensors = store
        .get_all_tensors()
        .map_err(|e| CheckpointError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    apply_file_tensors(path, what, &mut module, tensors, Layout::Burn)?;
    Ok((module, info.training))
}

/// Header of a checkpoint file: spec, training config, version, tensor list. Reads safetensors
/// files and PyTorch pickles alike (told apart by content); see [`inspect_pytorch`].
pub fn inspect(path: &Path) -> Result<CheckpointInfo, CheckpointError> {
    let bytes = read(path)?;
    match FileKind::of(&bytes) {
        FileKind::Safetensors => inspect_bytes(path, &bytes),
        FileKind::PyTorch => inspect_pytorch(path),
    }
}

/// What a file is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// A safetensors file, or anything not recognisably PyTorch (its parser names the problem).
    Safetensors,
    /// A `torch.save` file: a zip archive (PyTorch 1.6 on), a TAR (before 0.1.10), or a bare
    /// pickle (legacy format included).
    PyTorch,
}

impl FileKind {
    fn of(bytes: &[u8]) -> Self {
        // A safetensors file opens with its header's length, then the JSON's `{`; the length's
        // low byte may equal a pickle opcode, so that is checked first.
        let safetensors_like = bytes.get(8) == Some(&b'{');
        let zip = bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06");
        let tar = bytes.get(257..262) == Some(b"ustar");
        // Pickle protocol 2 and up open with PROTO (0x80).
        let pickle = bytes.first() == Some(&0x80);
        if !safetensors_like && (zip || tar || pickle) {
            FileKind::PyTorch
        } else {
            FileKind::Safetensors
        }
    }
}

/// Lists a PyTorch pickle without running pickle code: every tensor at any depth (dotted names,
/// `model.conv1.weight` for BackdoorBench's `{"model": state_dict}`) with its dtype in
/// safetensors' spelling and its shape as the file holds it; as metadata, the container's format
/// and version and every plain value beside the tensors (numbers, strings, short lists), under
/// its dotted name. A pickle carries no vigil spec.
pub fn inspect_pytorch(path: &Path) -> Result<CheckpointInfo, CheckpointError> {
    let unreadable = |e: PytorchError| CheckpointError::PyTorch {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let reader = PytorchReader::new(path).map_err(unreadable)?;
    let mut tensors: Vec<TensorEntry> = reader
        .tensors()
        .iter()
        .map(|(name, t)| TensorEntry {
            name: name.clone(),
            dtype: pytorch_dtype_name(t.dtype()).to_string(),
            shape: t.shape().to_vec(),
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut metadata = HashMap::new();
    let file = reader.metadata();
    let format = match file.format_type {
        FileFormat::Zip => "zip",
        FileFormat::Tar => "tar",
        FileFormat::Legacy => "legacy",
        FileFormat::Pickle => "pickle",
    };
    metadata.insert("pytorch.format".to_string(), format.to_string());
    if let Some(version) = &file.pytorch_version {
        metadata.insert(
            "pytorch.serialization_version".to_string(),
            version.trim().to_string(),
        );
    }
    let root = PytorchReader::read_pickle_data(path, None).map_err(unreadable)?;
    plain_values("", &root, &mut metadata);
    Ok(CheckpointInfo {
        spec: None,
        training: None,
        vigil_version: None,
        tensors,
        metadata,
    })
}

/// A pickled dtype as safetensors spells it.
fn pytorch_dtype_name(dtype: PytorchDType) -> &'static str {
    match dtype {
        PytorchDType::F64 => "F64",
        PytorchDType::F32 => "F32",
        PytorchDType::F16 => "F16",
        PytorchDType::BF16 => "BF16",
        PytorchDType::I64 => "I64",
        PytorchDType::I32 => "I32",
        PytorchDType::I16 => "I16",
        PytorchDType::I8 => "I8",
        PytorchDType::U64 => "U64",
        PytorchDType::U32 => "U32",
        PytorchDType::U16 => "U16",
        PytorchDType::U8 => "U8",
        PytorchDType::Bool => "BOOL",
    }
}

/// Longest list or string shown as metadata; longer ones are summarised (BackdoorBench files
/// can carry whole index lists).
const METADATA_MAX_ITEMS: usize = 16;
const METADATA_MAX_CHARS: usize = 200;

/// Adds every plain value under `value` to `out`, keyed by its dotted name (`prefix` first).
/// Tensors and objects the reader does not interpret are left out: tensors are listed apart.
fn plain_values(prefix: &str, value: &PickleValue, out: &mut HashMap<String, String>) {
    if let PickleValue::Dict(map) = value {
        for (key, inner) in map {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            plain_values(&name, inner, out);
        }
    } else if let Some(text) = plain_text(value)
        && !prefix.is_empty()
    {
        out.insert(prefix.to_string(), text);
    }
}

/// A scalar, string or short list of them as Python would print it; `None` for the rest.
fn plain_text(value: &PickleValue) -> Option<String> {
    Some(match value {
        PickleValue::None => "None".to_string(),
        PickleValue::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        PickleValue::Int(i) => i.to_string(),
        PickleValue::Float(f) => f.to_string(),
        PickleValue::String(s) if s.chars().count() > METADATA_MAX_CHARS => {
            let head: String = s.chars().take(METADATA_MAX_CHARS).collect();
            format!("{head}... ({} characters)", s.chars().count())
        }
        PickleValue::String(s) => s.clone(),
        PickleValue::List(items) if items.len() > METADATA_MAX_ITEMS => {
            format!("[list of {}]", items.len())
        }
        PickleValue::List(items) => {
            let texts = items.iter().map(plain_text).collect::<Option<Vec<_>>>()?;
            format!("[{}]", texts.join(", "))
        }
        PickleValue::Bytes(b) => format!("<{} bytes>", b.len()),
        PickleValue::Dict(_) | PickleValue::Unsupported(_) => return None,
    })
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

/// The bytes of a checkpoint file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    std::fs::read(path).map_err(|source| CheckpointError::Read {
        path: path.to_path_buf(),
        source,
    })
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
            // Checked: a hostile shape's product overflows (and would wrap to 0 in release,
            // passing an empty tensor off as a huge one).
            let numel = entry
                .shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d));
            let Some(numel) = numel.filter(|n| n.checked_mul(4).is_some()) else {
                return Err(format(format!(
                    "tensor `{name}`: shape {:?} holds more values than memory can address",
                    entry.shape
                )));
            };
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

#[cfg(test)]
mod tests;
