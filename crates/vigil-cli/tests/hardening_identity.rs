//! Run identity (issue 24): an output folder's reusable state (chain checkpoints, calibration,
//! task files, traces) is reused only by a run of the same model, data and settings; any other
//! run is refused before it writes a byte, and a resumed run says so.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{idx_data, model_and_sets, short_chain, stderr, train, vigil, write_image_folder};

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("vigil-identity", name)
}

/// Every file under `dir` with its bytes, to show that a refused run changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn sample_and_calibrate_reuse_only_their_own_run_and_refusals_write_nothing() {
    let dir = temp_dir("sample");
    let data = idx_data(&dir, 200, 50, 1);
    let (model_a, model_b) = (dir.join("a"), dir.join("b"));
    train("fashion-mnist", &data, &model_a, 1, &["--seed", "1"]);
    train("fashion-mnist", &data, &model_b, 1, &["--seed", "2"]);
    let (trusted, sampling, test, other_trusted) = (
        dir.join("trusted"),
        dir.join("sampling"),
        dir.join("test"),
        dir.join("trusted-2"),
    );
    write_image_folder(&trusted, 3, 10);
    write_image_folder(&sampling, 3, 11);
    write_image_folder(&test, 2, 12);
    write_image_folder(&other_trusted, 3, 13);

    // `vigil sample` of `model` on `trusted` and the sampling and test folders into `out`.
    let sample_into = |out: &Path, model: &Path, trusted: &Path, extra: &[&str]| {
        let model = model.join("model.safetensors");
        let mut args = vec!["sample"];
        args.extend(model_and_sets(&model, [trusted, &sampling, &test]));
        args.extend(["--out", out.to_str().unwrap(), "--batch-size", "10"]);
        args.extend_from_slice(extra);
        vigil(&args)
    };
    let out = dir.join("madfa");
    let sample =
        |model: &Path, trusted: &Path, extra: &[&str]| sample_into(&out, model, trusted, extra);
    let short = short_chain("3");

    // A folder holding chain checkpoints of an earlier vigil (no identity) is refused, as
    // nothing says whose chains they are.
    std::fs::create_dir_all(out.join("resume/chain-0")).unwrap();
    let old = sample(&model_a, &trusted, &short);
    assert!(!old.status.success());
    assert!(
        stderr(&old).contains("already holds resume"),
        "{}",
        stderr(&old)
    );
    assert!(!out.join("task.json").exists());
    std::fs::remove_dir_all(&out).unwrap();

    let first = sample(&model_a, &trusted, &short);
    assert!(first.status.success(), "{}", stderr(&first));
    let finished = snapshot(&out);
    assert!(finished.keys().any(|p| p.ends_with("traces.npz")));

    // Another model into the same folder: refused, naming the weights, and nothing changed
    // (the old chain was once reused and reported "done").
    let other_model = sample(&model_b, &trusted, &short);
    assert!(!other_model.status.success());
    let err = stderr(&other_model);
    assert!(
        err.contains("another model (weights of `model` differ)"),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(snapshot(&out), finished, "a refused run changed the folder");

    // Other data (another trusted set), and other settings: the same.
    let other_data = sample(&model_a, &other_trusted, &short);
    assert!(!other_data.status.success());
    assert!(
        stderr(&other_data).contains("other data (`trusted` differ)"),
        "{}",
        stderr(&other_data)
    );
    let mut reseeded = short.to_vec();
    reseeded.extend_from_slice(&["--seed", "9"]);
    let other_settings = sample(&model_a, &trusted, &reseeded);
    assert!(!other_settings.status.success());
    assert!(
        stderr(&other_settings).contains("chain.seed: 0 here, 9 asked"),
        "{}",
        stderr(&other_settings)
    );
    assert_eq!(snapshot(&out), finished, "a refused run changed the folder");

    // The same run again reuses the folder and says so.
    let again = sample(&model_a, &trusted, &short);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("reusing"), "{}", stderr(&again));

    // --calibrate reuses calibration.json only for its own model: another model is refused
    // and the calibration file is left as it was.
    let calibrated = dir.join("calibrated");
    let calibrate = |model: &Path| {
        let settings = [
            "--calibrate",
            "--probe-draws",
            "4",
            "--probe-burn-in",
            "2",
            "--min-draws",
            "4",
            "--max-draws",
            "4",
        ];
        sample_into(&calibrated, model, &trusted, &settings)
    };
    let run = calibrate(&model_a);
    assert!(run.status.success(), "{}", stderr(&run));
    let calibration = std::fs::read(calibrated.join("calibration.json")).unwrap();
    let refused = calibrate(&model_b);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("another model"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        std::fs::read(calibrated.join("calibration.json")).unwrap(),
        calibration
    );
    let again = calibrate(&model_a);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("reusing the calibration"),
        "{}",
        stderr(&again)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
