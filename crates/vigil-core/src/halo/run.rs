//! A training run as one call ([`train_run`]): plain cross-entropy, or one rung of the robust
//! OOD ladder with its held-out validation part, letter outliers and helper; what `vigil train`
//! and `vigil benchmark ood --train` run.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{HaloConfig, HaloError, RobustSettings, RobustStep};
use crate::attack::pgd::frozen;
use crate::checkpoint::{self, CheckpointError};
use crate::data::glyphs::{GlyphStyle, LetterSet};
use crate::data::{DataError, DatasetKind, ImageSet};
use crate::io::{IoError, check_outputs, check_writable_dir};
use crate::models::Classifier;
use crate::progress::Progress;
use crate::train::{
    DataSelection, RunRequest, SessionError, SessionOutcome, TrainEvent, open_run, run_files,
    train_supervised_to_end, train_to_end,
};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainRunError {
    /// The run folder cannot be written, or an output would replace the helper.
    #[error(transparent)]
    Io(#[from] IoError),
    /// HALO was asked without its helper.
    #[error("--objective halo needs --helper, a model trained with --objective std")]
    MissingHelper,
    /// The validation part would take every training image.
    #[error("--validation-size {size} leaves no training images (of {train_images})")]
    ValidationTooLarge {
        /// Images asked for validation.
        size: usize,
        /// Images in the training set.
        train_images: usize,
    },
    /// The helper checkpoint cannot be loaded.
    #[error("loading the helper {}", .path.display())]
    Helper {
        /// The checkpoint.
        path: PathBuf,
        /// Why.
        #[source]
        source: CheckpointError,
    },
    /// The helper does not fit the model it helps.
    #[error(
        "the helper {} takes {helper_shape:?} images and {helper_classes} classes; the model {model_shape:?} and {model_classes}",
        .path.display()
    )]
    HelperMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// The helper's input shape.
        helper_shape: [usize; 3],
        /// The helper's classes.
        helper_classes: usize,
        /// The model's input shape.
        model_shape: [usize; 3],
        /// The model's classes.
        model_classes: usize,
    },
    /// Letter outliers cannot be drawn at the training images' shape.
    #[error(
        "letter outliers are square grayscale images; the training images are {channels}x{height}x{width}"
    )]
    OutlierShape {
        /// Channels of the training images.
        channels: usize,
        /// Their height.
        height: usize,
        /// Their width.
        width: usize,
    },
    /// The data cannot be split, or the outliers drawn.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The robust settings cannot work.
    #[error(transparent)]
    Halo(#[from] HaloError),
    /// Loading the data, opening the run or training failed.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// A training run as data: the data, the run asked for and, for a rung of the robust ladder,
/// its robust settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRunConfig {
    /// The dataset (the configuration's `dataset` is set from this).
    pub dataset: DatasetKind,
    /// Folder of the dataset's files (`None`: the default places).
    pub data_dir: Option<PathBuf>,
    /// The run: configuration (with its data limits and seed; its `robust` is set from
    /// `robust`), architecture, normalisation.
    pub training: RunRequest,
    /// Robust training; `None` for plain cross-entropy.
    pub robust: Option<RobustRequest>,
    /// Folder of the font files the letter outliers are drawn from (also for a resumed run).
    pub font_dir: PathBuf,
    /// Continue the run in the folder with its own configuration, whatever this one says.
    pub resume: bool,
}

/// Robust training as asked; [`RobustRequest::settings`] turns it into the settings a run
/// records once the training set is known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustRequest {
    /// The objective, its weights and its attack (the seed is set to the run's).
    pub halo: HaloConfig,
    /// The helper checkpoint, a model trained with the STD objective (HALO only).
    pub helper: Option<PathBuf>,
    /// Outlier images drawn per (font, letter).
    pub outlier_variants: usize,
    /// Training images held out for validation (`None`: a tenth of the training set).
    pub validation_size: Option<usize>,
}

impl RobustRequest {
    /// The settings of a run with seed `seed` on `train_images` training images; fails if they
    /// cannot work (HALO without a helper, no training image left beside the validation part).
    pub fn settings(
        &self,
        seed: u64,
        train_images: usize,
    ) -> Result<RobustSettings, TrainRunError> {
        let mut halo = self.halo;
        halo.seed = seed;
        halo.validate()?;
        let objective = halo.objective;
        if objective.uses_helper() && self.helper.is_none() {
            return Err(TrainRunError::MissingHelper);
        }
        let validation_size = self.validation_size.unwrap_or(train_images / 10);
        if validation_size >= train_images {
            return Err(TrainRunError::ValidationTooLarge {
                size: validation_size,
                train_images,
            });
        }
        Ok(RobustSettings {
            halo,
            outliers: objective
                .uses_outliers()
                .then(|| LetterSet::TrainingOutliers.name().to_string()),
            outlier_variants: self.outlier_variants,
            helper: objective
                .uses_helper()
                .then(|| self.helper.as_ref().map(|p| p.display().to_string()))
                .flatten(),
            validation_size,
        })
    }
}

/// Trains the run `config` asks for in the folder `out` (fresh, or continued as
/// [`open_run`] decides), to its end or until `progress` stops it. A robust run keeps its own
/// settings when continued: validation split, outliers and helper.
pub fn train_run(
    config: &TrainRunConfig,
    out: &Path,
    device: &Device,
    progress: &mut impl for<'e> Progress<TrainEvent<'e>>,
) -> Result<SessionOutcome, TrainRunError> {
    check_writable_dir(out)?;
    let helper_file = config.robust.as_ref().and_then(|r| r.helper.as_ref());
    check_outputs(helper_file, run_files().map(|name| out.join(name)))?;
    let selection = DataSelection::requested(config.dataset, &config.training.config)
        .or_saved(out, config.resume)?;
    let mut request = config.training.on_dataset(selection.dataset);
    request.config.validate().map_err(SessionError::from)?;
    let (train_set, test_set) = selection.load(config.data_dir.as_deref())?;
    request.config.robust = match &config.robust {
        Some(robust) => Some(robust.settings(selection.seed, train_set.len())?),
        None => None,
    };
    let mut run = open_run(
        out,
        config.resume,
        &request,
        selection.dataset,
        &train_set,
        device,
        progress,
    )?;
    // The run's own settings (a resumed run keeps its split, outliers and helper).
    let run_config = run.state.config.clone();
    let Some(settings) = run_config.robust.clone() else {
        let outcome =
            train_supervised_to_end(&mut run, &train_set, &test_set, out, device, progress)?;
        return Ok(outcome);
    };
    let (held_out, kept) = train_set.random_split(settings.validation_size, run_config.seed)?;
    let validation = train_set.subset(&held_out);
    let train_part = train_set.subset(&kept);
    let outliers = match &settings.outliers {
        Some(_) => {
            let set = outlier_set(&config.font_dir, &settings, &train_part, run_config.seed)?;
            progress.report(TrainEvent::OutliersDrawn {
                images: set.len(),
                font_dir: &config.font_dir,
            });
            Some(set)
        }
        None => None,
    };
    let helper = match &settings.helper {
        Some(path) => Some(load_helper(Path::new(path), &run.classifier, device)?),
        None => None,
    };
    let mut rule = RobustStep::new(
        &train_part,
        outliers.as_ref(),
        helper,
        (!validation.is_empty()).then_some(&validation),
        &run_config,
        settings.halo,
        run.state.step,
    )?;
    rule.resume_weight_average(out, run.state.step)?;
    let beside = format!("the {} objective", settings.halo.objective.name());
    Ok(train_to_end(
        &mut run,
        &mut rule,
        Some(&beside),
        train_part.len(),
        &test_set,
        out,
        device,
        progress,
    )?)
}

/// The helper at `path`, frozen on the training device, checked against the model it helps.
fn load_helper(
    path: &Path,
    model: &Classifier,
    device: &Device,
) -> Result<Classifier, TrainRunError> {
    let device = device.clone().autodiff();
    let helper =
        checkpoint::load_classifier(path, &device).map_err(|source| TrainRunError::Helper {
            path: path.to_path_buf(),
            source,
        })?;
    if helper.spec.input_shape != model.spec.input_shape
        || helper.spec.num_classes() != model.spec.num_classes()
    {
        return Err(TrainRunError::HelperMismatch {
            path: path.to_path_buf(),
            helper_shape: helper.spec.input_shape,
            helper_classes: helper.spec.num_classes(),
            model_shape: model.spec.input_shape,
            model_classes: model.spec.num_classes(),
        });
    }
    Ok(frozen(&helper, &device))
}

/// The letters drawn as outliers, checked to fit the training images.
fn outlier_set(
    font_dir: &Path,
    settings: &RobustSettings,
    train: &ImageSet,
    seed: u64,
) -> Result<ImageSet, TrainRunError> {
    let shape = train.shape();
    let style = GlyphStyle {
        side: shape.height,
        ..GlyphStyle::mnist_like(settings.outlier_variants, seed)
    };
    if shape.channels != 1 || shape.height != shape.width {
        return Err(TrainRunError::OutlierShape {
            channels: shape.channels,
            height: shape.height,
            width: shape.width,
        });
    }
    Ok(LetterSet::TrainingOutliers.render(font_dir, &style)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::halo::Objective;
    use crate::models::Architecture;
    use crate::progress::Quiet;
    use crate::train::test_util::{scratch, write_idx};
    use crate::train::{TrainConfig, files};

    fn request(objective: Objective, helper: Option<&str>) -> RobustRequest {
        RobustRequest {
            halo: HaloConfig::reference_defaults(objective),
            helper: helper.map(PathBuf::from),
            outlier_variants: 2,
            validation_size: None,
        }
    }

    #[test]
    fn settings_take_the_run_seed_a_tenth_for_validation_and_refuse_what_cannot_work() {
        let settings = request(Objective::Oe, Some("ignored.safetensors"))
            .settings(9, 100)
            .unwrap();
        assert_eq!(settings.halo.seed, 9);
        assert_eq!(settings.validation_size, 10);
        assert_eq!(settings.helper, None, "only HALO keeps a helper");
        assert!(settings.outliers.is_some());
        assert!(
            request(Objective::Std, None)
                .settings(0, 100)
                .unwrap()
                .outliers
                .is_none()
        );

        let halo = request(Objective::Halo, Some("std/model.safetensors"));
        assert_eq!(
            halo.settings(0, 100).unwrap().helper.as_deref(),
            Some("std/model.safetensors")
        );
        assert!(matches!(
            request(Objective::Halo, None).settings(0, 100),
            Err(TrainRunError::MissingHelper)
        ));
        let everything = RobustRequest {
            validation_size: Some(100),
            ..request(Objective::Std, None)
        };
        assert!(matches!(
            everything.settings(0, 100),
            Err(TrainRunError::ValidationTooLarge {
                size: 100,
                train_images: 100
            })
        ));
    }

    #[test]
    fn a_robust_run_trains_keeps_its_best_epoch_and_is_left_alone_once_finished() {
        let dir = scratch("halo-run", "std");
        write_idx(&dir, "train", 40);
        write_idx(&dir, "t10k", 20);
        let out = dir.join("std");
        let mut halo = HaloConfig::reference_defaults(Objective::Std);
        halo.steps = 1;
        let config = TrainRunConfig {
            dataset: DatasetKind::FashionMnist,
            data_dir: Some(dir.clone()),
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
            robust: Some(RobustRequest {
                halo,
                ..request(Objective::Std, None)
            }),
            font_dir: dir.clone(),
            resume: false,
        };
        let device = Device::default();
        let outcome = train_run(&config, &out, &device, &mut Quiet).unwrap();
        assert_eq!(outcome, SessionOutcome::Finished);
        assert!(out.join(files::BEST).is_file());
        let state = crate::train::saved_state(&out).unwrap().unwrap();
        let settings = state.config.robust.unwrap();
        assert_eq!(settings.validation_size, 4, "a tenth of 40 images");
        assert!(state.history[0].validation_loss.is_some());
        assert_eq!(
            train_run(&config, &out, &device, &mut Quiet).unwrap(),
            SessionOutcome::AlreadyFinished
        );

        // HALO without its helper is refused before a run is opened.
        let halo_out = dir.join("halo");
        let no_helper = TrainRunConfig {
            robust: Some(request(Objective::Halo, None)),
            ..config.clone()
        };
        assert!(matches!(
            train_run(&no_helper, &halo_out, &device, &mut Quiet),
            Err(TrainRunError::MissingHelper)
        ));
        assert!(!halo_out.join(files::MODEL).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
