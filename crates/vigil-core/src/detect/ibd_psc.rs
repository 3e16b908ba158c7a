//! IBD-PSC (Hou et al., ICML 2024): input-level backdoor detection by parameter-oriented scaling
//! consistency.
//!
//! **Reference:** BackdoorBox `core/defenses/IBD_PSC.py`, class `IBD_PSC`. The BatchNorm layers
//! are taken in `named_modules()` order and reversed, so "the first k" are the last k layers of
//! the network. An amplified model multiplies the affine `weight` and `bias` of those k layers by
//! `scale` (`scale_var_index`; running statistics untouched, eval mode).
//! - `prob_start` (fit): for k = 1, 2, ..., L - 1 (L BatchNorm layers) it amplifies the last k
//!   layers and measures the error rate (prediction != label) on a clean labelled set; the first
//!   k whose error rate exceeds `xi` is the start index.
//! - `_detect` / `_test` (score): the original model's prediction `y` of each input; then for
//!   the `n` models amplifying the last `start + 1`, ..., `start + n` layers (a Python slice, so
//!   at most all L), the softmax probability of `y`; the score PSC is their mean. Triggered inputs
//!   keep their (target) prediction under amplification, so **high PSC = triggered**: the score is
//!   vigil's convention as it is, no negation.
//!
//! **Settings** ([`IbdPscSettings`]): `n` = 5, `xi` = 0.6, `scale` = 1.5, the reference defaults.
//!
//! **Where vigil differs, and why.**
//! - The reference flags `PSC >= T` with a fixed `T` = 0.9; vigil sets the threshold from held-out
//!   trusted data at a target false-positive rate (`detect::fit_with_thresholds`), so `T` is not a
//!   setting.
//! - The reference's `valset` is the clean set `prob_start` probes; vigil probes the trusted set
//!   ([`FitData::trusted`]).
//! - When no k makes the error rate exceed `xi`, the reference's `prob_start` returns `None` and
//!   the detector fails later with a `TypeError`; vigil refuses to fit with a typed error naming
//!   the highest error rate it reached.
//! - `_test` scores only the inputs the model classifies correctly (by their labels); a detector
//!   in vigil never reads its inputs' labels, so every input is scored and the evaluation chooses
//!   which to count.
//! - Models without BatchNorm (vigil's small CNN) get [`DetectError::NotApplicable`], never a
//!   number.

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{DetectError, Detector, FitData, FittedDetector, ScoreTable};
use crate::data::{ImageSet, images_tensor};
use crate::models::{BnMode, Classifier};

const NAME: &str = "ibd-psc";

/// IBD-PSC's settings, with the reference defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IbdPscSettings {
    /// Number of amplified models averaged (reference `n`, 5).
    pub n: usize,
    /// Clean error rate the amplification must exceed to fix the start index (reference `xi`,
    /// 0.6): the probe amplifies more and more of the last layers until the trusted set's error
    /// rate is above it.
    pub xi: f64,
    /// Factor multiplying the amplified layers' BatchNorm weight and bias (reference `scale`,
    /// 1.5).
    pub scale: f64,
}

impl Default for IbdPscSettings {
    fn default() -> Self {
        Self {
            n: 5,
            xi: 0.6,
            scale: 1.5,
        }
    }
}

/// IBD-PSC with checked settings.
pub struct IbdPsc {
    settings: IbdPscSettings,
}

impl IbdPsc {
    /// Checks `settings`: at least one amplified model, `xi` in `[0, 1)`, a positive finite scale.
    pub fn new(settings: IbdPscSettings) -> Result<Self, DetectError> {
        let bad = |reason: String| DetectError::Settings {
            detector: NAME.into(),
            reason,
        };
        if settings.n == 0 {
            return Err(bad("n must be at least 1 amplified model".into()));
        }
        if !(0.0..1.0).contains(&settings.xi) {
            return Err(bad(format!(
                "xi (the clean error rate to exceed) must be in [0, 1), got {}",
                settings.xi
            )));
        }
        if !(settings.scale.is_finite() && settings.scale > 0.0) {
            return Err(bad(format!(
                "scale must be a positive finite number, got {}",
                settings.scale
            )));
        }
        Ok(Self { settings })
    }
}

/// IBD-PSC fitted: how many of the last BatchNorm layers the first amplified model scales.
pub struct FittedIbdPsc {
    settings: IbdPscSettings,
    /// The start index `prob_start` found: amplifying the last `start` layers pushed the trusted
    /// error rate above `xi`.
    pub start: usize,
    /// Number of BatchNorm layers of the model fitted on.
    pub layers: usize,
    batch_size: usize,
}

/// Number of BatchNorm layers of `model`, or [`DetectError::NotApplicable`] when it has none.
fn batch_norm_count(model: &Classifier) -> Result<usize, DetectError> {
    let count = if model.spec.architecture.has_batch_norm() {
        model.for_inference().network.batch_norms_mut().len()
    } else {
        0
    };
    if count == 0 {
        return Err(DetectError::NotApplicable {
            detector: NAME.into(),
            reason: format!(
                "{} has no BatchNorm layers to amplify",
                model.spec.architecture.name()
            ),
        });
    }
    Ok(count)
}

/// An inference copy of `model` with the affine parameters of its last `last` BatchNorm layers
/// multiplied by `scale` (all of them when `last` exceeds their number).
pub(crate) fn amplified(model: &Classifier, last: usize, scale: f64) -> Classifier {
    let mut copy = model.for_inference();
    let mut layers = copy.network.batch_norms_mut();
    let skip = layers.len().saturating_sub(last);
    for layer in layers.iter_mut().skip(skip) {
        layer.scale_affine(scale);
    }
    copy
}

/// Softmax probabilities of every image of `set` under `model` (eval mode), row-major `[n, k]`.
fn probabilities(
    model: &Classifier,
    set: &ImageSet,
    batch_size: usize,
    device: &Device,
) -> (Vec<f32>, usize) {
    let device = device.clone().inner();
    let all: Vec<usize> = (0..set.len()).collect();
    let mut probs = Vec::new();
    let mut classes = model.spec.num_classes();
    for chunk in all.chunks(batch_size.max(1)) {
        let logits: Tensor<2> = model.forward(images_tensor(set, chunk, &device), BnMode::Eval);
        classes = logits.dims()[1];
        probs.extend(softmax(logits, 1).into_data().iter::<f32>());
    }
    (probs, classes)
}

/// The index of the largest value of each row (the first on ties, as `torch.argmax`).
fn argmax_rows(values: &[f32], classes: usize) -> Vec<usize> {
    values
        .chunks(classes.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0
        })
        .collect()
}

/// `prob_start`: the first k in `1..layers` whose amplification of the last k layers makes the
/// error rate on `trusted` exceed `xi`; with every error rate seen when there is none.
pub(crate) fn probe_start(
    model: &Classifier,
    trusted: &ImageSet,
    layers: usize,
    settings: &IbdPscSettings,
    batch_size: usize,
    device: &Device,
) -> Result<usize, Vec<f64>> {
    let mut rates = Vec::new();
    for k in 1..layers {
        let (probs, classes) = probabilities(
            &amplified(model, k, settings.scale),
            trusted,
            batch_size,
            device,
        );
        let predicted = argmax_rows(&probs, classes);
        let wrong = predicted
            .iter()
            .zip(trusted.labels())
            .filter(|(p, l)| **p != usize::from(**l))
            .count();
        let rate = wrong as f64 / trusted.len() as f64;
        if rate > settings.xi {
            return Ok(k);
        }
        rates.push(rate);
    }
    Err(rates)
}

/// PSC of every input: the mean, over the models amplifying the last `start + 1`, ...,
/// `start + n` BatchNorm layers, of the softmax probability of the original model's prediction.
pub(crate) fn psc_scores(
    model: &Classifier,
    inputs: &ImageSet,
    start: usize,
    settings: &IbdPscSettings,
    batch_size: usize,
    device: &Device,
) -> Vec<f64> {
    let (probs, classes) = probabilities(&model.for_inference(), inputs, batch_size, device);
    let predicted = argmax_rows(&probs, classes);
    let mut sums = vec![0.0f64; inputs.len()];
    for i in 0..settings.n {
        let scaled = amplified(model, start + i + 1, settings.scale);
        let (probs, classes) = probabilities(&scaled, inputs, batch_size, device);
        for ((sum, row), &y) in sums
            .iter_mut()
            .zip(probs.chunks(classes.max(1)))
            .zip(&predicted)
        {
            *sum += row.get(y).copied().map_or(0.0, f64::from);
        }
    }
    sums.iter().map(|s| s / settings.n as f64).collect()
}

impl Detector for IbdPsc {
    fn name(&self) -> &str {
        NAME
    }

    fn fit(&self, data: &FitData<'_>) -> Result<Box<dyn FittedDetector>, DetectError> {
        let layers = batch_norm_count(data.model)?;
        let fail = |reason: String| DetectError::Fit {
            detector: NAME.into(),
            reason,
        };
        if data.trusted.is_empty() {
            return Err(fail("the trusted set is empty".into()));
        }
        if layers < 2 {
            return Err(fail(format!(
                "the probe amplifies 1..L-1 of the L BatchNorm layers, and the model has {layers}"
            )));
        }
        let start = probe_start(
            data.model,
            data.trusted,
            layers,
            &self.settings,
            data.batch_size,
            data.device,
        )
        .map_err(|rates| {
            let highest = rates.iter().copied().fold(0.0, f64::max);
            fail(format!(
                "amplifying the last 1..{} BatchNorm layers by {} never made the trusted error \
                 rate exceed xi = {} (the highest was {highest:.3}); lower xi or raise scale",
                layers - 1,
                self.settings.scale,
                self.settings.xi
            ))
        })?;
        Ok(Box::new(FittedIbdPsc {
            settings: self.settings.clone(),
            start,
            layers,
            batch_size: data.batch_size,
        }))
    }
}

impl FittedDetector for FittedIbdPsc {
    fn name(&self) -> &str {
        NAME
    }

    fn columns(&self) -> Vec<String> {
        vec!["psc".into()]
    }

    fn score(
        &self,
        model: &Classifier,
        inputs: &ImageSet,
        device: &Device,
    ) -> Result<ScoreTable, DetectError> {
        let layers = batch_norm_count(model)?;
        if layers != self.layers {
            return Err(DetectError::NotApplicable {
                detector: NAME.into(),
                reason: format!(
                    "fitted on a model with {} BatchNorm layers, asked to score with one of {layers}",
                    self.layers
                ),
            });
        }
        let values = psc_scores(
            model,
            inputs,
            self.start,
            &self.settings,
            self.batch_size,
            device,
        );
        ScoreTable::new(vec![("psc".into(), values)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::test_data::{tiny_cnn_spec, two_class_8x8};
    use crate::device::default_device;
    use crate::models::test_util::host_seeded;
    use crate::models::{Architecture, ModelSpec};
    use rand::SeedableRng;

    fn images(n: usize, salt: usize) -> ImageSet {
        two_class_8x8(n, move |i| ((i * 37 + salt * 11) % 101) as f32 / 100.0)
    }

    fn spec(architecture: Architecture) -> ModelSpec {
        ModelSpec {
            architecture,
            input_shape: [1, 8, 8],
            class_names: vec!["a".into(), "b".into()],
            normalization: None,
        }
    }

    /// A PreAct-ResNet-18 of width 2 with non-trivial BatchNorm affine parameters (fresh layers
    /// are weight 1, bias 0), so amplification changes the logits.
    fn preact(seed: u64) -> Classifier {
        let device = default_device();
        let mut model =
            Classifier::new(spec(Architecture::PreActResNet18 { width: 2 }), &device).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for layer in model.network.batch_norms_mut() {
            use rand::Rng;
            let factor = rng.random_range(0.5..2.0);
            layer.scale_affine(factor);
            layer.bias = burn::module::Param::from_tensor(
                layer.bias.val().add_scalar(rng.random_range(-0.5..0.5)),
            );
        }
        model
    }

    fn weights(model: &mut Classifier) -> Vec<Vec<f32>> {
        model
            .network
            .batch_norms_mut()
            .into_iter()
            .map(|l| l.weight.val().into_data().try_to_vec::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn batch_norm_layers_are_listed_in_pytorch_order_and_only_the_last_are_amplified() {
        let device = default_device();
        // The HALO heads' 4x4 pool needs 25..32 pixels a side.
        let count = |a| {
            let spec = ModelSpec {
                input_shape: [1, 32, 32],
                ..spec(a)
            };
            Classifier::new(spec, &device)
                .unwrap()
                .network
                .batch_norms_mut()
                .len()
        };
        // 8 blocks x 2; the HALO head adds `bn`; ResNet-18 has bn1, 16 and 3 shortcut BNs.
        assert_eq!(count(Architecture::PreActResNet18 { width: 2 }), 16);
        assert_eq!(count(Architecture::PreActResNet18Halo { width: 2 }), 17);
        assert_eq!(count(Architecture::ResNet18 { width: 2 }), 20);
        assert_eq!(count(tiny_cnn_spec().architecture), 0);

        let mut original = preact(1);
        let before = weights(&mut original);
        let mut scaled = amplified(&original, 3, 1.5);
        let after = weights(&mut scaled);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let factor = if i >= 13 { 1.5 } else { 1.0 };
            for (x, y) in b.iter().zip(a) {
                assert!((x * factor - y).abs() < 1e-6, "layer {i}: {x} -> {y}");
            }
        }
        // The original is untouched.
        assert_eq!(weights(&mut original), before);
    }

    #[test]
    fn psc_without_amplification_is_the_softmax_probability_of_the_prediction() {
        let device = default_device();
        let model = preact(2);
        let inputs = images(6, 3);
        let settings = IbdPscSettings {
            n: 3,
            scale: 1.0,
            ..IbdPscSettings::default()
        };
        let psc = psc_scores(&model, &inputs, 2, &settings, 4, &device);
        // Independently: max softmax of the logits, computed on the host.
        let logits = model.forward(
            images_tensor(&inputs, &(0..6).collect::<Vec<_>>(), &device),
            BnMode::Eval,
        );
        let logits: Vec<f32> = logits.into_data().try_to_vec().unwrap();
        for (row, p) in logits.chunks(2).zip(&psc) {
            let m = row[0].max(row[1]);
            let e: Vec<f64> = row.iter().map(|&z| f64::from(z - m).exp()).collect();
            let expected = e.iter().copied().fold(0.0, f64::max) / e.iter().sum::<f64>();
            assert!((p - expected).abs() < 1e-5, "{p} vs {expected}");
        }
    }

    #[test]
    fn fit_starts_at_the_first_amplification_whose_trusted_error_exceeds_xi() {
        let device = default_device();
        let model = preact(3);
        let trusted = images(20, 1);
        let sampling = images(4, 2);
        // Every error rate, measured here by amplifying by hand.
        let labels: Vec<usize> = trusted.labels().iter().map(|&l| usize::from(l)).collect();
        let rates: Vec<f64> = (1..16)
            .map(|k| {
                let scaled = amplified(&model, k, 1.5);
                let (p, c) = probabilities(&scaled, &trusted, 8, &device);
                let wrong = argmax_rows(&p, c)
                    .iter()
                    .zip(&labels)
                    .filter(|(a, b)| a != b)
                    .count();
                wrong as f64 / 20.0
            })
            .collect();
        for xi in [0.0, 0.3, 0.5, 0.7, 0.95] {
            let data = FitData {
                model: &model,
                trusted: &trusted,
                sampling: &sampling,
                batch_size: 8,
                seed: 0,
                device: &device,
            };
            let detector = IbdPsc::new(IbdPscSettings {
                xi,
                ..IbdPscSettings::default()
            })
            .unwrap();
            match rates.iter().position(|&r| r > xi) {
                Some(i) => {
                    let fitted = detector.fit(&data).unwrap();
                    let table = fitted.score(&model, &images(5, 4), &device).unwrap();
                    assert_eq!(table.len(), 5);
                    assert!(
                        table
                            .column("psc")
                            .unwrap()
                            .iter()
                            .all(|v| (0.0..=1.0 + 1e-6).contains(v))
                    );
                    // The start index is observable through the scores.
                    let expected = psc_scores(
                        &model,
                        &images(5, 4),
                        i + 1,
                        &IbdPscSettings::default(),
                        8,
                        &device,
                    );
                    assert_eq!(table.column("psc").unwrap(), expected.as_slice(), "xi {xi}");
                }
                None => {
                    let err = detector.fit(&data).err().unwrap().to_string();
                    assert!(
                        err.contains("never made the trusted error rate exceed"),
                        "{err}"
                    );
                }
            }
        }
    }

    /// A detector that cannot be fitted on a record's data leaves a reason, not a number, and
    /// does not stop the others (a benchmark over many records must not lose its table to one).
    #[test]
    fn an_experiment_reports_a_fit_failure_and_runs_the_other_detectors() {
        use crate::detect::experiment::{DetectConfig, DetectData, run};
        use crate::detect::{DetectorSettings, ThresholdConfig};
        let device = default_device();
        let model = preact(5);
        let (trusted, inputs) = (images(20, 1), images(6, 3));
        // Scale 1 amplifies nothing, so the error rate stays the model's own, below 0.99.
        let never = IbdPscSettings {
            xi: 0.99,
            scale: 1.0,
            ..IbdPscSettings::default()
        };
        let config = DetectConfig {
            detectors: vec![
                DetectorSettings::IbdPsc(never),
                DetectorSettings::by_name("msp").unwrap(),
            ],
            thresholds: ThresholdConfig::default(),
            batch_size: 8,
            seed: 0,
        };
        let data = DetectData {
            model: &model,
            trusted: &trusted,
            sampling: &trusted,
            inputs: &inputs,
            truth: None,
        };
        let report = run(
            &config,
            &data,
            &device,
            &mut |_: crate::detect::experiment::DetectProgress<'_>| {},
        )
        .unwrap();
        let ibd = &report.detectors[0];
        let why = ibd.no_scores.as_deref().unwrap();
        assert!(
            why.contains("cannot be fitted") && why.contains("never made the trusted error"),
            "{why}"
        );
        assert!(ibd.columns.is_empty() && ibd.scores.is_empty());
        assert_eq!(report.detectors[1].no_scores, None);
        assert_eq!(report.detectors[1].scores.len(), 6);
    }

    #[test]
    fn scores_never_read_labels_and_models_without_batch_norm_are_not_applicable() {
        let device = default_device();
        let model = preact(4);
        let trusted = images(16, 1);
        let inputs = images(6, 5);
        let data = FitData {
            model: &model,
            trusted: &trusted,
            sampling: &trusted,
            batch_size: 8,
            seed: 0,
            device: &device,
        };
        let fitted = FittedIbdPsc {
            settings: IbdPscSettings::default(),
            start: 4,
            layers: 16,
            batch_size: 8,
        };
        let first = fitted.score(&model, &inputs, &device).unwrap();
        let mut relabelled = inputs.clone();
        for i in 0..relabelled.len() {
            relabelled.set_label(i, 1 - relabelled.label(i)).unwrap();
        }
        assert_eq!(fitted.score(&model, &relabelled, &device).unwrap(), first);

        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let cnn = host_seeded(tiny_cnn_spec(), &mut rng, &device);
        let err = IbdPsc::new(IbdPscSettings::default())
            .unwrap()
            .fit(&FitData {
                model: &cnn,
                ..data
            })
            .err()
            .unwrap();
        assert!(matches!(err, DetectError::NotApplicable { .. }), "{err}");
        assert!(
            err.to_string().contains("small-cnn has no BatchNorm"),
            "{err}"
        );
        let err = fitted.score(&cnn, &inputs, &device).err().unwrap();
        assert!(matches!(err, DetectError::NotApplicable { .. }), "{err}");
    }

    #[test]
    fn bad_settings_are_refused() {
        for (settings, needle) in [
            (
                IbdPscSettings {
                    n: 0,
                    ..Default::default()
                },
                "n must be",
            ),
            (
                IbdPscSettings {
                    xi: 1.0,
                    ..Default::default()
                },
                "xi",
            ),
            (
                IbdPscSettings {
                    xi: -0.1,
                    ..Default::default()
                },
                "xi",
            ),
            (
                IbdPscSettings {
                    scale: 0.0,
                    ..Default::default()
                },
                "scale",
            ),
            (
                IbdPscSettings {
                    scale: f64::NAN,
                    ..Default::default()
                },
                "scale",
            ),
        ] {
            let err = IbdPsc::new(settings).err().unwrap().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
