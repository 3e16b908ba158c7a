//! Two backdoors in one model end to end on tiny data: `vigil attack --second-attack` writes
//! the record, `vigil sample --record` traces it, `vigil mechanisms` clusters the triggered
//! inputs and measures the clusters against the backdoors; `vigil evade` attacks MAD-FA on the
//! same run.

mod common;

use common::{idx_data, stderr, vigil};

#[test]
fn two_backdoors_are_recorded_traced_and_clustered() {
    let dir = common::temp_dir("vigil-mechanisms", "two-backdoors");
    let data = idx_data(&dir, 600, 200, 3);
    let record = dir.join("record");
    let (data_s, record_s) = (data.to_str().unwrap(), record.to_str().unwrap());
    let attack = vigil(&[
        "attack",
        "--attack",
        "badnets",
        "--patch-size",
        "4",
        "--second-attack",
        "blended",
        "--second-target",
        "5",
        "--rate",
        "0.1",
        "--data-dir",
        data_s,
        "--out",
        record_s,
        "--epochs",
        "4",
        "--batch-size",
        "32",
        "--width",
        "8",
        "--lr",
        "0.05",
    ]);
    assert!(
        attack.status.success(),
        "attack failed: {}",
        stderr(&attack)
    );
    assert!(
        stderr(&attack).contains("badnets + blended"),
        "{}",
        stderr(&attack)
    );
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(record.join(name)).unwrap()).unwrap()
    };
    let manifest = read("attack.json");
    assert_eq!(manifest["second"]["attack"], "blended");
    assert_eq!(manifest["second"]["rule"]["target"], 5);
    let results = read("results.json");
    let rates = results["mechanism_success_rates"].as_array().unwrap();
    assert_eq!(rates.len(), 2);
    // 200 test images, 20 per class: 180 not of class 0 under BadNets, 180 not of class 5
    // under Blended.
    assert_eq!(results["backdoor_test_size"], 360);
    let index = read("backdoor_test.json");
    let mechanisms = index["mechanisms"].as_array().unwrap();
    assert_eq!(mechanisms.iter().filter(|m| *m == 1).count(), 180);
    assert!(record.join("poison-second.json").exists());

    let run = dir.join("madfa");
    let sample = vigil(&[
        "sample",
        "--record",
        record_s,
        "--data-dir",
        data_s,
        "--out",
        run.to_str().unwrap(),
        "--split",
        "5,5,10",
        "--draws",
        "12",
        "--burn-in",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "1e-5",
        "--gamma",
        "1000",
        "--loss",
        "precise",
        "--seed",
        "4",
    ]);
    assert!(
        sample.status.success(),
        "sample failed: {}",
        stderr(&sample)
    );

    // The adaptive attack on the same run: MAD-FA's own chains, linearised, attacked through.
    let evasion = dir.join("evade");
    let evade = vigil(&[
        "evade",
        "--record",
        record_s,
        "--run",
        run.to_str().unwrap(),
        "--data-dir",
        data_s,
        "--out",
        evasion.to_str().unwrap(),
        "--eps",
        "0.05",
        "--steps",
        "3",
        "--inputs",
        "6",
        "--defender-seed",
        "11",
        "--latent",
        "mahalanobis,msp",
        "--json",
    ]);
    assert!(evade.status.success(), "evade failed: {}", stderr(&evade));
    let file: serde_json::Value = serde_json::from_slice(&evade.stdout).unwrap();
    let detectors = file["detectors"].as_array().unwrap();
    assert_eq!(detectors.len(), 4);
    assert_eq!(detectors[0]["detector"], "madfa");
    // The same attacked inputs, scored by the defender's own exact chains of another seed.
    assert_eq!(
        detectors[1]["detector"],
        "madfa, exact traces of fresh chains (seed 11)"
    );
    assert_eq!(detectors[1]["still_target"], detectors[0]["still_target"]);
    assert_eq!(detectors[1]["max_linf"], detectors[0]["max_linf"]);
    // Each latent detector on its own score, in the order given.
    assert_eq!(detectors[2]["detector"], "mahalanobis");
    assert_eq!(detectors[3]["detector"], "msp");
    for report in detectors {
        assert_eq!(report["attacked"], 6, "{report}");
        assert!(report["still_target"].as_u64().unwrap() <= 6);
        assert!(
            report["max_linf"].as_f64().unwrap() <= 0.05 + 1e-6,
            "{report}"
        );
        for key in ["auroc_before", "auroc_after", "tpr_before", "tpr_after"] {
            let v = report[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} {v}");
        }
    }
    assert_eq!(file["chain"]["traces"], "linearised");
    for name in ["evasion.json", "examples.png"] {
        assert!(evasion.join(name).exists(), "{name} missing");
    }

    let out = dir.join("mechanisms");
    let mechanisms = |extra: &[&str]| {
        let mut args = vec![
            "mechanisms",
            "--record",
            record_s,
            "--run",
            run.to_str().unwrap(),
            "--data-dir",
            data_s,
            "--out",
            out.to_str().unwrap(),
            "--fpr",
            "0.5",
            "--json",
        ];
        args.extend_from_slice(extra);
        vigil(&args)
    };
    let analysed = mechanisms(&[]);
    assert!(
        analysed.status.success(),
        "mechanisms failed: {}",
        stderr(&analysed)
    );
    let report: serde_json::Value = serde_json::from_slice(&analysed.stdout).unwrap();
    assert_eq!(
        report["mechanisms"],
        serde_json::json!(["badnets", "blended"])
    );
    let rows = report["rows"].as_array().unwrap();
    // Five feature kinds, on the flagged triggered inputs and on all of them.
    assert_eq!(rows.len(), 10);
    let removed = report["trusted_directions_removed"].as_u64().unwrap();
    assert!(removed >= 1, "{report}");
    let flagged: u64 = report["triggered_flagged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[0].as_u64().unwrap())
        .sum();
    for row in rows {
        let k = row["k"].as_u64().unwrap();
        let ari = row["ari"].as_f64().unwrap();
        assert!((2..=6).contains(&k) && (-1.0..=1.0).contains(&ari), "{row}");
        let given = row["ari_true_k"].as_f64().unwrap();
        assert!(
            (-1.0..=1.0).contains(&given) && row["true_k"].as_u64().unwrap() <= 2,
            "{row}"
        );
        let n = row["n"].as_u64().unwrap();
        let per: u64 = row["per_mechanism"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(n, per, "{row}");
        if row["inputs"] == "flagged" {
            assert_eq!(n, flagged, "{row}");
        }
    }
    for file in ["mechanisms.json", "assignments.csv", "signatures.svg"] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let csv = std::fs::read_to_string(out.join("assignments.csv")).unwrap();
    assert!(
        csv.starts_with(
            "test_index,source_id,backdoor,flagged,madfa.traces,madfa.traces_off_trusted,madfa.trusted_couplings"
        )
    );

    // Settings out of range are refused before anything is read.
    let bad = mechanisms(&["--max-k", "1"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--max-k 1"), "{}", stderr(&bad));
    // A run on another record's inputs is refused: here, a run folder without traces.
    let bad = vigil(&[
        "mechanisms",
        "--record",
        record_s,
        "--run",
        dir.join("nothing").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("task.json"), "{}", stderr(&bad));
    std::fs::remove_dir_all(&dir).unwrap();
}
