//! Model weights from other tools through the `vigil` binary (issue 24, part A): other float
//! types, `vigil info` on PyTorch pickles, the normalisation choice and the input shape of a
//! plain state_dict, and errors that show the file beside the model.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use burn::tensor::f16;
use common::{Images, fixture, stderr, stdout, vigil, write_idx};
use vigil_core::checkpoint;
use vigil_core::device::default_device;
use vigil_core::models::{Architecture, Classifier, ModelSpec, Normalization};

/// A fresh temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("vigil-weights", name)
}

/// A Fashion-MNIST-format test split of `n` images (bright bar at row 2 + 2k for class k, plus
/// a fixed pattern below 50 for noise).
fn write_idx_test_split(dir: &Path, n: usize) {
    let set = Images::bars(n, |i, r, c| ((r * 7 + c * 3 + i) % 50) as u8);
    write_idx(dir, "t10k", &set);
}

/// A freshly initialised small CNN of width 4 at its default hidden size, for 1x28x28 inputs
/// of classes `0`..`9`.
fn small_cnn(normalization: Option<Normalization>) -> Classifier {
    let spec = ModelSpec {
        architecture: Architecture::by_name("small-cnn").unwrap().with_width(4),
        input_shape: [1, 28, 28],
        class_names: (0..10).map(|c| c.to_string()).collect(),
        normalization,
    };
    Classifier::new(spec, &default_device()).unwrap()
}

/// The tensors of a freshly initialised [`small_cnn`] without normalisation.
fn small_cnn_tensors() -> checkpoint::TensorFile {
    checkpoint::classifier_tensors(&small_cnn(None)).unwrap()
}

/// Writes `file` as a plain state_dict (no vigil metadata) in safetensors, every tensor
/// stored as `f32` or `f16`.
fn write_plain(path: &Path, file: &checkpoint::TensorFile, half: bool) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in &file.tensors {
        let start = data.len();
        for v in values {
            if half {
                data.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
            } else {
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": if half { "F16" } else { "F32" },
                "shape": shape,
                "data_offsets": [start, data.len()],
            }),
        );
    }
    let json = serde_json::Value::Object(header).to_string().into_bytes();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

/// `vigil eval MODEL --arch small-cnn --width 4 --dataset fashion-mnist ... EXTRA --json`.
fn eval_small_cnn(model: &Path, data: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "eval",
        model.to_str().unwrap(),
        "--arch",
        "small-cnn",
        "--width",
        "4",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    vigil(&args)
}

fn mean_loss(out: &Output) -> f64 {
    let report: serde_json::Value = serde_json::from_str(&stdout(out)).unwrap();
    report["mean_loss"].as_f64().unwrap()
}

#[test]
fn info_lists_a_pytorch_pickle_with_dtypes_shapes_and_metadata() {
    let pickle = fixture("torch", "small_cnn.f16.pt");
    let out = vigil(&["info", pickle.to_str().unwrap(), "--tensors"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("architecture:  unknown"), "{text}");
    assert!(
        text.contains("metadata:      pytorch.format = zip"),
        "{text}"
    );
    assert!(text.contains("8 F16"), "{text}");
    assert!(text.contains("converted to f32 on load"), "{text}");
    let fc1 = text.lines().find(|l| l.contains("fc1.weight")).unwrap();
    assert!(fc1.contains("F16") && fc1.contains("[16, 392]"), "{fc1}");

    // BackdoorBench's checkpoint dict: weights under `model`, plain values beside them.
    let record = fixture("torch", "preact_resnet18.attack_result.pt");
    let out = vigil(&["info", record.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(info["metadata"]["model_name"], "preactresnet18", "{info}");
    assert_eq!(info["metadata"]["img_size"], "[32, 32, 3]", "{info}");
    let tensors = info["tensors"].as_array().unwrap();
    let conv1 = tensors
        .iter()
        .find(|t| t["name"] == "model.conv1.weight")
        .unwrap();
    assert_eq!(conv1["shape"], serde_json::json!([4, 3, 3, 3]));
    assert_eq!(conv1["dtype"], "F32");
}

#[test]
fn half_precision_weights_load_as_f32_and_evaluate_like_the_f32_file() {
    let dir = temp_dir("f16");
    write_idx_test_split(&dir, 20);
    let (full, half) = (
        dir.join("plain.safetensors"),
        dir.join("plain-f16.safetensors"),
    );
    let tensors = small_cnn_tensors();
    write_plain(&full, &tensors, false);
    write_plain(&half, &tensors, true);
    let out_full = eval_small_cnn(&full, &dir, &["--no-norm"]);
    assert!(out_full.status.success(), "{}", stderr(&out_full));
    let out_half = eval_small_cnn(&half, &dir, &["--no-norm"]);
    assert!(out_half.status.success(), "{}", stderr(&out_half));
    assert!(
        !stderr(&out_half).contains("panicked"),
        "{}",
        stderr(&out_half)
    );
    let (full_loss, half_loss) = (mean_loss(&out_full), mean_loss(&out_half));
    assert!(
        (full_loss - half_loss).abs() < 1e-3,
        "f32 {full_loss} vs f16 {half_loss}"
    );

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_plain_state_dict_needs_a_normalisation_choice() {
    let dir = temp_dir("norm");
    write_idx_test_split(&dir, 20);
    let model = dir.join("plain.safetensors");
    write_plain(&model, &small_cnn_tensors(), false);

    // Neither --norm-* nor --no-norm: refused, naming the file and both ways out.
    let out = eval_small_cnn(&model, &dir, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("plain.safetensors"), "{err}");
    assert!(
        err.contains("does not record the input normalisation"),
        "{err}"
    );
    assert!(
        err.contains("--norm-mean") && err.contains("--no-norm"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));

    // Either explicit choice runs, and they differ.
    let raw = eval_small_cnn(&model, &dir, &["--no-norm"]);
    assert!(raw.status.success(), "{}", stderr(&raw));
    let normalised = eval_small_cnn(&model, &dir, &["--norm-mean", "0.5", "--norm-std", "0.5"]);
    assert!(normalised.status.success(), "{}", stderr(&normalised));
    assert_ne!(mean_loss(&raw), mean_loss(&normalised));

    // Both at once is a contradiction.
    let both = eval_small_cnn(
        &model,
        &dir,
        &["--no-norm", "--norm-mean", "0.5", "--norm-std", "0.5"],
    );
    assert!(!both.status.success());
    assert!(stderr(&both).contains("--no-norm"), "{}", stderr(&both));

    // A vigil checkpoint records its normalisation, so --arch alone keeps it.
    let ours = dir.join("ours.safetensors");
    let classifier = small_cnn(Some(Normalization {
        mean: vec![0.5],
        std: vec![0.5],
    }));
    checkpoint::save_classifier(&ours, &classifier, None).unwrap();
    let out = eval_small_cnn(&ours, &dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_input_shape_defaults_to_the_architectures_and_a_flag_wins() {
    let dir = temp_dir("shape");
    write_idx_test_split(&dir, 20);
    let model = dir.join("plain.safetensors");
    write_plain(&model, &small_cnn_tensors(), false);

    // small-cnn without --input-shape: 1x28x28, as vigil trains it.
    let out = eval_small_cnn(&model, &dir, &["--no-norm"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // An explicit shape wins; here it does not fit the file, and the error says how, in
    // PyTorch's layout.
    let out = eval_small_cnn(&model, &dir, &["--no-norm", "--input-shape", "3,28,28"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("conv1.weight: the file has [4, 1, 3, 3], the model needs [4, 3, 3, 3]"),
        "{err}"
    );

    // Another architecture on the same file: the keys of both sides, with counts.
    let out = vigil(&[
        "eval",
        model.to_str().unwrap(),
        "--arch",
        "resnet18",
        "--width",
        "4",
        "--no-norm",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("the model expects 102 tensors"), "{err}");
    assert!(err.contains("the file holds 8 tensors"), "{err}");
    assert!(
        err.contains("bn1.running_mean") && err.contains("fc1.weight"),
        "{err}"
    );
    // The one name both share has another shape; that is said too.
    assert!(
        err.contains(
            "1 of the names both share hold another shape or type: conv1.weight: the file has [4, 1, 3, 3]"
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
