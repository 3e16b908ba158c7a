//! Adversarial records: a trained model's test images attacked at inference time by PGD, and
//! written as an attack record ([`super::backdoor::record`]), so that everything that detects
//! backdoors reads them the same way (`vigil detect --record`, `vigil benchmark backdoor`, the
//! detector page): the record's "triggered" test set is the adversarial one.
//!
//! What is attacked: every test image the model classifies correctly (and, for a targeted attack,
//! whose class is not the target), by [`Pgd`] through the frozen model: untargeted, the
//! cross-entropy of the true label pushed up; targeted, the cross-entropy of the target pushed
//! down. What is kept: the **successful** adversarial images only (untargeted: the model no longer
//! predicts the true label; targeted: it predicts the target), each labelled with the class it
//! now receives. So the record's test set holds exactly the inputs an attack turned into wrong
//! decisions, as a backdoor record's successful triggers are the ones detection scores; the
//! attack's success rate over all attempted images is in `results.json`. Nothing is trained: the
//! record's `model.safetensors` is the attacked model itself, and `attack.json` says `pgd`, its
//! settings, and the target rule (`untargeted` or all-to-one).
//!
//! Random starts draw from a stream of `(seed, batch)`, so a record is reproducible for one batch
//! size.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::backdoor::TriggeredTestSet;
use super::backdoor::record::{self, AttackManifest, AttackResults, RecordError, files};
use super::experiment::{record_files, write_examples};
use super::pgd::{Pgd, PgdError, frozen, objective};
use crate::checkpoint::{self, CheckpointError};
use crate::data::{DatasetKind, ImageSet, Label, batch};
use crate::inference::evaluate;
use crate::io::{IoError, check_outputs};
use crate::models::{BnMode, Classifier};
use crate::progress::Progress;
use crate::train::files as run_files;
use crate::train::mix;

/// The attack's name in `attack.json`.
pub const NAME: &str = "pgd";

/// Errors of an adversarial record.
#[derive(Debug, thiserror::Error)]
pub enum AdversarialError {
    /// The PGD settings cannot work.
    #[error(transparent)]
    Pgd(#[from] PgdError),
    /// The settings do not fit the model or the data.
    #[error("{0}")]
    Invalid(String),
    /// The model could not be written into the record.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A record file could not be written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// An output would replace an input, or cannot be written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The record folder cannot be created.
    #[error("creating {}", .path.display())]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The examples image cannot be drawn.
    #[error(transparent)]
    Examples(#[from] super::experiment::AttackRunError),
    /// The caller's progress asked to stop; nothing was written.
    #[error("stopped before every batch was attacked")]
    Stopped,
}

/// What to attack with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdversarialConfig {
    /// The attack (its ball, step size, steps, start and kept iterate).
    pub pgd: Pgd,
    /// `None`: untargeted (any class but the true one); `Some(t)`: every image pushed to `t`.
    pub target: Option<Label>,
    /// Seed of the random starts.
    pub seed: u64,
    /// Images attacked at once.
    pub batch_size: usize,
}

/// The attacked test set.
#[derive(Debug, Clone)]
pub struct AdversarialSet {
    /// The successful adversarial images, each labelled with the class the model now gives it,
    /// with the index and true label of its clean original.
    pub set: TriggeredTestSet,
    /// Images attacked: correctly classified, and not of the target class.
    pub attempted: usize,
    /// Test images the model classifies correctly.
    pub clean_correct: usize,
}

impl AdversarialSet {
    /// Fraction of the attempted images the attack succeeded on (0 if none was attempted).
    pub fn success_rate(&self) -> f64 {
        if self.attempted == 0 {
            0.0
        } else {
            self.set.images.len() as f64 / self.attempted as f64
        }
    }
}

/// Progress of [`adversarial_test_set`]: images attacked so far, of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attacked {
    /// Images attacked so far.
    pub done: usize,
    /// Images to attack.
    pub total: usize,
}

/// Attacks the images of `test` that `classifier` gets right (see the module notes) and keeps the
/// successful ones. `progress` hears after every batch and may stop the attack
/// ([`AdversarialError::Stopped`]).
pub fn adversarial_test_set(
    classifier: &Classifier,
    test: &ImageSet,
    config: &AdversarialConfig,
    device: &Device,
    progress: &mut dyn Progress<Attacked>,
) -> Result<AdversarialSet, AdversarialError> {
    check_config(config, classifier, test)?;
    let clean = evaluate(
        classifier,
        test,
        None,
        config.batch_size,
        BnMode::Eval,
        device,
    );
    let correct: Vec<usize> = (0..test.len())
        .filter(|&i| clean.predicted[i] == clean.labels[i])
        .collect();
    let attempted: Vec<usize> = correct
        .iter()
        .copied()
        .filter(|&i| config.target != Some(test.label(i)))
        .collect();

    let attacker = frozen(classifier, device);
    let attacker = &attacker;
    let autodiff = device.clone().autodiff();
    let model = classifier.for_inference();
    let per_image = test.shape().num_values();
    let (mut pixels, mut reached, mut originals, mut true_labels) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut done = 0;
    for (b, chunk) in attempted.chunks(config.batch_size).enumerate() {
        if progress.should_stop() {
            return Err(AdversarialError::Stopped);
        }
        let inputs = batch(test, chunk, device);
        let mut rng = StdRng::seed_from_u64(mix(config.seed, b as u64, 0));
        let adversarial = match config.target {
            None => config.pgd.attack(
                inputs.images,
                objective::cross_entropy(attacker, inputs.labels.to_device(&autodiff)),
                &mut rng,
            )?,
            Some(target) => config.pgd.attack(
                inputs.images,
                objective::towards_class(
                    attacker,
                    crate::data::labels_tensor(&vec![target; chunk.len()], &autodiff),
                ),
                &mut rng,
            )?,
        };
        let predicted: Vec<Label> = model
            .forward(adversarial.clone(), BnMode::Eval)
            .argmax(1)
            .into_data()
            .iter::<i64>()
            .map(|p| p as Label)
            .collect();
        let values: Vec<f32> = adversarial.into_data().iter::<f32>().collect();
        for ((&i, image), &p) in chunk
            .iter()
            .zip(values.chunks_exact(per_image))
            .zip(&predicted)
        {
            let success = match config.target {
                None => p != test.label(i),
                Some(target) => p == target,
            };
            if success {
                pixels.extend_from_slice(image);
                reached.push(p);
                originals.push(i);
                true_labels.push(test.label(i));
            }
        }
        done += chunk.len();
        progress.report(Attacked {
            done,
            total: attempted.len(),
        });
    }
    let images = ImageSet::new(
        pixels,
        reached,
        test.shape(),
        test.class_names().to_vec(),
        format!("{} under {}", test.source(), describe(config)),
    )
    .map_err(|e| AdversarialError::Invalid(e.to_string()))?;
    Ok(AdversarialSet {
        set: TriggeredTestSet {
            mechanisms: vec![0; images.len()],
            images,
            original_indices: originals,
            original_labels: true_labels,
        },
        attempted: attempted.len(),
        clean_correct: correct.len(),
    })
}

/// The attack in words, e.g. `untargeted L-inf PGD, eps 0.0314, 10 steps`.
pub fn describe(config: &AdversarialConfig) -> String {
    let goal = match config.target {
        None => "untargeted".to_string(),
        Some(t) => format!("targeted (class {t})"),
    };
    let norm = match config.pgd.norm {
        super::pgd::Norm::Linf => "L-inf",
        super::pgd::Norm::L2 => "L2",
    };
    format!(
        "{goal} {norm} PGD, eps {:.4}, {} steps",
        config.pgd.eps, config.pgd.steps
    )
}

fn check_config(
    config: &AdversarialConfig,
    classifier: &Classifier,
    test: &ImageSet,
) -> Result<(), AdversarialError> {
    config.pgd.validate()?;
    if config.batch_size == 0 {
        return Err(AdversarialError::Invalid(
            "the batch size must be at least 1".into(),
        ));
    }
    let classes = classifier.spec.num_classes();
    if let Some(target) = config.target
        && usize::from(target) >= classes
    {
        return Err(AdversarialError::Invalid(format!(
            "target class {target} does not exist: the model has {classes} classes"
        )));
    }
    // Stricter than fitting the model: the kept images are labelled with the class the model
    // gives them, so the set must name every class the model can predict.
    if test.class_names().len() != classes {
        return Err(AdversarialError::Invalid(format!(
            "the model has {classes} classes, {} has {}",
            test.source(),
            test.class_names().len()
        )));
    }
    test.check_model_input(classifier.spec.input_shape, classes)
        .map_err(|e| AdversarialError::Invalid(e.to_string()))?;
    Ok(())
}

/// What [`write_adversarial_record`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdversarialReport {
    /// The record's `attack.json`.
    pub attack: AttackManifest,
    /// Its `results.json`: the model's clean accuracy, the attack's success rate over the
    /// attempted images, and the sizes.
    pub results: AttackResults,
    /// Images attacked.
    pub attempted: usize,
    /// Seconds the attack took.
    pub seconds: f64,
}

/// The model an adversarial record attacks, and its data.
#[derive(Debug, Clone, Copy)]
pub struct AttackedModel<'a> {
    /// The model file (recorded in `attack.json`; never written to).
    pub file: &'a Path,
    /// The model loaded from it.
    pub classifier: &'a Classifier,
    /// The dataset whose clean test split `test` is (detection reloads it from the record).
    pub dataset: DatasetKind,
    /// That clean test split.
    pub test: &'a ImageSet,
}

/// Attacks the model's test set and writes the record folder `out`: `model.safetensors` (the
/// model, rewritten with its spec), `attack.json`, `backdoor_test.*` (the successful adversarial
/// images), `examples.png` and `results.json` (written last: a folder without it is unfinished).
/// A folder holding another attack's record is refused; this attack's own is rewritten
/// (identically for the same settings).
pub fn write_adversarial_record(
    out: &Path,
    model: AttackedModel<'_>,
    config: &AdversarialConfig,
    device: &Device,
    progress: &mut dyn Progress<Attacked>,
) -> Result<AdversarialReport, AdversarialError> {
    let AttackedModel {
        file: model_file,
        classifier,
        dataset,
        test,
    } = model;
    check_outputs([model_file], record_files(out))?;
    if out.join(files::MANIFEST).exists() {
        let existing: AttackManifest = record::read_json(out, files::MANIFEST)?;
        if existing.attack != NAME {
            return Err(AdversarialError::Invalid(format!(
                "{} holds a record of the {} attack: choose another output folder",
                out.display(),
                existing.attack
            )));
        }
    }
    let started = std::time::Instant::now();
    let attacked = adversarial_test_set(classifier, test, config, device, progress)?;
    std::fs::create_dir_all(out).map_err(|source| AdversarialError::CreateDir {
        path: out.to_path_buf(),
        source,
    })?;
    // Results go last: a folder with results.json is a finished record.
    let _ = std::fs::remove_file(out.join(files::RESULTS));
    checkpoint::save_classifier(&out.join(run_files::MODEL), classifier, None)?;
    let manifest = AttackManifest {
        attack: NAME.into(),
        params: serde_json::json!({
            "pgd": config.pgd,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "model": model_file,
        }),
        rule: match config.target {
            None => super::backdoor::TargetRule::Untargeted,
            Some(target) => super::backdoor::TargetRule::AllToOne { target },
        },
        rate: 0.0,
        seed: config.seed,
        dataset: dataset.to_string(),
        vigil_version: env!("CARGO_PKG_VERSION").into(),
        second: None,
    };
    record::write_json(out, files::MANIFEST, &manifest)?;
    record::write_backdoor_test(out, &attacked.set)?;
    if !attacked.set.images.is_empty() {
        write_examples(
            &out.join(files::EXAMPLES),
            test,
            &attacked.set.images,
            &attacked.set.original_indices,
        )?;
    }
    let results = AttackResults {
        clean_accuracy: attacked.clean_correct as f64 / test.len().max(1) as f64,
        attack_success_rate: attacked.success_rate(),
        clean_test_size: test.len(),
        backdoor_test_size: attacked.set.images.len(),
        poisoned_samples: 0,
        noise_samples: 0,
        epochs: 0,
        train_seconds: 0.0,
        mechanism_success_rates: Vec::new(),
    };
    record::write_json(out, files::RESULTS, &results)?;
    Ok(AdversarialReport {
        attack: manifest,
        results,
        attempted: attacked.attempted,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::pgd::RandomStart;
    use crate::detect::test_models::{corner_images, corner_trigger_model};
    use crate::device::default_device;
    use crate::madfa::{SplitSizes, backdoor_task};
    use crate::progress::Quiet;

    // The corner model's logits are [1, 10 relu(m - 0.5)], m the image's top-left pixel (the
    // other pixels 0): class 1 wins when m > 0.6, and only m moves the logits. Labels alternate
    // 0, 1. Images 0 and 2 (class 0, m 0.55) are right and 0.05 from the boundary; 1 and 3
    // (class 1, m 0.9) are right and 0.3 from it; 4 (class 0, m 0.2) is right but its gradient
    // is zero (the hidden unit is off) unless m rises past 0.5; 5 (class 1, m 0.3) is wrong. The
    // attacks start at the clean image, so the steps are known exactly: 2.5 eps / 5 each, along
    // the sign of the gradient of m alone.
    const CORNERS: [f32; 6] = [0.55, 0.9, 0.55, 0.9, 0.2, 0.3];

    fn config(eps: f64, target: Option<Label>) -> AdversarialConfig {
        AdversarialConfig {
            pgd: Pgd {
                start: RandomStart::None,
                ..Pgd::linf(eps, 5)
            },
            target,
            seed: 1,
            batch_size: 4,
        }
    }

    fn attack(eps: f64, target: Option<Label>) -> AdversarialSet {
        let device = default_device();
        adversarial_test_set(
            &corner_trigger_model(),
            &corner_images(&CORNERS, 0.0),
            &config(eps, target),
            &device,
            &mut Quiet,
        )
        .unwrap()
    }

    #[test]
    fn untargeted_keeps_exactly_the_images_the_ball_can_carry_across_the_boundary() {
        let test = corner_images(&CORNERS, 0.0);
        let small = attack(0.1, None);
        assert_eq!((small.clean_correct, small.attempted), (5, 5));
        assert_eq!(small.set.original_indices, vec![0, 2]);
        assert_eq!(small.set.original_labels, vec![0, 0]);
        assert_eq!(
            small.set.images.labels(),
            &[1, 1],
            "labelled with the class reached"
        );
        assert!((small.success_rate() - 0.4).abs() < 1e-12);
        for (k, &i) in small.set.original_indices.iter().enumerate() {
            let moved = small
                .set
                .images
                .image(k)
                .iter()
                .zip(test.image(i))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(moved <= 0.1 + 1e-6, "inside the ball: {moved}");
        }
        // 0.35 also carries the class-1 images (m 0.9) below 0.6.
        let large = attack(0.35, None);
        assert_eq!(large.set.original_indices, vec![0, 1, 2, 3]);
        assert_eq!(large.set.images.labels(), &[1, 0, 1, 0]);
    }

    #[test]
    fn targeted_attacks_only_other_classes_and_keeps_images_reaching_the_target() {
        let to_zero = attack(0.35, Some(0));
        assert_eq!(to_zero.attempted, 2, "the right class-1 images");
        assert_eq!(to_zero.set.original_indices, vec![1, 3]);
        assert_eq!(to_zero.set.images.labels(), &[0, 0]);
        let to_one = attack(0.1, Some(1));
        assert_eq!(to_one.attempted, 3, "the right class-0 images");
        assert_eq!(to_one.set.original_indices, vec![0, 2]);
        assert!(attack(0.1, Some(0)).set.images.is_empty());
    }

    #[test]
    fn the_same_seed_gives_the_same_images_and_a_zero_radius_succeeds_nowhere() {
        let device = default_device();
        let random_start = |seed: u64| {
            let config = AdversarialConfig {
                pgd: Pgd::linf(0.35, 5),
                seed,
                ..config(0.35, None)
            };
            let test = corner_images(&CORNERS, 0.0);
            adversarial_test_set(&corner_trigger_model(), &test, &config, &device, &mut Quiet)
                .unwrap()
        };
        let (a, b, c) = (random_start(1), random_start(1), random_start(2));
        assert_eq!(a.set.images.pixels(), b.set.images.pixels());
        assert_ne!(a.set.images.pixels(), c.set.images.pixels());
        let zero = attack(0.0, None);
        assert!(zero.set.images.is_empty());
        assert_eq!(zero.success_rate(), 0.0);
    }

    #[test]
    fn bad_settings_are_refused_before_any_work() {
        let device = default_device();
        let model = corner_trigger_model();
        let test = corner_images(&CORNERS, 0.0);
        for (bad, needle) in [
            (
                AdversarialConfig {
                    batch_size: 0,
                    ..config(0.1, None)
                },
                "batch size",
            ),
            (config(0.1, Some(2)), "target class 2"),
            (config(f64::NAN, None), "eps"),
        ] {
            let e = adversarial_test_set(&model, &test, &bad, &device, &mut Quiet)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
        let three = ImageSet::new(
            vec![0.5; 2 * 64],
            vec![0, 2],
            test.shape(),
            vec!["a".into(), "b".into(), "c".into()],
            "three classes",
        )
        .unwrap();
        let e = adversarial_test_set(&model, &three, &config(0.1, None), &device, &mut Quiet)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the model has 2 classes"), "{e}");
    }

    #[test]
    fn a_written_record_reads_back_as_a_detection_task_of_clean_and_adversarial_inputs() {
        let device = default_device();
        let dir = crate::train::test_util::scratch("adversarial", "record");
        let model = corner_trigger_model();
        let model_file = dir.join("source.safetensors");
        checkpoint::save_classifier(&model_file, &model, None).unwrap();
        // Twelve images, two per class and part: trusted, sampling and test.
        let corners: Vec<f32> = CORNERS[..4].iter().cycle().take(12).copied().collect();
        let test = corner_images(&corners, 0.0);
        let out = dir.join("record");
        let attacked = AttackedModel {
            file: &model_file,
            classifier: &model,
            dataset: DatasetKind::FashionMnist,
            test: &test,
        };
        let report =
            write_adversarial_record(&out, attacked, &config(0.1, None), &device, &mut Quiet)
                .unwrap();
        assert_eq!(report.attack.attack, NAME);
        assert_eq!(
            report.attack.rule,
            crate::attack::backdoor::TargetRule::Untargeted
        );
        assert_eq!(
            report.results.backdoor_test_size, 6,
            "every class-0 image flips"
        );
        assert!((report.results.attack_success_rate - 0.5).abs() < 1e-12);
        assert_eq!(report.results.clean_accuracy, 1.0);
        let back = record::read_backdoor_test(&out).unwrap();
        assert_eq!(back.images.len(), 6);
        let loaded = checkpoint::load_classifier(&out.join(run_files::MODEL), &device).unwrap();
        // The reference split over the record: each adversarial copy of a test-part image is an
        // anomalous input, kept since it fools the record's model.
        let sizes = SplitSizes {
            trusted: 2,
            sampling: 2,
            test: 2,
        };
        let (task, summary) = backdoor_task(&loaded, &test, &back, sizes, 0, 16, &device).unwrap();
        assert_eq!(summary.clean_test, (4, 4));
        assert_eq!(
            summary.triggered_test,
            (2, 2),
            "the test part's two class-0 images"
        );
        let flags = task.test_is_anomalous.unwrap();
        assert_eq!(flags, vec![false, false, false, false, true, true]);
        // Another attack's record is not overwritten.
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let manifest = AttackManifest {
            attack: "badnets".into(),
            ..report.attack.clone()
        };
        record::write_json(&other, files::MANIFEST, &manifest).unwrap();
        let e = write_adversarial_record(&other, attacked, &config(0.1, None), &device, &mut Quiet)
            .unwrap_err();
        assert!(e.to_string().contains("badnets"), "{e}");
        assert!(!other.join(files::RESULTS).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
