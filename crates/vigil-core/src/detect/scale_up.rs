//! SCALE-UP (Guo et al., "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection via
//! Analyzing Scaled Prediction Consistency", ICLR 2023), with the semantics of BackdoorBox's
//! `core/defenses/SCALE_UP.py`.
//!
//! **What the reference does.** Class `SCALE_UP`, methods `_test` / `_detect`: every input `x`
//! is amplified by each factor `s` of `scale_set = [3, 5, 7, 9, 11]` and clipped,
//! `clip(s * x, 0, 1)` (on `[0, 1]` images; the normalised variant is a comment), and its
//! *scaled prediction consistency* is the fraction of factors whose arg-max prediction equals the
//! prediction on `x` itself: `SPC(x) = (1/|S|) sum_s [f(clip(s x)) == f(x)]`. A trigger keeps
//! its prediction under amplification while a clean image drifts, so **high** SPC = backdoor; the
//! reference flags `SPC >= T`, `T = 0.5`. With a benign validation set (`valset`, the paper's
//! "data-limited" setting), `init_spc_norm` computes each validation sample's SPC against its
//! **true label** (not its prediction), takes their mean and their (unbiased, `torch.std`)
//! standard deviation **over the whole set** (the comment speaks of classes; the code pools them),
//! and `_test` / `_detect` report `(SPC - mean) / std` instead.
//!
//! **vigil.** Two columns, both higher = more anomalous as in the reference:
//! - `spc`: the raw SPC;
//! - `spc_z`: the z-normalised SPC, its mean and standard deviation taken over the trusted set
//!   ([`FitData::trusted`]) at fit time, SPC against the true labels as the reference does.
//!   Pooled statistics make it an increasing affine map of `spc`: the same ranking (AUROC), a
//!   different scale for a fixed threshold.
//!
//! **Where vigil deviates, and why.**
//! - *Thresholds* come from held-out trusted data at the user's target rate
//!   ([`super::ThresholdConfig`]), not the reference's fixed `T = 0.5`. SPC takes only
//!   `|S| + 1` values, so a threshold can rarely hit the target rate exactly: the actual rate is
//!   at most the target.
//! - *A constant or single trusted SPC* (standard deviation 0 or undefined) would divide by zero
//!   in the reference; vigil then scales by 1, `spc_z = spc - mean`, and says so in
//!   [`FittedScaleUp::z_scale_is_unit`]. The ranking is the same either way.
//! - *Every input is scored.* The reference's `_test` keeps only inputs the model classifies as
//!   labelled (clean: correct; poisoned: attack succeeded), which needs the labels a detector
//!   must not read; that selection belongs to the evaluation.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{DetectError, Detector, FitData, FittedDetector, ScoreTable};
use crate::data::{ImageSet, ImageShape};
use crate::inference::evaluate;
use crate::models::{BnMode, Classifier};

/// The detector's name.
pub const NAME: &str = "scale-up";
/// The raw scaled prediction consistency.
pub const SPC: &str = "spc";
/// The SPC z-normalised with the trusted set's statistics.
pub const SPC_Z: &str = "spc_z";

/// SCALE-UP's settings, with BackdoorBox's values as defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleUpSettings {
    /// Factors the pixel values are amplified by before clipping to `[0, 1]` (the reference's
    /// `scale_set`, default `[3, 5, 7, 9, 11]`).
    pub scales: Vec<f64>,
}

impl Default for ScaleUpSettings {
    fn default() -> Self {
        Self {
            scales: vec![3.0, 5.0, 7.0, 9.0, 11.0],
        }
    }
}

/// SCALE-UP, with checked settings.
pub struct ScaleUp {
    settings: ScaleUpSettings,
}

impl ScaleUp {
    /// Refuses an empty factor list and factors that are not positive finite numbers (a zero or
    /// negative factor clips every image to black).
    pub fn new(settings: ScaleUpSettings) -> Result<Self, DetectError> {
        let bad = |reason: String| DetectError::Settings {
            detector: NAME.into(),
            reason,
        };
        if settings.scales.is_empty() {
            return Err(bad("at least one amplification factor is needed".into()));
        }
        if let Some(s) = settings
            .scales
            .iter()
            .find(|s| !(s.is_finite() && **s > 0.0))
        {
            return Err(bad(format!(
                "amplification factors must be positive numbers, got {s}"
            )));
        }
        Ok(Self { settings })
    }

    /// [`Detector::fit`], unboxed.
    pub fn fit_scale_up(&self, data: &FitData<'_>) -> Result<FittedScaleUp, DetectError> {
        let trusted = data.trusted;
        if trusted.is_empty() {
            return Err(DetectError::Fit {
                detector: NAME.into(),
                reason: "the trusted set is empty: spc_z needs its SPC statistics".into(),
            });
        }
        let spec = &data.model.spec;
        trusted.check_model_input(spec.input_shape, spec.num_classes())?;
        let batch_size = data.batch_size.max(1);
        let scaled = scaled_predictions(
            &self.settings.scales,
            data.model,
            trusted,
            batch_size,
            data.device,
        )?;
        // The reference's init_spc_norm: consistency with the true label, not the prediction.
        let labels: Vec<usize> = trusted.labels().iter().map(|&l| usize::from(l)).collect();
        let spc = consistency(&labels, &scaled);
        let (mean, std) = mean_and_sample_std(&spc);
        let z_scale_is_unit = !(std.is_finite() && std > 0.0);
        Ok(FittedScaleUp {
            scales: self.settings.scales.clone(),
            shape: trusted.shape(),
            batch_size,
            z_mean: mean,
            z_scale: if z_scale_is_unit { 1.0 } else { std },
            z_scale_is_unit,
        })
    }
}

/// SCALE-UP fitted: the factors and the trusted set's SPC statistics.
pub struct FittedScaleUp {
    scales: Vec<f64>,
    shape: ImageShape,
    batch_size: usize,
    /// Mean SPC of the trusted set (against true labels).
    pub z_mean: f64,
    /// What `spc_z` divides by: the trusted SPCs' standard deviation (`n - 1` in the
    /// denominator), or 1 when that is 0 or undefined.
    pub z_scale: f64,
    /// Whether the trusted SPCs' standard deviation was 0 or undefined (fewer than 2 samples),
    /// so `spc_z = spc - z_mean`.
    pub z_scale_is_unit: bool,
}

impl Detector for ScaleUp {
    fn name(&self) -> &str {
        NAME
    }

    fn fit(&self, data: &FitData<'_>) -> Result<Box<dyn FittedDetector>, DetectError> {
        Ok(Box::new(self.fit_scale_up(data)?))
    }
}

impl FittedDetector for FittedScaleUp {
    fn name(&self) -> &str {
        NAME
    }

    fn columns(&self) -> Vec<String> {
        vec![SPC.into(), SPC_Z.into()]
    }

    fn score(
        &self,
        model: &Classifier,
        inputs: &ImageSet,
        device: &Device,
    ) -> Result<ScoreTable, DetectError> {
        inputs.check_shape(self.shape)?;
        inputs.check_shape(ImageShape::from(model.spec.input_shape))?;
        let original = predictions(model, inputs, None, self.batch_size, device)?;
        let scaled = scaled_predictions(&self.scales, model, inputs, self.batch_size, device)?;
        let spc = consistency(&original, &scaled);
        let spc_z = spc
            .iter()
            .map(|s| (s - self.z_mean) / self.z_scale)
            .collect();
        ScoreTable::new(vec![(SPC.into(), spc), (SPC_Z.into(), spc_z)])
    }
}

/// Per factor, the predictions on every image of `set` amplified by it and clipped to `[0, 1]`.
fn scaled_predictions(
    scales: &[f64],
    model: &Classifier,
    set: &ImageSet,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<usize>>, DetectError> {
    scales
        .iter()
        .map(|&s| predictions(model, set, Some(s), batch_size, device))
        .collect()
}

/// Arg-max predictions on the images of `set`, amplified by `scale` and clipped when given. The
/// images go through [`evaluate`] as a copy labelled 0 throughout: the set's own labels are not
/// read.
fn predictions(
    model: &Classifier,
    set: &ImageSet,
    scale: Option<f64>,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<usize>, DetectError> {
    if set.is_empty() {
        return Ok(Vec::new());
    }
    let pixels = match scale {
        None => set.pixels().to_vec(),
        // f64 product rounded once: the same value as PyTorch's f32 `x * s` for integer s.
        Some(s) => set
            .pixels()
            .iter()
            .map(|&v| (f64::from(v) * s).clamp(0.0, 1.0) as f32)
            .collect(),
    };
    let unlabelled = ImageSet::new(
        pixels,
        vec![0; set.len()],
        set.shape(),
        set.class_names().to_vec(),
        set.source(),
    )?;
    let outputs = evaluate(model, &unlabelled, None, batch_size, BnMode::Eval, device);
    Ok(outputs.predicted.into_iter().map(usize::from).collect())
}

/// Scaled prediction consistency: per image, the fraction of `scaled` prediction lists that
/// agree with `reference` on it.
pub fn consistency(reference: &[usize], scaled: &[Vec<usize>]) -> Vec<f64> {
    let factors = scaled.len().max(1) as f64;
    reference
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let agree = scaled.iter().filter(|p| p.get(i) == Some(r)).count();
            agree as f64 / factors
        })
        .collect()
}

/// Mean and standard deviation with `n - 1` in the denominator (`torch.std`'s default); the
/// deviation is NaN for fewer than two values, and both are NaN for none.
pub fn mean_and_sample_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let squares = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
    (mean, (squares / (n - 1.0)).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_models::{corner_images, corner_trigger_model};
    use crate::detect::{DetectorSettings, ThresholdConfig, fit_with_thresholds};
    use crate::device::default_device;
    use crate::metrics::ood_metrics;

    fn fit_data<'a>(
        model: &'a Classifier,
        trusted: &'a ImageSet,
        device: &'a Device,
    ) -> FitData<'a> {
        FitData {
            model,
            trusted,
            sampling: trusted,
            batch_size: 3,
            seed: 0,
            device,
        }
    }

    /// The corner-trigger model predicts class 1 exactly when `min(s m, 1) > 0.6`, `m` the
    /// corner pixel. Against the original prediction (class 0 for `m <= 0.6`), by hand:
    /// `m = 0.05`: `s m` up to 0.55, all 5 agree, SPC 1; `m = 0.1`: 0.3, 0.5 agree, 0.7, 0.9,
    /// 1.1 flip, SPC 0.4; `m = 0.15`: only 0.45 agrees, 0.2; `m = 0.3`: none, 0; triggered
    /// `m = 0.8` and `m = 1` stay class 1 at every factor, SPC 1.
    ///
    /// The trusted set's SPC is against its labels (alternating 0, 1): corners 0.05 (label 0),
    /// 0.1 (label 1), 0.15 (label 0), 0.3 (label 1) give 1, 0.6, 0.2, 1; numpy:
    /// `s = np.array([1, .6, .2, 1]); s.mean(), s.std(ddof=1)` = 0.7, 0.3829708431025352.
    #[test]
    fn spc_and_spc_z_match_the_hand_computed_corner_model() {
        let device = default_device();
        let model = corner_trigger_model();
        let trusted = corner_images(&[0.05, 0.1, 0.15, 0.3], 0.05);
        let fitted = ScaleUp::new(ScaleUpSettings::default())
            .unwrap()
            .fit_scale_up(&fit_data(&model, &trusted, &device))
            .unwrap();
        assert!((fitted.z_mean - 0.7).abs() < 1e-12, "{}", fitted.z_mean);
        assert!((fitted.z_scale - 0.382_970_843_102_535_2).abs() < 1e-12);
        assert!(!fitted.z_scale_is_unit);
        let inputs = corner_images(&[0.05, 0.1, 0.15, 0.3, 0.8, 1.0], 0.05);
        let table = fitted.score(&model, &inputs, &device).unwrap();
        assert_eq!(fitted.columns(), vec![SPC, SPC_Z]);
        let spc = table.column(SPC).unwrap();
        assert_eq!(spc, &[1.0, 0.4, 0.2, 0.0, 1.0, 1.0]);
        for (z, s) in table.column(SPC_Z).unwrap().iter().zip(spc) {
            let want = (s - 0.7) / 0.382_970_843_102_535_2;
            assert!((z - want).abs() < 1e-12, "{z} vs {want}");
        }
        // Labels are never read: relabelled inputs score the same.
        let mut relabelled = inputs.clone();
        for i in 0..relabelled.len() {
            relabelled.set_label(i, 1 - relabelled.label(i)).unwrap();
        }
        assert_eq!(fitted.score(&model, &relabelled, &device).unwrap(), table);
        // No inputs: an empty table.
        let empty = corner_images(&[], 0.0);
        assert!(fitted.score(&model, &empty, &device).unwrap().is_empty());
    }

    /// Other factors change the count: with `[2]` alone, `m = 0.1` gives 0.2, which agrees
    /// (SPC 1), and `m = 0.35` gives 0.7, which flips (SPC 0).
    #[test]
    fn the_factors_are_the_settings() {
        let device = default_device();
        let model = corner_trigger_model();
        let trusted = corner_images(&[0.05, 0.1], 0.0);
        let fitted = ScaleUp::new(ScaleUpSettings { scales: vec![2.0] })
            .unwrap()
            .fit(&fit_data(&model, &trusted, &device))
            .unwrap();
        let table = fitted
            .score(&model, &corner_images(&[0.1, 0.35], 0.0), &device)
            .unwrap();
        assert_eq!(table.column(SPC).unwrap(), &[1.0, 0.0]);
    }

    #[test]
    fn a_constant_trusted_spc_scales_by_one_and_says_so() {
        let device = default_device();
        let model = corner_trigger_model();
        // Dark corners keep class 0 at every factor: labelled 0, every trusted SPC is 1.
        let mut trusted = corner_images(&[0.01, 0.02, 0.03], 0.0);
        for i in 0..trusted.len() {
            trusted.set_label(i, 0).unwrap();
        }
        for set in [trusted.clone(), trusted.subset(&[0])] {
            let fitted = ScaleUp::new(ScaleUpSettings::default())
                .unwrap()
                .fit_scale_up(&fit_data(&model, &set, &device))
                .unwrap();
            assert!(fitted.z_scale_is_unit);
            assert_eq!((fitted.z_mean, fitted.z_scale), (1.0, 1.0));
            let table = fitted
                .score(&model, &corner_images(&[0.1, 1.0], 0.0), &device)
                .unwrap();
            assert_eq!(table.column(SPC_Z).unwrap(), &[0.4 - 1.0, 0.0]);
        }
    }

    #[test]
    fn the_statistics_match_numpy() {
        // np.array([0.2, 0.4, 0.4, 1.0]).std(ddof=1) = 0.34641016151377546
        let (mean, std) = mean_and_sample_std(&[0.2, 0.4, 0.4, 1.0]);
        assert!((mean - 0.5).abs() < 1e-15);
        assert!((std - 0.346_410_161_513_775_46).abs() < 1e-15, "{std}");
        assert!(mean_and_sample_std(&[0.3]).1.is_nan());
        assert_eq!(
            consistency(&[0, 1, 2], &[vec![0, 1, 0], vec![0, 0, 0]]),
            vec![1.0, 0.5, 0.0]
        );
    }

    #[test]
    fn bad_settings_and_data_are_refused_with_the_reason() {
        for (scales, needle) in [
            (vec![], "at least one amplification factor"),
            (vec![3.0, 0.0], "must be positive numbers, got 0"),
            (vec![-2.0], "must be positive numbers, got -2"),
            (vec![f64::INFINITY], "must be positive numbers, got inf"),
        ] {
            let err = ScaleUp::new(ScaleUpSettings { scales })
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("invalid settings for scale-up"), "{err}");
            assert!(err.contains(needle), "{err}");
        }
        let device = default_device();
        let model = corner_trigger_model();
        let empty = corner_images(&[], 0.0);
        let err = ScaleUp::new(ScaleUpSettings::default())
            .unwrap()
            .fit(&fit_data(&model, &empty, &device))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("the trusted set is empty"), "{err}");
        let trusted = corner_images(&[0.1, 0.2], 0.0);
        let fitted = ScaleUp::new(ScaleUpSettings::default())
            .unwrap()
            .fit(&fit_data(&model, &trusted, &device))
            .unwrap();
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
    }

    /// Thresholds from trusted data at 5% flag the triggered inputs and no clean one.
    #[test]
    fn scale_up_separates_triggered_inputs_on_the_hand_made_backdoor() {
        let device = default_device();
        let model = corner_trigger_model();
        // Corners away from every flip point 0.6 / s: clean SPCs are 0, 0.2 or 0.4.
        let clean_corners = [0.1f32, 0.13, 0.16, 0.19, 0.22, 0.25];
        let corners = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| clean_corners[i % clean_corners.len()])
                .collect()
        };
        let trusted = corner_images(&corners(48), 0.05);
        let data = fit_data(&model, &trusted, &device);
        let detector = DetectorSettings::by_name(NAME).unwrap().build().unwrap();
        let thresholded =
            fit_with_thresholds(detector.as_ref(), &data, &ThresholdConfig::default()).unwrap();
        let clean = corner_images(&corners(12), 0.05);
        let triggered = corner_images(&[1.0, 0.9, 0.8], 0.05);
        for column in [SPC, SPC_Z] {
            let score = |set: &ImageSet| {
                thresholded
                    .fitted
                    .score(&model, set, &device)
                    .unwrap()
                    .column(column)
                    .unwrap()
                    .to_vec()
            };
            let (clean, triggered) = (score(&clean), score(&triggered));
            assert_eq!(ood_metrics(&clean, &triggered).unwrap().auroc, 1.0);
            let t = thresholded.threshold(column).unwrap();
            assert!(triggered.iter().all(|&s| s >= t), "{triggered:?} vs {t}");
            assert!(clean.iter().all(|&s| s < t), "{clean:?} vs {t}");
        }
    }
}
