//! PyTorch state_dicts saved as safetensors load unchanged and give PyTorch's logits.
//!
//! The fixtures in `tests/fixtures/torch/` come from `make_fixtures.py` (PyTorch definitions in
//! `reference_models.py`, checked against BackdoorBench and HALO). Each `<name>.safetensors` is a
//! `state_dict` (with `num_batches_tracked`), and `<name>.io.safetensors` holds an input batch
//! with PyTorch's eval-mode and train-mode logits.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use vigil_core::checkpoint::{self, CheckpointError, TensorFile};
use vigil_core::device::default_device;
use vigil_core::models::{Architecture, BnMode, ModelSpec};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/torch")
        .join(name)
}

fn spec(architecture: Architecture, input_shape: [usize; 3]) -> ModelSpec {
    ModelSpec {
        architecture,
        input_shape,
        class_names: (0..10).map(|c| c.to_string()).collect(),
        normalization: None,
    }
}

/// The four fixtures: name, architecture at the fixture's width, input shape.
fn cases() -> Vec<(&'static str, Architecture, [usize; 3])> {
    vec![
        (
            "small_cnn",
            Architecture::SmallCnn {
                width: 4,
                hidden: 16,
            },
            [1, 28, 28],
        ),
        (
            "preact_resnet18",
            Architecture::PreActResNet18 { width: 4 },
            [3, 32, 32],
        ),
        (
            "preact_resnet18_halo",
            Architecture::PreActResNet18Halo { width: 4 },
            [1, 28, 28],
        ),
        ("resnet18", Architecture::ResNet18 { width: 4 }, [3, 32, 32]),
    ]
}

fn io(name: &str, device: &Device) -> (Tensor<4>, Vec<f32>, Vec<f32>) {
    let file = TensorFile::load(&fixture(&format!("{name}.io.safetensors"))).unwrap();
    let get = |key: &str| {
        file.tensors
            .iter()
            .find(|(n, _, _)| n == key)
            .unwrap_or_else(|| panic!("{name}: no `{key}`"))
            .clone()
    };
    let (_, shape, values) = get("input");
    let input = Tensor::<4>::from_data(
        TensorData::new(values, [shape[0], shape[1], shape[2], shape[3]]),
        device,
    );
    (input, get("logits").2, get("logits_train_mode").2)
}

fn assert_close(got: Tensor<2>, expected: &[f32], what: &str) {
    let got = got.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(got.len(), expected.len(), "{what}");
    let worst = got
        .iter()
        .zip(expected)
        .map(|(g, e)| (g - e).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{what}: max |vigil - pytorch| = {worst:e}");
}

#[test]
fn pytorch_state_dicts_load_and_match_logits_in_eval_and_train_mode() {
    let device = default_device();
    for (name, arch, shape) in cases() {
        let path = fixture(&format!("{name}.safetensors"));
        let classifier = checkpoint::load_with_spec(&path, spec(arch, shape), &device)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (input, eval_logits, train_logits) = io(name, &device);
        assert_close(
            classifier.forward(input.clone(), BnMode::Eval),
            &eval_logits,
            &format!("{name} eval"),
        );
        assert_close(
            classifier.forward(input, BnMode::BatchStatsFrozen),
            &train_logits,
            &format!("{name} train"),
        );
    }
}

#[test]
fn vigil_checkpoints_have_the_pytorch_names_and_shapes_and_round_trip() {
    let device = default_device();
    let dir = std::env::temp_dir().join(format!("vigil-fixture-test-{}", std::process::id()));
    for (name, arch, shape) in cases() {
        let torch_path = fixture(&format!("{name}.safetensors"));
        let classifier =
            checkpoint::load_with_spec(&torch_path, spec(arch, shape), &device).unwrap();
        let ours = dir.join(format!("{name}.safetensors"));
        checkpoint::save_classifier(&ours, &classifier, None).unwrap();

        let strip = |info: checkpoint::CheckpointInfo| -> Vec<(String, Vec<usize>)> {
            info.tensors
                .into_iter()
                .filter(|t| !t.name.ends_with("num_batches_tracked"))
                .map(|t| (t.name, t.shape))
                .collect()
        };
        let theirs = strip(checkpoint::inspect(&torch_path).unwrap());
        let mine = checkpoint::inspect(&ours).unwrap();
        assert_eq!(
            mine.spec.as_ref(),
            Some(&classifier.spec),
            "{name}: spec in metadata"
        );
        assert_eq!(strip(mine), theirs, "{name}: names and shapes");

        let back = checkpoint::load_classifier(&ours, &device).unwrap();
        let (input, eval_logits, _) = io(name, &device);
        assert_close(
            back.forward(input, BnMode::Eval),
            &eval_logits,
            &format!("{name} reloaded"),
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_architecture_or_width_is_a_typed_error_naming_the_file() {
    let device = default_device();
    let path = fixture("resnet18.safetensors");
    // PreAct blocks put bn1 before conv1 (other channel counts) and have no stem BN.
    let err = checkpoint::load_with_spec(
        &path,
        spec(Architecture::PreActResNet18 { width: 4 }, [3, 32, 32]),
        &device,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::Keys(_) | CheckpointError::Mismatch { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("resnet18.safetensors"), "{err}");
    // Same architecture, other width: shapes differ.
    let err = checkpoint::load_with_spec(
        &path,
        spec(Architecture::ResNet18 { width: 8 }, [3, 32, 32]),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, CheckpointError::Mismatch { .. }), "{err:?}");
    // A PyTorch file has no vigil spec.
    let err = checkpoint::load_classifier(&path, &device).unwrap_err();
    assert!(matches!(err, CheckpointError::NoSpec { .. }), "{err:?}");
    // Garbage is a format error, not a panic.
    let garbage =
        std::env::temp_dir().join(format!("vigil-garbage-{}.safetensors", std::process::id()));
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json").unwrap();
    let err = checkpoint::load_classifier(&garbage, &device).unwrap_err();
    assert!(matches!(err, CheckpointError::Format { .. }), "{err:?}");
    std::fs::remove_file(&garbage).unwrap();
}

/// PyTorch pickles as the references save them (a plain state dict, BackdoorBench's
/// `{"model": state_dict, ...}`, DataParallel's `module.` prefix) load without running pickle
/// code and give the fixtures' PyTorch logits. Written by `tests/fixtures/torch/make_pt_fixtures.py`.
#[test]
fn pytorch_pickles_load_and_match_logits() {
    let device = default_device();
    let small = cases().remove(0);
    let preact = cases().remove(1);
    for (file, (name, arch, shape)) in [
        ("small_cnn.state_dict.pt", small.clone()),
        ("small_cnn.dataparallel.pt", small),
        ("preact_resnet18.attack_result.pt", preact),
    ] {
        let classifier = checkpoint::load_pytorch_file(&fixture(file), spec(arch, shape), &device)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let (input, eval_logits, _) = io(name, &device);
        assert_close(
            classifier.forward(input, BnMode::Eval),
            &eval_logits,
            &format!("{file} eval"),
        );
    }
    // The wrong architecture is a typed error naming the file, not a panic.
    let wrong = checkpoint::load_pytorch_file(
        &fixture("small_cnn.state_dict.pt"),
        spec(Architecture::ResNet18 { width: 4 }, [3, 32, 32]),
        &device,
    )
    .unwrap_err();
    assert!(
        wrong.to_string().contains("small_cnn.state_dict.pt"),
        "{wrong}"
    );
}
