use rand::SeedableRng;

use super::*;
use crate::attack::test_data::{tiny_cnn_spec, two_class_8x8};
use crate::data::ImageShape;
use crate::data::ood_sets::uniform_noise;
use crate::detect::FittedDetector;
use crate::device::default_device;
use crate::identity::IdentityError;
use crate::models::test_util::host_seeded;

fn metrics(auroc: f64) -> OodMetrics {
    OodMetrics {
        auroc,
        aupr_in: auroc / 2.0,
        aupr_out: 1.0 - auroc,
        fpr_at_95_tpr: 0.1,
    }
}

fn set(name: &str, group: OodGroup, images: ImageSet) -> OodSet {
    OodSet {
        name: name.into(),
        group,
        images,
    }
}

fn tiny_data() -> OodBenchmarkData {
    let shape = ImageShape::new(1, 8, 8);
    OodBenchmarkData {
        id_fit: two_class_8x8(60, |i| ((i * 37) % 101) as f32 / 100.0),
        id_test: two_class_8x8(12, |i| ((i * 53) % 89) as f32 / 88.0),
        ood: vec![
            set(
                "uniform-noise",
                OodGroup::Far,
                uniform_noise(10, shape, 1).unwrap(),
            ),
            set(
                "stripes",
                OodGroup::Near,
                two_class_8x8(8, |i| ((i / 8) % 2) as f32),
            ),
        ],
        madfa_pool: None,
    }
}

fn contenders() -> Vec<Contender> {
    let device = default_device();
    (0..2)
        .map(|k| {
            let mut rng = StdRng::seed_from_u64(10 + k);
            Contender {
                name: format!("m{k}"),
                model: host_seeded(tiny_cnn_spec(), &mut rng, &device),
            }
        })
        .collect()
}

fn tiny_config() -> OodBenchmarkConfig {
    OodBenchmarkConfig {
        attack: Pgd::linf(0.3, 4),
        scores: vec![ScoreKind::Msp, ScoreKind::Energy, ScoreKind::Knn],
        adaptive: vec![ScoreKind::Msp],
        batch_size: 5,
        seed: 3,
        madfa: None,
    }
}

#[test]
fn averages_are_means_over_all_sets_and_each_group() {
    let sets = vec![
        set("a", OodGroup::Near, two_class_8x8(1, |_| 0.0)),
        set("b", OodGroup::Near, two_class_8x8(1, |_| 0.0)),
        set("c", OodGroup::Far, two_class_8x8(1, |_| 0.0)),
    ];
    let rows: Vec<OodRow> = [("a", 0.9), ("b", 0.7), ("c", 0.5)]
        .into_iter()
        .map(|(s, auroc)| OodRow {
            model: "m".into(),
            score: "msp".into(),
            setting: Setting::Clean,
            ood_set: s.into(),
            metrics: metrics(auroc),
        })
        .collect();
    let avg = averages(&rows, &sets);
    let find = |label: &str| avg.iter().find(|r| r.ood_set == label).unwrap().metrics;
    assert!((find("mean").auroc - 0.7).abs() < 1e-12);
    assert!((find("near").auroc - 0.8).abs() < 1e-12);
    assert!((find("near").aupr_out - 0.2).abs() < 1e-12);
    assert!((find("far").auroc - 0.5).abs() < 1e-12);
    // One group alone adds no group average: it would repeat the mean.
    let near_only = averages(&rows[..2], &sets);
    assert_eq!(near_only.len(), 1);
}

#[test]
fn runs_every_setting_saves_parts_and_resumes_from_them() {
    let device = default_device();
    let data = tiny_data();
    let models = contenders();
    let source = Contender {
        name: "source".into(),
        model: host_seeded(tiny_cnn_spec(), &mut StdRng::seed_from_u64(99), &device),
    };
    let config = tiny_config();
    let dir = crate::train::test_util::scratch("benchmark", "ood-resume");
    let dir = dir.as_path();
    let mut stages = Vec::new();
    let first = run(
        &config,
        &data,
        &models,
        Some(&source),
        Some(dir),
        &device,
        &mut |p: Progress<'_>| {
            if let Progress::Stage { model, stage, .. } = p {
                stages.push(format!("{model}/{stage}"));
            }
        },
    )
    .unwrap();
    assert_eq!(
        stages,
        [
            "m0/accuracy",
            "m0/uniform",
            "m0/adaptive-msp",
            "m0/transfer",
            "m1/accuracy",
            "m1/uniform",
            "m1/adaptive-msp",
            "m1/transfer"
        ]
    );
    // Rows: per model, 3 scores x 2 sets x 4 uniform settings + 1 x 2 adaptive + 3 x 2 transfer.
    assert_eq!(first.rows.len(), 2 * (24 + 2 + 6));
    assert_eq!(first.accuracy.len(), 2);
    for a in &first.accuracy {
        assert!(a.robust <= a.clean + 1e-12, "{a:?}");
    }
    // Attacking both sides through MSP itself cannot help the detector.
    for model in ["m0", "m1"] {
        let auroc = |setting| {
            first
                .averages
                .iter()
                .find(|r| {
                    r.model == model
                        && r.score == "msp"
                        && r.setting == setting
                        && r.ood_set == "mean"
                })
                .unwrap()
                .metrics
                .auroc
        };
        assert!(auroc(Setting::Adaptive) < auroc(Setting::Clean), "{model}");
        assert!(
            auroc(Setting::BothAttacked) < auroc(Setting::Clean),
            "{model}"
        );
    }
    first.save(dir).unwrap();
    let csv = std::fs::read_to_string(dir.join("rows.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + first.rows.len() + first.averages.len()
    );
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| m1 |") && md.contains("## knn"), "{md}");
    let chart = std::fs::read_to_string(dir.join("auroc-msp.svg")).unwrap();
    assert!(chart.contains("both-attacked") && chart.contains("m1"));

    // A rerun loads every stage from disk and reports the same rows.
    let mut computed = 0;
    let second = run(
        &config,
        &data,
        &models,
        Some(&source),
        Some(dir),
        &device,
        &mut |p: Progress<'_>| {
            if let Progress::Stage { .. } = p {
                computed += 1;
            }
        },
    )
    .unwrap();
    assert_eq!(computed, 0);
    assert_eq!(second.rows, first.rows);
    assert_eq!(second.accuracy, first.accuracy);

    // Other settings, or other weights under the same name, are refused.
    let refused = |config: &OodBenchmarkConfig, models: &[Contender]| {
        let err = run(
            config,
            &data,
            models,
            Some(&source),
            Some(dir),
            &device,
            &mut |_: Progress<'_>| {},
        );
        assert!(
            matches!(
                err,
                Err(BenchmarkError::Mismatch { .. })
                    | Err(BenchmarkError::Identity(IdentityError::Mismatch { .. }))
            ),
            "{err:?}"
        );
    };
    refused(
        &OodBenchmarkConfig {
            seed: 4,
            ..config.clone()
        },
        &models,
    );
    let swapped = vec![Contender {
        name: "m0".into(),
        model: models[1].model.clone(),
    }];
    refused(&config, &swapped);
}

#[test]
fn the_same_seed_gives_the_same_results_without_saving() {
    let device = default_device();
    let data = tiny_data();
    let models = &contenders()[..1];
    let config = OodBenchmarkConfig {
        adaptive: vec![],
        ..tiny_config()
    };
    let a = run(
        &config,
        &data,
        models,
        None,
        None,
        &device,
        &mut |_: Progress<'_>| {},
    )
    .unwrap();
    let b = run(
        &config,
        &data,
        models,
        None,
        None,
        &device,
        &mut |_: Progress<'_>| {},
    )
    .unwrap();
    assert_eq!(a.rows, b.rows);
    assert!(a.rows.iter().all(|r| r.setting != Setting::Transfer));
}

#[test]
fn bad_inputs_are_errors() {
    let device = default_device();
    let models = contenders();
    let config = tiny_config();
    let mut data = tiny_data();
    data.ood[0].images = uniform_noise(3, ImageShape::new(1, 4, 4), 0).unwrap();
    let err = run(
        &config,
        &data,
        &models,
        None,
        None,
        &device,
        &mut |_: Progress<'_>| {},
    );
    assert!(matches!(err, Err(BenchmarkError::Invalid(m)) if m.contains("uniform-noise")));
    let twins = vec![models[0].clone(), models[0].clone()];
    let err = run(
        &config,
        &tiny_data(),
        &twins,
        None,
        None,
        &device,
        &mut |_: Progress<'_>| {},
    );
    assert!(matches!(err, Err(BenchmarkError::Invalid(m)) if m.contains("two models")));
    let adaptive_unscored = OodBenchmarkConfig {
        adaptive: vec![ScoreKind::Odin],
        ..config
    };
    let err = run(
        &adaptive_unscored,
        &tiny_data(),
        &models,
        None,
        None,
        &device,
        &mut |_: Progress<'_>| {},
    );
    assert!(matches!(err, Err(BenchmarkError::Invalid(m)) if m.contains("odin")));
}

/// Counts the stages that start, and asks to stop once `stop_after` have.
struct StopAfterStages {
    started: usize,
    stop_after: usize,
}

impl crate::progress::Progress<Progress<'_>> for StopAfterStages {
    fn report(&mut self, p: Progress<'_>) {
        if let Progress::Stage { .. } = p {
            self.started += 1;
        }
    }

    fn should_stop(&mut self) -> bool {
        self.started >= self.stop_after
    }
}

#[test]
fn a_stopped_run_keeps_its_finished_stages_and_a_rerun_computes_only_the_rest() {
    let device = default_device();
    let data = tiny_data();
    let models = contenders();
    let config = tiny_config();
    let dir = crate::train::test_util::scratch("benchmark", "ood-stop");
    let run_in_dir = |progress: &mut StopAfterStages| {
        run(
            &config,
            &data,
            &models,
            None,
            Some(dir.as_path()),
            &device,
            progress,
        )
    };
    // Two models x (accuracy, uniform, adaptive-msp): stopped after the first two stages.
    let mut stopping = StopAfterStages {
        started: 0,
        stop_after: 2,
    };
    let stopped = run_in_dir(&mut stopping);
    assert!(
        matches!(stopped, Err(BenchmarkError::Stopped)),
        "{stopped:?}"
    );
    assert_eq!(stopping.started, 2);
    let mut rest = StopAfterStages {
        started: 0,
        stop_after: usize::MAX,
    };
    let resumed = run_in_dir(&mut rest).unwrap();
    assert_eq!(rest.started, 4);
    let fresh = run(
        &config,
        &data,
        &models,
        None,
        None,
        &device,
        &mut crate::progress::Quiet,
    )
    .unwrap();
    assert_eq!(resumed.rows, fresh.rows);
    assert_eq!(resumed.accuracy, fresh.accuracy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// MAD-FA on a quick chain, its trusted and sampling sets from a held-out pool.
fn with_madfa(adaptive_inputs: usize) -> (OodBenchmarkConfig, OodBenchmarkData) {
    use crate::detect::madfa::MadfaSettings;
    use crate::madfa::{ChainConfig, SgldConfig};
    let mut data = tiny_data();
    data.madfa_pool = Some(two_class_8x8(30, |i| ((i * 29) % 97) as f32 / 96.0));
    let config = OodBenchmarkConfig {
        madfa: Some(MadfaInOod {
            settings: MadfaSettings {
                calibrate: false,
                chain: ChainConfig {
                    sgld: SgldConfig {
                        lr: 1e-4,
                        n_beta: 10.0,
                        gamma: 100.0,
                        batch_size: 4,
                        ..SgldConfig::reference()
                    },
                    draws: 6,
                    burn_in: 1,
                    thinning: 1,
                    trace_batch_size: 16,
                    ..ChainConfig::reference()
                },
                chains: 2,
                ..MadfaSettings::default()
            },
            trusted_per_class: 4,
            sampling_per_class: 4,
            adaptive_inputs,
            adaptive_steps: 2,
            adaptive_score: crate::madfa::input_gradient::InputScore::ClcPlusClassCcc,
        }),
        adaptive: Vec::new(),
        ..tiny_config()
    };
    (config, data)
}

#[test]
fn madfa_joins_every_setting_and_its_adaptive_attack_only_helps_the_attacker() {
    let device = default_device();
    let (config, data) = with_madfa(3);
    let models = &contenders()[..1];
    let source = Contender {
        name: "source".into(),
        model: host_seeded(tiny_cnn_spec(), &mut StdRng::seed_from_u64(99), &device),
    };
    let dir = crate::train::test_util::scratch("benchmark", "ood-madfa");
    let quiet = &mut |_: Progress<'_>| {};
    let report = run(
        &config,
        &data,
        models,
        Some(&source),
        Some(&dir),
        &device,
        quiet,
    )
    .unwrap();
    let madfa_rows = |score: &str, setting: Setting| {
        report
            .rows
            .iter()
            .filter(|r| r.score == score && r.setting == setting)
            .count()
    };
    // Every MAD-FA column in the five walked settings, against both OOD sets.
    for name in madfa::score_names() {
        for setting in [
            Setting::Clean,
            Setting::IdAttacked,
            Setting::OodAttacked,
            Setting::BothAttacked,
            Setting::Transfer,
        ] {
            assert_eq!(madfa_rows(&name, setting), 2, "{name} {setting:?}");
        }
    }
    // The adaptive attack aims at the recommended score alone.
    let recommended = madfa::score_name(crate::madfa::scores::RECOMMENDED_SCORE);
    assert_eq!(madfa_rows(&recommended, Setting::Adaptive), 2);
    assert_eq!(
        report
            .rows
            .iter()
            .filter(|r| r.setting == Setting::Adaptive)
            .count(),
        2
    );
    // Raising ID scores and lowering OOD ones, keeping the start when nothing beats it, cannot
    // raise the AUROC; the adaptive rows are the "after" side of the same measurement.
    assert_eq!(report.madfa_adaptive.len(), 2);
    for a in &report.madfa_adaptive {
        assert_eq!((a.id_inputs, a.ood_inputs), (3, 3));
        assert!(a.auroc_after <= a.auroc_before + 1e-12, "{a:?}");
        let row = report
            .rows
            .iter()
            .find(|r| {
                r.score == recommended && r.setting == Setting::Adaptive && r.ood_set == a.ood_set
            })
            .unwrap();
        assert!((row.metrics.auroc - a.auroc_after).abs() < 1e-12);
    }
    // The clean rows are the detector's own scores of the ID and OOD sets.
    let fitted = config
        .madfa
        .as_ref()
        .unwrap()
        .fit(
            &models[0].model,
            data.madfa_pool.as_ref().unwrap(),
            5,
            3,
            &device,
        )
        .unwrap();
    let id = fitted
        .score(&models[0].model, &data.id_test, &device)
        .unwrap();
    let ood = fitted
        .score(&models[0].model, &data.ood[0].images, &device)
        .unwrap();
    let column = crate::madfa::scores::RECOMMENDED_SCORE;
    let expected = evaluate(id.column(column).unwrap(), ood.column(column).unwrap()).unwrap();
    let clean = report
        .rows
        .iter()
        .find(|r| {
            r.score == recommended && r.setting == Setting::Clean && r.ood_set == data.ood[0].name
        })
        .unwrap();
    assert_eq!(clean.metrics, expected);
    // Resuming loads every MAD-FA part, the adaptive rows included.
    let again = run(
        &config,
        &data,
        models,
        Some(&source),
        Some(&dir),
        &device,
        quiet,
    )
    .unwrap();
    assert_eq!(again.rows, report.rows);
    assert_eq!(again.madfa_adaptive, report.madfa_adaptive);
    // The report names MAD-FA's scores in its tables and charts.
    assert!(report.to_markdown().contains("## MAD-FA"));
    assert!(report.score_names().contains(&recommended));
    report.auroc_chart(&recommended).unwrap();
}

#[test]
fn madfa_adaptive_attack_aims_at_the_configured_score() {
    use crate::madfa::input_gradient::InputScore;
    let device = default_device();
    let (mut config, data) = with_madfa(2);
    if let Some(m) = config.madfa.as_mut() {
        m.adaptive_score = InputScore::NearestCorr;
    }
    let models = &contenders()[..1];
    let quiet = &mut |_: Progress<'_>| {};
    let report = run(&config, &data, models, None, None, &device, quiet).unwrap();
    let nearest = madfa::score_name("nearest_corr");
    let adaptive: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.setting == Setting::Adaptive)
        .collect();
    assert_eq!(adaptive.len(), 2);
    assert!(adaptive.iter().all(|r| r.score == nearest), "{adaptive:?}");
    assert_eq!(report.madfa_adaptive.len(), 2);
    for a in &report.madfa_adaptive {
        assert_eq!(a.score, "nearest_corr");
        assert!(a.auroc_after <= a.auroc_before + 1e-12, "{a:?}");
    }
    assert!(
        report
            .to_markdown()
            .contains("the score madfa-nearest-corr attacked")
    );
    // Settings saved before the score was a setting attacked the recommended one.
    let mut saved = serde_json::to_value(config.madfa.as_ref().unwrap()).unwrap();
    saved.as_object_mut().unwrap().remove("adaptive_score");
    let old: MadfaInOod = serde_json::from_value(saved).unwrap();
    assert_eq!(old.adaptive_score, InputScore::ClcPlusClassCcc);
}

#[test]
fn madfa_refuses_to_run_without_held_out_images() {
    let device = default_device();
    let (config, mut data) = with_madfa(0);
    let models = &contenders()[..1];
    let refusal = |data: &OodBenchmarkData| {
        let quiet = &mut |_: Progress<'_>| {};
        run(&config, data, models, None, None, &device, quiet)
            .unwrap_err()
            .to_string()
    };
    data.madfa_pool = None;
    let err = refusal(&data);
    assert!(err.contains("outside the ID test set"), "{err}");
    // A pool too small for the per-class sizes is refused with the sizes to change.
    data.madfa_pool = Some(two_class_8x8(2, |i| i as f32 / 4.0));
    let err = refusal(&data);
    assert!(err.contains("--id-limit"), "{err}");
}
