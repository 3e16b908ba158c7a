use super::*;
use crate::detect::DetectorSettings;
use crate::detect::ThresholdConfig;

fn split(clean: (usize, usize), triggered: (usize, usize)) -> TaskSummary {
    TaskSummary {
        trusted: (0, 0),
        sampling: 0,
        clean_test: clean,
        triggered_test: triggered,
    }
}

#[test]
fn der_counts_the_whole_test_part_as_backdoorbench_does() {
    // correct = np.array([1]*8 + [0]*2, bool); cflag = np.array([1,1] + [0]*8, bool)
    // hit = np.array([1]*7 + [0]*2, bool);     tflag = np.array([1]*5 + [0]*4, bool)
    // acc_b, acc_a = correct.mean(), (correct & ~cflag).mean()
    // asr_b, asr_a = hit.mean(), (hit & ~tflag).mean()
    // (max(0, asr_b - asr_a) - max(0, acc_b - acc_a) + 1) / 2
    // -> 0.8 0.6 0.7777777777777778 0.2222222222222222 0.6777777777777778
    let mut is_anomalous = vec![false; 8];
    is_anomalous.extend([true; 7]);
    let mut flags = vec![true, true, false, false, false, false, false, false];
    flags.extend([true, true, true, true, true, false, false]);
    let der = der_on_test_part(&split((10, 8), (9, 7)), &is_anomalous, &flags).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(
        close(der.before.acc, 0.8) && close(der.after.acc, 0.6),
        "{der:?}"
    );
    assert!(close(der.before.asr, 7.0 / 9.0) && close(der.after.asr, 2.0 / 9.0));
    assert!(close(der.der, 0.677_777_777_777_777_8), "{der:?}");
    // Inputs that do not match the split are refused, never counted.
    assert!(der_on_test_part(&split((10, 9), (9, 7)), &is_anomalous, &flags).is_err());
    assert!(der_on_test_part(&split((10, 8), (9, 7)), &is_anomalous, &flags[1..]).is_err());
}

fn row(record: &str, detector: &str, auroc: f64, der: f64) -> BackdoorRow {
    let rates = crate::metrics::BackdoorRates { acc: 1.0, asr: 1.0 };
    BackdoorRow {
        record: record.into(),
        attack: record.into(),
        detector: detector.into(),
        column: detector.into(),
        auroc,
        aupr: 0.0,
        fpr_at_95_tpr: 0.0,
        threshold: 0.0,
        threshold_samples: 0,
        tpr: 0.5,
        fpr: 0.1,
        der: RejectionDer {
            before: rates,
            after: rates,
            der,
        },
        seconds: 0.0,
    }
}

#[test]
fn means_average_each_column_over_the_records_it_ran_on() {
    let rows = vec![
        row("badnets", "msp", 0.2, 0.5),
        row("badnets", "strip", 0.9, 0.8),
        row("blended", "msp", 0.4, 0.7),
    ];
    let means = means(&rows);
    assert_eq!(means.len(), 2);
    assert_eq!((means[0].detector.as_str(), means[0].records), ("msp", 2));
    assert!((means[0].auroc - 0.3).abs() < 1e-12 && (means[0].der - 0.6).abs() < 1e-12);
    assert_eq!((means[1].detector.as_str(), means[1].records), ("strip", 1));
}

#[test]
fn thinning_keeps_the_ends_and_at_most_about_the_limit() {
    let points: Vec<(f64, f64)> = (0..=1000).map(|i| (i as f64 / 1000.0, 1.0)).collect();
    let thin = thin(points.clone(), 200);
    assert!(thin.len() <= 201, "{}", thin.len());
    assert_eq!(thin.first(), points.first());
    assert_eq!(thin.last(), points.last());
    assert_eq!(super::thin(points[..5].to_vec(), 200).len(), 5);
}

fn config(detectors: &[&str]) -> BackdoorBenchmarkConfig {
    BackdoorBenchmarkConfig {
        detect: DetectConfig {
            detectors: detectors
                .iter()
                .map(|d| DetectorSettings::by_name(d).unwrap())
                .collect(),
            thresholds: ThresholdConfig::default(),
            batch_size: 8,
            seed: 0,
        },
        split: SplitSizes {
            trusted: 2,
            sampling: 2,
            test: 2,
        },
        split_seed: 0,
    }
}

#[test]
fn settings_that_cannot_make_a_benchmark_are_refused_before_any_record_is_read() {
    let record = |path: &str| BackdoorRecord::from_path(Path::new(path)).unwrap();
    let records = [record("/nowhere/badnets"), record("/elsewhere/badnets")];
    let err = check_settings(&config(&["msp"]), &records).unwrap_err();
    assert!(
        err.to_string().contains("two records are named badnets"),
        "{err}"
    );
    let err = check_settings(&config(&["msp", "msp"]), &records[..1]).unwrap_err();
    assert!(err.to_string().contains("msp is given twice"), "{err}");
    let err = check_settings(&config(&[]), &records[..1]).unwrap_err();
    assert!(err.to_string().contains("no detectors"), "{err}");
    let err = check_settings(&config(&["msp"]), &[]).unwrap_err();
    assert!(err.to_string().contains("no attack records"), "{err}");
    check_settings(&config(&["msp", "strip"]), &records[..1]).unwrap();
    assert_eq!(records[0].name, "badnets");
}
