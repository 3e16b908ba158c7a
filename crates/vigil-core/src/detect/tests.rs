use rand::SeedableRng;

use super::madfa::MadfaSettings;
use super::*;
use crate::attack::test_data::{tiny_cnn_spec, two_class_8x8};
use crate::device::default_device;
use crate::madfa::{ChainConfig, SgldConfig};
use crate::metrics::{flag_rate, threshold_for_fpr};
use crate::models::test_util::host_seeded;
use crate::ood::{ScoreKind, score_set};

fn model(seed: u64) -> Classifier {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    host_seeded(tiny_cnn_spec(), &mut rng, &default_device())
}

fn images(n: usize, salt: usize) -> ImageSet {
    two_class_8x8(n, move |i| ((i * 37 + salt * 11) % 101) as f32 / 100.0)
}

/// A detector whose score is an input's mean pixel: simple enough to check thresholds by hand.
struct MeanPixel;
struct FittedMeanPixel;

impl Detector for MeanPixel {
    fn name(&self) -> &str {
        "mean-pixel"
    }
    fn fit(&self, _data: &FitData<'_>) -> Result<Box<dyn FittedDetector>, DetectError> {
        Ok(Box::new(FittedMeanPixel))
    }
}

impl FittedDetector for FittedMeanPixel {
    fn name(&self) -> &str {
        "mean-pixel"
    }
    fn columns(&self) -> Vec<String> {
        vec!["mean".into()]
    }
    fn score(
        &self,
        _model: &Classifier,
        inputs: &ImageSet,
        _device: &Device,
    ) -> Result<ScoreTable, DetectError> {
        let means = (0..inputs.len())
            .map(|i| {
                let image = inputs.image(i);
                image.iter().map(|&v| f64::from(v)).sum::<f64>() / image.len() as f64
            })
            .collect();
        ScoreTable::new(vec![("mean".into(), means)])
    }
}

#[test]
fn holdout_split_is_per_class_disjoint_and_seeded() {
    let trusted = images(40, 0);
    let (fit, held) = holdout_split(&trusted, 0.25, 3).unwrap();
    // 20 per class: ceil(0.25 * 20) = 5 held back per class.
    assert_eq!((fit.len(), held.len()), (30, 10));
    assert_eq!(held.class_counts(), vec![5, 5]);
    let (fit2, held2) = holdout_split(&trusted, 0.25, 3).unwrap();
    assert_eq!(
        (fit2.pixels(), held2.pixels()),
        (fit.pixels(), held.pixels())
    );
    let (_, other) = holdout_split(&trusted, 0.25, 4).unwrap();
    assert_ne!(other.pixels(), held.pixels());
    // One sample per class leaves nothing to hold back.
    let err = holdout_split(&images(2, 0), 0.25, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a class needs at least 2"), "{err}");
}

#[test]
fn thresholds_are_set_on_held_out_trusted_scores_at_the_target_rate() {
    let trusted = images(80, 1);
    let sampling = images(10, 2);
    let device = default_device();
    let model = model(0);
    let data = FitData {
        model: &model,
        trusted: &trusted,
        sampling: &sampling,
        batch_size: 16,
        seed: 5,
        device: &device,
    };
    let config = ThresholdConfig {
        target_fpr: 0.1,
        split: ThresholdSplit::Holdout { fraction: 0.5 },
        ..ThresholdConfig::default()
    };
    let detector = fit_with_thresholds(&MeanPixel, &data, &config).unwrap();
    assert_eq!((detector.fitted_on, detector.threshold_samples), (40, 40));
    // The threshold is threshold_for_fpr of the held-out part's own scores.
    let (_, held) = holdout_split(&trusted, 0.5, 5).unwrap();
    let held_scores = FittedMeanPixel.score(&model, &held, &device).unwrap();
    let expected = threshold_for_fpr(held_scores.column("mean").unwrap(), 0.1).unwrap();
    assert_eq!(detector.threshold("mean"), Some(expected));
    let rate = flag_rate(held_scores.column("mean").unwrap(), expected).unwrap();
    assert!(rate <= 0.1, "{rate}");
    let flags = detector.flags_for(&held_scores, &held);
    assert_eq!(
        flags[0].1.iter().filter(|&&f| f).count() as f64 / 40.0,
        rate
    );
    // Bad settings are refused.
    for (target_fpr, split) in [
        (1.0, ThresholdSplit::Holdout { fraction: 0.5 }),
        (-0.1, ThresholdSplit::Holdout { fraction: 0.5 }),
        (0.05, ThresholdSplit::Holdout { fraction: 0.0 }),
        (0.05, ThresholdSplit::Holdout { fraction: 1.0 }),
        (0.05, ThresholdSplit::CrossFit { folds: 1 }),
        (0.05, ThresholdSplit::CrossFit { folds: 81 }),
    ] {
        let config = ThresholdConfig {
            target_fpr,
            split,
            ..ThresholdConfig::default()
        };
        assert!(
            fit_with_thresholds(&MeanPixel, &data, &config).is_err(),
            "{config:?}"
        );
    }
}

#[test]
fn folds_cover_the_trusted_set_once_per_class_evenly_and_seeded() {
    let trusted = images(43, 0);
    let folds = threshold::fold_indices(&trusted, 5, 3).unwrap();
    let mut all: Vec<usize> = folds.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..43).collect::<Vec<_>>());
    let sizes: Vec<usize> = folds.iter().map(Vec::len).collect();
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
        "{sizes:?}"
    );
    // Per class, too: each class's samples are dealt in turn.
    for fold in &folds {
        let counts = trusted.subset(fold).class_counts();
        assert!(counts.iter().all(|&c| (4..=5).contains(&c)), "{counts:?}");
    }
    assert_eq!(threshold::fold_indices(&trusted, 5, 3).unwrap(), folds);
    assert_ne!(threshold::fold_indices(&trusted, 5, 4).unwrap(), folds);
}

/// Scores an input by its mean pixel minus the mean pixel of the trusted set it was fitted on:
/// a detector whose scores depend on its fit, to check cross-fitting by hand.
struct CenteredMeanPixel;
struct FittedCenteredMeanPixel(f64);

fn mean_pixels(set: &ImageSet) -> Vec<f64> {
    FittedMeanPixel
        .score(&model(0), set, &default_device())
        .unwrap()
        .columns
        .remove(0)
        .1
}

impl Detector for CenteredMeanPixel {
    fn name(&self) -> &str {
        "centered-mean-pixel"
    }
    fn fit(&self, data: &FitData<'_>) -> Result<Box<dyn FittedDetector>, DetectError> {
        let means = mean_pixels(data.trusted);
        Ok(Box::new(FittedCenteredMeanPixel(
            means.iter().sum::<f64>() / means.len() as f64,
        )))
    }
}

impl FittedDetector for FittedCenteredMeanPixel {
    fn name(&self) -> &str {
        "centered-mean-pixel"
    }
    fn columns(&self) -> Vec<String> {
        vec!["centered".into()]
    }
    fn score(
        &self,
        _model: &Classifier,
        inputs: &ImageSet,
        _device: &Device,
    ) -> Result<ScoreTable, DetectError> {
        let values = mean_pixels(inputs).iter().map(|m| m - self.0).collect();
        ScoreTable::new(vec![("centered".into(), values)])
    }
}

#[test]
fn cross_fitted_thresholds_use_every_trusted_sample_scored_out_of_fold() {
    let trusted = images(60, 4);
    let sampling = images(10, 2);
    let device = default_device();
    let model = model(0);
    let data = FitData {
        model: &model,
        trusted: &trusted,
        sampling: &sampling,
        batch_size: 16,
        seed: 9,
        device: &device,
    };
    let config = ThresholdConfig {
        target_fpr: 0.1,
        split: ThresholdSplit::CrossFit { folds: 4 },
        ..ThresholdConfig::default()
    };
    let inputs = images(12, 7);
    let (detector, tables) =
        fit_thresholds_and_score(&CenteredMeanPixel, &data, &config, &[&inputs]).unwrap();
    assert_eq!((detector.fitted_on, detector.threshold_samples), (60, 60));
    // By hand: each trusted sample's mean pixel minus the mean over the other folds.
    let means = mean_pixels(&trusted);
    let mut out_of_fold = vec![0.0; 60];
    for fold in threshold::fold_indices(&trusted, 4, 9).unwrap() {
        let rest: Vec<f64> = (0..60)
            .filter(|i| !fold.contains(i))
            .map(|i| means[i])
            .collect();
        let centre = rest.iter().sum::<f64>() / rest.len() as f64;
        for i in fold {
            out_of_fold[i] = means[i] - centre;
        }
    }
    assert_eq!(
        detector.threshold("centered"),
        Some(threshold_for_fpr(&out_of_fold, 0.1).unwrap())
    );
    // The inputs are scored by the detector fitted on the whole trusted set.
    let centre = means.iter().sum::<f64>() / 60.0;
    let expected: Vec<f64> = mean_pixels(&inputs).iter().map(|m| m - centre).collect();
    assert_eq!(tables[0].column("centered").unwrap(), expected.as_slice());
}

#[test]
fn randomised_ties_flag_the_target_rate_of_a_score_with_few_values() {
    // Every input scores 1 (a score with one value): the conservative threshold flags none;
    // randomised, each input is flagged with probability 0.05, decided by its pixels alone.
    let inputs = two_class_8x8(4000, |i| ((i * 7919) % 10007) as f32 / 10007.0);
    let scores = ScoreTable::new(vec![("s".into(), vec![1.0; 4000])]).unwrap();
    let held_out = vec![1.0; 200];
    let threshold = threshold_for_fpr(&held_out, 0.05).unwrap();
    let tie = crate::metrics::tie_break_for_fpr(&held_out, threshold, 0.05)
        .unwrap()
        .unwrap();
    assert_eq!((tie.below, tie.fraction), (1.0, 0.05));
    let detector = ThresholdedDetector {
        fitted: Box::new(FittedMeanPixel),
        thresholds: vec![("s".into(), threshold)],
        tie_breaks: vec![("s".into(), tie)],
        seed: 7,
        config: ThresholdConfig::default(),
        fitted_on: 0,
        threshold_samples: 200,
    };
    let flags = detector.flags_for(&scores, &inputs).remove(0).1;
    let rate = flags.iter().filter(|&&f| f).count() as f64 / 4000.0;
    // Binomial(4000, 0.05): standard deviation 0.0034.
    assert!((rate - 0.05).abs() < 0.012, "{rate}");
    // The same image gets the same decision wherever it stands.
    let reversed: Vec<usize> = (0..4000).rev().collect();
    let flipped = detector
        .flags_for(&scores, &inputs.subset(&reversed))
        .remove(0)
        .1;
    assert!(flipped.iter().rev().eq(flags.iter()));
    // "randomised" and "randomized" parse; other words are refused.
    assert_eq!(
        "randomized".parse::<TieRule>().unwrap(),
        TieRule::Randomised
    );
    assert!("random".parse::<TieRule>().is_err());
}

#[test]
fn score_tables_refuse_columns_of_different_lengths() {
    let err = ScoreTable::new(vec![("a".into(), vec![1.0, 2.0]), ("b".into(), vec![1.0])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("column a has 2 values but b has 1"), "{err}");
}

#[test]
fn the_registry_knows_every_detector_by_name_and_round_trips_settings() {
    for name in DetectorSettings::names() {
        let settings = DetectorSettings::by_name(name).unwrap();
        assert_eq!(settings.name(), name);
        let json = serde_json::to_string(&settings).unwrap();
        let back: DetectorSettings = serde_json::from_str(&json).unwrap();
        assert_eq!(back, settings);
        assert_eq!(settings.build().unwrap().name(), name);
    }
    // Each detector's primary column is one of its columns (fitted where fitting is cheap).
    let (trusted, device, model) = (images(80, 1), default_device(), model(1));
    let data = FitData {
        model: &model,
        trusted: &trusted,
        sampling: &trusted,
        batch_size: 8,
        seed: 0,
        device: &device,
    };
    for name in DetectorSettings::names() {
        let settings = DetectorSettings::by_name(name).unwrap();
        let primary = settings.primary_column();
        match name {
            "madfa" => assert!(crate::madfa::scores::SCORE_NAMES.contains(&primary)),
            "ibd-psc" => assert_eq!(primary, "psc"),
            _ => {
                let fitted = settings.build().unwrap().fit(&data).unwrap();
                assert!(
                    fitted.columns().iter().any(|c| c == primary),
                    "{name}: {primary}"
                );
            }
        }
    }
    let err = DetectorSettings::by_name("nope").unwrap_err().to_string();
    assert!(err.contains("unknown detector `nope`"), "{err}");
    assert!(err.contains("madfa, msp, energy"), "{err}");
}

#[test]
fn an_ood_score_as_a_detector_scores_as_the_score_itself() {
    let trusted = images(40, 1);
    let inputs = images(12, 7);
    let device = default_device();
    let model = model(1);
    let data = FitData {
        model: &model,
        trusted: &trusted,
        sampling: &trusted,
        batch_size: 8,
        seed: 0,
        device: &device,
    };
    for kind in [ScoreKind::Msp, ScoreKind::Mahalanobis] {
        let fitted = DetectorSettings::by_name(kind.name())
            .unwrap()
            .build()
            .unwrap()
            .fit(&data)
            .unwrap();
        let table = fitted.score(&model, &inputs, &device).unwrap();
        let mut direct = kind.build(8);
        direct.fit(&model, &trusted, &device).unwrap();
        let expected = score_set(direct.as_ref(), &model, &inputs, 8, &device).unwrap();
        assert_eq!(fitted.columns(), vec![kind.name().to_string()]);
        assert_eq!(table.column(kind.name()).unwrap(), expected.as_slice());
    }
}

#[test]
fn madfa_scores_the_same_draws_every_call_and_never_sees_labels() {
    let trusted = images(24, 1);
    let sampling = images(16, 2);
    let inputs = images(6, 9);
    let device = default_device();
    let model = model(2);
    let settings = MadfaSettings {
        calibrate: false,
        chain: ChainConfig {
            sgld: SgldConfig {
                lr: 1e-4,
                n_beta: 10.0,
                gamma: 100.0,
                batch_size: 8,
                ..SgldConfig::reference()
            },
            draws: 5,
            burn_in: 2,
            thinning: 1,
            trace_batch_size: 16,
            ..ChainConfig::reference()
        },
        chains: 2,
        min_draws: crate::madfa::CALIBRATED_MIN_DRAWS,
        attributions: 2,
    };
    let detector = DetectorSettings::Madfa(settings.clone()).build().unwrap();
    let fitted = detector
        .fit(&FitData {
            model: &model,
            trusted: &trusted,
            sampling: &sampling,
            batch_size: 16,
            seed: 3,
            device: &device,
        })
        .unwrap();
    assert_eq!(
        fitted.columns(),
        vec![
            "mean_corr",
            "clc",
            "mean_ccc",
            "class_ccc",
            "nearest_corr",
            "clc_plus_class_ccc"
        ]
    );
    let first = fitted.score(&model, &inputs, &device).unwrap();
    assert_eq!(first.len(), 6);
    assert!(
        first
            .columns
            .iter()
            .all(|(_, v)| v.iter().all(|x| x.is_finite()))
    );
    // The chain walks the same draws whatever it traces: scores repeat exactly.
    assert_eq!(fitted.score(&model, &inputs, &device).unwrap(), first);
    // Labels of the inputs are not read: relabelled inputs score the same.
    let mut relabelled = inputs.clone();
    for i in 0..relabelled.len() {
        relabelled.set_label(i, 1 - relabelled.label(i)).unwrap();
    }
    assert_eq!(fitted.score(&model, &relabelled, &device).unwrap(), first);
    // Several sets traced along one walk score exactly as separate calls do.
    let other = images(4, 11);
    let joined = fitted
        .score_sets(&model, &[&inputs, &other], &device)
        .unwrap();
    assert_eq!(joined.len(), 2);
    assert_eq!(joined[0], first);
    assert_eq!(joined[1], fitted.score(&model, &other, &device).unwrap());
    // Every input names its 2 most and 2 least attributed trusted samples, in order.
    let a = first.attributions.as_ref().unwrap();
    assert_eq!((a.most.len(), a.least.len()), (6, 6));
    for (most, least) in a.most.iter().zip(&a.least) {
        assert_eq!((most.len(), least.len()), (2, 2));
        assert!(most[0].correlation >= most[1].correlation);
        assert!(least[0].correlation <= least[1].correlation);
        assert!(most[1].correlation >= least[1].correlation);
    }
    // With thresholds, the detector is fitted on part of the trusted set; its attributions
    // then name positions in the whole trusted set, never a held-back sample.
    let data = FitData {
        model: &model,
        trusted: &trusted,
        sampling: &sampling,
        batch_size: 16,
        seed: 3,
        device: &device,
    };
    let config = ThresholdConfig {
        split: ThresholdSplit::Holdout { fraction: 0.25 },
        ..ThresholdConfig::default()
    };
    let (_, tables) = super::fit_thresholds_and_score(
        DetectorSettings::Madfa(settings.clone())
            .build()
            .unwrap()
            .as_ref(),
        &data,
        &config,
        &[&inputs],
    )
    .unwrap();
    // By default MAD-FA is fitted on every trusted sample and sets its thresholds on all of
    // them, scored leave-one-out from the same walk: the inputs score as an unthresholded fit's.
    let madfa = DetectorSettings::Madfa(settings).build().unwrap();
    let (auto, auto_tables) = super::fit_thresholds_and_score(
        madfa.as_ref(),
        &data,
        &ThresholdConfig::default(),
        &[&inputs],
    )
    .unwrap();
    assert_eq!(
        (auto.fitted_on, auto.threshold_samples),
        (trusted.len(), trusted.len())
    );
    let plain = madfa.fit(&data).unwrap();
    let (plain_tables, own) = plain
        .score_sets_and_trusted(&model, &[&inputs], &device)
        .unwrap();
    assert_eq!(auto_tables, plain_tables);
    let own = own.unwrap();
    for (name, values) in &own.columns {
        assert_eq!(
            auto.threshold(name),
            Some(threshold_for_fpr(values, 0.05).unwrap())
        );
    }
    let (fit_indices, held) = super::holdout_indices(&trusted, 0.25, 3).unwrap();
    let named = tables[0].attributions.as_ref().unwrap();
    let all: Vec<usize> = named
        .most
        .iter()
        .chain(&named.least)
        .flatten()
        .map(|a| a.trusted)
        .collect();
    assert!(
        all.iter()
            .all(|t| fit_indices.contains(t) && !held.contains(t)),
        "{all:?}"
    );
    assert!(
        all.iter().any(|&t| t >= fit_indices.len()),
        "positions were not remapped: {all:?}"
    );
    // Zero chains are refused when the settings are checked.
    let err = DetectorSettings::Madfa(MadfaSettings {
        chains: 0,
        ..MadfaSettings::default()
    })
    .build()
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("at least one chain"), "{err}");
    // A floor on the calibrated draws above their ceiling is refused before any work.
    let err = DetectorSettings::Madfa(MadfaSettings {
        min_draws: 5000,
        ..MadfaSettings::default()
    })
    .build()
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("5000"), "{err}");
    // Settings written before `min_draws` existed read as today's default.
    let mut old = serde_json::to_value(MadfaSettings::default()).unwrap();
    old.as_object_mut().unwrap().remove("min_draws");
    let read: MadfaSettings = serde_json::from_value(old).unwrap();
    assert_eq!(read.min_draws, crate::madfa::CALIBRATED_MIN_DRAWS);
}

#[test]
fn an_experiment_reports_a_detector_that_does_not_apply_as_such_and_runs_the_others() {
    let trusted = images(40, 1);
    let inputs = images(10, 7);
    let truth = GroundTruth {
        is_anomalous: (0..10).map(|i| i % 3 == 0).collect(),
    };
    let device = default_device();
    let model = model(4);
    let config = experiment::DetectConfig {
        detectors: vec![
            DetectorSettings::by_name("ibd-psc").unwrap(),
            DetectorSettings::by_name("msp").unwrap(),
        ],
        thresholds: ThresholdConfig::default(),
        batch_size: 8,
        seed: 0,
    };
    let data = experiment::DetectData {
        model: &model,
        trusted: &trusted,
        sampling: &trusted,
        inputs: &inputs,
        truth: Some(&truth),
    };
    let report = experiment::run(
        &config,
        &data,
        &device,
        &mut |_: experiment::DetectProgress<'_>| {},
    )
    .unwrap();
    // The small CNN has no BatchNorm: IBD-PSC is n/a, with no number; MSP runs.
    let ibd = &report.detectors[0];
    assert!(
        ibd.no_scores.as_deref().unwrap().contains("BatchNorm"),
        "{ibd:?}"
    );
    assert!(ibd.columns.is_empty() && ibd.scores.is_empty());
    let msp = &report.detectors[1];
    assert_eq!(msp.no_scores, None);
    assert_eq!(msp.scores.len(), 10);
    assert_eq!(report.anomalous, Some(4));
    assert!(msp.columns[0].evaluation.is_some());
    let csv = report.scores_csv(&[], Some(&truth), &[]);
    assert_eq!(
        csv.lines().next().unwrap(),
        "index,path,is_anomalous,msp.msp,msp.msp.flagged"
    );
    assert_eq!(csv.lines().count(), 11);

    // With attributions (as MAD-FA gives them), the CSV names the trusted samples and the page
    // shows each flagged input beside them.
    let mut report = report;
    let msp = &mut report.detectors[1];
    let attribution = |t: usize, r: f64| crate::madfa::Attribution {
        trusted: t,
        correlation: r,
        bif: 0.0,
    };
    let most = (0..10)
        .map(|i| vec![attribution(i, 0.9), attribution(i + 1, 0.8)])
        .collect();
    let least = (0..10).map(|i| vec![attribution(i + 2, -0.5)]).collect();
    msp.scores = msp
        .scores
        .clone()
        .with_attributions(super::TrustedAttributions { most, least })
        .unwrap();
    msp.columns[0].flags = (0..10).map(|i| i < 2).collect();
    let names: Vec<String> = (0..40).map(|i| format!("t{i}.png")).collect();
    let csv = report.scores_csv(&[], Some(&truth), &names);
    let header = csv.lines().next().unwrap();
    assert!(
        header.ends_with(
            ",msp.most_attributed,msp.most_attributed_r,msp.least_attributed,msp.least_attributed_r"
        ),
        "{header}"
    );
    let row1 = csv.lines().nth(2).unwrap();
    assert!(
        row1.ends_with(",t1.png;t2.png,0.9000;0.8000,t3.png,-0.5000"),
        "{row1}"
    );
    let page = super::page::detect_page(&super::page::PageData {
        report: &report,
        inputs: &inputs,
        trusted: &trusted,
        truth: Some(&truth),
        input_names: &[],
        trusted_names: &names,
        max_shown: 24,
    })
    .unwrap();
    // Two flagged inputs, each with 1 + 2 + 1 images; ibd-psc shown as n/a.
    assert_eq!(page.matches("data:image/png;base64,").count(), 8, "{page}");
    assert!(page.contains("most attributed (msp)") && page.contains("t3.png"));
    assert!(page.contains("n/a: "));
}
