//! `vigil detect` end to end on tiny data: detectors fitted on trusted folders, thresholds set on
//! trusted samples scored out of fold only, every input scored and flagged, the truth measured when known.

mod common;

use std::path::{Path, PathBuf};

use common::{idx_data, model_and_sets, stderr, stdout, train, vigil, write_image_folder};

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("vigil-detect", name)
}

/// Anomalous inputs: the class bars plus a bright 6x6 patch in a corner (a BadNets-like trigger).
fn write_patched_folder(root: &Path, per_class: usize, salt: u32) {
    write_image_folder(root, per_class, salt);
    for entry in std::fs::read_dir(root).unwrap() {
        for file in std::fs::read_dir(entry.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let mut image = image::open(&path).unwrap().to_luma8();
            for y in 20..26 {
                for x in 20..26 {
                    image.put_pixel(x, y, image::Luma([255]));
                }
            }
            image.save(&path).unwrap();
        }
    }
}

#[test]
fn detect_fits_on_trusted_data_scores_every_input_and_measures_the_truth() {
    let dir = temp_dir("e2e");
    let data = idx_data(&dir, 300, 50, 1);
    let model = dir.join("model");
    train("fashion-mnist", &data, &model, 1, &["--seed", "1"]);
    let (trusted, sampling, test) = (dir.join("trusted"), dir.join("sampling"), dir.join("test"));
    write_image_folder(&trusted, 8, 10);
    write_image_folder(&sampling, 2, 11);
    write_image_folder(&test, 2, 12);
    let (patched, other) = (dir.join("patched"), dir.join("patched-2"));
    write_patched_folder(&patched, 2, 13);
    write_patched_folder(&other, 1, 14);

    let detect = |anomalous: &Path, out: &Path, extra: &[&str]| {
        let model = model.join("model.safetensors");
        let mut args = vec!["detect"];
        args.extend(model_and_sets(&model, [&trusted, &sampling, &test]));
        args.extend([
            "--anomalous",
            anomalous.to_str().unwrap(),
            "--detectors",
            "mahalanobis,msp,knn",
            "--batch-size",
            "16",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        args.extend_from_slice(extra);
        let run = vigil(&args);
        assert!(run.status.success(), "{}", stderr(&run));
        serde_json::from_slice::<serde_json::Value>(&run.stdout).unwrap()
    };
    let out = dir.join("detect");
    let report = detect(&patched, &out, &[]);
    // 20 clean and 20 patched inputs; 80 trusted. Mahalanobis and k-NN fit statistics of it,
    // so a quarter (2 per class) is held back to set their thresholds; MSP ignores it, so
    // every trusted sample sets its threshold.
    assert_eq!(report["inputs"], 40);
    assert_eq!(report["anomalous"], 20);
    let detectors = report["detectors"].as_array().unwrap();
    let names: Vec<&str> = detectors
        .iter()
        .map(|d| d["detector"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mahalanobis", "msp", "knn"]);
    for d in detectors {
        let expected = if d["detector"] == "msp" {
            (80, 80)
        } else {
            (60, 20)
        };
        assert_eq!(
            (d["fitted_on"].as_u64(), d["threshold_samples"].as_u64()),
            (Some(expected.0), Some(expected.1))
        );
        let column = &d["columns"][0];
        let flags = column["flags"].as_array().unwrap();
        let flagged = flags.iter().filter(|f| f.as_bool().unwrap()).count();
        assert_eq!(column["flagged"].as_u64(), Some(flagged as u64));
        let auroc = column["evaluation"]["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{auroc}");
    }
    // A bright patch is far from every trusted feature: Mahalanobis sees it.
    let mahalanobis = detectors[0]["columns"][0]["evaluation"]["auroc"]
        .as_f64()
        .unwrap();
    assert!(mahalanobis > 0.9, "Mahalanobis AUROC {mahalanobis}");

    // scores.csv: a header naming every column and one row per input, its file first.
    let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "index,path,is_anomalous,mahalanobis.mahalanobis,mahalanobis.mahalanobis.flagged,msp.msp,msp.msp.flagged,knn.knn,knn.knn.flagged"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 40);
    assert!(
        rows[0].starts_with("0,") && rows[0].contains(".png"),
        "{}",
        rows[0]
    );
    assert!(out.join("report.json").exists());
    // report.html: one file, the flagged inputs inlined as images, a histogram per column.
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("Flagged inputs"));
    assert_eq!(page.matches("<svg").count(), 3, "one histogram per column");
    assert!(page.contains("data:image/png;base64,"));

    // Thresholds come from the trusted data alone: other inputs, the same thresholds.
    let again = detect(&other, &dir.join("detect-2"), &[]);
    for (a, b) in detectors.iter().zip(again["detectors"].as_array().unwrap()) {
        assert_eq!(a["columns"][0]["threshold"], b["columns"][0]["threshold"]);
    }
    // --thresholds holdout holds back a quarter of each class (2 of 8) from every detector,
    // MSP included.
    let held = detect(
        &patched,
        &dir.join("detect-holdout"),
        &["--thresholds", "holdout", "--holdout", "0.25"],
    );
    for d in held["detectors"].as_array().unwrap() {
        assert_eq!(
            (d["fitted_on"].as_u64(), d["threshold_samples"].as_u64()),
            (Some(60), Some(20))
        );
    }
    // --thresholds cross-fit scores every trusted sample out of fold.
    let folded = detect(
        &patched,
        &dir.join("detect-folds"),
        &["--thresholds", "cross-fit", "--folds", "4"],
    );
    for d in folded["detectors"].as_array().unwrap() {
        assert_eq!(
            (d["fitted_on"].as_u64(), d["threshold_samples"].as_u64()),
            (Some(80), Some(80))
        );
    }
    // An unknown detector is refused by name before any work, listing the known ones.
    let bad = vigil(&[
        "detect",
        "--record",
        "nowhere",
        "--detectors",
        "nope",
        "--out",
        "x",
    ]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("unknown detector `nope`"),
        "{}",
        stderr(&bad)
    );
    // A tie rule other than the two is refused by clap, naming both.
    let bad = vigil(&[
        "detect", "--record", "nowhere", "--ties", "coin", "--out", "x",
    ]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("give conservative or randomised"),
        "{}",
        stderr(&bad)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `vigil adversarial` writes an attack record of the successful PGD images, which `vigil table`
/// and `vigil detect --record` read like a backdoor's: clean test inputs against adversarial ones.
#[test]
fn adversarial_writes_a_record_that_detect_reads_as_clean_against_adversarial_inputs() {
    let dir = temp_dir("adversarial");
    let data = idx_data(&dir, 600, 100, 2);
    let model = dir.join("model");
    train("fashion-mnist", &data, &model, 5, &["--seed", "2"]);
    let record = dir.join("pgd");
    let (data_s, record_s) = (data.to_str().unwrap(), record.to_str().unwrap());
    let model_file = model.join("model.safetensors");
    let attack = |eps: &str, extra: &[&str]| {
        let mut args = vec![
            "adversarial",
            model_file.to_str().unwrap(),
            "--data-dir",
            data_s,
            "--eps",
            eps,
            "--steps",
            "5",
            "--batch-size",
            "32",
            "--out",
            record_s,
            "--json",
        ];
        args.extend_from_slice(extra);
        vigil(&args)
    };
    let run = attack("0.3", &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["attack"]["attack"], "pgd");
    assert_eq!(report["attack"]["rule"]["kind"], "untargeted");
    let kept = report["results"]["backdoor_test_size"].as_u64().unwrap();
    let attempted = report["attempted"].as_u64().unwrap();
    let rate = report["results"]["attack_success_rate"].as_f64().unwrap();
    assert!(kept > 0 && kept <= attempted, "{kept} of {attempted}");
    assert!((rate - kept as f64 / attempted as f64).abs() < 1e-12);
    // A radius of 0.3 on 28x28 images fools a small five-epoch model almost always.
    assert!(rate > 0.9, "success rate {rate}");
    for file in [
        "attack.json",
        "backdoor_test.safetensors",
        "backdoor_test.json",
        "results.json",
        "examples.png",
        "model.safetensors",
    ] {
        assert!(record.join(file).exists(), "{file} missing");
    }
    let table = vigil(&["table", record_s]);
    assert!(table.status.success(), "{}", stderr(&table));
    assert!(stdout(&table).contains("| pgd |"), "{}", stdout(&table));
    assert!(stdout(&table).contains("untargeted"), "{}", stdout(&table));

    let out = dir.join("detect");
    let detect = vigil(&[
        "detect",
        "--record",
        record_s,
        "--data-dir",
        data_s,
        "--split",
        "3,3,4",
        "--detectors",
        "mahalanobis,msp",
        "--batch-size",
        "16",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(detect.status.success(), "{}", stderr(&detect));
    let detected: serde_json::Value = serde_json::from_slice(&detect.stdout).unwrap();
    let (inputs, anomalous) = (
        detected["inputs"].as_u64().unwrap(),
        detected["anomalous"].as_u64().unwrap(),
    );
    assert!(
        anomalous > 0 && anomalous < inputs,
        "{anomalous} of {inputs}"
    );

    // A target that is no class, and a radius outside [0, 1], are refused.
    let bad = attack("0.3", &["--target", "10"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("target class 10"), "{}", stderr(&bad));
    let bad = attack("2", &[]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("not in [0, 1]"), "{}", stderr(&bad));
    std::fs::remove_dir_all(&dir).unwrap();
}
