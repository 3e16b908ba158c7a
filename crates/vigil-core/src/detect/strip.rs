//! STRIP (Gao et al., "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks", ACSAC
//! 2019), with the semantics of BackdoorBench's `detection_infer/strip.py`.
//!
//! **What the reference does.** Class `STRIP`, methods `check`, `superimpose` and `entropy`
//! (run by `strip.filtering` with `strip_alpha=1.0, N=100`): for every batch of 128 inputs it
//! shuffles the indices of a held-out clean set and takes the first `N`; for each of those clean
//! images `y` it forms `x + alpha * y` for every input `x` of the batch, **in the model's
//! normalised input space and without clipping**, runs the model and takes the entropy of each
//! prediction, `H = -sum_c (p_c + 1e-8) ln(p_c + 1e-8)` with `p = softmax(logits)` (the `1e-8`
//! is added before the log *and* as the weight); an input's score is the **mean** of its `N`
//! entropies (`torch.stack(list).mean(0)`, not the sum of the paper's formula, which only scales
//! it by `N`). A trigger keeps dominating whatever is superimposed, so triggered inputs have
//! **low** entropy; the reference flags entropies below the `defense_fpr = 0.1` quantile of the
//! clean set's own entropies.
//!
//! **vigil.** One column, `neg_entropy`: the negated mean entropy, so higher = more anomalous.
//! The held-out clean images are drawn from [`FitData::sampling`] (the reference draws
//! `clean_sample_num / num_classes` images per class from the clean test set, with replacement).
//!
//! **Where vigil deviates, and why.**
//! - *One draw of the `N` clean images, at fit time* (seeded by [`FitData::seed`], without
//!   replacement; all of them when the sampling set has fewer than `N`, as the reference's
//!   `shuffle()[:N]` does). The reference redraws per batch of 128 inputs, so an input's score
//!   depends on its batch and on the random state. With one draw an input's score is a function
//!   of the input alone: thresholds set on held-out trusted scores at fit time
//!   ([`super::fit_with_thresholds`]) apply to inputs scored later, and reruns repeat exactly.
//! - *The blend in pixel space that gives the reference's normalised sum.* vigil's images are
//!   `[0, 1]` pixels and the model normalises inside (`(v - mean) / std` per channel), so vigil
//!   feeds the model `x + alpha * (y - mean)`, whose normalised form is exactly
//!   `x_n + alpha * y_n`. For a model without normalisation this is `x + alpha * y`, the
//!   original STRIP code's `cv2.addWeighted(x, 1, y, 1, 0)` on float images.
//! - *Thresholds* come from held-out trusted data at the user's target rate
//!   ([`super::ThresholdConfig`], 5% by default), not the reference's `defense_fpr = 0.1`
//!   quantile of the clean set superimposed with itself.

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

use super::{DetectError, Detector, FitData, FittedDetector, ScoreTable};
use crate::data::{ImageSet, ImageShape};
use crate::models::{BnMode, Classifier};

/// The detector's name.
pub const NAME: &str = "strip";
/// The score column: the negated mean entropy.
pub const COLUMN: &str = "neg_entropy";
/// Added to each probability before the log and as its weight (the reference's `1e-8`).
pub const ENTROPY_EPSILON: f64 = 1e-8;

/// STRIP's settings, with BackdoorBench's values as defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripSettings {
    /// Number of held-out clean images superimposed on each input (the reference's `N`: 100 in
    /// `detection_infer/strip.py`; the `STRIP` class alone defaults to 64).
    pub overlays: usize,
    /// Weight of the clean image in the blend `x + alpha * y` (the reference's `strip_alpha`:
    /// 1.0 as `detection_infer/strip.py` runs it; the `STRIP` class alone defaults to 0.5).
    pub alpha: f64,
}

impl Default for StripSettings {
    fn default() -> Self {
        Self {
            overlays: 100,
            alpha: 1.0,
        }
    }
}

/// STRIP, with checked settings.
pub struct Strip {
    settings: StripSettings,
}

impl Strip {
    /// Refuses zero overlays and a non-finite or non-positive `alpha` (a zero weight would
    /// superimpose nothing: every overlay would repeat the input's own prediction).
    pub fn new(settings: StripSettings) -> Result<Self, DetectError> {
        let bad = |reason: String| DetectError::Settings {
            detector: NAME.into(),
            reason,
        };
        if settings.overlays == 0 {
            return Err(bad("at least one clean image must be superimposed".into()));
        }
        if !(settings.alpha.is_finite() && settings.alpha > 0.0) {
            return Err(bad(format!(
                "the blend weight alpha must be a positive number, got {}",
                settings.alpha
            )));
        }
        Ok(Self { settings })
    }
}

/// STRIP fitted: the clean images to superimpose, already weighted and shifted.
pub struct FittedStrip {
    /// `alpha * (y - mean)` of each drawn clean image `y`, row-major, one image after another.
    offsets: Vec<f32>,
    shape: ImageShape,
    batch_size: usize,
    /// Indices of the drawn clean images in the sampling set, in draw order.
    pub drawn: Vec<usize>,
}

impl Strip {
    /// [`Detector::fit`], unboxed.
    pub fn fit_strip(&self, data: &FitData<'_>) -> Result<FittedStrip, DetectError> {
        let sampling = data.sampling;
        if sampling.is_empty() {
            return Err(DetectError::Fit {
                detector: NAME.into(),
                reason: "the sampling set is empty: STRIP needs clean images to superimpose".into(),
            });
        }
        let spec = &data.model.spec;
        sampling.check_model_input(spec.input_shape, spec.num_classes())?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(data.seed ^ 0x5791_0000);
        let count = self.settings.overlays.min(sampling.len());
        let drawn = sample(&mut rng, sampling.len(), count).into_vec();
        let shape = sampling.shape();
        let means = channel_means(data.model, shape.channels);
        let alpha = self.settings.alpha;
        let mut offsets = Vec::with_capacity(count * shape.num_values());
        for &j in &drawn {
            for (c, plane) in sampling
                .image(j)
                .chunks_exact(shape.plane_len())
                .enumerate()
            {
                let mean = f64::from(means[c]);
                offsets.extend(
                    plane
                        .iter()
                        .map(|&v| (alpha * (f64::from(v) - mean)) as f32),
                );
            }
        }
        Ok(FittedStrip {
            offsets,
            shape,
            batch_size: data.batch_size.max(1),
            drawn,
        })
    }
}

impl Detector for Strip {
    fn name(&self) -> &str {
        NAME
    }

    fn fit(&self, data: &FitData<'_>) -> Result<Box<dyn FittedDetector>, DetectError> {
        Ok(Box::new(self.fit_strip(data)?))
    }

    /// The overlays come from the sampling set; the trusted set is not read.
    fn trusted_dependence(&self) -> super::TrustedDependence {
        super::TrustedDependence::None
    }
}

/// The per-channel means the model subtracts (0 without normalisation).
fn channel_means(model: &Classifier, channels: usize) -> Vec<f32> {
    let mean = model.spec.normalization.as_ref().map(|n| n.mean.as_slice());
    (0..channels)
        .map(|c| mean.and_then(|m| m.get(c)).copied().unwrap_or(0.0))
        .collect()
}

/// STRIP's entropy of one prediction: `-sum_c (p_c + eps) ln(p_c + eps)`, `p = softmax(logits)`
/// computed in f64 with the largest logit subtracted.
pub fn strip_entropy(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .map(|&z| f64::from(z))
        .fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|&z| (f64::from(z) - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter()
        .map(|e| {
            let p = e / total + ENTROPY_EPSILON;
            -p * p.ln()
        })
        .sum()
}

impl FittedDetector for FittedStrip {
    fn name(&self) -> &str {
        NAME
    }

    fn columns(&self) -> Vec<String> {
        vec![COLUMN.into()]
    }

    fn score(
        &self,
        model: &Classifier,
        inputs: &ImageSet,
        device: &Device,
    ) -> Result<ScoreTable, DetectError> {
        inputs.check_shape(self.shape)?;
        inputs.check_shape(ImageShape::from(model.spec.input_shape))?;
        let per_image = self.shape.num_values();
        let overlays = self.offsets.len() / per_image.max(1);
        let [c, h, w] = model.spec.input_shape;
        let model = model.for_inference();
        let device = device.clone().inner();
        // Every (input, overlay) pair is one forward row; pairs go through in batches of
        // `batch_size` rows, input-major, so one input's overlays are adjacent.
        let pairs = inputs.len() * overlays;
        let mut sums = vec![0.0f64; inputs.len()];
        let mut start = 0;
        while start < pairs {
            let end = (start + self.batch_size).min(pairs);
            let mut pixels = Vec::with_capacity((end - start) * per_image);
            for pair in start..end {
                let x = inputs.image(pair / overlays);
                let offset = &self.offsets[(pair % overlays) * per_image..][..per_image];
                pixels.extend(x.iter().zip(offset).map(|(a, b)| a + b));
            }
            let x =
                Tensor::<4>::from_data(TensorData::new(pixels, [end - start, c, h, w]), &device);
            let logits: Vec<f32> = model
                .forward(x, BnMode::Eval)
                .into_data()
                .iter::<f32>()
                .collect();
            let k = logits.len() / (end - start);
            for (row, pair) in logits.chunks_exact(k.max(1)).zip(start..end) {
                sums[pair / overlays] += strip_entropy(row);
            }
            start = end;
        }
        let scores = sums.iter().map(|s| -(s / overlays as f64)).collect();
        ScoreTable::new(vec![(COLUMN.into(), scores)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_models::{corner_images, corner_trigger_model};
    use crate::detect::{DetectorSettings, ThresholdConfig, fit_with_thresholds};
    use crate::device::default_device;
    use crate::metrics::ood_metrics;
    use crate::models::Normalization;

    fn fit_data<'a>(
        model: &'a Classifier,
        trusted: &'a ImageSet,
        sampling: &'a ImageSet,
        device: &'a Device,
    ) -> FitData<'a> {
        FitData {
            model,
            trusted,
            sampling,
            batch_size: 7,
            seed: 1,
            device,
        }
    }

    fn fitted(settings: StripSettings, data: &FitData<'_>) -> Box<dyn FittedDetector> {
        DetectorSettings::Strip(settings)
            .build()
            .unwrap()
            .fit(data)
            .unwrap()
    }

    /// numpy, for logits `[1, 0]`, `[3, -1, 0.5]` and `[0, 0]`:
    /// `p = np.exp(z - z.max()) / np.exp(z - z.max()).sum(); p = p + 1e-8; -(p * np.log(p)).sum()`
    #[test]
    fn the_entropy_matches_numpy_with_the_reference_epsilon() {
        let cases: [(&[f32], f64); 3] = [
            (&[1.0, 0.0], 0.582_203_105_153_451_4),
            (&[3.0, -1.0, 0.5], 0.348_741_334_552_233_9),
            (&[0.0, 0.0], 0.693_147_174_422_888_6),
        ];
        for (logits, expected) in cases {
            let h = strip_entropy(logits);
            assert!(
                (h - expected).abs() < 1e-12,
                "{logits:?}: {h} vs {expected}"
            );
        }
    }

    /// On the hand-made corner-trigger model (logits `[1, 10 relu(m - 0.5)]`, `m` the corner
    /// pixel) every blend of a dim input with a dim clean image keeps `m < 0.5`, so its logits are
    /// exactly `[1, 0]` and its STRIP score is minus the entropy of `softmax([1, 0])`; a triggered
    /// input (`m = 1`) blended with clean corners `m'` has logits `[1, 10 (0.5 + m')]`.
    #[test]
    fn scores_are_the_negated_mean_entropy_of_the_hand_made_model() {
        let device = default_device();
        let model = corner_trigger_model();
        let clean_corners = [0.05f32, 0.1, 0.2, 0.15];
        let sampling = corner_images(&clean_corners, 0.1);
        let trusted = corner_images(&[0.1, 0.2], 0.1);
        let data = fit_data(&model, &trusted, &sampling, &device);
        let detector = fitted(StripSettings::default(), &data);
        assert_eq!(detector.columns(), vec![COLUMN]);
        let inputs = corner_images(&[0.1, 1.0, 0.2], 0.1);
        let table = detector.score(&model, &inputs, &device).unwrap();
        let scores = table.column(COLUMN).unwrap();
        let clean = -strip_entropy(&[1.0, 0.0]);
        // Triggered: mean over the four clean corners of the entropy of [1, 10 (0.5 + m')].
        let triggered = -clean_corners
            .iter()
            .map(|&m| strip_entropy(&[1.0, 10.0 * (0.5 + m)]))
            .sum::<f64>()
            / 4.0;
        for (got, want) in scores.iter().zip([clean, triggered, clean]) {
            assert!((got - want).abs() < 1e-5, "{scores:?}: {want}");
        }
        assert!(scores[1] > scores[0], "the triggered input is the anomaly");
        // Labels are never read: relabelled inputs score the same.
        let mut relabelled = inputs.clone();
        for i in 0..relabelled.len() {
            relabelled.set_label(i, 1 - relabelled.label(i)).unwrap();
        }
        assert_eq!(detector.score(&model, &relabelled, &device).unwrap(), table);
        // An input's score does not depend on its batch: scored alone it is the same.
        let alone = detector
            .score(&model, &inputs.subset(&[1]), &device)
            .unwrap();
        assert_eq!(alone.column(COLUMN).unwrap(), &scores[1..2]);
    }

    /// With normalisation `(v - 0.5) / 0.25`, the reference's normalised sum `x_n + y_n` of a
    /// corner `x = 0.9` and a clean corner `y = 0.3` is `1.6 - 0.8 = 0.8`, i.e. the pixel
    /// `0.5 + 0.25 * 0.8 = 0.7` that vigil feeds as `x + (y - 0.5)`. The model sees the
    /// normalised value, `m_n = 0.8`, so its logits are `[1, 10 relu(0.8 - 0.5)] = [1, 3]`.
    #[test]
    fn the_blend_is_the_reference_sum_in_normalised_space() {
        let device = default_device();
        let mut model = corner_trigger_model();
        model.spec.normalization = Some(Normalization {
            mean: vec![0.5],
            std: vec![0.25],
        });
        let sampling = corner_images(&[0.3], 0.3);
        let data = fit_data(&model, &sampling, &sampling, &device);
        let detector = fitted(StripSettings::default(), &data);
        let table = detector
            .score(&model, &corner_images(&[0.9], 0.5), &device)
            .unwrap();
        let expected = -strip_entropy(&[1.0, 3.0]);
        let got = table.column(COLUMN).unwrap()[0];
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }

    #[test]
    fn the_overlays_are_one_seeded_draw_of_at_most_n_sampling_images() {
        let device = default_device();
        let model = corner_trigger_model();
        let corners: Vec<f32> = (0..30).map(|i| i as f32 / 100.0).collect();
        let sampling = corner_images(&corners, 0.0);
        let data = fit_data(&model, &sampling, &sampling, &device);
        let strip = Strip::new(StripSettings {
            overlays: 10,
            alpha: 0.5,
        })
        .unwrap();
        let first = strip.fit_strip(&data).unwrap();
        assert_eq!(first.drawn.len(), 10);
        let mut distinct = first.drawn.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 10, "drawn without replacement");
        assert_eq!(strip.fit_strip(&data).unwrap().drawn, first.drawn);
        let other = strip.fit_strip(&FitData { seed: 2, ..data }).unwrap();
        assert_ne!(other.drawn, first.drawn, "another seed draws other images");
        // The offsets are alpha * y of the drawn images (no normalisation): pixel (0, 0) is the
        // corner, i / 100.
        for (k, &j) in first.drawn.iter().enumerate() {
            assert_eq!(first.offsets[k * 64], 0.5 * (j as f32 / 100.0));
        }
        // Fewer sampling images than N: all of them, each once.
        let few = corner_images(&[0.1, 0.2, 0.3], 0.0);
        let fitted = strip
            .fit_strip(&fit_data(&model, &few, &few, &device))
            .unwrap();
        let mut drawn = fitted.drawn.clone();
        drawn.sort_unstable();
        assert_eq!(drawn, vec![0, 1, 2]);
        assert_eq!(fitted.offsets.len(), 3 * 64);
    }

    #[test]
    fn bad_settings_and_data_are_refused_with_the_reason() {
        for (settings, needle) in [
            (
                StripSettings {
                    overlays: 0,
                    ..StripSettings::default()
                },
                "at least one clean image",
            ),
            (
                StripSettings {
                    alpha: 0.0,
                    ..StripSettings::default()
                },
                "alpha must be a positive number",
            ),
            (
                StripSettings {
                    alpha: f64::NAN,
                    ..StripSettings::default()
                },
                "alpha must be a positive number",
            ),
        ] {
            let err = Strip::new(settings).err().unwrap().to_string();
            assert!(err.contains("invalid settings for strip"), "{err}");
            assert!(err.contains(needle), "{err}");
        }
        let device = default_device();
        let model = corner_trigger_model();
        let empty = corner_images(&[], 0.0);
        let trusted = corner_images(&[0.1, 0.2], 0.0);
        let err = Strip::new(StripSettings::default())
            .unwrap()
            .fit(&fit_data(&model, &trusted, &empty, &device))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("the sampling set is empty"), "{err}");
        // Inputs of another shape are refused, not fed to the model.
        let fitted = fitted(
            StripSettings::default(),
            &fit_data(&model, &trusted, &trusted, &device),
        );
        let wrong = ImageSet::new(
            vec![0.0; 2 * 16],
            vec![0, 1],
            ImageShape::new(1, 4, 4),
            vec!["a".into(), "b".into()],
            "wrong",
        )
        .unwrap();
        let err = fitted
            .score(&model, &wrong, &device)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("wrong: 1x8x8 expected, got 1x4x4"), "{err}");
        // No inputs: an empty table.
        assert!(fitted.score(&model, &empty, &device).unwrap().is_empty());
    }

    /// The end to end use: thresholds from trusted data at 5%, a triggered input flagged, clean
    /// ones not, and AUROC 1 on the hand-made backdoor.
    #[test]
    fn strip_separates_triggered_inputs_on_the_hand_made_backdoor() {
        let device = default_device();
        let model = corner_trigger_model();
        let corners = |n: usize, salt: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7 + salt) % 25) as f32 / 100.0)
                .collect()
        };
        let trusted = corner_images(&corners(40, 0), 0.2);
        let sampling = corner_images(&corners(20, 3), 0.2);
        let data = fit_data(&model, &trusted, &sampling, &device);
        let detector = DetectorSettings::by_name(NAME).unwrap().build().unwrap();
        let thresholded =
            fit_with_thresholds(detector.as_ref(), &data, &ThresholdConfig::default()).unwrap();
        let clean = corner_images(&corners(10, 5), 0.2);
        let triggered = corner_images(&[1.0, 0.9, 0.95, 1.0], 0.2);
        let score = |set: &ImageSet| {
            thresholded
                .fitted
                .score(&model, set, &device)
                .unwrap()
                .column(COLUMN)
                .unwrap()
                .to_vec()
        };
        let (clean, triggered) = (score(&clean), score(&triggered));
        let metrics = ood_metrics(&clean, &triggered).unwrap();
        assert_eq!(metrics.auroc, 1.0);
        let t = thresholded.threshold(COLUMN).unwrap();
        assert!(triggered.iter().all(|&s| s >= t), "{triggered:?} vs {t}");
        assert!(clean.iter().all(|&s| s < t), "{clean:?} vs {t}");
    }
}
