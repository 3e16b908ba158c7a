//! Backdoor poisoning attacks, as BackdoorBench mounts them.
//!
//! An attack is one file implementing [`BackdoorAttack`]: how to put the trigger on an image,
//! and (where it differs from the default) which training samples to poison and how. The
//! functions here turn an attack into a poisoned training set and a triggered test set; the
//! `vigil attack` command trains on the former and measures attack success on the latter.

pub mod badnets;
pub mod blended;
pub mod dataset;
pub mod experiment;
pub mod host_net;
pub mod input_aware;
pub mod label_consistent;
pub mod low_frequency;
pub mod record;
pub mod registry;
pub mod selection;
pub mod sig;
pub mod ssba;
pub mod trojannn;
pub mod wanet;

pub use badnets::{BadNets, Patch, PatchMask, PatchPattern, PatchPosition};
pub use blended::Blended;
pub use dataset::{TriggeredTestSet, poison_training_set, triggered_test_set};
pub use experiment::{PoisonedData, SECOND_SEED_OFFSET, measure, poison, poison_two};
pub use input_aware::{InputAware, InputAwareConfig, InputAwareOutcome, train_input_aware};
pub use label_consistent::{LabelConsistent, LcPerturbation};
pub use low_frequency::{LfSearch, LowFrequency};
pub use registry::{ATTACK_NAMES, AttackParams, BuildContext};
pub use selection::{CandidatePool, select_poison_indices, select_poison_indices_from_pool};
pub use sig::Sig;
pub use ssba::{Ssba, SsbaTraining};
pub use trojannn::{TrojanNn, TrojanSearch};
pub use wanet::{WaNet, WaNetConfig};

use serde::{Deserialize, Serialize};

use crate::data::{DataError, ImageSet, ImageShape, Label};

/// Errors of mounting an attack.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    /// A parameter is out of range or inconsistent with the data.
    #[error("invalid {attack} configuration: {reason}")]
    InvalidConfig {
        /// Attack name.
        attack: String,
        /// What is wrong.
        reason: String,
    },
    /// A trigger pattern (e.g. a user PNG) could not be used.
    #[error("trigger pattern {path}: {reason}")]
    Pattern {
        /// File.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A model the attack is computed against could not be loaded.
    #[error("cannot use model {path}: {reason}")]
    Model {
        /// File.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The data could not be subset or relabelled.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Training with the attack (Input-Aware's joint run) failed or could not resume.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
}

/// Which label a triggered input should receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TargetRule {
    /// Every triggered input goes to `target` (BackdoorBench default, target 0).
    AllToOne {
        /// The target class.
        target: Label,
    },
    /// A triggered input of class `y` goes to `(y + 1) mod K` (BackdoorBench's all-to-all).
    AllToAll,
    /// Any class but the true one: an input attack's goal (adversarial records,
    /// [`crate::attack::adversarial`]), never a backdoor's; poisoning refuses it.
    Untargeted,
}

impl TargetRule {
    /// The attacker's label for an input whose true label is `label` (untargeted: no single
    /// label, so the input keeps its own; poisoning refuses that rule before asking).
    pub fn target_of(&self, label: Label, num_classes: usize) -> Label {
        match self {
            TargetRule::AllToOne { target } => *target,
            TargetRule::AllToAll => ((usize::from(label) + 1) % num_classes) as Label,
            TargetRule::Untargeted => label,
        }
    }

    /// Whether a test input of true class `label` belongs in the backdoor test set (ASR is
    /// measured on non-target-class inputs only; for all-to-all every class qualifies).
    pub fn in_backdoor_test_set(&self, label: Label) -> bool {
        match self {
            TargetRule::AllToOne { target } => label != *target,
            TargetRule::AllToAll | TargetRule::Untargeted => true,
        }
    }
}

/// Whether poisoned samples are relabelled (poison-label) or keep their true, target-class
/// label (clean-label: SIG, label-consistent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelMode {
    /// Poisoned samples are relabelled to the target.
    PoisonLabel,
    /// Poisoned samples are drawn from the target class and keep their label.
    CleanLabel,
}

/// How one poisoned training sample is altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoisonKind {
    /// The training-time trigger is applied and the label set to the plan's label.
    Triggered,
    /// A noise version of the trigger is applied and the true label kept (WaNet's noise
    /// mode: teaches the model to ignore warps that are not exactly the trigger).
    Noise,
}

/// One poisoned training sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonedSample {
    /// Index into the clean training set.
    pub index: usize,
    /// Label it is trained with.
    pub label: Label,
    /// How its image is altered.
    pub kind: PoisonKind,
}

/// Which training samples an attack alters, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonPlan {
    /// The altered samples, sorted by index, each index at most once.
    pub samples: Vec<PoisonedSample>,
}

/// A backdoor attack: a trigger and a poisoning rule.
pub trait BackdoorAttack: Send + Sync {
    /// Registry name (`badnets`, `blended`, ...).
    fn name(&self) -> &'static str;

    /// Whether poisoned samples are relabelled or keep their label.
    fn label_mode(&self) -> LabelMode {
        LabelMode::PoisonLabel
    }

    /// Writes the test-time triggered version of `image` (`C x H x W`, values in `[0, 1]`)
    /// into `out` (same length). `sample` is the image's index in its dataset, for
    /// sample-specific triggers. Output values must stay in `[0, 1]`.
    fn apply_trigger(&self, image: &[f32], shape: ImageShape, sample: usize, out: &mut [f32]);

    /// Writes the training-time version of a poisoned sample. Defaults to the test-time
    /// trigger; attacks with a distinct training trigger (label-consistent) or noise samples
    /// (WaNet) override it.
    fn poison_training_image(
        &self,
        image: &[f32],
        shape: ImageShape,
        sample: usize,
        kind: PoisonKind,
        out: &mut [f32],
    ) {
        let _ = kind;
        self.apply_trigger(image, shape, sample, out);
    }

    /// Which training samples to poison. The default is BackdoorBench's: see
    /// [`select_poison_indices`].
    fn plan(
        &self,
        train: &ImageSet,
        rule: TargetRule,
        rate: f64,
        seed: u64,
    ) -> Result<PoisonPlan, AttackError> {
        default_plan(train, rule, self.label_mode(), rate, seed)
    }
}

/// Whether `image` and `out` both hold one image of `shape`. Triggers cannot return errors
/// (callers have checked shapes), so on a mismatch they leave `out` untouched instead of
/// panicking; this is the one place that check is written.
pub(crate) fn fits(image: &[f32], shape: ImageShape, out: &[f32]) -> bool {
    image.len() == shape.num_values() && out.len() == image.len()
}

/// The plan of a plain attack: the samples [`select_poison_indices`] picks, each triggered and
/// labelled by `rule` (poison-label) or left with its own label (clean-label).
pub fn default_plan(
    train: &ImageSet,
    rule: TargetRule,
    mode: LabelMode,
    rate: f64,
    seed: u64,
) -> Result<PoisonPlan, AttackError> {
    let indices = select_poison_indices(train, rule, mode, rate, seed)?;
    let k = train.num_classes();
    let samples = indices
        .into_iter()
        .map(|index| {
            let own = train.label(index);
            PoisonedSample {
                index,
                label: match mode {
                    LabelMode::PoisonLabel => rule.target_of(own, k),
                    LabelMode::CleanLabel => own,
                },
                kind: PoisonKind::Triggered,
            }
        })
        .collect();
    Ok(PoisonPlan { samples })
}

// helper additions

/// Largest width or height accepted for a user-supplied trigger image, in pixels: a guard
/// against decompression bombs (trigger images are at most a few hundred pixels wide).
pub(crate) const MAX_PATTERN_SIDE: u32 = 4096;

/// The 8-bit level (0..=255) BackdoorBench's uint8 image holds for a pixel value in `[0, 1]`.
///
/// vigil's loaders store `byte / 255`, so `value * 255` lies within float error of the byte:
/// it is rounded when within `1e-3` of an integer, which recovers the byte exactly; other
/// values (from non-8-bit data) are truncated, as numpy's `np.uint32(img)` does. NaN maps to 0.
pub(crate) fn u8_level(value: f32) -> f64 {
    let scaled = (f64::from(value) * 255.0).clamp(0.0, 255.0);
    if scaled.is_nan() {
        return 0.0;
    }
    let nearest = scaled.round();
    if (scaled - nearest).abs() < 1e-3 {
        nearest
    } else {
        scaled.floor()
    }
}

/// A value on the 0..255 scale stored the way BackdoorBench stores a triggered image,
/// `np.clip(v, 0, 255).astype(np.uint8)` (clip, then truncate toward zero), returned as the
/// `[0, 1]` value vigil's loaders would read back (`byte / 255`). NaN maps to 0.
pub(crate) fn truncated_u8_unit(value_255: f64) -> f32 {
    let level = if value_255.is_nan() {
        0
    } else {
        value_255.clamp(0.0, 255.0) as u8
    };
    f32::from(level) / 255.0
}

/// A user image decoded into a trigger pattern: `C x h x w` values in `[0, 1]` and the same
/// number of opacities in `[0, 1]` (from the image's alpha channel, 1 where it has none).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecodedPattern {
    /// Shape of the pattern.
    pub(crate) shape: ImageShape,
    /// Values, `C x h x w`, in `[0, 1]`.
    pub(crate) values: Vec<f32>,
    /// Opacity of every value, `C x h x w`, in `[0, 1]`.
    pub(crate) alpha: Vec<f32>,
}

/// Decodes a PNG (or JPEG) trigger image from `bytes`, resizes it to `size` (height, width)
/// with `filter` when given and different, and converts it to `channels` (1: ITU-R 601-2 luma,
/// `L = (19595 R + 38470 G + 7471 B + 2^15) >> 16` as PIL's `convert("L")`; 3: RGB).
/// `origin` names the bytes in errors. Every failure is an [`AttackError::Pattern`] or
/// [`AttackError::InvalidConfig`]; nothing panics on bad input.
pub(crate) fn decode_pattern(
    bytes: &[u8],
    channels: usize,
    size: Option<(usize, usize)>,
    filter: image::imageops::FilterType,
    origin: &std::path::Path,
) -> Result<DecodedPattern, AttackError> {
    let pattern_error = |reason: String| AttackError::Pattern {
        path: origin.to_path_buf(),
        reason,
    };
    if channels != 1 && channels != 3 {
        return Err(AttackError::InvalidConfig {
            attack: "trigger pattern".to_string(),
            reason: format!("{channels} channels requested; trigger images support 1 or 3"),
        });
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| pattern_error(format!("cannot read image: {err}")))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_PATTERN_SIDE);
    limits.max_image_height = Some(MAX_PATTERN_SIDE);
    reader.limits(limits);
    let decoded = reader
        .decode()
        .map_err(|err| pattern_error(format!("cannot decode image: {err}")))?;
    let mut rgba = decoded.to_rgba8();
    if let Some((height, width)) = size {
        let valid = |side: usize| side > 0 && side <= MAX_PATTERN_SIDE as usize;
        if !valid(height) || !valid(width) {
            return Err(pattern_error(format!(
                "cannot resize to {height}x{width} (each side must be 1..={MAX_PATTERN_SIDE})"
            )));
        }
        let (height, width) = (height as u32, width as u32);
        if rgba.dimensions() != (width, height) {
            rgba = image::imageops::resize(&rgba, width, height, filter);
        }
    }
    let (width, height) = rgba.dimensions();
    let shape = ImageShape::new(channels, height as usize, width as usize);
    let plane = shape.plane_len();
    let mut values = vec![0.0; shape.num_values()];
    let mut alpha = vec![0.0; shape.num_values()];
    for (pixel_index, pixel) in rgba.pixels().enumerate() {
        let [red, green, blue, opacity] = pixel.0;
        let levels = [red, green, blue];
        for channel in 0..channels {
            let level = if channels == 1 {
                pil_luma(red, green, blue)
            } else {
                levels[channel]
            };
            values[channel * plane + pixel_index] = f32::from(level) / 255.0;
            alpha[channel * plane + pixel_index] = f32::from(opacity) / 255.0;
        }
    }
    Ok(DecodedPattern {
        shape,
        values,
        alpha,
    })
}

/// PIL's `convert("L")` luma of an RGB pixel (ITU-R 601-2, fixed point, rounded).
fn pil_luma(red: u8, green: u8, blue: u8) -> u8 {
    let weighted = 19595 * u32::from(red) + 38470 * u32::from(green) + 7471 * u32::from(blue);
    ((weighted + 0x8000) >> 16) as u8
}
