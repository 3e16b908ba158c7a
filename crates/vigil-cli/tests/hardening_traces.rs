//! Issue 24, part B: trace files and bad numbers through the `vigil` binary. numpy's own files
//! (compressed, float64, int32) are read; a file claiming more than it holds, a NaN, labels
//! that are not class indices and all-constant trusted traces are refused by name before any
//! output is written; constant traces are counted aloud; a run whose traces cannot fit, a chain
//! index the file cannot store and a trusted set calibration cannot split are refused before
//! anything is written.

mod common;

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{fixture, model_and_sets, stderr, vigil, write_class_folders};
use ndarray::Array3;
use vigil_core::madfa::LossTraces;

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("vigil-hardening-traces", name)
}

/// Two chains x 6 draws of 4 trusted and 4 test samples whose losses move with the draw, the
/// last two test samples against the grain (anomalous).
fn moving_traces() -> LossTraces {
    let trusted = Array3::from_shape_fn((2, 6, 4), |(c, d, i)| {
        1.0 + ((c * 7 + d * 3 + i) % 5) as f32 * 0.1 + i as f32
    });
    let test = Array3::from_shape_fn((2, 6, 4), |(c, d, i)| {
        let wave = ((c * 7 + d * 3) % 5) as f32 * 0.1;
        if i < 2 {
            1.0 + wave
        } else {
            1.0 - wave + (d % 2) as f32
        }
    });
    LossTraces {
        trusted,
        test,
        trusted_labels: vec![0, 0, 1, 1],
        test_is_anomalous: Some(vec![false, false, true, true]),
        chain_indices: None,
        trusted_ids: None,
        test_ids: None,
        test_labels: None,
        settings_json: None,
    }
}

/// Saves `traces` without the checks a load applies (the files users bring can hold anything).
fn save(traces: &LossTraces, path: &Path) {
    let mut buffer = Cursor::new(Vec::new());
    traces.write_npz(&mut buffer).unwrap();
    std::fs::write(path, buffer.into_inner()).unwrap();
}

fn score(traces: &Path) -> Output {
    vigil(&["score", traces.to_str().unwrap(), "--json"])
}

#[test]
fn numpys_savez_compressed_with_float64_traces_and_int32_labels_is_scored() {
    let dir = temp_dir("numpy");
    let traces = dir.join("from-numpy.npz");
    std::fs::copy(fixture("npz", "numpy_compressed.npz"), &traces).unwrap();
    let run = score(&traces);
    assert!(run.status.success(), "{}", stderr(&run));
    let csv = std::fs::read_to_string(dir.join("scores.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_array_claiming_1e15_elements_is_refused_by_name_without_allocating() {
    let dir = temp_dir("huge");
    let path = dir.join("huge.npz");
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1000, 1000000000000), }\n";
    for name in ["trusted", "test", "trusted_labels"] {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        npy.extend_from_slice(&[0; 400]);
        zip.write_all(&npy).unwrap();
    }
    std::fs::write(&path, zip.finish().unwrap().into_inner()).unwrap();
    let run = score(&path);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(
        err.contains("array `trusted`: the header claims shape [1, 1000, 1000000000000]"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
    assert!(!dir.join("scores.csv").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_nan_in_a_trusted_trace_is_named_and_nothing_is_written() {
    let dir = temp_dir("nan");
    let path = dir.join("nan.npz");
    let mut traces = moving_traces();
    traces.trusted[[1, 4, 2]] = f32::NAN;
    save(&traces, &path);
    let run = score(&path);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(
        err.contains("`trusted` holds NaN at chain 1, draw 4, sample 2"),
        "{err}"
    );
    assert!(!dir.join("scores.csv").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn labels_that_are_not_class_indices_are_refused_by_array_and_index() {
    let dir = temp_dir("labels");
    for (i, bad) in [-3i64, 1 << 40].into_iter().enumerate() {
        let path = dir.join(format!("labels-{i}.npz"));
        let mut traces = moving_traces();
        traces.trusted_labels[1] = bad;
        save(&traces, &path);
        let run = score(&path);
        assert!(!run.status.success());
        let err = stderr(&run);
        assert!(
            err.contains(&format!("`trusted_labels` holds {bad} at index 1")),
            "{err}"
        );
    }
    assert!(!dir.join("scores.csv").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn constant_traces_are_counted_and_all_constant_trusted_traces_refused() {
    let dir = temp_dir("constant");
    let some = dir.join("some.npz");
    let mut traces = moving_traces();
    traces.trusted.slice_mut(ndarray::s![.., .., 1]).fill(0.5);
    save(&traces, &some);
    let run = score(&some);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("warning: 1 of 4 trusted traces (25.0%) are constant"),
        "{}",
        stderr(&run)
    );
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["constant_traces"]["trusted"], 1);

    let all = dir.join("all.npz");
    traces.trusted.fill(0.5);
    save(&traces, &all);
    std::fs::remove_file(dir.join("scores.csv")).unwrap();
    let run = score(&all);
    assert!(
        !run.status.success(),
        "AUROC 0.5 from nothing: {}",
        stderr(&run)
    );
    assert!(
        stderr(&run).contains("all 4 trusted traces are constant over the 12 draws used"),
        "{}",
        stderr(&run)
    );
    assert!(!dir.join("scores.csv").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn merge_refuses_a_file_holding_a_wrapped_chain_index() {
    let dir = temp_dir("merge");
    let (a, b) = (dir.join("a.npz"), dir.join("b.npz"));
    let mut traces = moving_traces();
    traces.chain_indices = Some(vec![0, 1]);
    save(&traces, &a);
    traces.chain_indices = Some(vec![-1, 2]);
    save(&traces, &b);
    let out = dir.join("merged.npz");
    let run = vigil(&[
        "merge",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("`chain_indices` holds -1 at index 0"),
        "{}",
        stderr(&run)
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Class folders `c0`..`c9` (the model's class names) of 28x28 grayscale PNGs, `per_class`
/// images in each of `classes`.
fn write_image_folder(root: &Path, classes: &[usize], per_class: usize) {
    let folders = classes.iter().map(|&class| (class, format!("c{class}")));
    write_class_folders(root, folders, per_class, 0);
}

/// An untrained width-4 small CNN with classes `c0`..`c9`, saved as vigil saves models.
fn write_model(path: &Path) {
    use vigil_core::models::{Architecture, Classifier, ModelSpec};
    let spec = ModelSpec {
        architecture: Architecture::SmallCnn {
            width: 4,
            hidden: 8,
        },
        input_shape: [1, 28, 28],
        class_names: (0..10).map(|c| format!("c{c}")).collect(),
        normalization: None,
    };
    let model = Classifier::new(spec, &vigil_core::device::default_device()).unwrap();
    vigil_core::checkpoint::save_classifier(path, &model, None).unwrap();
}

/// A model and trusted / sampling / test folders; `trusted` gives the trusted set's classes and
/// images per class.
fn user_data(dir: &Path, trusted: (&[usize], usize)) -> Vec<String> {
    let model = dir.join("model.safetensors");
    write_model(&model);
    let [trusted_dir, sampling, test] = ["trusted", "sampling", "test"].map(|set| dir.join(set));
    write_image_folder(&trusted_dir, trusted.0, trusted.1);
    let all: Vec<usize> = (0..10).collect();
    write_image_folder(&sampling, &all, 2);
    write_image_folder(&test, &all, 1);
    model_and_sets(&model, [&trusted_dir, &sampling, &test])
        .map(String::from)
        .to_vec()
}

fn run_with(command: &str, data: &[String], extra: &[&str]) -> Output {
    let mut args: Vec<&str> = vec![command];
    args.extend(data.iter().map(String::as_str));
    args.extend_from_slice(extra);
    vigil(&args)
}

#[test]
fn sample_refuses_traces_beyond_memory_and_unstorable_chains_before_writing() {
    let dir = temp_dir("sample");
    let all: Vec<usize> = (0..10).collect();
    let data = user_data(&dir, (&all, 1));
    let out = dir.join("out");
    let out_s = out.to_str().unwrap();
    let run = run_with("sample", &data, &["--draws", "99999999999", "--out", out_s]);
    assert!(!run.status.success());
    let err = stderr(&run);
    // 5 chains x 1e11 draws x 20 samples x 4 bytes, held twice.
    assert!(
        err.contains(
            "the loss traces of 5 chain(s) x 99999999999 draws x 20 samples would need 80.0 TB but only"
        ),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
    assert!(!out.exists(), "a refused run left files");

    let run = run_with(
        "sample",
        &data,
        &[
            "--chain",
            "9223372036854775808",
            "--draws",
            "3",
            "--out",
            out_s,
        ],
    );
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("chain index 9223372036854775808 does not fit"),
        "{}",
        stderr(&run)
    );
    assert!(!out.exists(), "a refused run left files");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn calibration_refuses_trusted_sets_it_cannot_split_and_says_the_rule() {
    let dir = temp_dir("calibrate");
    // One class: CLC has no class to choose; it used to report a reliability of 1.015, "chosen".
    let single = dir.join("single");
    std::fs::create_dir_all(&single).unwrap();
    let data = user_data(&single, (&[3], 12));
    let out = dir.join("out-single");
    let run = run_with("calibrate", &data, &["--out", out.to_str().unwrap()]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(err.contains("at least 2 classes"), "{err}");
    assert!(err.contains("12 trusted samples (class 3: 12)"), "{err}");
    assert!(!out.exists(), "a refused run left files");

    // One image per class: 10 samples, all in the reference half; it used to say "needs at
    // least 5 trusted samples ..., got 10".
    let each = dir.join("each");
    std::fs::create_dir_all(&each).unwrap();
    let all: Vec<usize> = (0..10).collect();
    let data = user_data(&each, (&all, 1));
    let out = dir.join("out-each");
    let run = run_with("calibrate", &data, &["--out", out.to_str().unwrap()]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(
        err.contains("only classes with at least 2 trusted samples give probe samples"),
        "{err}"
    );
    assert!(err.contains("these 10 trusted samples"), "{err}");
    assert!(err.contains("give 0"), "{err}");
    assert!(!out.exists(), "a refused run left files");
    // `vigil sample --calibrate` checks the same before writing.
    let out = dir.join("out-sample");
    let run = run_with(
        "sample",
        &data,
        &["--calibrate", "--out", out.to_str().unwrap()],
    );
    assert!(!run.status.success());
    assert!(stderr(&run).contains("give 0"), "{}", stderr(&run));
    assert!(!out.exists(), "a refused run left files");
    std::fs::remove_dir_all(&dir).unwrap();
}
