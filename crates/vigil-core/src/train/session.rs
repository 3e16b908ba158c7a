//! Starting or resuming a training run in its folder, and training it to its end: what every
//! experiment that trains a model (`vigil train`, `vigil attack`, a benchmark's ladder) does
//! around [`run`](super::run).
//!
//! A folder holds at most one run. Asking for a run where one already is continues it when it
//! has the same configuration and architecture (so repeating a command resumes it), continues it
//! as it is when `resume` is asked, and is refused otherwise.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{
    StepRule, TrainConfig, TrainError, TrainEvent, TrainOutcome, TrainState, files, load_resume,
    saved_state,
};
use crate::data::{DataError, DatasetKind, ImageSet, Normalization, Split};
use crate::models::{Architecture, Classifier, ModelError, ModelSpec};
use crate::optim::ParamSlots;
use crate::progress::Progress;

/// Errors of starting, resuming or training a run.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A split of the dataset could not be loaded.
    #[error("loading the {dataset} {split} split")]
    Load {
        /// The dataset.
        dataset: DatasetKind,
        /// The split.
        split: Split,
        /// Why it failed.
        #[source]
        source: DataError,
    },
    /// The data could not be subset or split.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The folder holds a run of another configuration, and resuming it was not asked.
    #[error(
        "{} holds a run with another configuration; pass --resume to continue it as it is, or choose another --out",
        .path.display()
    )]
    OtherRun {
        /// The run folder.
        path: PathBuf,
    },
    /// The saved run names a dataset vigil does not know.
    #[error("the run's dataset `{dataset}`: {reason}")]
    UnknownDataset {
        /// The name in the run's state.
        dataset: String,
        /// Why it is not a dataset.
        reason: String,
    },
    /// The requested model cannot be built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Training failed, or the run could not be read or written.
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// The data a run trains and evaluates on: the dataset, and the sizes of the seeded random
/// subsets drawn from its splits (`None`: the whole split).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSelection {
    /// The dataset.
    pub dataset: DatasetKind,
    /// Training images kept.
    pub train_limit: Option<usize>,
    /// Test images kept.
    pub test_limit: Option<usize>,
    /// Seed of the subsets (the run's seed).
    pub seed: u64,
}

impl DataSelection {
    /// The selection `config` asks for on `dataset`: its limits and seed.
    pub fn requested(dataset: DatasetKind, config: &TrainConfig) -> Self {
        Self {
            dataset,
            train_limit: config.train_limit,
            test_limit: config.test_limit,
            seed: config.seed,
        }
    }

    /// The selection to train with in `out`: the saved run's own when `resume` is asked and
    /// `out` holds a run (a resumed run must see the same data), else `self`.
    pub fn or_saved(self, out: &Path, resume: bool) -> Result<Self, SessionError> {
        if resume && let Some(state) = saved_state(out)? {
            let c = state.config;
            let dataset =
                c.dataset
                    .parse()
                    .map_err(|e: DataError| SessionError::UnknownDataset {
                        dataset: c.dataset.clone(),
                        reason: e.to_string(),
                    })?;
            return Ok(Self {
                dataset,
                train_limit: c.train_limit,
                test_limit: c.test_limit,
                seed: c.seed,
            });
        }
        Ok(self)
    }

    /// Loads the training and test splits from `data_dir` (or the default places), each cut to
    /// its limit by a seeded draw.
    pub fn load(&self, data_dir: Option<&Path>) -> Result<(ImageSet, ImageSet), SessionError> {
        let load = |split, limit| {
            let set = crate::data::load(self.dataset, split, data_dir).map_err(|source| {
                SessionError::Load {
                    dataset: self.dataset,
                    split,
                    source,
                }
            })?;
            Ok::<_, SessionError>(set.limited(limit, self.seed)?)
        };
        Ok((
            load(Split::Train, self.train_limit)?,
            load(Split::Test, self.test_limit)?,
        ))
    }
}

/// The run a caller asks for: the configuration and model a fresh run starts with, and that a
/// run already in the folder must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// How to train.
    pub config: TrainConfig,
    /// Which network.
    pub architecture: Architecture,
    /// Normalise inputs with the dataset's mean and std (`false`: raw `[0, 1]` pixels).
    pub normalize: bool,
}

impl RunRequest {
    /// This request for a run on `dataset`: the configuration names it.
    pub fn on_dataset(&self, dataset: DatasetKind) -> Self {
        let mut request = self.clone();
        request.config.dataset = dataset.to_string();
        request
    }
}

/// A run ready to train: fresh, or reopened from its folder.
pub struct Run {
    /// The model.
    pub classifier: Classifier,
    /// Optimiser state.
    pub slots: ParamSlots,
    /// Position and history.
    pub state: TrainState,
    /// Whether the run was reopened from its folder rather than started.
    pub resumed: bool,
}

/// How a session of training ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Every epoch was already done when the run was opened; nothing was trained.
    AlreadyFinished,
    /// The remaining epochs were trained.
    Finished,
    /// Its [`Progress`] stopped the run; it is checkpointed and resumable.
    Interrupted,
}

/// Opens the run in `out` for `request`: reopens the saved run when `resume` is asked or when
/// `out` holds a run of the same configuration and architecture; refuses a different one
/// ([`SessionError::OtherRun`]); else starts a fresh model shaped like `shape_source` (its image
/// shape and class names), with `dataset`'s normalisation if asked, initialised from the
/// configuration's seed. Tells `progress` the run is open ([`TrainEvent::RunOpened`]).
pub fn open_run(
    out: &Path,
    resume: bool,
    request: &RunRequest,
    dataset: DatasetKind,
    shape_source: &ImageSet,
    device: &Device,
    progress: &mut impl for<'e> Progress<TrainEvent<'e>>,
) -> Result<Run, SessionError> {
    let run = open(out, resume, request, dataset, shape_source, device)?;
    progress.report(TrainEvent::RunOpened { out, run: &run });
    Ok(run)
}

fn open(
    out: &Path,
    resume: bool,
    request: &RunRequest,
    dataset: DatasetKind,
    shape_source: &ImageSet,
    device: &Device,
) -> Result<Run, SessionError> {
    request.config.validate()?;
    let state_file = out.join(files::RESUME_DIR).join(files::STATE);
    if resume || state_file.exists() {
        let (classifier, slots, state) = load_resume::<Classifier>(out, device)?;
        if !resume
            && (state.config != request.config
                || classifier.spec.architecture != request.architecture)
        {
            return Err(SessionError::OtherRun {
                path: out.to_path_buf(),
            });
        }
        return Ok(Run {
            classifier,
            slots,
            state,
            resumed: true,
        });
    }
    let shape = shape_source.shape();
    let spec = ModelSpec {
        architecture: request.architecture.clone(),
        input_shape: [shape.channels, shape.height, shape.width],
        class_names: shape_source.class_names().to_vec(),
        normalization: request
            .normalize
            .then(|| Normalization::for_kind(dataset).for_channels(shape.channels)),
    };
    let train_device = device.clone().autodiff();
    train_device.seed(request.config.seed);
    Ok(Run {
        classifier: Classifier::new(spec, &train_device)?,
        slots: ParamSlots::new(),
        state: TrainState::new(request.config.clone()),
        resumed: false,
    })
}

/// Trains `run` through its remaining epochs with `rule` over a training set of `n_train`
/// images, evaluating on `test_set` and checkpointing into `out`, until the end or until
/// `progress` stops it. `beside` names what trains with the model, for the announcement. A run
/// whose epochs are all done is left as it is.
#[allow(clippy::too_many_arguments)]
pub fn train_to_end(
    run: &mut Run,
    rule: &mut impl StepRule,
    beside: Option<&str>,
    n_train: usize,
    test_set: &ImageSet,
    out: &Path,
    device: &Device,
    progress: &mut impl for<'e> Progress<TrainEvent<'e>>,
) -> Result<SessionOutcome, SessionError> {
    let outcome = if run.state.finished() {
        SessionOutcome::AlreadyFinished
    } else {
        progress.report(TrainEvent::TrainingStarts {
            run,
            beside,
            train_images: n_train,
            test_images: test_set.len(),
        });
        let outcome = super::run(
            &mut run.classifier,
            &mut run.slots,
            &mut run.state,
            n_train,
            test_set,
            out,
            device,
            progress,
            rule,
        )?;
        match outcome {
            TrainOutcome::Finished => SessionOutcome::Finished,
            TrainOutcome::Interrupted => SessionOutcome::Interrupted,
        }
    };
    progress.report(TrainEvent::TrainingEnded {
        out,
        outcome,
        state: &run.state,
    });
    Ok(outcome)
}

/// [`train_to_end`] with plain cross-entropy ([`Supervised`](super::Supervised)) on `train_set`.
pub fn train_supervised_to_end(
    run: &mut Run,
    train_set: &ImageSet,
    test_set: &ImageSet,
    out: &Path,
    device: &Device,
    progress: &mut impl for<'e> Progress<TrainEvent<'e>>,
) -> Result<SessionOutcome, SessionError> {
    let config = run.state.config.clone();
    let mut rule = super::Supervised {
        train_set,
        config: &config,
    };
    train_to_end(
        run,
        &mut rule,
        None,
        train_set.len(),
        test_set,
        out,
        device,
        progress,
    )
}

/// The files a training run writes in its folder, relative to it.
pub fn run_files() -> impl Iterator<Item = PathBuf> {
    [files::MODEL, files::BEST, files::AVERAGE, files::METRICS]
        .into_iter()
        .map(PathBuf::from)
        .chain(
            [files::STATE, files::MODEL, files::OPTIMIZER]
                .into_iter()
                .map(|name| Path::new(files::RESUME_DIR).join(name)),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::test_data::{tiny_cnn_spec, two_class_8x8};
    use crate::progress::Quiet;
    use crate::train::test_util::{scratch, tiny_config};

    fn request(epochs: usize) -> RunRequest {
        RunRequest {
            config: TrainConfig {
                dataset: DatasetKind::Mnist.to_string(),
                ..tiny_config(epochs, 8)
            },
            architecture: tiny_cnn_spec().architecture,
            normalize: false,
        }
    }

    #[test]
    fn a_run_is_started_continued_when_asked_again_and_another_is_refused() {
        let out = scratch("session", "open");
        let device = Device::default();
        let data = two_class_8x8(16, |i| (i % 7) as f32 / 7.0);
        let open = |resume, request: &RunRequest| {
            open_run(
                &out,
                resume,
                request,
                DatasetKind::Mnist,
                &data,
                &device,
                &mut Quiet,
            )
        };
        let mut run = open(false, &request(1)).unwrap();
        assert!(!run.resumed);
        let outcome =
            train_supervised_to_end(&mut run, &data, &data, &out, &device, &mut Quiet).unwrap();
        assert_eq!(outcome, SessionOutcome::Finished);

        // The same request reopens the finished run, which has nothing left to train.
        let mut again = open(false, &request(1)).unwrap();
        assert!(again.resumed);
        let outcome =
            train_supervised_to_end(&mut again, &data, &data, &out, &device, &mut Quiet).unwrap();
        assert_eq!(outcome, SessionOutcome::AlreadyFinished);

        // Another configuration is refused, unless the saved run is resumed as it is.
        assert!(matches!(
            open(false, &request(2)),
            Err(SessionError::OtherRun { .. })
        ));
        let resumed = open(true, &request(2)).unwrap();
        assert_eq!(resumed.state.config, request(1).config);

        // Resuming takes the saved run's data; a new run takes the requested.
        let asked = DataSelection {
            dataset: DatasetKind::FashionMnist,
            train_limit: Some(3),
            test_limit: None,
            seed: 7,
        };
        let saved = asked.or_saved(&out, true).unwrap();
        assert_eq!(
            saved,
            DataSelection::requested(DatasetKind::Mnist, &request(1).config)
        );
        assert_eq!(asked.or_saved(&out, false).unwrap(), asked);
        std::fs::remove_dir_all(&out).unwrap();
    }
}
