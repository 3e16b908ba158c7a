//! What MAD-FA is run on: a model's trusted, sampling and test sets.
//!
//! A [`MadTask`] holds three image sets: trusted (clean samples whose losses are the reference),
//! sampling (clean samples with ground-truth labels, driving the chain) and test (what gets
//! scored), with each test sample's anomaly flag when known, for evaluation only. The detector
//! never reads the flags.
//!
//! [`backdoor_task`] builds one from a backdoored model the way the reference does (`docs/madfa.md`, "Data protocol"):
//! a stratified trusted / sampling / test split of the clean test set per class, with a fixed
//! seed; trusted and clean test samples kept only if the model classifies them correctly;
//! the triggered versions of the test part's images kept only if the attack succeeds on them.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::MadError;
use super::traces::LossTraces;
use crate::attack::backdoor::TriggeredTestSet;
use crate::attack::backdoor::record::{self, AttackManifest, files as record_files};
use crate::checkpoint;
use crate::data::image_folder::ModelImages;
use crate::data::{DatasetKind, ImageSet, Split};
use crate::inference::evaluate;
use crate::models::{BnMode, Classifier, ModelSpec};
use crate::train::files as run_files;

/// The data of one MAD-FA run.
#[derive(Debug, Clone)]
pub struct MadTask {
    /// Trusted reference samples.
    pub trusted: ImageSet,
    /// Samples whose minibatches drive the chain (ground-truth labels).
    pub sampling: ImageSet,
    /// Samples to score.
    pub test: ImageSet,
    /// Whether each test sample is anomalous, if known (evaluation only).
    pub test_is_anomalous: Option<Vec<bool>>,
    /// Which mechanism made each anomalous test sample, in test order, if known: the index into
    /// the record's backdoors ([`AttackManifest::mechanism_names`]; evaluation only).
    pub anomaly_mechanisms: Option<Vec<u8>>,
    /// Index of each trusted sample in its source set.
    pub trusted_ids: Vec<i64>,
    /// Index of each test sample in its source set (clean and triggered share the index of the
    /// clean original).
    pub test_ids: Vec<i64>,
}

impl MadTask {
    /// Fails unless the model `spec` describes can take every set of the task (image shape and
    /// class count), so that no path feeds the network images it would fail on or misread.
    pub fn check_model(&self, spec: &ModelSpec) -> Result<(), MadError> {
        for (name, set) in [
            ("trusted", &self.trusted),
            ("sampling", &self.sampling),
            ("test", &self.test),
        ] {
            check_set(name, set, spec)?;
        }
        Ok(())
    }

    /// The task's images and labels as a numpy `.npz` archive, so another implementation (the
    /// PyTorch twin in `bench/peer/`) runs on exactly the same data: `trusted_images`,
    /// `sampling_images`, `test_images` f32 `[n, c, h, w]` in `[0, 1]`, `trusted_labels`,
    /// `sampling_labels`, `test_labels` i64 (the sets' own labels; ground truth for trusted and
    /// sampling, the target for triggered test images), `trusted_ids`, `test_ids` i64 and, when
    /// known, `test_is_anomalous` bool.
    pub fn save_npz(&self, path: &Path) -> Result<(), MadError> {
        use ndarray::{Array1, Array4};
        let enc = |e: String| MadError::Data(format!("cannot encode {}: {e}", path.display()));
        let images = |set: &ImageSet| {
            let s = set.shape();
            Array4::from_shape_vec(
                (set.len(), s.channels, s.height, s.width),
                set.pixels().to_vec(),
            )
            .map_err(|e| enc(e.to_string()))
        };
        let labels = |set: &ImageSet| {
            Array1::from(
                set.labels()
                    .iter()
                    .map(|&l| i64::from(l))
                    .collect::<Vec<_>>(),
            )
        };
        let mut buffer = std::io::Cursor::new(Vec::new());
        let mut npz = ndarray_npy::NpzWriter::new(&mut buffer);
        let e = |e: ndarray_npy::WriteNpzError| enc(e.to_string());
        for (name, set) in [
            ("trusted", &self.trusted),
            ("sampling", &self.sampling),
            ("test", &self.test),
        ] {
            npz.add_array(format!("{name}_images"), &images(set)?)
                .map_err(e)?;
            npz.add_array(format!("{name}_labels"), &labels(set))
                .map_err(e)?;
        }
        npz.add_array("trusted_ids", &Array1::from(self.trusted_ids.clone()))
            .map_err(e)?;
        npz.add_array("test_ids", &Array1::from(self.test_ids.clone()))
            .map_err(e)?;
        if let Some(flags) = &self.test_is_anomalous {
            npz.add_array("test_is_anomalous", &Array1::from(flags.clone()))
                .map_err(e)?;
        }
        npz.finish().map_err(e)?;
        crate::io::write_atomic(path, buffer.get_ref())?;
        Ok(())
    }
}

/// Fails unless the model `spec` describes can take `set` (see [`ImageSet::check_model_input`]).
fn check_set(name: &str, set: &ImageSet, spec: &ModelSpec) -> Result<(), MadError> {
    set.check_model_input(spec.input_shape, spec.num_classes())
        .map_err(|e| MadError::Data(format!("the {name} set does not fit the model: {e}")))
}

/// Per-class sizes of the three parts of the clean test set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSizes {
    /// Trusted samples per class (reference 250).
    pub trusted: usize,
    /// Sampling samples per class (reference 250).
    pub sampling: usize,
    /// Test samples per class (reference 500).
    pub test: usize,
}

impl SplitSizes {
    /// Refuses a split with an empty part: MAD-FA needs trusted samples to compare with, a
    /// sampling set to drive the chain and test samples to score.
    pub fn validate(&self) -> Result<(), MadError> {
        if self.trusted == 0 || self.sampling == 0 || self.test == 0 {
            return Err(MadError::Data(format!(
                "the split per class must give at least 1 trusted, 1 sampling and 1 test sample, got {},{},{} (trusted,sampling,test)",
                self.trusted, self.sampling, self.test
            )));
        }
        Ok(())
    }

    /// The reference split: 250 / 250 / 500 per class.
    pub fn reference() -> Self {
        Self {
            trusted: 250,
            sampling: 250,
            test: 500,
        }
    }
}

/// How many samples each filter kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Trusted samples drawn / kept (correctly classified).
    pub trusted: (usize, usize),
    /// Sampling samples.
    pub sampling: usize,
    /// Clean test samples drawn / kept (correctly classified).
    pub clean_test: (usize, usize),
    /// Triggered test samples drawn / kept (attack succeeded).
    pub triggered_test: (usize, usize),
}

/// The reference protocol on a backdoored `classifier`: split `clean_test` per class with
/// `sizes` and `seed`, keep correctly classified trusted and clean test samples, and add the
/// triggered versions (from `backdoor_test`) of the test part's images on which the attack
/// succeeds (prediction = that image's target, so all-to-all targets work too).
pub fn backdoor_task(
    classifier: &Classifier,
    clean_test: &ImageSet,
    backdoor_test: &TriggeredTestSet,
    sizes: SplitSizes,
    seed: u64,
    batch_size: usize,
    device: &Device,
) -> Result<(MadTask, TaskSummary), MadError> {
    sizes.validate()?;
    check_set("clean test", clean_test, &classifier.spec)?;
    check_set("triggered test", &backdoor_test.images, &classifier.spec)?;
    let parts = clean_test
        .stratified_split(&[sizes.trusted, sizes.sampling, sizes.test], seed)
        .map_err(|e| MadError::Data(e.to_string()))?;
    let [trusted_part, sampling_part, test_part] = <[Vec<usize>; 3]>::try_from(parts)
        .map_err(|_| MadError::Data("the split did not return three parts".into()))?;

    let correct = |set: &ImageSet, indices: &[usize]| -> Vec<usize> {
        let out = evaluate(
            classifier,
            set,
            Some(indices),
            batch_size,
            BnMode::Eval,
            device,
        );
        indices
            .iter()
            .zip(out.predicted.iter().zip(&out.labels))
            .filter(|(_, (p, l))| p == l)
            .map(|(&i, _)| i)
            .collect()
    };
    let trusted_kept = correct(clean_test, &trusted_part);
    let clean_kept = correct(clean_test, &test_part);

    let mut in_test_part = vec![false; clean_test.len()];
    for &i in &test_part {
        in_test_part[i] = true;
    }
    let triggered_part: Vec<usize> = backdoor_test
        .original_indices
        .iter()
        .enumerate()
        .filter(|(_, original)| in_test_part.get(**original).copied().unwrap_or(false))
        .map(|(position, _)| position)
        .collect();
    // A triggered image's label is its target: "correct" means the attack succeeded.
    let triggered_kept = correct(&backdoor_test.images, &triggered_part);

    let mut test = clean_test.subset(&clean_kept);
    test.append(&backdoor_test.images.subset(&triggered_kept))
        .map_err(|e| MadError::Data(format!("triggered images do not fit the clean ones: {e}")))?;
    let mut flags = vec![false; clean_kept.len()];
    flags.resize(clean_kept.len() + triggered_kept.len(), true);
    let ids = |v: &[usize]| v.iter().map(|&i| i as i64).collect::<Vec<_>>();
    let mut test_ids = ids(&clean_kept);
    test_ids.extend(
        triggered_kept
            .iter()
            .map(|&p| backdoor_test.original_indices[p] as i64),
    );
    let summary = TaskSummary {
        trusted: (trusted_part.len(), trusted_kept.len()),
        sampling: sampling_part.len(),
        clean_test: (test_part.len(), clean_kept.len()),
        triggered_test: (triggered_part.len(), triggered_kept.len()),
    };
    if trusted_kept.is_empty() {
        return Err(MadError::Data(
            "the model classifies no trusted sample correctly".into(),
        ));
    }
    let task = MadTask {
        trusted: clean_test.subset(&trusted_kept),
        sampling: clean_test.subset(&sampling_part),
        test,
        test_is_anomalous: Some(flags),
        anomaly_mechanisms: Some(
            triggered_kept
                .iter()
                .map(|&p| backdoor_test.mechanisms.get(p).copied().unwrap_or(0))
                .collect(),
        ),
        trusted_ids: ids(&trusted_kept),
        test_ids,
    };
    Ok((task, summary))
}

/// The split a `vigil sample --record` run used, as its `task.json` records it, so that later
/// analyses of the run rebuild the same task ([`open_record_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
struct RunSplit {
    /// Per-class sizes of the trusted, sampling and test parts.
    split_per_class: SplitSizes,
    /// Seed of the split.
    split_seed: u64,
}

/// A `vigil sample --record` run reopened with its record: the task rebuilt from the record
/// with the run's split, and the run's traces, checked to be of that task's test inputs.
pub struct RecordRun {
    /// The record's model and the rebuilt task.
    pub loaded: RecordTask,
    /// The run's traces (`traces.npz`).
    pub traces: LossTraces,
    /// The trace file read.
    pub traces_path: PathBuf,
}

/// Reopens the run folder `run` made on the attack record `record` (what `vigil mechanisms` and
/// `vigil evade` analyse): reads its split (`task.json`) and traces (`traces.npz`), rebuilds the
/// task (predictions in batches of `batch_size`) and refuses traces that are not of its test
/// inputs (another record's run, say).
pub fn open_record_run(
    record: &Path,
    run: &Path,
    data_dir: Option<&Path>,
    batch_size: usize,
    device: &Device,
) -> Result<RecordRun, MadError> {
    let task_path = run.join("task.json");
    let text = std::fs::read_to_string(&task_path).map_err(|e| {
        MadError::Data(format!(
            "cannot read {} ({e}); is {} a `vigil sample --record` run folder?",
            task_path.display(),
            run.display()
        ))
    })?;
    let split: RunSplit = serde_json::from_str(&text).map_err(|e| {
        MadError::Data(format!(
            "{}: not the task of a record run ({e})",
            task_path.display()
        ))
    })?;
    let traces_path = run.join("traces.npz");
    let traces = LossTraces::load(&traces_path).map_err(|e| MadError::Data(e.to_string()))?;
    let loaded = record_task(
        record,
        data_dir,
        split.split_per_class,
        split.split_seed,
        batch_size,
        device,
    )?;
    let task = &loaded.task;
    if traces.test_ids.as_deref() != Some(task.test_ids.as_slice())
        || traces.test_is_anomalous != task.test_is_anomalous
    {
        return Err(MadError::Data(format!(
            "the traces in {} are not of this record's test inputs ({} traced, {} in the task): was the run made on {}?",
            traces_path.display(),
            traces.n_test(),
            task.test.len(),
            record.display()
        )));
    }
    Ok(RecordRun {
        loaded,
        traces,
        traces_path,
    })
}

/// A backdoor task read from an attack record folder written by `vigil attack`: its model, and
/// [`backdoor_task`] over its dataset's clean test set (from `data_dir` or the default places)
/// and its triggered test set.
pub struct RecordTask {
    /// The backdoored model (w*).
    pub classifier: Classifier,
    /// The task.
    pub task: MadTask,
    /// What the filters kept.
    pub summary: TaskSummary,
    /// The record's attack settings.
    pub manifest: AttackManifest,
}

/// Loads the attack record in `dir` and builds its MAD-FA task (see [`backdoor_task`]).
pub fn record_task(
    dir: &Path,
    data_dir: Option<&Path>,
    sizes: SplitSizes,
    seed: u64,
    batch_size: usize,
    device: &Device,
) -> Result<RecordTask, MadError> {
    let data_err = |e: record::RecordError| MadError::Data(e.to_string());
    let manifest: AttackManifest =
        record::read_json(dir, record_files::MANIFEST).map_err(data_err)?;
    let kind: DatasetKind = manifest.dataset.parse().map_err(|e| {
        MadError::Data(format!(
            "{}: unknown dataset `{}`: {e}",
            dir.join(record_files::MANIFEST).display(),
            manifest.dataset
        ))
    })?;
    let classifier = checkpoint::load_classifier(&dir.join(run_files::MODEL), device)?;
    let clean_test = crate::data::load(kind, Split::Test, data_dir)
        .map_err(|e| MadError::Data(format!("loading the {kind} test split: {e}")))?;
    let backdoor_test = record::read_backdoor_test(dir).map_err(data_err)?;
    let (task, summary) = backdoor_task(
        &classifier,
        &clean_test,
        &backdoor_test,
        sizes,
        seed,
        batch_size,
        device,
    )?;
    Ok(RecordTask {
        classifier,
        task,
        summary,
        manifest,
    })
}

/// A user's image folders, each loaded for the model with
/// [`load_image_folder_for_model`](crate::data::image_folder::load_image_folder_for_model): trusted
/// and sampling with labels required, test and anomalous with labels optional.
#[derive(Debug, Clone)]
pub struct FolderSets {
    /// Trusted reference images (labelled).
    pub trusted: ModelImages,
    /// Images driving the chain (labelled: their labels are the chain's targets).
    pub sampling: ModelImages,
    /// Normal inputs to score.
    pub test: ModelImages,
    /// Known anomalous inputs to score, appended after `test`.
    pub anomalous: Option<ModelImages>,
}

/// How well the model predicts one set's labelled images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAccuracy {
    /// The set: trusted, sampling, test or anomalous.
    pub set: String,
    /// Images in the set.
    pub images: usize,
    /// Images with a label from their class folder.
    pub labelled: usize,
    /// Labelled images the model predicts as labelled.
    pub correct: usize,
}

impl SetAccuracy {
    /// Fraction of labelled images predicted correctly, if any is labelled.
    pub fn accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64)
    }
}

/// A task built from image folders, with what a report needs about it.
#[derive(Debug, Clone)]
pub struct FolderTask {
    /// The task ([`user_task`] over the sets).
    pub task: MadTask,
    /// Each set's accuracy under the model, in the order trusted, sampling, test, anomalous: a
    /// labelling that disagrees with the model shows here at once.
    pub accuracy: Vec<SetAccuracy>,
    /// The file of each trusted sample.
    pub trusted_paths: Vec<PathBuf>,
    /// The file of each test sample (test, then anomalous), in the task's test order.
    pub test_paths: Vec<PathBuf>,
}

/// The task of a user's image folders on `classifier`: checks every set against the model,
/// measures each set's accuracy under it (predicting in batches of `batch_size`), and labels the
/// images that have no class folder with the model's prediction (such inputs are only scored,
/// and MAD-FA traces every sample with its prediction at w* anyway).
pub fn folder_task(
    classifier: &Classifier,
    sets: FolderSets,
    batch_size: usize,
    device: &Device,
) -> Result<FolderTask, MadError> {
    let spec = &classifier.spec;
    let mut accuracy = Vec::new();
    let mut label = |name: &str, mut images: ModelImages| -> Result<ImageSet, MadError> {
        check_set(name, &images.set, spec)?;
        let out = evaluate(
            classifier,
            &images.set,
            None,
            batch_size,
            BnMode::Eval,
            device,
        );
        let mut correct = 0;
        for (index, (&predicted, &labelled)) in
            out.predicted.iter().zip(&images.labelled).enumerate()
        {
            if labelled {
                correct += usize::from(predicted == images.set.label(index));
            } else {
                images
                    .set
                    .set_label(index, predicted)
                    .map_err(|e| MadError::Data(e.to_string()))?;
            }
        }
        accuracy.push(SetAccuracy {
            set: name.to_string(),
            images: images.set.len(),
            labelled: images.n_labelled(),
            correct,
        });
        Ok(images.set)
    };
    for (name, images) in [("trusted", &sets.trusted), ("sampling", &sets.sampling)] {
        if images.n_labelled() < images.set.len() {
            return Err(MadError::Data(format!(
                "the {name} images need labels: put each in the class folder of its class"
            )));
        }
    }
    let trusted_paths = sets.trusted.paths.clone();
    let mut test_paths = sets.test.paths.clone();
    if let Some(anomalous) = &sets.anomalous {
        test_paths.extend(anomalous.paths.iter().cloned());
    }
    let trusted = label("trusted", sets.trusted)?;
    let sampling = label("sampling", sets.sampling)?;
    let test = label("test", sets.test)?;
    let anomalous = sets
        .anomalous
        .map(|anomalous| label("anomalous", anomalous))
        .transpose()?;
    let task = user_task(trusted, sampling, test, anomalous)?;
    Ok(FolderTask {
        task,
        accuracy,
        trusted_paths,
        test_paths,
    })
}

/// A task from a user's own sets: every `test` sample counts as normal and every `anomalous`
/// sample (appended after them) as anomalous; without `anomalous` the flags are unknown. A
/// sample's id is its position in its set, the anomalous ones numbered after the test ones, so
/// ids are unique across the two.
pub fn user_task(
    trusted: ImageSet,
    sampling: ImageSet,
    test: ImageSet,
    anomalous: Option<ImageSet>,
) -> Result<MadTask, MadError> {
    let shape = trusted.shape();
    for (name, set) in [("sampling", &sampling), ("test", &test)]
        .into_iter()
        .chain(anomalous.as_ref().map(|a| ("anomalous", a)))
    {
        if set.shape() != shape {
            return Err(MadError::Data(format!(
                "the {name} images are {}, the trusted ones {shape}",
                set.shape()
            )));
        }
        if set.is_empty() {
            return Err(MadError::Data(format!("the {name} set is empty")));
        }
    }
    if trusted.is_empty() {
        return Err(MadError::Data("the trusted set is empty".into()));
    }
    let ids = |n: usize| (0..n as i64).collect::<Vec<_>>();
    let n_normal = test.len();
    let (test, flags, test_ids) = match anomalous {
        Some(a) => {
            let n_anomalous = a.len();
            let mut joined = test;
            joined
                .append(&a)
                .map_err(|e| MadError::Data(format!("anomalous set: {e}")))?;
            let mut flags = vec![false; n_normal];
            flags.resize(n_normal + n_anomalous, true);
            (joined, Some(flags), ids(n_normal + n_anomalous))
        }
        None => (test, None, ids(n_normal)),
    };
    Ok(MadTask {
        trusted_ids: ids(trusted.len()),
        trusted,
        sampling,
        test,
        test_is_anomalous: flags,
        anomaly_mechanisms: None,
        test_ids,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::data::image_folder::LabelRule;
    use crate::data::{ImageShape, Label};
    use crate::device::default_device;
    use crate::models::{Architecture, ModelSpec};

    #[test]
    fn a_split_with_an_empty_part_is_refused_by_name() {
        let err = SplitSizes {
            trusted: 0,
            sampling: 0,
            test: 0,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("split per class must give at least 1"),
            "{err}"
        );
        assert!(err.contains("got 0,0,0"), "{err}");
        assert!(SplitSizes::reference().validate().is_ok());
    }

    fn classifier(input_shape: [usize; 3]) -> Classifier {
        let spec = ModelSpec {
            architecture: Architecture::SmallCnn {
                width: 2,
                hidden: 4,
            },
            input_shape,
            class_names: vec!["a".into(), "b".into(), "c".into()],
            normalization: None,
        };
        Classifier::new(spec, &default_device()).unwrap()
    }

    /// `n` images of `shape` with labels `i % 3` and distinct pixels.
    fn set(n: usize, shape: ImageShape) -> ImageSet {
        let pixels = (0..n * shape.num_values())
            .map(|i| (i % 17) as f32 / 17.0)
            .collect();
        let labels = (0..n).map(|i| (i % 3) as Label).collect();
        let names = vec!["a".into(), "b".into(), "c".into()];
        ImageSet::new(pixels, labels, shape, names, "toy").unwrap()
    }

    fn images(set: ImageSet, labelled: bool) -> ModelImages {
        let n = set.len();
        ModelImages {
            set,
            labelled: vec![labelled; n],
            paths: (0..n).map(|i| PathBuf::from(format!("{i}.png"))).collect(),
            rule: if labelled {
                LabelRule::ClassNames
            } else {
                LabelRule::Unlabelled
            },
            converted: None,
        }
    }

    #[test]
    fn user_task_ids_are_unique_across_test_and_anomalous() {
        let shape = ImageShape::new(1, 8, 8);
        let task = user_task(
            set(3, shape),
            set(3, shape),
            set(4, shape),
            Some(set(2, shape)),
        )
        .unwrap();
        assert_eq!(task.test_ids, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(
            task.test_is_anomalous,
            Some(vec![false, false, false, false, true, true])
        );
    }

    #[test]
    fn folder_task_labels_unlabelled_inputs_with_predictions_and_counts_accuracy() {
        let shape = ImageShape::new(1, 8, 8);
        let model = classifier([1, 8, 8]);
        let device = default_device();
        let sets = FolderSets {
            trusted: images(set(6, shape), true),
            sampling: images(set(6, shape), true),
            test: images(set(4, shape), true),
            anomalous: Some(images(set(5, shape), false)),
        };
        let built = folder_task(&model, sets, 4, &device).unwrap();
        let names: Vec<&str> = built.accuracy.iter().map(|a| a.set.as_str()).collect();
        assert_eq!(names, ["trusted", "sampling", "test", "anomalous"]);
        let predicted = evaluate(&model, &set(6, shape), None, 4, BnMode::Eval, &device);
        let correct = predicted
            .predicted
            .iter()
            .zip(&predicted.labels)
            .filter(|(p, l)| p == l)
            .count();
        assert_eq!(built.accuracy[0].correct, correct);
        assert_eq!(
            (built.accuracy[3].labelled, built.accuracy[3].accuracy()),
            (0, None)
        );
        // The anomalous images carry the model's predictions as labels.
        let anomalous = evaluate(&model, &set(5, shape), None, 4, BnMode::Eval, &device);
        assert_eq!(&built.task.test.labels()[4..], &anomalous.predicted[..]);
        assert_eq!(built.test_paths.len(), 9);
        assert_eq!(built.test_paths[4], PathBuf::from("0.png"));
    }

    #[test]
    fn sets_the_model_cannot_take_are_refused_before_the_network() {
        let model = classifier([1, 8, 8]);
        let device = default_device();
        let wrong = ImageShape::new(1, 12, 12);
        let sets = FolderSets {
            trusted: images(set(6, wrong), true),
            sampling: images(set(6, wrong), true),
            test: images(set(4, wrong), true),
            anomalous: None,
        };
        let err = folder_task(&model, sets, 4, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("12x12") && err.contains("8x8"), "{err}");
        // A task built by hand reaches the guard at the chain's inputs instead of the convolution.
        let three = ImageShape::new(3, 8, 8);
        let task = user_task(set(3, three), set(3, three), set(3, three), None).unwrap();
        let err = crate::madfa::TraceInputs::new(&model, &task, 4, &device)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("3 channel(s)"), "{err}");
    }
}
