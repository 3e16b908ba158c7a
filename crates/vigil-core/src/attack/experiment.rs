//! A whole backdoor experiment as one call: mount the attack, write its record, train the
//! backdoored model and measure it ([`run_attack`]); what `vigil attack` runs.
//!
//! The record's files are listed in [`record`]; the training run shares the folder
//! ([`crate::train`]). A record is resumable like any run: calling again with the same
//! configuration continues an interrupted training, and a finished one is measured again.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::backdoor::record::{
    self, AttackManifest, AttackResults, RecordError, SecondBackdoorManifest, files,
};
use super::backdoor::{
    AttackError, AttackParams, BuildContext, InputAwareConfig, InputAwareOutcome, PoisonedData,
    TargetRule, TriggeredTestSet, measure, poison, poison_two, train_input_aware,
    triggered_test_set,
};
use crate::data::{DatasetKind, ImageSet};
use crate::inference::evaluate;
use crate::io::{IoError, check_outputs, write_atomic};
use crate::models::BnMode;
use crate::progress::{Nested, Progress};
use crate::report::grid::{GridError, amplified_difference, image_grid_png};
use crate::train::{
    DataSelection, Run, RunRequest, SessionError, SessionOutcome, TrainEvent, open_run, run_files,
    train_supervised_to_end,
};

/// Batch size of the final clean-accuracy and attack-success evaluation.
const MEASURE_BATCH: usize = 512;

/// Errors of a backdoor experiment.
#[derive(Debug, thiserror::Error)]
pub enum AttackRunError {
    /// An output would replace an input, or cannot be written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The folder holds the record of another attack configuration, and resuming was not asked.
    #[error(
        "{} holds a record of another attack configuration; pass --resume to continue it, or choose another --out",
        .path.display()
    )]
    OtherAttack {
        /// The record folder.
        path: PathBuf,
    },
    /// The attack's parameters cannot be recorded.
    #[error("recording the attack parameters: {0}")]
    Params(serde_json::Error),
    /// The saved record's parameters cannot be read.
    #[error("attack parameters in {}", files::MANIFEST)]
    SavedParams(#[source] serde_json::Error),
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
    #[error("drawing {}", files::EXAMPLES)]
    Examples(#[source] GridError),
    /// A record file cannot be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The attack cannot be mounted.
    #[error(transparent)]
    Attack(#[from] AttackError),
    /// Loading the data or training failed.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// A backdoor experiment as data: the attack, the data and the training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackRunConfig {
    /// The attack and its parameters.
    pub params: AttackParams,
    /// Which label a triggered input should receive.
    pub rule: TargetRule,
    /// Fraction of the training set poisoned (counted over the whole set, as BackdoorBench,
    /// also for clean-label attacks).
    pub rate: f64,
    /// Seed of the poisoning choice and of random triggers.
    pub seed: u64,
    /// The dataset (its configuration's `dataset` is set from this).
    pub dataset: DatasetKind,
    /// Folder of the dataset's files (`None`: the default places).
    pub data_dir: Option<PathBuf>,
    /// The training run: configuration (with its data limits and seed), architecture.
    pub training: RunRequest,
    /// Continue the record in the folder with its own configuration, whatever this one says.
    pub resume: bool,
    /// A second backdoor to plant in the same model (several mechanisms in one model).
    pub second: Option<SecondBackdoor>,
}

/// The second backdoor of a two-backdoor experiment: another attack with its own target rule,
/// at the record's rate (see [`poison_two`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondBackdoor {
    /// The attack and its parameters. Its plan is drawn with the record's seed plus
    /// [`super::backdoor::SECOND_SEED_OFFSET`]; `vigil attack` gives a random trigger the same
    /// seed.
    pub params: AttackParams,
    /// Which label its triggered inputs should receive.
    pub rule: TargetRule,
}

/// A finished experiment: the record's configuration and the measured outcome, as the record's
/// `attack.json` and `results.json` hold them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackReport {
    /// What was attacked and how.
    pub attack: AttackManifest,
    /// Clean accuracy, attack success rate and sizes.
    pub results: AttackResults,
}

/// How [`run_attack`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttackOutcome {
    /// The model is trained and measured; the record is complete (boxed: the report is large
    /// beside the other outcomes).
    Recorded(Box<AttackReport>),
    /// An Input-Aware record was already complete; nothing was done.
    AlreadyRecorded,
    /// Training was stopped by its [`Progress`]; the run is checkpointed and a new call continues
    /// it.
    Interrupted,
}

/// What an experiment reports while it runs ([`Progress`]): its training, and the poisoning
/// before it. [`Progress::should_stop`] stops the training (it checkpoints first).
#[derive(Clone, Copy)]
pub enum AttackEvent<'a> {
    /// The training set was poisoned for `attack` as `data` says (before anything is written).
    Poisoned {
        /// The attack's registry name.
        attack: &'a str,
        /// The poisoned data.
        data: &'a PoisonedData,
    },
    /// The backdoored model's training.
    Train(TrainEvent<'a>),
}

/// [`AttackEvent::Train`] as a function over every lifetime, for [`Nested`] (the variant's own
/// constructor is tied to one lifetime).
fn train_event(event: TrainEvent<'_>) -> AttackEvent<'_> {
    AttackEvent::Train(event)
}

/// Runs the experiment `config` into the record folder `out`: mounts the attack on the
/// training set, writes the record (configuration, poisoning plan, triggered test set,
/// examples), trains the model on the poisoned data (Input-Aware trains its trigger generators
/// with it), then measures clean accuracy and attack success and writes `results.json`.
///
/// With `config.resume`, or when `out` holds a record of the same configuration, the record and
/// its run are continued; a record of another configuration is refused. Nothing is written
/// that would replace a file the attack reads (a clean model, a trigger image).
pub fn run_attack(
    config: &AttackRunConfig,
    out: &Path,
    device: &Device,
    progress: &mut impl for<'e> Progress<AttackEvent<'e>>,
) -> Result<AttackOutcome, AttackRunError> {
    check_outputs(input_files(&config.params), record_files(out))?;
    let selection = DataSelection::requested(config.dataset, &config.training.config)
        .or_saved(out, config.resume)?;
    let saved: Option<AttackManifest> = out
        .join(files::MANIFEST)
        .exists()
        .then(|| record::read_json(out, files::MANIFEST))
        .transpose()?;
    let manifest = match (&saved, config.resume) {
        (Some(saved), true) => saved.clone(),
        _ => {
            let manifest = AttackManifest {
                attack: config.params.name().to_string(),
                params: serde_json::to_value(&config.params).map_err(AttackRunError::Params)?,
                rule: config.rule,
                rate: config.rate,
                seed: config.seed,
                dataset: selection.dataset.to_string(),
                vigil_version: env!("CARGO_PKG_VERSION").to_string(),
                second: config
                    .second
                    .as_ref()
                    .map(|second| {
                        Ok::<_, AttackRunError>(SecondBackdoorManifest {
                            attack: second.params.name().to_string(),
                            params: serde_json::to_value(&second.params)
                                .map_err(AttackRunError::Params)?,
                            rule: second.rule,
                        })
                    })
                    .transpose()?,
            };
            if saved.as_ref().is_some_and(|saved| *saved != manifest) {
                return Err(AttackRunError::OtherAttack {
                    path: out.to_path_buf(),
                });
            }
            manifest
        }
    };
    if manifest.rule == TargetRule::Untargeted {
        return Err(AttackError::InvalidConfig {
            attack: manifest.attack.clone(),
            reason: "a backdoor needs a target rule (all-to-one or all-to-all), not untargeted"
                .into(),
        }
        .into());
    }
    let params: AttackParams =
        serde_json::from_value(manifest.params.clone()).map_err(AttackRunError::SavedParams)?;
    let second = manifest
        .second
        .as_ref()
        .map(|second| {
            let params: AttackParams = serde_json::from_value(second.params.clone())
                .map_err(AttackRunError::SavedParams)?;
            Ok::<_, AttackRunError>(SecondBackdoor {
                params,
                rule: second.rule,
            })
        })
        .transpose()?;
    if let Some(second) = &second {
        let refuse = |reason: &str| -> AttackRunError {
            AttackError::InvalidConfig {
                attack: format!("{} + {}", manifest.attack, second.params.name()),
                reason: reason.into(),
            }
            .into()
        };
        if second.rule == TargetRule::Untargeted {
            return Err(refuse(
                "the second backdoor needs a target rule (all-to-one or all-to-all), not untargeted",
            ));
        }
        if matches!(params, AttackParams::InputAware(_))
            || matches!(second.params, AttackParams::InputAware(_))
        {
            return Err(refuse(
                "input-aware trains its trigger with the model and cannot share a record with a second backdoor",
            ));
        }
    }
    let (train_set, test_set) = selection.load(config.data_dir.as_deref())?;
    let request = config.training.on_dataset(selection.dataset);
    let run = Experiment {
        manifest: &manifest,
        request: &request,
        selection: &selection,
        resume: config.resume,
        train_set: &train_set,
        test_set: &test_set,
        out,
        device,
    };
    match params {
        AttackParams::InputAware(input_aware) => run.input_aware(input_aware, progress),
        params => run.poisoned(&params, second.as_ref(), saved.is_none(), progress),
    }
}

/// The files a record holds, its run's included, under `out`.
pub fn record_files(out: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    run_files()
        .chain(
            [
                files::MANIFEST,
                files::POISON,
                files::SECOND_POISON,
                files::BACKDOOR_TEST_IMAGES,
                files::BACKDOOR_TEST_INDEX,
                files::RESULTS,
                files::EXAMPLES,
            ]
            .map(PathBuf::from),
        )
        .map(move |name| out.join(name))
}

/// The files an attack reads: a clean model, a trigger image.
fn input_files(params: &AttackParams) -> Vec<PathBuf> {
    let file = match params {
        AttackParams::Badnets { patch_png, .. } => patch_png,
        AttackParams::Blended { pattern_png, .. } => pattern_png,
        AttackParams::Lc { clean_model, .. }
        | AttackParams::Lf { clean_model, .. }
        | AttackParams::Trojannn { clean_model, .. } => clean_model,
        AttackParams::Sig { .. }
        | AttackParams::Wanet(_)
        | AttackParams::Ssba(_)
        | AttackParams::InputAware(_) => &None,
    };
    file.iter().cloned().collect()
}

/// What both flows of an experiment share once its configuration is settled and its data loaded.
struct Experiment<'a> {
    manifest: &'a AttackManifest,
    request: &'a RunRequest,
    selection: &'a DataSelection,
    resume: bool,
    train_set: &'a ImageSet,
    test_set: &'a ImageSet,
    out: &'a Path,
    device: &'a Device,
}

impl Experiment<'_> {
    /// A poisoning attack: the poisoned training set is made up front; the record is written
    /// when it is new.
    fn poisoned(
        &self,
        params: &AttackParams,
        second: Option<&SecondBackdoor>,
        new_record: bool,
        progress: &mut impl for<'e> Progress<AttackEvent<'e>>,
    ) -> Result<AttackOutcome, AttackRunError> {
        let build = |params: &AttackParams, rule: TargetRule| {
            params.build(&BuildContext {
                train: self.train_set,
                rule,
                device: self.device,
            })
        };
        let attack = build(params, self.manifest.rule)?;
        let data = match second {
            None => poison(
                attack.as_ref(),
                self.train_set,
                self.test_set,
                self.manifest.rule,
                self.manifest.rate,
                self.manifest.seed,
            )?,
            Some(second) => {
                let second_attack = build(&second.params, second.rule)?;
                poison_two(
                    (attack.as_ref(), self.manifest.rule),
                    (second_attack.as_ref(), second.rule),
                    self.train_set,
                    self.test_set,
                    self.manifest.rate,
                    self.manifest.seed,
                )?
            }
        };
        progress.report(AttackEvent::Poisoned {
            attack: &self.manifest.attack,
            data: &data,
        });
        if new_record {
            self.create_dir()?;
            record::write_json(self.out, files::MANIFEST, self.manifest)?;
            record::write_plan(self.out, &data.plan)?;
            if let Some(plan) = &data.second_plan {
                record::write_json(self.out, files::SECOND_POISON, plan)?;
            }
            self.write_backdoor_test(&data.backdoor_test)?;
        }
        let mut training = Nested::new(progress, train_event);
        let mut run = self.open(&mut training)?;
        let outcome = train_supervised_to_end(
            &mut run,
            &data.train,
            self.test_set,
            self.out,
            self.device,
            &mut training,
        )?;
        if outcome == SessionOutcome::Interrupted {
            return Ok(AttackOutcome::Interrupted);
        }
        let counts = (data.triggered_count(), data.noise_count());
        self.measure(&run, &data.backdoor_test, counts)
    }

    /// Input-Aware trains its trigger with the classifier, so it has its own flow: no poisoned
    /// dataset up front; the run folder and its resume files are those of any training run,
    /// plus the generators.
    fn input_aware(
        &self,
        config: InputAwareConfig,
        progress: &mut impl for<'e> Progress<AttackEvent<'e>>,
    ) -> Result<AttackOutcome, AttackRunError> {
        if self.out.join(files::RESULTS).exists() {
            return Ok(AttackOutcome::AlreadyRecorded);
        }
        self.create_dir()?;
        record::write_json(self.out, files::MANIFEST, self.manifest)?;
        // Poisoning is dynamic (a fraction of every batch), so the plan lists no fixed samples.
        record::write_plan(self.out, &Default::default())?;
        let mut training = Nested::new(progress, train_event);
        let mut run = self.open(&mut training)?;
        if run.state.step == 0 {
            training.report(TrainEvent::TrainingStarts {
                run: &run,
                beside: Some("input-aware generators"),
                train_images: self.train_set.len(),
                test_images: self.test_set.len(),
            });
        }
        let outcome = train_input_aware(
            &mut run.classifier,
            &mut run.slots,
            &mut run.state,
            self.train_set,
            self.test_set,
            self.manifest.rule,
            config,
            self.out,
            self.device,
            &mut training,
        )?;
        let InputAwareOutcome::Finished(attack) = outcome else {
            return Ok(AttackOutcome::Interrupted);
        };
        let backdoor = triggered_test_set(self.test_set, &attack, self.manifest.rule)?;
        self.write_backdoor_test(&backdoor)?;
        self.measure(&run, &backdoor, (0, 0))
    }

    fn open(
        &self,
        progress: &mut impl for<'e> Progress<TrainEvent<'e>>,
    ) -> Result<Run, AttackRunError> {
        Ok(open_run(
            self.out,
            self.resume,
            self.request,
            self.selection.dataset,
            self.train_set,
            self.device,
            progress,
        )?)
    }

    fn create_dir(&self) -> Result<(), AttackRunError> {
        std::fs::create_dir_all(self.out).map_err(|source| AttackRunError::CreateDir {
            path: self.out.to_path_buf(),
            source,
        })
    }

    /// Writes the triggered test set and the examples drawn from it.
    fn write_backdoor_test(&self, backdoor: &TriggeredTestSet) -> Result<(), AttackRunError> {
        record::write_backdoor_test(self.out, backdoor)?;
        write_examples(
            &self.out.join(files::EXAMPLES),
            self.test_set,
            &backdoor.images,
            &backdoor.original_indices,
        )
    }

    /// Measures the trained model and writes `results.json`; `(poisoned, noise)` counts the
    /// training samples altered with the trigger and with a noise trigger.
    fn measure(
        &self,
        run: &Run,
        backdoor: &TriggeredTestSet,
        (poisoned, noise): (usize, usize),
    ) -> Result<AttackOutcome, AttackRunError> {
        let (clean_accuracy, attack_success_rate) = measure(
            &run.classifier,
            self.test_set,
            backdoor,
            MEASURE_BATCH,
            self.device,
        );
        // Each backdoor's own success rate, when the record has two.
        let mechanism_success_rates = if self.manifest.second.is_some() {
            (0..2u8)
                .map(|mechanism| {
                    let positions = backdoor.positions_of(mechanism);
                    evaluate(
                        &run.classifier,
                        &backdoor.images,
                        Some(&positions),
                        MEASURE_BATCH,
                        BnMode::Eval,
                        self.device,
                    )
                    .accuracy()
                })
                .collect()
        } else {
            Vec::new()
        };
        let history = &run.state.history;
        let results = AttackResults {
            clean_accuracy,
            attack_success_rate,
            clean_test_size: self.test_set.len(),
            backdoor_test_size: backdoor.images.len(),
            poisoned_samples: poisoned,
            noise_samples: noise,
            epochs: history.len(),
            train_seconds: history.iter().map(|r| r.seconds).sum(),
            mechanism_success_rates,
        };
        record::write_json(self.out, files::RESULTS, &results)?;
        Ok(AttackOutcome::Recorded(Box::new(AttackReport {
            attack: self.manifest.clone(),
            results,
        })))
    }
}

/// Eight clean test images, their triggered versions and the amplified difference, as a PNG.
pub(crate) fn write_examples(
    path: &Path,
    clean: &ImageSet,
    triggered: &ImageSet,
    original_indices: &[usize],
) -> Result<(), AttackRunError> {
    let n = triggered.len().min(8);
    let clean_row: Vec<&[f32]> = (0..n).map(|i| clean.image(original_indices[i])).collect();
    let triggered_row: Vec<&[f32]> = (0..n).map(|i| triggered.image(i)).collect();
    let diffs: Vec<Vec<f32>> = clean_row
        .iter()
        .zip(&triggered_row)
        .map(|(c, t)| amplified_difference(c, t))
        .collect();
    let diff_row: Vec<&[f32]> = diffs.iter().map(Vec::as_slice).collect();
    let png = image_grid_png(&[clean_row, triggered_row, diff_row], clean.shape(), 4)
        .map_err(AttackRunError::Examples)?;
    write_atomic(path, &png)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Architecture;
    use crate::progress::Quiet;
    use crate::train::TrainConfig;
    use crate::train::test_util::{scratch, write_idx};

    /// BadNets to class 0 at `rate` on the IDX files in `dir`, one epoch of a tiny CNN.
    fn badnets_config(dir: &std::path::Path, rate: f64) -> AttackRunConfig {
        AttackRunConfig {
            params: AttackParams::defaults("badnets", 0).unwrap(),
            rule: TargetRule::AllToOne { target: 0 },
            rate,
            seed: 0,
            dataset: DatasetKind::FashionMnist,
            data_dir: Some(dir.to_path_buf()),
            training: RunRequest {
                config: TrainConfig {
                    epochs: 1,
                    batch_size: 16,
                    ..TrainConfig::small_cnn_default()
                },
                architecture: Architecture::SmallCnn {
                    width: 4,
                    hidden: 8,
                },
                normalize: true,
            },
            resume: false,
            second: None,
        }
    }

    #[test]
    fn an_experiment_records_trains_measures_and_refuses_another_configuration() {
        let dir = scratch("attack", "experiment");
        write_idx(&dir, "train", 40);
        write_idx(&dir, "t10k", 20);
        let out = dir.join("record");
        let config = badnets_config(&dir, 0.1);
        let device = Device::default();
        let AttackOutcome::Recorded(first) =
            run_attack(&config, &out, &device, &mut Quiet).unwrap()
        else {
            panic!("the experiment did not finish");
        };
        assert_eq!(first.attack.attack, "badnets");
        assert_eq!(first.attack.dataset, "fashion-mnist");
        assert!(first.results.poisoned_samples > 0);
        assert_eq!(
            (first.results.epochs, first.results.clean_test_size),
            (1, 20)
        );
        for file in [
            files::MANIFEST,
            files::POISON,
            files::BACKDOOR_TEST_IMAGES,
            files::RESULTS,
            files::EXAMPLES,
            crate::train::files::MODEL,
        ] {
            assert!(out.join(file).is_file(), "{file} is missing");
        }
        let saved: AttackResults = record::read_json(&out, files::RESULTS).unwrap();
        assert_eq!(saved, first.results);

        // The same experiment again: nothing left to train, the model is measured again.
        let AttackOutcome::Recorded(again) =
            run_attack(&config, &out, &device, &mut Quiet).unwrap()
        else {
            panic!("the finished experiment was not measured again");
        };
        assert_eq!(again.attack, first.attack);
        assert_eq!(again.results.clean_accuracy, first.results.clean_accuracy);

        // Another attack in the same folder is refused before anything is written.
        let blended = AttackRunConfig {
            params: AttackParams::defaults("blended", 0).unwrap(),
            ..config.clone()
        };
        assert!(matches!(
            run_attack(&blended, &out, &device, &mut Quiet),
            Err(AttackRunError::OtherAttack { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_two_backdoor_experiment_plants_both_and_labels_each_triggered_image_by_its_backdoor() {
        let dir = scratch("attack", "two-backdoors");
        write_idx(&dir, "train", 60);
        write_idx(&dir, "t10k", 20);
        let out = dir.join("record");
        let config = AttackRunConfig {
            second: Some(SecondBackdoor {
                params: AttackParams::defaults("blended", 1).unwrap(),
                rule: TargetRule::AllToOne { target: 1 },
            }),
            ..badnets_config(&dir, 0.2)
        };
        let device = Device::default();
        let AttackOutcome::Recorded(report) =
            run_attack(&config, &out, &device, &mut Quiet).unwrap()
        else {
            panic!("the experiment did not finish");
        };
        assert_eq!(report.attack.mechanism_names(), ["badnets", "blended"]);
        assert_eq!(report.results.mechanism_success_rates.len(), 2);

        // The two plans are disjoint, each relabels to its own target, and together they
        // account for the poisoned count.
        let first: super::super::backdoor::PoisonPlan =
            record::read_json(&out, files::POISON).unwrap();
        let second: super::super::backdoor::PoisonPlan =
            record::read_json(&out, files::SECOND_POISON).unwrap();
        assert!(!first.samples.is_empty() && !second.samples.is_empty());
        assert!(first.samples.iter().all(|s| s.label == 0));
        assert!(second.samples.iter().all(|s| s.label == 1));
        assert!(
            first
                .samples
                .iter()
                .all(|a| second.samples.iter().all(|b| a.index != b.index))
        );
        assert_eq!(
            report.results.poisoned_samples,
            first.samples.len() + second.samples.len()
        );

        // The triggered test set: every non-class-0 test image under BadNets (mechanism 0,
        // target 0), then every non-class-1 image under Blended (mechanism 1, target 1).
        let triggered = record::read_backdoor_test(&out).unwrap();
        let test = crate::data::load(
            DatasetKind::FashionMnist,
            crate::data::Split::Test,
            Some(&dir),
        )
        .unwrap();
        let not = |class: u16| (0..test.len()).filter(|&i| test.label(i) != class).count();
        let (n0, n1) = (not(0), not(1));
        assert_eq!(triggered.images.len(), n0 + n1);
        assert_eq!(triggered.positions_of(0), (0..n0).collect::<Vec<_>>());
        assert_eq!(triggered.positions_of(1), (n0..n0 + n1).collect::<Vec<_>>());
        assert!(triggered.images.labels()[..n0].iter().all(|&l| l == 0));
        assert!(triggered.images.labels()[n0..].iter().all(|&l| l == 1));

        // A second backdoor cannot be Input-Aware (it trains its own trigger with the model).
        let input_aware = AttackRunConfig {
            second: Some(SecondBackdoor {
                params: AttackParams::defaults("input-aware", 0).unwrap(),
                rule: TargetRule::AllToOne { target: 1 },
            }),
            ..config.clone()
        };
        let e = run_attack(&input_aware, &dir.join("ia"), &device, &mut Quiet).unwrap_err();
        assert!(e.to_string().contains("input-aware"), "{e}");
        assert!(!dir.join("ia").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
