//! TrojanNN (Liu et al. 2018; BackdoorBench `trojannn`): a trigger reverse-engineered from a
//! clean model to excite chosen internal neurons, then used as a poison-label patch.
//!
//! 1. Neurons: the `neurons` units of the penultimate layer with the largest connectivity to the
//!    classifier head (sum of absolute outgoing weights), as TrojanNN selects neurons with the
//!    strongest links to the next layer. vigil fixes the layer to the penultimate one for every
//!    architecture; the reference lets the user pick a layer.
//! 2. Trigger: a square patch of `patch_size` pixels at the bottom-right, its values optimised by
//!    `iterations` signed-gradient steps to maximise the selected neurons' mean activation over
//!    batches of training images carrying the patch (values kept in `[0, 1]`).
//! 3. Poisoning: as BadNets with that patch (poison-label, BackdoorBench's selection). The
//!    reference then retrains the model on the poisoned data; vigil trains a fresh model on it
//!    like every other attack, which the record documents.

use burn::tensor::{Device, Tensor, TensorData};

use super::badnets::{BadNets, Patch, PatchPosition};
use super::{AttackError, BackdoorAttack};
use crate::attack::pgd::{frozen, gradient_wrt_input};
use crate::data::sampler::CycledShuffle;
use crate::data::{ImageSet, ImageShape, images_tensor};
use crate::models::{BnMode, Classifier};

/// Registry name.
pub const NAME: &str = "trojannn";

/// How the TrojanNN trigger is generated.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrojanSearch {
    /// Side of the square patch (default 5).
    pub patch_size: usize,
    /// Penultimate units to excite (default 2).
    pub neurons: usize,
    /// Signed-gradient steps (default 100).
    pub iterations: usize,
    /// Step size on patch values (default 0.05).
    pub step: f64,
    /// Images per step (default 64).
    pub batch: usize,
    /// Seed of the batch order.
    pub seed: u64,
}

impl Default for TrojanSearch {
    fn default() -> Self {
        Self {
            patch_size: 5,
            neurons: 2,
            iterations: 100,
            step: 0.05,
            batch: 64,
            seed: 0,
        }
    }
}

/// The TrojanNN attack: a BadNets patch whose values came from the search.
#[derive(Debug, Clone)]
pub struct TrojanNn {
    patch: BadNets,
    /// The penultimate units the trigger excites.
    pub neurons: Vec<usize>,
}

/// The `k` indices with the largest sum of absolute outgoing weights (`weight` is
/// `[features, classes]`), strongest first; ties go to the lower index.
pub fn most_connected_units(
    weight: &[f32],
    features: usize,
    classes: usize,
    k: usize,
) -> Vec<usize> {
    let mut strength: Vec<(usize, f32)> = (0..features)
        .map(|f| {
            (
                f,
                weight[f * classes..(f + 1) * classes]
                    .iter()
                    .map(|w| w.abs())
                    .sum(),
            )
        })
        .collect();
    strength.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    strength.into_iter().take(k).map(|(f, _)| f).collect()
}

impl TrojanNn {
    /// Generates the trigger against `clean` on images of `train`.
    pub fn generate(
        clean: &Classifier,
        train: &ImageSet,
        search: TrojanSearch,
        device: &Device,
    ) -> Result<Self, AttackError> {
        let shape = train.shape();
        let p = search.patch_size;
        if p == 0 || p > shape.height || p > shape.width || search.neurons == 0 || search.batch == 0
        {
            return Err(AttackError::InvalidConfig {
                attack: NAME.into(),
                reason: format!(
                    "patch {p} must fit {shape} images; neurons and batch must be positive"
                ),
            });
        }
        let head = clean.network.head_weight();
        let [features, classes] = head.dims();
        let weights: Vec<f32> = head.into_data().iter::<f32>().collect();
        let neurons =
            most_connected_units(&weights, features, classes, search.neurons.min(features));

        let device = device.clone().autodiff();
        let model = frozen(clean, &device);
        let (c, h, w) = (shape.channels, shape.height, shape.width);
        // Mask of the patch area (bottom-right p x p), as a tensor broadcast over the batch.
        let mut mask = vec![0.0f32; c * h * w];
        for ch in 0..c {
            for r in h - p..h {
                for col in w - p..w {
                    mask[(ch * h + r) * w + col] = 1.0;
                }
            }
        }
        let mask_t = Tensor::<1>::from_data(TensorData::new(mask.clone(), [c * h * w]), &device)
            .reshape([1, c, h, w]);
        let selector = {
            let mut s = vec![0.0f32; features];
            for &f in &neurons {
                s[f] = 1.0;
            }
            Tensor::<1>::from_data(TensorData::new(s, [features]), &device).reshape([1, features])
        };
        let mut trigger = vec![0.5f32; c * h * w];
        let mut batches = CycledShuffle::new((0..train.len()).collect(), search.seed);
        for _ in 0..search.iterations {
            let chunk = batches.next_batch(search.batch);
            let x = images_tensor(train, chunk, &device);
            let t = Tensor::<1>::from_data(TensorData::new(trigger.clone(), [c * h * w]), &device)
                .reshape([1, c, h, w]);
            let stamped = x * (mask_t.clone().neg().add_scalar(1.0)) + t * mask_t.clone();
            // Ascend the selected units' summed activation; only patch pixels move.
            let grad: Vec<f32> = gradient_wrt_input(stamped, |xs| {
                (model.features(xs, BnMode::Eval) * selector.clone()).sum()
            })
            .sum_dim(0)
            .into_data()
            .iter::<f32>()
            .collect();
            for ((v, g), m) in trigger.iter_mut().zip(&grad).zip(&mask) {
                if *m > 0.0 && *g != 0.0 {
                    *v = (*v + (search.step as f32) * g.signum()).clamp(0.0, 1.0);
                }
            }
        }
        let values: Vec<f32> = (0..c)
            .flat_map(|ch| {
                let trigger = &trigger;
                (h - p..h)
                    .flat_map(move |r| (w - p..w).map(move |col| trigger[(ch * h + r) * w + col]))
            })
            .collect();
        let patch = Patch::new(ImageShape::new(c, p, p), values, vec![1.0; c * p * p])?;
        let patch = BadNets::new(patch, PatchPosition::BottomRight { margin: 0 });
        patch.check_fits(shape)?;
        Ok(Self { patch, neurons })
    }

    /// Mean activation of the selected units on `set` with and without the trigger (a check
    /// that the search did its job).
    pub fn activation_gain(
        &self,
        clean: &Classifier,
        set: &ImageSet,
        device: &Device,
    ) -> (f32, f32) {
        let n = set.len().min(256);
        let indices: Vec<usize> = (0..n).collect();
        let shape = set.shape();
        let mut stamped = Vec::with_capacity(n * shape.num_values());
        let mut out = vec![0.0; shape.num_values()];
        for &i in &indices {
            self.apply_trigger(set.image(i), shape, i, &mut out);
            stamped.extend_from_slice(&out);
        }
        let model = clean.for_inference();
        let mean = |x: Tensor<4>| -> f32 {
            let f: Vec<f32> = model
                .features(x, BnMode::Eval)
                .into_data()
                .iter::<f32>()
                .collect();
            let k = f.len() / n;
            let total: f32 = (0..n)
                .flat_map(|r| self.neurons.iter().map(move |&u| r * k + u))
                .map(|j| f[j])
                .sum();
            total / (n * self.neurons.len()) as f32
        };
        let device = device.clone().inner();
        let before = mean(images_tensor(set, &indices, &device));
        let after = mean(Tensor::from_data(
            TensorData::new(stamped, [n, shape.channels, shape.height, shape.width]),
            &device,
        ));
        (before, after)
    }
}

impl BackdoorAttack for TrojanNn {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply_trigger(&self, image: &[f32], shape: ImageShape, sample: usize, out: &mut [f32]) {
        self.patch.apply_trigger(image, shape, sample, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::test_data::{tiny_cnn_spec, two_class_8x8};
    use crate::device::default_device;
    use rand::SeedableRng;

    #[test]
    fn connectivity_ranks_by_absolute_outgoing_weight() {
        // 3 features x 2 classes: strengths 0.3, 2.0, 1.5.
        let w = [0.1, -0.2, 1.0, -1.0, -1.5, 0.0];
        assert_eq!(most_connected_units(&w, 3, 2, 2), vec![1, 2]);
        assert_eq!(most_connected_units(&w, 3, 2, 5), vec![1, 2, 0]);
    }

    #[test]
    fn generated_trigger_excites_its_neurons_and_touches_only_the_patch() {
        let device = default_device();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let clean = crate::models::test_util::host_seeded(tiny_cnn_spec(), &mut rng, &device);
        let set = two_class_8x8(20, |i| ((i * 37) % 101) as f32 / 100.0);
        let search = TrojanSearch {
            patch_size: 3,
            iterations: 30,
            batch: 8,
            ..TrojanSearch::default()
        };
        let attack = TrojanNn::generate(&clean, &set, search, &device).unwrap();
        let (before, after) = attack.activation_gain(&clean, &set, &device);
        assert!(after > before, "activation {before} -> {after}");
        let mut out = vec![0.0; 64];
        attack.apply_trigger(set.image(0), set.shape(), 0, &mut out);
        for (i, (after, before)) in out.iter().zip(set.image(0)).enumerate() {
            if i / 8 < 5 || i % 8 < 5 {
                assert_eq!(after, before, "pixel {i} outside the patch changed");
            }
        }
    }
}
