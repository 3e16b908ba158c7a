//! Backdoor poisoning attacks, as BackdoorBench mounts them.
//!
//! An attack is one file implementing [`BackdoorAttack`]: how to put the trigger on an image,
//! and (where it differs from the default) which training samples to poison and how. The
//! functions here turn an attack into a poisoned training set and a triggered test set; the
//! `vigil attack` command trains on the former and measures attack success on the latter.

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
    /// The data could not be subset or relabelled.
    #[error(transparent)]
    Data(#[from] DataError),
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
}

impl TargetRule {
    /// The attacker's label for an input whose true label is `label`.
    pub fn target_of(&self, label: Label, num_classes: usize) -> Label {
        match self {
            TargetRule::AllToOne { target } => *target,
            TargetRule::AllToAll => ((usize::from(label) + 1) % num_classes) as Label,
        }
    }

    /// Whether a test input of true class `label` belongs in the backdoor test set (ASR is
    /// measured on non-target-class inputs only; for all-to-all every class qualifies).
    pub fn in_backdoor_test_set(&self, label: Label) -> bool {
        match self {
            TargetRule::AllToOne { target } => label != *target,
            TargetRule::AllToAll => true,
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
