//! Loading weights from files vigil did not write: other float types, PyTorch pickles, and the
//! errors a user reads when a file does not fit the architecture.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData, bf16, f16};

use super::*;
use crate::device::default_device;
use crate::models::{Architecture, BnMode};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/torch")
        .join(name)
}

/// The small CNN of the `small_cnn.*` fixtures.
fn small_cnn(hidden: usize) -> ModelSpec {
    ModelSpec {
        architecture: Architecture::SmallCnn { width: 4, hidden },
        input_shape: [1, 28, 28],
        class_names: (0..10).map(|c| c.to_string()).collect(),
        normalization: None,
    }
}

/// Rewrites safetensors `bytes`: every `F32` tensor becomes `dtype` (`F16`, `BF16` or `F64`,
/// rounded to nearest even), every name goes through `rename`; other tensors are copied.
fn rewrite_safetensors(bytes: &[u8], dtype: &str, rename: impl Fn(&str) -> String) -> Vec<u8> {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let data = &bytes[8 + len..];
    let mut entries: Vec<_> = header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .collect();
    entries.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap());
    let mut out_header = serde_json::Map::new();
    let mut out_data = Vec::new();
    for (name, entry) in entries {
        let [start, end] = [0, 1].map(|i| entry["data_offsets"][i].as_u64().unwrap() as usize);
        let raw = &data[start..end];
        let (new_dtype, new_raw) = if entry["dtype"] == "F32" {
            let floats = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
            let converted: Vec<u8> = match dtype {
                "F16" => floats
                    .flat_map(|v| f16::from_f32(v).to_le_bytes())
                    .collect(),
                "BF16" => floats
                    .flat_map(|v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
                "F64" => floats.flat_map(|v| f64::from(v).to_le_bytes()).collect(),
                other => panic!("no conversion to {other}"),
            };
            (dtype.to_string(), converted)
        } else {
            (entry["dtype"].as_str().unwrap().to_string(), raw.to_vec())
        };
        let offsets = [out_data.len(), out_data.len() + new_raw.len()];
        out_data.extend_from_slice(&new_raw);
        out_header.insert(
            rename(name),
            serde_json::json!({"dtype": new_dtype, "shape": entry["shape"], "data_offsets": offsets}),
        );
    }
    let json = serde_json::Value::Object(out_header)
        .to_string()
        .into_bytes();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&out_data);
    out
}

/// Every tensor of `classifier` in PyTorch layout, by name.
fn values(classifier: &Classifier) -> Vec<(String, Vec<f32>)> {
    classifier_tensors(classifier)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(name, _, values)| (name, values))
        .collect()
}

/// What a value becomes once stored as `dtype` and read back as f32.
fn through(dtype: &str, v: f32) -> f32 {
    match dtype {
        "F16" => f16::from_f32(v).to_f32(),
        "BF16" => bf16::from_f32(v).to_f32(),
        "F64" => v,
        other => panic!("no conversion to {other}"),
    }
}

/// `loaded` holds exactly the f32 reference's values as the narrower (or wider) type keeps them,
/// and runs a forward pass in f32.
fn assert_same_weights_in(dtype: &str, loaded: &Classifier, reference: &Classifier) {
    let (loaded_values, reference_values) = (values(loaded), values(reference));
    assert_eq!(loaded_values.len(), reference_values.len(), "{dtype}");
    let mut rounded = 0;
    for ((name, got), (ref_name, want)) in loaded_values.iter().zip(&reference_values) {
        assert_eq!(name, ref_name, "{dtype}");
        assert_eq!(got.len(), want.len(), "{dtype} {name}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.to_bits(), through(dtype, *w).to_bits(), "{dtype} {name}");
            rounded += usize::from(g != w);
        }
    }
    if dtype != "F64" {
        assert!(rounded > 0, "{dtype}: the values should have been rounded");
    }
    let device = default_device();
    let input = Tensor::<4>::from_data(
        TensorData::new(vec![0.5f32; 2 * 28 * 28], [2, 1, 28, 28]),
        &device,
    );
    let logits = loaded.forward(input, BnMode::Eval).into_data();
    assert_eq!(logits.dtype(), burn::tensor::DType::F32, "{dtype}");
    assert!(
        logits
            .try_to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite()),
        "{dtype}"
    );
}

#[test]
fn safetensors_in_f16_bf16_and_f64_load_as_f32() {
    let device = default_device();
    let path = fixture("small_cnn.safetensors");
    let reference = load_with_spec(&path, small_cnn(16), &device).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for dtype in ["F16", "BF16", "F64"] {
        let converted = rewrite_safetensors(&bytes, dtype, str::to_string);
        let info = inspect_bytes(&path, &converted).unwrap();
        assert!(info.tensors.iter().all(|t| t.dtype == dtype), "{dtype}");
        let loaded = load_with_spec_bytes(&path, converted, small_cnn(16), &device)
            .unwrap_or_else(|e| panic!("{dtype}: {e}"));
        assert_same_weights_in(dtype, &loaded, &reference);
    }
}

/// The fixtures come from `tests/fixtures/torch/make_dtype_fixtures.py`.
#[test]
fn pytorch_pickles_in_f16_bf16_and_f64_load_as_f32() {
    let device = default_device();
    let reference =
        load_pytorch_file(&fixture("small_cnn.state_dict.pt"), small_cnn(16), &device).unwrap();
    for (dtype, file) in [
        ("F16", "small_cnn.f16.pt"),
        ("BF16", "small_cnn.bf16.pt"),
        ("F64", "small_cnn.f64.pt"),
    ] {
        let loaded = load_pytorch_file(&fixture(file), small_cnn(16), &device)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_same_weights_in(dtype, &loaded, &reference);
    }
}

#[test]
fn inspect_reads_pytorch_pickles_with_dtypes_shapes_and_metadata() {
    let info = inspect(&fixture("small_cnn.f16.pt")).unwrap();
    assert!(info.spec.is_none());
    let fc1 = info
        .tensors
        .iter()
        .find(|t| t.name == "fc1.weight")
        .unwrap();
    assert_eq!(
        (fc1.dtype.as_str(), fc1.shape.as_slice()),
        ("F16", &[16, 392][..])
    );
    assert_eq!(info.tensors.len(), 8);
    assert_eq!(
        info.metadata.get("pytorch.format").map(String::as_str),
        Some("zip")
    );

    // BackdoorBench nests the weights under `model` beside plain values, which are metadata.
    let info = inspect(&fixture("preact_resnet18.attack_result.pt")).unwrap();
    let conv1 = info
        .tensors
        .iter()
        .find(|t| t.name == "model.conv1.weight")
        .unwrap();
    assert_eq!(
        (conv1.dtype.as_str(), conv1.shape.as_slice()),
        ("F32", &[4, 3, 3, 3][..])
    );
    assert!(
        info.tensors.iter().any(|t| t.dtype == "I64"),
        "num_batches_tracked"
    );
    assert_eq!(
        info.metadata.get("model_name").map(String::as_str),
        Some("preactresnet18")
    );
    assert_eq!(
        info.metadata.get("num_classes").map(String::as_str),
        Some("10")
    );
    assert_eq!(
        info.metadata.get("img_size").map(String::as_str),
        Some("[32, 32, 3]")
    );
}

#[test]
fn shape_mismatch_prints_both_shapes_in_pytorch_layout() {
    let device = default_device();
    // The file's fc1 has 16 outputs; the model asks for 32. PyTorch writes Linear weights
    // [out, in]: [16, 392] in the file, [32, 392] expected (vigil holds them as [392, 32]).
    for path in [
        fixture("small_cnn.safetensors"),
        fixture("small_cnn.state_dict.pt"),
    ] {
        let err = match path.extension().and_then(|e| e.to_str()) {
            Some("pt") => load_pytorch_file(&path, small_cnn(32), &device),
            _ => load_with_spec(&path, small_cnn(32), &device),
        }
        .unwrap_err();
        assert!(matches!(err, CheckpointError::Mismatch { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("fc1.weight: the file has [16, 392], the model needs [32, 392]"),
            "{message}"
        );
        assert!(
            message.contains("fc2.weight: the file has [10, 16], the model needs [10, 32]"),
            "{message}"
        );
        assert!(!message.contains("392, 32"), "{message}");
    }
}

#[test]
fn key_mismatch_lists_the_keys_of_the_file_beside_the_expected_ones() {
    let device = default_device();
    let path = fixture("small_cnn.safetensors");
    // A wrapper's prefix: no key matches, and the two lists side by side show why.
    let bytes = rewrite_safetensors(&std::fs::read(&path).unwrap(), "F64", |name| {
        format!("net.{name}")
    });
    let err = load_with_spec_bytes(&path, bytes, small_cnn(16), &device).unwrap_err();
    assert!(matches!(err, CheckpointError::Keys(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("small_cnn.safetensors"), "{message}");
    assert!(
        message.contains("the model expects 8 tensors, of which the file lacks 8"),
        "{message}"
    );
    assert!(
        message.contains("the file holds 8 tensors, of which the model does not use 8"),
        "{message}"
    );
    assert!(message.contains("conv1.bias, conv1.weight"), "{message}");
    assert!(
        message.contains("net.conv1.bias, net.conv1.weight"),
        "{message}"
    );

    // Another architecture: many keys each way, a sample of 8 of each with the counts.
    let err = load_with_spec(
        &path,
        ModelSpec {
            architecture: Architecture::ResNet18 { width: 4 },
            input_shape: [1, 28, 28],
            ..small_cnn(16)
        },
        &device,
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("the model expects 102 tensors"),
        "{message}"
    );
    assert!(message.contains("the file holds 8 tensors"), "{message}");
    assert!(message.contains("fc1.weight"), "{message}");
    assert!(message.contains("bn1.running_mean"), "{message}");
    assert!(message.contains(", ... ("), "{message}");
}
