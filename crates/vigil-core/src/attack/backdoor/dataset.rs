//! Turning an attack into data: the poisoned training set and the triggered test set.
//!
//! Mirrors BackdoorBench's `prepro_cls_DatasetBD_v2` (`utils/bd_dataset_v2.py`, commit
//! `3f4b1a92ed6c13e0cd21534df56155cf3ef71f87`): the poisoned training set is the clean set
//! with the planned samples' images and labels replaced; the backdoor test set holds the
//! triggered version of every test image that qualifies (`test_poison_index`, i.e. all
//! non-target-class images for all-to-one and all images for all-to-all), labelled with the
//! attacker's target, and remembers which clean image each came from.

use super::{AttackError, BackdoorAttack, PoisonPlan, TargetRule};
use crate::data::{ImageSet, Label};

/// A copy of `train` in which every sample of `plan` has its image replaced by
/// `attack.poison_training_image(..)` (with the sample's [`super::PoisonKind`]) and its label
/// set to the plan's label. Other samples are untouched.
///
/// Fails with [`AttackError::InvalidConfig`] if the plan names an index outside `train` or
/// twice, or the attack writes a value outside `[0, 1]` (or NaN); with [`AttackError::Data`] if
/// a planned label is not a class of `train`.
pub fn poison_training_set(
    train: &ImageSet,
    attack: &dyn BackdoorAttack,
    plan: &PoisonPlan,
) -> Result<ImageSet, AttackError> {
    check_plan(train, attack, plan)?;
    let shape = train.shape();
    let mut poisoned = train.clone();
    let mut altered = vec![0.0; shape.num_values()];
    for sample in &plan.samples {
        attack.poison_training_image(
            train.image(sample.index),
            shape,
            sample.index,
            sample.kind,
            &mut altered,
        );
        check_unit_range(attack, &altered, sample.index)?;
        poisoned.image_mut(sample.index).copy_from_slice(&altered);
        poisoned.set_label(sample.index, sample.label)?;
    }
    Ok(poisoned)
}

/// The backdoor test set: triggered copies of the qualifying test images, labelled with the
/// attacker's target, plus where each came from.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggeredTestSet {
    /// Triggered images; labels are the attacker's targets (`rule.target_of(original label)`).
    pub images: ImageSet,
    /// For each triggered image, the index of its clean original in the test set.
    pub original_indices: Vec<usize>,
    /// For each triggered image, the true label of its clean original.
    pub original_labels: Vec<Label>,
    /// For each triggered image, which of the record's backdoors made it: 0 for the record's
    /// attack, 1 for its second backdoor ([`super::experiment::poison_two`]).
    pub mechanisms: Vec<u8>,
}

impl TriggeredTestSet {
    /// Appends `other`'s images (same shape and classes) as made by backdoor `mechanism`.
    pub fn append_mechanism(
        &mut self,
        other: &TriggeredTestSet,
        mechanism: u8,
    ) -> Result<(), AttackError> {
        self.images.append(&other.images)?;
        self.original_indices
            .extend_from_slice(&other.original_indices);
        self.original_labels
            .extend_from_slice(&other.original_labels);
        self.mechanisms
            .extend(std::iter::repeat_n(mechanism, other.images.len()));
        Ok(())
    }

    /// Positions of the images made by backdoor `mechanism`.
    pub fn positions_of(&self, mechanism: u8) -> Vec<usize> {
        (0..self.mechanisms.len())
            .filter(|&i| self.mechanisms[i] == mechanism)
            .collect()
    }
}

/// Triggers (with [`BackdoorAttack::apply_trigger`]) every test image whose label satisfies
/// `rule.in_backdoor_test_set`, in test-set order: for all-to-one the non-target-class
/// images (BackdoorBench measures ASR on these only), for all-to-all every image.
///
/// Fails with [`AttackError::InvalidConfig`] if an all-to-one target is not a class of `test`
/// or the attack writes a value outside `[0, 1]` (or NaN).
pub fn triggered_test_set(
    test: &ImageSet,
    attack: &dyn BackdoorAttack,
    rule: TargetRule,
) -> Result<TriggeredTestSet, AttackError> {
    check_target(test, attack, rule)?;
    let shape = test.shape();
    let num_classes = test.num_classes();
    let original_indices: Vec<usize> = (0..test.len())
        .filter(|&index| rule.in_backdoor_test_set(test.label(index)))
        .collect();
    let mut pixels = vec![0.0; original_indices.len() * shape.num_values()];
    let mut original_labels = Vec::with_capacity(original_indices.len());
    let mut targets = Vec::with_capacity(original_indices.len());
    for (&index, out) in original_indices
        .iter()
        .zip(pixels.chunks_exact_mut(shape.num_values()))
    {
        attack.apply_trigger(test.image(index), shape, index, out);
        check_unit_range(attack, out, index)?;
        let label = test.label(index);
        original_labels.push(label);
        targets.push(rule.target_of(label, num_classes));
    }
    let source = format!("{} triggered by {}", test.source(), attack.name());
    let images = ImageSet::new(pixels, targets, shape, test.class_names().to_vec(), source)?;
    Ok(TriggeredTestSet {
        mechanisms: vec![0; images.len()],
        images,
        original_indices,
        original_labels,
    })
}

/// Checks that every planned index exists and occurs once, so a bad plan fails cleanly.
fn check_plan(
    train: &ImageSet,
    attack: &dyn BackdoorAttack,
    plan: &PoisonPlan,
) -> Result<(), AttackError> {
    let mut seen = vec![false; train.len()];
    for sample in &plan.samples {
        let Some(slot) = seen.get_mut(sample.index) else {
            return Err(invalid(
                attack,
                format!(
                    "plan names sample {} but the training set has {}",
                    sample.index,
                    train.len()
                ),
            ));
        };
        if std::mem::replace(slot, true) {
            return Err(invalid(
                attack,
                format!("plan names sample {} twice", sample.index),
            ));
        }
    }
    Ok(())
}

/// Checks that an all-to-one target is a class of `set`, and that the rule names targets.
fn check_target(
    set: &ImageSet,
    attack: &dyn BackdoorAttack,
    rule: TargetRule,
) -> Result<(), AttackError> {
    match rule {
        TargetRule::Untargeted => Err(invalid(
            attack,
            "a backdoor needs a target rule (all-to-one or all-to-all), not untargeted".into(),
        )),
        TargetRule::AllToOne { target } if usize::from(target) >= set.num_classes() => {
            Err(invalid(
                attack,
                format!(
                    "target class {target} does not exist ({} classes)",
                    set.num_classes()
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Checks the trait's promise that triggered values stay in `[0, 1]`.
fn check_unit_range(
    attack: &dyn BackdoorAttack,
    values: &[f32],
    sample: usize,
) -> Result<(), AttackError> {
    match values.iter().find(|value| !(0.0..=1.0).contains(*value)) {
        Some(value) => Err(invalid(
            attack,
            format!(
                "triggered sample {sample} holds {value}, outside [0, 1] (bad trigger or input)"
            ),
        )),
        None => Ok(()),
    }
}

/// An [`AttackError::InvalidConfig`] naming `attack`.
fn invalid(attack: &dyn BackdoorAttack, reason: String) -> AttackError {
    AttackError::InvalidConfig {
        attack: attack.name().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::backdoor::selection::tests::labelled_set;
    use crate::attack::backdoor::{PoisonKind, PoisonedSample};
    use crate::data::ImageShape;

    /// A toy trigger: every value becomes `1 - value` (training noise samples: `value / 2`).
    struct Invert;

    impl BackdoorAttack for Invert {
        fn name(&self) -> &'static str {
            "invert"
        }

        fn apply_trigger(&self, image: &[f32], _: ImageShape, _: usize, out: &mut [f32]) {
            for (o, v) in out.iter_mut().zip(image) {
                *o = 1.0 - v;
            }
        }

        fn poison_training_image(
            &self,
            image: &[f32],
            shape: ImageShape,
            sample: usize,
            kind: PoisonKind,
            out: &mut [f32],
        ) {
            match kind {
                PoisonKind::Triggered => self.apply_trigger(image, shape, sample, out),
                PoisonKind::Noise => {
                    for (o, v) in out.iter_mut().zip(image) {
                        *o = v / 2.0;
                    }
                }
            }
        }
    }

    /// A broken trigger that writes 2.0.
    struct OutOfRange;

    impl BackdoorAttack for OutOfRange {
        fn name(&self) -> &'static str {
            "out-of-range"
        }

        fn apply_trigger(&self, _: &[f32], _: ImageShape, _: usize, out: &mut [f32]) {
            out.fill(2.0);
        }
    }

    #[test]
    fn poisoning_replaces_only_planned_samples() {
        let train = labelled_set(3, 4);
        let plan = PoisonPlan {
            samples: vec![
                PoisonedSample {
                    index: 1,
                    label: 0,
                    kind: PoisonKind::Triggered,
                },
                PoisonedSample {
                    index: 5,
                    label: 2,
                    kind: PoisonKind::Noise,
                },
            ],
        };
        let poisoned = poison_training_set(&train, &Invert, &plan).unwrap();
        assert_eq!(poisoned.len(), train.len());
        for index in 0..train.len() {
            match index {
                1 => {
                    assert_eq!(poisoned.label(1), 0);
                    let inverted: Vec<f32> = train.image(1).iter().map(|v| 1.0 - v).collect();
                    assert_eq!(poisoned.image(1), inverted.as_slice());
                }
                5 => {
                    assert_eq!(poisoned.label(5), 2);
                    assert_eq!(poisoned.image(5), &[0.0025; 4]);
                }
                _ => {
                    assert_eq!(poisoned.label(index), train.label(index));
                    assert_eq!(poisoned.image(index), train.image(index));
                }
            }
        }
    }

    #[test]
    fn bad_plans_are_rejected() {
        let train = labelled_set(2, 2);
        let sample = |index, label| PoisonedSample {
            index,
            label,
            kind: PoisonKind::Triggered,
        };
        let outside = PoisonPlan {
            samples: vec![sample(4, 0)],
        };
        assert!(matches!(
            poison_training_set(&train, &Invert, &outside),
            Err(AttackError::InvalidConfig { .. })
        ));
        let twice = PoisonPlan {
            samples: vec![sample(1, 0), sample(1, 0)],
        };
        assert!(matches!(
            poison_training_set(&train, &Invert, &twice),
            Err(AttackError::InvalidConfig { .. })
        ));
        let bad_label = PoisonPlan {
            samples: vec![sample(0, 7)],
        };
        assert!(matches!(
            poison_training_set(&train, &Invert, &bad_label),
            Err(AttackError::Data(_))
        ));
        let fine = PoisonPlan {
            samples: vec![sample(0, 1)],
        };
        assert!(matches!(
            poison_training_set(&train, &OutOfRange, &fine),
            Err(AttackError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn all_to_one_test_set_excludes_the_target_class() {
        let test = labelled_set(3, 4); // labels 0,1,2,0,1,2,...
        let rule = TargetRule::AllToOne { target: 1 };
        let triggered = triggered_test_set(&test, &Invert, rule).unwrap();
        assert_eq!(triggered.original_indices, vec![0, 2, 3, 5, 6, 8, 9, 11]);
        assert_eq!(triggered.original_labels, vec![0, 2, 0, 2, 0, 2, 0, 2]);
        assert!(triggered.images.labels().iter().all(|&label| label == 1));
        for (position, &index) in triggered.original_indices.iter().enumerate() {
            let expected: Vec<f32> = test.image(index).iter().map(|v| 1.0 - v).collect();
            assert_eq!(triggered.images.image(position), expected.as_slice());
        }
    }

    #[test]
    fn all_to_all_test_set_keeps_every_image_with_shifted_labels() {
        let test = labelled_set(3, 2);
        let triggered = triggered_test_set(&test, &Invert, TargetRule::AllToAll).unwrap();
        assert_eq!(triggered.original_indices, (0..6).collect::<Vec<_>>());
        assert_eq!(triggered.original_labels, test.labels());
        assert_eq!(triggered.images.labels(), &[1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn test_set_rejects_missing_target_and_out_of_range_triggers() {
        let test = labelled_set(3, 2);
        let missing = TargetRule::AllToOne { target: 3 };
        assert!(matches!(
            triggered_test_set(&test, &Invert, missing),
            Err(AttackError::InvalidConfig { .. })
        ));
        assert!(matches!(
            triggered_test_set(&test, &OutOfRange, TargetRule::AllToAll),
            Err(AttackError::InvalidConfig { .. })
        ));
    }
}
