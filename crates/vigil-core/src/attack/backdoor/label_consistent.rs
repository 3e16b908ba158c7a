//! Label-consistent backdoor (Turner, Tsipras and Madry 2019; BackdoorBench `lc`).
//!
//! Clean-label: only target-class training images are poisoned, and they keep their label. To
//! make the trigger the easiest feature to learn, each poisoned image is first pushed away from
//! its class by an untargeted L-infinity PGD attack on a clean model, then the trigger is
//! stamped: a 3x3 checkerboard in each of the four corners (BackdoorBench's `all-corners`), at
//! `amplitude` (1 = full contrast). At test time the trigger alone is applied.
//!
//! Where vigil differs: the reference computes the adversarial images once, offline, with an
//! adversarially trained model (BackdoorBench ships them under `resource/label-consistent`);
//! vigil runs PGD against the clean model the user names (`--clean-model`), so no file has to
//! be downloaded. Defaults: eps 16/255, 10 steps of 2.5 eps / 10, no random start.

use std::collections::HashMap;

use burn::tensor::Device;
use rand::SeedableRng;

use super::badnets::{BadNets, Patch, PatchPattern, PatchPosition};
use super::{AttackError, BackdoorAttack, LabelMode, PoisonKind, TargetRule, fits};
use crate::attack::pgd::{Keep, Pgd, RandomStart, frozen, objective};
use crate::data::{ImageSet, ImageShape, batch};
use crate::models::Classifier;

/// Registry name.
pub const NAME: &str = "lc";

/// PGD settings for the adversarial part of the poison.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LcPerturbation {
    /// L-infinity radius (default 16/255).
    pub eps: f64,
    /// PGD steps (default 10).
    pub steps: usize,
}

impl Default for LcPerturbation {
    fn default() -> Self {
        Self {
            eps: 16.0 / 255.0,
            steps: 10,
        }
    }
}

/// The label-consistent attack, with its adversarial images precomputed.
#[derive(Debug, Clone)]
pub struct LabelConsistent {
    corners: [BadNets; 4],
    /// Adversarially perturbed training images by training-set index.
    perturbed: HashMap<usize, Vec<f32>>,
}

impl LabelConsistent {
    /// The four-corner trigger at `amplitude`, with no adversarial images (test-time use, or a
    /// plain clean-label patch attack).
    pub fn trigger_only(channels: usize, amplitude: f32) -> Result<Self, AttackError> {
        if !(0.0..=1.0).contains(&amplitude) || amplitude == 0.0 {
            return Err(AttackError::InvalidConfig {
                attack: NAME.into(),
                reason: format!("amplitude {amplitude} is not in (0, 1]"),
            });
        }
        let square = Patch::square(PatchPattern::Checkerboard, 3)?;
        let shape = ImageShape::new(channels.min(square.shape().channels), 3, 3);
        let patch = Patch::new(
            shape,
            square.values().to_vec(),
            vec![amplitude; shape.num_values()],
        )?;
        let at = |position| BadNets::new(patch.clone(), position);
        Ok(Self {
            corners: [
                at(PatchPosition::TopLeft { margin: 0 }),
                at(PatchPosition::TopRight { margin: 0 }),
                at(PatchPosition::BottomLeft { margin: 0 }),
                at(PatchPosition::BottomRight { margin: 0 }),
            ],
            perturbed: HashMap::new(),
        })
    }

    /// The attack for `train`: every image of the target class is perturbed by PGD against
    /// `clean` (so whichever of them the plan picks is ready), in batches of 256.
    pub fn prepare(
        clean: &Classifier,
        train: &ImageSet,
        rule: TargetRule,
        amplitude: f32,
        perturbation: LcPerturbation,
        device: &Device,
    ) -> Result<Self, AttackError> {
        let TargetRule::AllToOne { target } = rule else {
            return Err(AttackError::InvalidConfig {
                attack: NAME.into(),
                reason: "a clean-label attack needs one target class (all-to-one)".into(),
            });
        };
        let mut attack = Self::trigger_only(train.shape().channels, amplitude)?;
        for corner in &attack.corners {
            corner.check_fits(train.shape())?;
        }
        let device = device.clone().autodiff();
        let model = frozen(clean, &device);
        let targets: Vec<usize> = (0..train.len())
            .filter(|&i| train.label(i) == target)
            .collect();
        let n = train.shape().num_values();
        // Untargeted L-infinity PGD on the clean model, from the clean image, final iterate.
        let pgd = Pgd {
            start: RandomStart::None,
            keep: Keep::Final,
            ..Pgd::linf(perturbation.eps, perturbation.steps)
        };
        let mut no_randomness = rand::rngs::StdRng::seed_from_u64(0);
        for chunk in targets.chunks(256) {
            let b = batch(train, chunk, &device);
            let adv = pgd
                .attack(
                    b.images,
                    objective::cross_entropy(&model, b.labels),
                    &mut no_randomness,
                )
                .map_err(|e| AttackError::InvalidConfig {
                    attack: NAME.into(),
                    reason: e.to_string(),
                })?;
            let values: Vec<f32> = adv.into_data().iter::<f32>().collect();
            for (index, image) in chunk.iter().zip(values.chunks_exact(n)) {
                attack.perturbed.insert(*index, image.to_vec());
            }
        }
        Ok(attack)
    }

    /// How many training images carry an adversarial perturbation.
    pub fn perturbed_count(&self) -> usize {
        self.perturbed.len()
    }

    fn stamp(&self, shape: ImageShape, out: &mut [f32]) {
        for corner in &self.corners {
            corner.stamp(shape, out);
        }
    }
}

impl BackdoorAttack for LabelConsistent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn label_mode(&self) -> LabelMode {
        LabelMode::CleanLabel
    }

    fn apply_trigger(&self, image: &[f32], shape: ImageShape, _sample: usize, out: &mut [f32]) {
        if !fits(image, shape, out) {
            return;
        }
        out.copy_from_slice(image);
        self.stamp(shape, out);
    }

    fn poison_training_image(
        &self,
        image: &[f32],
        shape: ImageShape,
        sample: usize,
        _kind: PoisonKind,
        out: &mut [f32],
    ) {
        let source = self
            .perturbed
            .get(&sample)
            .filter(|p| p.len() == image.len())
            .map_or(image, Vec::as_slice);
        self.apply_trigger(source, shape, sample, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_corners_are_stamped_and_the_middle_is_untouched() {
        let shape = ImageShape::new(1, 8, 8);
        let image = vec![0.5f32; 64];
        let mut out = vec![0.0; 64];
        let attack = LabelConsistent::trigger_only(1, 1.0).unwrap();
        attack.apply_trigger(&image, shape, 0, &mut out);
        let changed: Vec<usize> = (0..64).filter(|&i| out[i] != 0.5).collect();
        // A 3x3 checkerboard has 9 values of 0 or 1: all differ from 0.5, so 36 pixels change,
        // all within 3 pixels of a corner.
        assert_eq!(changed.len(), 36);
        for i in changed {
            let (r, c) = (i / 8, i % 8);
            assert!(
                !(3..5).contains(&r) && !(3..5).contains(&c),
                "pixel {r},{c} changed"
            );
        }
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn reduced_amplitude_blends_towards_the_pattern() {
        let shape = ImageShape::new(1, 8, 8);
        let image = vec![0.5f32; 64];
        let mut out = vec![0.0; 64];
        LabelConsistent::trigger_only(1, 0.5)
            .unwrap()
            .apply_trigger(&image, shape, 0, &mut out);
        assert!(
            out.iter().all(|v| [0.25f32, 0.5, 0.75].contains(v)),
            "{out:?}"
        );
        assert!(LabelConsistent::trigger_only(1, 0.0).is_err());
    }
}
