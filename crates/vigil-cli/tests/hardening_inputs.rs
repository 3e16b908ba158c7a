//! User images checked against the model (issue 24): class folders matched to the model's class
//! names, channels converted explicitly, sizes checked before any work, each set's accuracy
//! printed, scored inputs accepted without labels, and scores.csv naming each input's file.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::{
    Images, idx_data, images, model_and_sets, save_png, short_chain, stderr, train, vigil,
};

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("vigil-inputs", name)
}

/// Fashion-MNIST's class names as folder names in the model's order (sorted by name they are in
/// another order entirely), `Ankle boot` spelt `Ankle_boot`.
const CLASS_FOLDERS: [&str; 10] = {
    let mut names = common::CLASS_FOLDERS;
    names[9] = "Ankle_boot";
    names
};

/// Writes `set` as `root/<class folder>/<i>.png` (classes named by `names`), each image gray or,
/// with `rgb`, as an RGB PNG whose three channels are that gray.
fn write_folder(root: &Path, set: &Images, names: &[&str], rgb: bool) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for (i, (pixels, &label)) in set.pixels.iter().zip(&set.labels).enumerate() {
        let folder = root.join(names[usize::from(label)]);
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join(format!("{i:03}.png"));
        save_png(&path, pixels, rgb);
        paths.push(path);
    }
    paths
}

/// A small CNN trained on Fashion-MNIST-format data (so it carries Fashion-MNIST's class
/// names), shared by the tests: `(data folder, model file)`.
fn gray_model() -> &'static (PathBuf, PathBuf) {
    static MODEL: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = temp_dir("gray-model");
        let data = idx_data(&dir, 300, 60, 1);
        let out = dir.join("model");
        train("fashion-mnist", &data, &out, 2, &[]);
        (data, out.join("model.safetensors"))
    })
}

/// `vigil sample --model` with a very short chain on the `[trusted, sampling, test]` folders,
/// then the `extra` flags.
fn sample(model: &Path, sets: [&Path; 3], extra: &[&str], out: &Path) -> Output {
    let mut args = vec!["sample"];
    args.extend(model_and_sets(model, sets));
    args.extend_from_slice(extra);
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(short_chain("2"));
    args.extend(["--batch-size", "10"]);
    vigil(&args)
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(o)))
}

/// Labels of folders named after the model's classes are the model's labels, not the folders'
/// sorted positions: the same images evaluate exactly alike from IDX files and from the folder.
#[test]
fn class_folders_are_matched_to_the_model_class_names() {
    let (data, model) = gray_model();
    let dir = temp_dir("eval-names");
    write_folder(&dir.join("test"), &images(60, 2), &CLASS_FOLDERS, false);
    let model = model.to_str().unwrap();
    let idx = vigil(&[
        "eval",
        model,
        "--data-dir",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(idx.status.success(), "{}", stderr(&idx));
    let folder = vigil(&[
        "eval",
        model,
        "--dataset",
        "image-folder",
        "--data-dir",
        dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(folder.status.success(), "{}", stderr(&folder));
    let (idx, folder) = (json(&idx), json(&folder));
    assert_eq!(idx["samples"], 60);
    assert_eq!(folder["samples"], 60);
    assert_eq!(folder["accuracy"], idx["accuracy"]);
    assert_eq!(folder["per_class_accuracy"], idx["per_class_accuracy"]);
}

#[test]
fn a_class_folder_naming_no_class_is_refused_with_the_model_classes() {
    let (_, model) = gray_model();
    let dir = temp_dir("unknown-folder");
    let mut names = CLASS_FOLDERS;
    names[7] = "Sneakers";
    let trusted = dir.join("trusted");
    write_folder(&trusted, &images(20, 3), &names, false);
    let out = dir.join("out");
    let run = sample(model, [&trusted, &trusted, &trusted], &[], &out);
    let err = stderr(&run);
    assert!(!run.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("\"Sneakers\""), "{err}");
    assert!(err.contains("T-shirt/top, Trouser"), "{err}");
    assert!(!out.join("task.json").exists());
}

/// Each set's accuracy under the model is printed (and recorded in task.json), and it is the
/// accuracy `vigil eval` finds on the same images.
#[test]
fn sample_prints_each_set_accuracy_under_the_model() {
    let (data, model) = gray_model();
    let dir = temp_dir("accuracy");
    let trusted = dir.join("trusted");
    write_folder(&trusted, &images(60, 2), &CLASS_FOLDERS, false);
    let sampling = dir.join("sampling");
    write_folder(&sampling, &images(30, 4), &CLASS_FOLDERS, false);
    let eval = vigil(&[
        "eval",
        model.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let correct = (json(&eval)["accuracy"].as_f64().unwrap() * 60.0).round() as u64;
    let out = dir.join("out");
    let run = sample(model, [&trusted, &sampling, &sampling], &[], &out);
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains("trusted: 60 images, accuracy under the model"),
        "{err}"
    );
    assert!(err.contains(&format!("({correct}/60)")), "{err}");
    assert!(err.contains("sampling: 30 images"), "{err}");
    assert!(err.contains("test: 30 images"), "{err}");
    let task: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("task.json")).unwrap()).unwrap();
    assert_eq!(task["accuracy"][0]["set"], "trusted");
    assert_eq!(task["accuracy"][0]["correct"], correct);
}

/// RGB images on a one-channel model are converted to grayscale (luma), and the run says so; a
/// gray RGB image's luma is its gray, so the accuracy is that of the gray images.
#[test]
fn rgb_images_on_a_gray_model_are_converted_and_said_so() {
    let (_, model) = gray_model();
    let dir = temp_dir("rgb-on-gray");
    let (gray, rgb) = (dir.join("gray"), dir.join("rgb"));
    write_folder(&gray, &images(30, 5), &CLASS_FOLDERS, false);
    write_folder(&rgb, &images(30, 5), &CLASS_FOLDERS, true);
    let run = sample(model, [&gray, &gray, &rgb], &[], &dir.join("out"));
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    assert_eq!(
        err.matches("RGB images converted to grayscale").count(),
        1,
        "{err}"
    );
    assert!(err.contains("(30 test)"), "{err}");
    let line = |set: &str| {
        err.lines()
            .find(|l| l.starts_with(&format!("{set}: 30 images")))
            .map(|l| l.split_once("images").unwrap().1.to_string())
    };
    assert_eq!(line("trusted"), line("test"), "{err}");
}

/// Images of another size than the model's input are refused before any work, naming the file
/// and both sizes; nothing is written.
#[test]
fn images_of_another_size_are_refused_naming_file_and_sizes() {
    let (_, model) = gray_model();
    let dir = temp_dir("size");
    let trusted = dir.join("trusted");
    write_folder(&trusted, &images(20, 6), &CLASS_FOLDERS, false);
    let test = dir.join("test");
    std::fs::create_dir_all(test.join("Bag")).unwrap();
    let big = test.join("Bag/big.png");
    image::GrayImage::new(32, 30).save(&big).unwrap();
    let out = dir.join("out");
    let run = sample(model, [&trusted, &trusted, &test], &[], &out);
    let err = stderr(&run);
    assert!(!run.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(&big.display().to_string()), "{err}");
    assert!(err.contains("32x30") && err.contains("28x28"), "{err}");
    assert!(!out.exists(), "a refused run wrote {}", out.display());

    // Every set of the other size: nothing to compare them with but the model's input.
    let run = sample(model, [&test, &test, &test], &[], &out);
    let err = stderr(&run);
    assert!(!run.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(&big.display().to_string()), "{err}");
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}

/// Scored inputs need no labels: a flat anomalous folder and a test folder with some classes only
/// (and an empty one) are taken; scores.csv then gives each input's file and a unique id.
#[test]
fn unlabelled_scored_inputs_are_taken_and_scores_name_their_files() {
    let (_, model) = gray_model();
    let dir = temp_dir("flat");
    let trusted = dir.join("trusted");
    write_folder(&trusted, &images(30, 7), &CLASS_FOLDERS, false);
    let test = dir.join("test");
    let some = images(6, 8);
    write_folder(&test, &some, &CLASS_FOLDERS, false);
    std::fs::create_dir_all(test.join("Bag")).unwrap();
    assert!(std::fs::read_dir(&test).unwrap().count() < 10);
    let anomalous = dir.join("anomalous");
    std::fs::create_dir_all(&anomalous).unwrap();
    let triggered = images(4, 9);
    let mut flat = Vec::new();
    for (i, pixels) in triggered.pixels.iter().enumerate() {
        let path = anomalous.join(format!("t{i}.png"));
        save_png(&path, pixels, false);
        flat.push(path);
    }
    let out = dir.join("out");
    let run = sample(
        model,
        [&trusted, &trusted, &test],
        &["--anomalous", anomalous.to_str().unwrap()],
        &out,
    );
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains("anomalous: 4 image(s) without a class folder"),
        "{err}"
    );

    let score = vigil(&["score", out.join("traces.npz").to_str().unwrap()]);
    assert!(score.status.success(), "{}", stderr(&score));
    let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (id, flag, path) = (column("source_id"), column("is_anomalous"), column("path"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 10);
    let ids: BTreeSet<&str> = rows.iter().map(|r| r[id]).collect();
    assert_eq!(ids.len(), 10, "ids repeat across test and anomalous: {csv}");
    for row in &rows[..6] {
        assert_eq!(row[flag], "0");
        assert!(row[path].starts_with(&test.display().to_string()), "{csv}");
    }
    let anomalous_paths: Vec<String> = rows[6..].iter().map(|r| r[path].to_string()).collect();
    let expected: Vec<String> = flat.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(anomalous_paths, expected);
    assert!(rows[6..].iter().all(|r| r[flag] == "1"));
}

/// Grayscale images into a three-channel model are repeated into three channels (they used to
/// reach the convolution with one channel and panic).
#[test]
fn gray_images_into_an_rgb_model_are_repeated_into_three_channels() {
    let dir = temp_dir("gray-on-rgb");
    let data = dir.join("data");
    let names = ["bar_a", "bar_b", "bar_c", "bar_d", "bar_e"];
    let few = |n, salt| {
        let mut set = images(n, salt);
        set.labels.iter_mut().for_each(|l| *l %= 5);
        set
    };
    write_folder(&data.join("train"), &few(60, 10), &names, true);
    write_folder(&data.join("test"), &few(20, 11), &names, true);
    let model = dir.join("model");
    train("image-folder", &data, &model, 2, &[]);
    let gray = dir.join("gray");
    write_folder(&gray, &few(20, 12), &names, false);
    let run = sample(
        &model.join("model.safetensors"),
        [&gray, &gray, &gray],
        &[],
        &dir.join("out"),
    );
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.matches("grayscale images repeated into three channels")
            .count(),
        1,
        "{err}"
    );
}
