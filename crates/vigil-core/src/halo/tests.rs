use std::path::Path;

use burn::tensor::TensorData;

use super::*;
use crate::attack::test_data::{tiny_cnn_spec, two_class_8x8};
use crate::device::default_device;
use crate::loss::cross_entropy_per_sample;
use crate::train::test_util::{StopAfter, Tensors, model_tensors, scratch, tiny_config};
use crate::train::{TrainOutcome, TrainState, load_resume, run};

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn model(seed: u64) -> Classifier {
    let mut rng = StdRng::seed_from_u64(seed);
    crate::models::test_util::host_seeded(tiny_cnn_spec(), &mut rng, &default_device().autodiff())
}

/// `n` 8x8 images from a seeded host RNG, on the autodiff device.
fn images(n: usize, seed: u64) -> Tensor<4> {
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(seed);
    let pixels: Vec<f32> = (0..n * 64).map(|_| rng.random::<f32>()).collect();
    Tensor::from_data(
        TensorData::new(pixels, [n, 1, 8, 8]),
        &default_device().autodiff(),
    )
}

fn labels(n: usize) -> Tensor<1, Int> {
    let y: Vec<i64> = (0..n as i64).map(|i| i % 2).collect();
    Tensor::from_data(TensorData::new(y, [n]), &default_device().autodiff())
}

fn config(objective: Objective, eps: f64) -> HaloConfig {
    HaloConfig {
        eps,
        steps: 3,
        ..HaloConfig::reference_defaults(objective)
    }
}

#[test]
fn helper_inputs_double_the_perturbation_and_clip_unless_told_not_to() {
    let t =
        |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, 1, 3]), &default_device());
    let x = t(vec![0.5, 0.9, 0.1]);
    let adv = t(vec![0.6, 0.97, 0.04]);
    let clipped = host(helper_inputs(x.clone(), adv.clone(), true));
    let unclipped = host(helper_inputs(x, adv, false));
    for (got, want) in clipped.iter().zip([0.7, 1.0, 0.0]) {
        assert!((got - want).abs() < 1e-6, "{clipped:?}");
    }
    for (got, want) in unclipped.iter().zip([0.7, 1.04, -0.02]) {
        assert!((got - want).abs() < 1e-6, "{unclipped:?}");
    }
}

#[test]
fn the_total_is_the_weighted_sum_of_its_terms() {
    let f = model(1);
    let g = model(2);
    let (x, y, oe) = (images(6, 3), labels(6), images(6, 4));
    let cfg = HaloConfig {
        beta: 3.0,
        gamma: 0.5,
        eta: 2.0,
        ..config(Objective::Halo, 0.1)
    };
    let mut rng = StdRng::seed_from_u64(0);
    let terms = objective_loss(&f, Some(&g), x, y, Some(oe), &cfg, &mut rng).unwrap();
    let expected =
        terms.cross_entropy + 2.0 * terms.outlier + 3.0 * terms.adversarial + 0.5 * terms.helper;
    let total = scalar(&terms.total);
    assert!(
        (total - expected).abs() < 1e-5 * expected.abs().max(1.0),
        "{total} vs {expected}"
    );
    assert!(terms.outlier > 0.0 && terms.adversarial > 0.0 && terms.helper > 0.0);
}

#[test]
fn the_ladder_adds_terms_one_by_one() {
    let f = model(1);
    let g = model(2);
    let (x, y, oe) = (images(6, 3), labels(6), images(6, 4));
    // Plain CE and CE to uniform of the same batch, computed independently.
    let logits = f.forward(x.clone(), BnMode::Train);
    let ce = host(cross_entropy_per_sample(logits, y.clone()));
    let ce = f64::from(ce.iter().sum::<f32>()) / 6.0;
    let z_oe = host(f.forward(oe.clone(), BnMode::Train));
    let to_uniform = z_oe
        .chunks(2)
        .map(|z| {
            let (a, b) = (f64::from(z[0]), f64::from(z[1]));
            let m = a.max(b);
            m + ((a - m).exp() + (b - m).exp()).ln() - (a + b) / 2.0
        })
        .sum::<f64>()
        / 6.0;
    for objective in Objective::ALL {
        let mut rng = StdRng::seed_from_u64(0);
        let terms = objective_loss(
            &f,
            Some(&g),
            x.clone(),
            y.clone(),
            Some(oe.clone()),
            &config(objective, 0.1),
            &mut rng,
        )
        .unwrap();
        assert!((terms.cross_entropy - ce).abs() < 1e-5, "{objective:?}");
        let want_oe = if objective.uses_outliers() {
            to_uniform
        } else {
            0.0
        };
        assert!(
            (terms.outlier - want_oe).abs() < 1e-5,
            "{objective:?}: {} vs {want_oe}",
            terms.outlier
        );
        assert_eq!(
            terms.adversarial > 0.0,
            objective.is_adversarial(),
            "{objective:?}"
        );
        assert_eq!(terms.helper > 0.0, objective.uses_helper(), "{objective:?}");
    }
}

#[test]
fn with_a_zero_radius_the_kl_term_vanishes_and_the_helper_labels_the_clean_images() {
    let f = model(1);
    let (x, y, oe) = (images(6, 3), labels(6), images(6, 4));
    let mut rng = StdRng::seed_from_u64(0);
    // The model as its own helper: at eps 0, L_help is the CE of its own clean predictions.
    let helper = frozen(&f, &default_device().autodiff());
    let terms = objective_loss(
        &f,
        Some(&helper),
        x.clone(),
        y,
        Some(oe),
        &config(Objective::Halo, 0.0),
        &mut rng,
    )
    .unwrap();
    assert!(terms.adversarial.abs() < 1e-6, "{}", terms.adversarial);
    let logits = f.forward(x, BnMode::Eval);
    let own = predictions(logits.clone());
    let expected = host(cross_entropy_per_sample(logits, own))
        .iter()
        .sum::<f32>()
        / 6.0;
    assert!(
        (terms.helper - f64::from(expected)).abs() < 1e-5,
        "{} vs {expected}",
        terms.helper
    );
}

#[test]
fn missing_outliers_or_helper_are_errors() {
    let f = model(1);
    let (x, y) = (images(4, 3), labels(4));
    let mut rng = StdRng::seed_from_u64(0);
    let no_oe = objective_loss(
        &f,
        None,
        x.clone(),
        y.clone(),
        None,
        &config(Objective::Oe, 0.1),
        &mut rng,
    );
    assert!(matches!(no_oe, Err(HaloError::Missing { .. })));
    let oe = Some(images(4, 4));
    let no_helper = objective_loss(
        &f,
        None,
        x.clone(),
        y.clone(),
        oe,
        &config(Objective::Halo, 0.1),
        &mut rng,
    );
    assert!(matches!(no_helper, Err(HaloError::Missing { .. })));
    // STD and TRADES need neither.
    for objective in [Objective::Std, Objective::Trades] {
        assert!(
            objective_loss(
                &f,
                None,
                x.clone(),
                y.clone(),
                None,
                &config(objective, 0.1),
                &mut rng
            )
            .is_ok()
        );
    }
    let bad = HaloConfig {
        beta: -1.0,
        ..config(Objective::Trades, 0.1)
    };
    assert!(bad.validate().is_err());
    let bad = HaloConfig {
        steps: 0,
        ..config(Objective::Trades, 0.1)
    };
    assert!(bad.validate().is_err());
}

// ----- Training under the one loop, with exact resume -----

/// Trains HALO on tiny data in `dir`, stopping once after `stop_after` batches and resuming from
/// the files when that is given; returns every tensor of the model and the run's state.
fn train_halo(dir: &Path, stop_after: Option<usize>) -> (Tensors, TrainState) {
    train_halo_with(dir, stop_after, false)
}

/// [`train_halo`], with a weight average when `average` is set.
fn train_halo_with(dir: &Path, stop_after: Option<usize>, average: bool) -> (Tensors, TrainState) {
    let device = default_device();
    let train = two_class_8x8(20, |i| ((i * 37) % 101) as f32 / 100.0);
    let outliers = two_class_8x8(14, |i| ((i * 53) % 97) as f32 / 96.0);
    let validation = two_class_8x8(6, |i| ((i * 29) % 89) as f32 / 88.0);
    let helper = model(7);
    let tc = tiny_config(2, 8);
    let cfg = HaloConfig {
        steps: 2,
        weight_average: average,
        ..HaloConfig::reference_defaults(Objective::Halo)
    };
    let mut classifier = model(1);
    let mut slots = ParamSlots::new();
    let mut state = TrainState::new(tc.clone());
    let mut observer = StopAfter::new(stop_after);
    loop {
        let mut rule = RobustStep::new(
            &train,
            Some(&outliers),
            Some(helper.clone()),
            Some(&validation),
            &tc,
            cfg,
            state.step,
        )
        .unwrap();
        rule.resume_weight_average(dir, state.step).unwrap();
        let outcome = run(
            &mut classifier,
            &mut slots,
            &mut state,
            train.len(),
            &validation,
            dir,
            &device,
            &mut observer,
            &mut rule,
        )
        .unwrap();
        if outcome == TrainOutcome::Finished {
            break;
        }
        (classifier, slots, state) = load_resume(dir, &device).unwrap();
    }
    (model_tensors(&classifier), state)
}

#[test]
fn halo_training_resumes_bit_for_bit_and_keeps_the_best_validated_epoch() {
    // 20 images in batches of 8: 3 batches per epoch; stop mid-epoch and at an epoch's end.
    let straight = scratch("halo", "straight");
    let (expected, state) = train_halo(&straight, None);
    assert_eq!(state.history.len(), 2);
    assert!(
        state
            .history
            .iter()
            .all(|r| r.validation_loss.is_some_and(f64::is_finite))
    );
    let (best_epoch, best_loss) = state.best_epoch().expect("a best epoch");
    let lowest = state
        .history
        .iter()
        .map(|r| r.validation_loss.unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(best_loss, lowest);
    assert!(straight.join(crate::train::files::BEST).exists());
    assert!(best_epoch == 1 || best_epoch == 2);
    for stop in [2, 3] {
        let dir = scratch("halo", &format!("stop{stop}"));
        let (got, resumed) = train_halo(&dir, Some(stop));
        assert_eq!(
            got, expected,
            "model differs after stopping at batch {stop}"
        );
        assert_eq!(resumed.best_epoch(), state.best_epoch());
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::remove_dir_all(&straight).unwrap();
}

#[test]
fn a_weight_average_is_evaluated_kept_and_resumed_bit_for_bit() {
    use crate::checkpoint::TensorFile;
    use crate::train::files::{AVERAGE, BEST};
    let tensors = |path: &Path| TensorFile::load(path).unwrap().tensors;
    let straight = scratch("halo", "average-straight");
    let (live, state) = train_halo_with(&straight, None, true);
    let average = tensors(&straight.join(AVERAGE));
    let live_file = tensors(&straight.join(crate::train::files::MODEL));
    assert_ne!(
        average, live_file,
        "the average must differ from the live weights"
    );
    // The epoch kept as best is the averaged model of that epoch.
    if state.best_epoch().map(|(e, _)| e) == Some(2) {
        assert_eq!(tensors(&straight.join(BEST)), average);
    }
    // Without averaging, the same seed trains the same live weights: averaging only watches.
    let plain = scratch("halo", "average-plain");
    let (plain_live, _) = train_halo_with(&plain, None, false);
    assert_eq!(plain_live, live);
    for stop in [2, 3] {
        let dir = scratch("halo", &format!("average-stop{stop}"));
        let (got, _) = train_halo_with(&dir, Some(stop), true);
        assert_eq!(
            got, live,
            "live weights differ after stopping at batch {stop}"
        );
        assert_eq!(
            tensors(&dir.join(AVERAGE)),
            average,
            "average differs after stop {stop}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::remove_dir_all(&straight).unwrap();
    std::fs::remove_dir_all(&plain).unwrap();
}
