//! The quantum entropy (QUE) score (Dong, Hopkins and Li, NeurIPS 2019; as used by SPECTRE,
//! Hayase et al. 2021) on the penultimate features.
//!
//! **Reference.** cupbearer, `src/cupbearer/detectors/statistical/que_detector.py`,
//! `QuantumEntropyDetector`, with `helpers.quantum_entropy`:
//! - fit: the mean and sample covariance (divided by `n - 1`) of each layer's activations on the
//!   trusted data; PCA whitening `W = V diag(lambda^-1/2)` from `torch.linalg.eigh`, with the
//!   directions whose eigenvalue is below `rcond * lambda_max` (`rcond = 1e-5`) zeroed; and the
//!   covariance `Sigma_u` of the untrusted training data (`use_untrusted = True`) with its
//!   largest eigenvalue;
//! - score: `tau = (a - mean_trusted) W`, then `tau^T expm(alpha Sigma_u / ||Sigma_u||_2) tau`
//!   with `alpha = 4`, averaged over layers. Large values are anomalous: used as it is.
//!
//! Until cupbearer's commit d031cd3 (June 2024) `quantum_entropy` took instead the covariance of
//! the *whitened* batch being scored, centred on its mean, as the paper and SPECTRE do; SPECTRE
//! also divides by `Tr(Q)` and uses `Q = exp(alpha (Sigma - I) / (||Sigma||_2 - 1))`.
//!
//! **vigil.** Column `que`.
//! - One layer, the penultimate features; whitening exactly as cupbearer (the zeroed directions
//!   are dropped: they contribute nothing to `tau`).
//! - The covariance in the exponent is that of the **whitened** features of the untrusted data,
//!   `Sigma = cov(tau)`. The current cupbearer code puts the raw untrusted covariance there while
//!   `tau` is whitened, so its directions do not match `tau`'s coordinates; vigil follows the
//!   paper, SPECTRE and cupbearer's own earlier version.
//! - The untrusted data is the input set being scored ([`StatisticsFrom::Inputs`], the default;
//!   see there): inputs are scored together (at least 2). `statistics_from = "trusted"` takes
//!   `Sigma` from the trusted set, which is the identity after whitening: the score is then the
//!   squared Mahalanobis distance to the trusted mean divided by the rank, each input alone.
//! - `Q = exp(alpha Sigma / ||Sigma||_2)`, cupbearer's form (SPECTRE's `Sigma - I` over
//!   `||Sigma||_2 - 1` divides by about zero when the inputs are clean, `Sigma ~ I`), and the
//!   score is divided by `Tr(Q)` as in the paper and SPECTRE: a constant per scored set, so the
//!   ranking of the inputs is cupbearer's, but the scale no longer grows like `e^alpha` and the
//!   held-back trusted samples scored as a set (thresholds) are on the inputs' scale. It is
//!   computed in `Sigma`'s eigenbasis, `sum_j w_j (u_j . tau)^2` with weights
//!   `w_j = exp(alpha mu_j / mu_max) / sum_k exp(alpha mu_k / mu_max)`: no overflow for any
//!   alpha, and alpha = 0 gives the Mahalanobis distance over the rank.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::latent::{
    StatisticsFrom, dot, mean_and_covariance, penultimate_features, symmetric_eigen,
};
use super::{DetectError, Detector, FitData, FittedDetector, ScoreTable};
use crate::data::ImageSet;
use crate::models::Classifier;

/// The detector's name and its score column.
const NAME: &str = "que";

/// The quantum entropy score's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueSettings {
    /// Sharpness of the exponential weighting of the untrusted covariance's directions
    /// (reference: 4; 0 weighs every direction alike). Finite and at least 0.
    pub alpha: f64,
    /// Whitening drops directions whose trusted variance is below `rcond` times the largest
    /// (reference: 1e-5). In `[0, 1)`.
    pub rcond: f64,
    /// Where the untrusted covariance comes from: the inputs scored together (the reference's
    /// untrusted data; default) or the trusted set.
    pub statistics_from: StatisticsFrom,
}

impl Default for QueSettings {
    /// The reference's settings.
    fn default() -> Self {
        Self {
            alpha: 4.0,
            rcond: 1e-5,
            statistics_from: StatisticsFrom::Inputs,
        }
    }
}

/// The quantum entropy score, with checked settings.
pub struct Que {
    settings: QueSettings,
}

impl Que {
    /// Refuses a negative or non-finite `alpha` and an `rcond` outside `[0, 1)`.
    pub fn new(settings: QueSettings) -> Result<Self, DetectError> {
        let bad = |reason: String| DetectError::Settings {
            detector: NAME.into(),
            reason,
        };
        if !(settings.alpha.is_finite() && settings.alpha >= 0.0) {
            return Err(bad(format!(
                "alpha must be finite and at least 0, got {}",
                settings.alpha
            )));
        }
        if !(0.0..1.0).contains(&settings.rcond) {
            return Err(bad(format!(
                "rcond must be in [0, 1), got {}",
                settings.rcond
            )));
        }
        Ok(Self { settings })
    }
}

/// PCA whitening fitted on trusted features.
#[derive(Debug, Clone, PartialEq)]
pub struct Whitening {
    /// Trusted feature mean, `[dim]`.
    pub mean: Vec<f64>,
    /// Kept eigenvectors of the trusted covariance, each divided by the square root of its
    /// eigenvalue: `tau_j = (f - mean) . basis[j]`.
    pub basis: Vec<Vec<f64>>,
}

impl Whitening {
    /// Fits on features `[n, dim]`, at least 2 rows with some variance; drops the directions of
    /// eigenvalue below `rcond` times the largest (and every non-positive one).
    pub fn fit(features: &[f64], dim: usize, rcond: f64) -> Result<Self, String> {
        let n = features.len().checked_div(dim).unwrap_or(0);
        let (mean, covariance) = mean_and_covariance(features, dim)
            .ok_or_else(|| format!("a mean and covariance need at least 2 samples, got {n}"))?;
        let eigen = symmetric_eigen(&covariance, dim).ok_or_else(|| {
            "the feature covariance is not finite or its eigendecomposition did not converge"
                .to_string()
        })?;
        let largest = eigen.values.first().copied().unwrap_or(0.0);
        if largest <= 0.0 {
            return Err("the features do not vary: there is nothing to whiten".into());
        }
        let basis = eigen
            .values
            .iter()
            .zip(eigen.vectors)
            .filter(|&(&value, _)| value > 0.0 && value >= rcond * largest)
            .map(|(&value, vector)| {
                let scale = value.sqrt().recip();
                vector.into_iter().map(|v| v * scale).collect()
            })
            .collect();
        Ok(Self { mean, basis })
    }

    /// Number of whitened coordinates.
    pub fn rank(&self) -> usize {
        self.basis.len()
    }

    /// Whitened features `[n, rank]` of features `[n, dim]`.
    pub fn whiten(&self, features: &[f64]) -> Vec<f64> {
        let dim = self.mean.len().max(1);
        let mut centred = vec![0.0; self.mean.len()];
        let mut out = Vec::with_capacity(features.len() / dim * self.rank());
        for row in features.chunks_exact(dim) {
            for ((c, v), m) in centred.iter_mut().zip(row).zip(&self.mean) {
                *c = v - m;
            }
            out.extend(self.basis.iter().map(|b| dot(&centred, b)));
        }
        out
    }
}

/// The QUE weighting of whitened coordinates: the untrusted covariance's eigenvectors and
/// their normalised exponential weights.
#[derive(Debug, Clone, PartialEq)]
pub struct QueWeights {
    /// Unit eigenvectors of the whitened untrusted covariance.
    pub directions: Vec<Vec<f64>>,
    /// `exp(alpha mu_j / mu_max)`, normalised to sum to 1 (`Q / Tr(Q)` in the eigenbasis).
    pub weights: Vec<f64>,
}

impl QueWeights {
    /// Fits on the whitened untrusted features `[n, rank]`, at least 2 rows.
    pub fn fit(whitened: &[f64], rank: usize, alpha: f64) -> Result<Self, String> {
        let n = whitened.len().checked_div(rank).unwrap_or(0);
        let (_, covariance) = mean_and_covariance(whitened, rank)
            .ok_or_else(|| format!("a covariance needs at least 2 samples, got {n}"))?;
        let eigen = symmetric_eigen(&covariance, rank).ok_or_else(|| {
            "the whitened covariance is not finite or its eigendecomposition did not converge"
                .to_string()
        })?;
        let largest = eigen.values.first().copied().unwrap_or(0.0);
        // exp(alpha (mu_j / mu_max - 1)): the common factor exp(alpha) cancels in Q / Tr(Q).
        // Inputs that do not vary at all (mu_max = 0) weigh every direction alike.
        let raw: Vec<f64> = eigen
            .values
            .iter()
            .map(|&mu| {
                let ratio = if largest > 0.0 { mu / largest } else { 1.0 };
                (alpha * (ratio - 1.0)).exp()
            })
            .collect();
        let total: f64 = raw.iter().sum();
        Ok(Self {
            directions: eigen.vectors,
            weights: raw.iter().map(|w| w / total).collect(),
        })
    }

    /// `tau^T Q tau / Tr(Q)` of every row `tau` of the whitened features `[n, rank]`.
    pub fn scores(&self, whitened: &[f64]) -> Vec<f64> {
        let rank = self.directions.len().max(1);
        whitened
            .chunks_exact(rank)
            .map(|tau| {
                self.directions
                    .iter()
                    .zip(&self.weights)
                    .map(|(u, w)| w * dot(u, tau).powi(2))
                    .sum()
            })
            .collect()
    }
}

/// The fitted QUE score: trusted whitening, and with `statistics_from = trusted` the weights.
pub struct FittedQue {
    settings: QueSettings,
    whitening: Whitening,
    trusted_weights: Option<QueWeights>,
    batch_size: usize,
}

impl Detector for Que {
    fn name(&self) -> &str {
        NAME
    }

    fn fit(&self, data: &FitData<'_>) -> Result<Box<dyn FittedDetector>, DetectError> {
        let fail = |reason: String| DetectError::Fit {
            detector: NAME.into(),
            reason: format!("on the trusted set: {reason}"),
        };
        let (features, dim) =
            penultimate_features(NAME, data.model, data.trusted, data.batch_size, data.device)?;
        let whitening = Whitening::fit(&features, dim, self.settings.rcond).map_err(fail)?;
        let trusted_weights = match self.settings.statistics_from {
            StatisticsFrom::Inputs => None,
            StatisticsFrom::Trusted => Some(
                QueWeights::fit(
                    &whitening.whiten(&features),
                    whitening.rank(),
                    self.settings.alpha,
                )
                .map_err(fail)?,
            ),
        };
        Ok(Box::new(FittedQue {
            settings: self.settings,
            whitening,
            trusted_weights,
            batch_size: data.batch_size,
        }))
    }
}

impl FittedDetector for FittedQue {
    fn name(&self) -> &str {
        NAME
    }

    fn columns(&self) -> Vec<String> {
        vec![NAME.into()]
    }

    fn score(
        &self,
        model: &Classifier,
        inputs: &ImageSet,
        device: &Device,
    ) -> Result<ScoreTable, DetectError> {
        if inputs.is_empty() {
            return ScoreTable::new(vec![(NAME.into(), Vec::new())]);
        }
        let (features, dim) = penultimate_features(NAME, model, inputs, self.batch_size, device)?;
        if dim != self.whitening.mean.len() {
            return Err(DetectError::Fit {
                detector: NAME.into(),
                reason: format!(
                    "fitted on {}-dimensional features, given {dim}",
                    self.whitening.mean.len()
                ),
            });
        }
        let whitened = self.whitening.whiten(&features);
        let values = match &self.trusted_weights {
            Some(weights) => weights.scores(&whitened),
            None => QueWeights::fit(&whitened, self.whitening.rank(), self.settings.alpha)
                .map_err(|reason| DetectError::Fit {
                    detector: NAME.into(),
                    reason: format!(
                        "with statistics_from = inputs the inputs' own covariance weighs their \
                         scores: {reason} (statistics_from = trusted scores inputs one at a \
                         time)"
                    ),
                })?
                .scores(&whitened),
        };
        ScoreTable::new(vec![(NAME.into(), values)])
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::attack::test_data::{tiny_cnn_spec, two_class_8x8};
    use crate::detect::DetectorSettings;
    use crate::device::default_device;
    use crate::metrics::auroc;
    use crate::models::test_util::host_seeded;

    /// Trusted rows `T` (10 x 3) and untrusted rows `U` (6 x 3); the scores by an independent
    /// path (scipy's Pade `expm`, not an eigenbasis), numpy 2.4.6, scipy 1.17.1 (trusted
    /// eigenvalues 2.745, 1.912, 0.208):
    /// ```python
    /// import numpy as np, scipy.linalg as sl
    /// t = np.array(T).reshape(10, 3); u = np.array(U).reshape(6, 3)
    /// lam, v = np.linalg.eigh(np.cov(t, rowvar=False))
    /// keep = lam >= rcond * lam.max(); w = v[:, keep] / np.sqrt(lam[keep])
    /// tau = (u - t.mean(0)) @ w
    /// s = np.cov(tau, rowvar=False)
    /// q = sl.expm(alpha * s / np.linalg.eigvalsh(s).max())
    /// score = np.einsum('bi,ij,bj->b', tau, q, tau) / np.trace(q)
    /// ```
    const T: [f64; 30] = [
        0.0, 0.54, -0.14, -1.78, -0.82, -0.5, 0.12, 2.41, -0.25, -1.24, 0.88, 0.18, 0.21, -1.67,
        -0.01, 1.39, -2.42, -0.23, -3.8, -2.32, -0.92, -0.47, -2.28, 0.14, 0.31, -0.34, -1.26,
        -1.08, -0.09, 0.06,
    ];
    const U: [f64; 18] = [
        -1.53,
        -0.48,
        -0.98,
        -0.81,
        1.06,
        -0.81,
        -0.03,
        0.88,
        -0.58,
        -0.11,
        0.11,
        0.06,
        -1.23,
        0.08,
        3.8600000000000003,
        -1.55,
        0.86,
        2.62,
    ];
    /// alpha = 4 (the reference), alpha = 0, and alpha = 4 with `rcond = 0.5` (drops the
    /// 0.208 direction); the last two rows of `U` are shifted by 2.5 along the third axis.
    const QUE4: [f64; 6] = [
        1.729480909604199,
        1.4089847783252318,
        0.6900834256939959,
        0.381785830042277,
        80.39507492050154,
        39.98110568291405,
    ];
    const QUE0: [f64; 6] = [
        0.7634074446334437,
        0.8761157303897052,
        0.5406391714857972,
        0.23507219075069952,
        27.878270285664584,
        14.18611324272763,
    ];
    const QUE4_RCOND: [f64; 6] = [
        0.2826439236035811,
        0.2628697950225633,
        0.4524278239922522,
        0.20722195535275476,
        0.06779248789902957,
        0.2792445770686149,
    ];

    #[test]
    fn scores_match_scipy_expm_on_whitened_features() {
        for (alpha, rcond, want, rank) in [
            (4.0, 1e-5, QUE4, 3),
            (0.0, 1e-5, QUE0, 3),
            (4.0, 0.5, QUE4_RCOND, 2),
        ] {
            let whitening = Whitening::fit(&T, 3, rcond).unwrap();
            assert_eq!(whitening.rank(), rank);
            let tau = whitening.whiten(&U);
            let got = QueWeights::fit(&tau, rank, alpha).unwrap().scores(&tau);
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() < 1e-10 * w.abs().max(1.0),
                    "alpha {alpha} rcond {rcond}: {got:?} vs {want:?}"
                );
            }
        }
        let err = Whitening::fit(&[1.0, 2.0, 1.0, 2.0], 2, 1e-5).unwrap_err();
        assert!(err.contains("do not vary"), "{err}");
        let err = QueWeights::fit(&[1.0, 2.0], 2, 4.0).unwrap_err();
        assert!(err.contains("at least 2 samples, got 1"), "{err}");
        // Identical inputs weigh every direction alike (no division by a zero norm).
        let flat = QueWeights::fit(&[1.0, 2.0, 1.0, 2.0], 2, 4.0).unwrap();
        assert_eq!(flat.weights, vec![0.5, 0.5]);
        assert_eq!(flat.scores(&[1.0, 2.0]), vec![2.5]);
    }

    /// A random tiny CNN (8 penultimate features). Random models' features barely see some
    /// shifts; on this seed the shift below moves them (at writing, spectral's AUROC on it is
    /// 1.0 with the inputs' statistics and 0.2 with the trusted set's, QUE's 1.0 with either).
    fn model() -> Classifier {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        host_seeded(tiny_cnn_spec(), &mut rng, &default_device())
    }

    fn noise(n: usize, salt: usize) -> ImageSet {
        two_class_8x8(n, move |i| ((i * 37 + salt * 11) % 101) as f32 / 100.0)
    }

    fn fit(settings: QueSettings, model: &Classifier) -> Box<dyn FittedDetector> {
        let trusted = noise(40, 1);
        let device = default_device();
        DetectorSettings::Que(settings)
            .build()
            .unwrap()
            .fit(&FitData {
                model,
                trusted: &trusted,
                sampling: &trusted,
                batch_size: 16,
                seed: 0,
                device: &device,
            })
            .unwrap()
    }

    #[test]
    fn a_shared_trigger_scores_high_and_labels_are_not_read() {
        let model = model();
        let device = default_device();
        // 24 clean noise images and 8 washed towards white (`0.8 + 0.2 x`).
        let mut inputs = noise(32, 5);
        for i in 24..32 {
            for p in inputs.image_mut(i) {
                *p = 0.8 + 0.2 * *p;
            }
        }
        for statistics_from in [StatisticsFrom::Inputs, StatisticsFrom::Trusted] {
            let fitted = fit(
                QueSettings {
                    statistics_from,
                    ..QueSettings::default()
                },
                &model,
            );
            assert_eq!(fitted.columns(), vec!["que"]);
            let table = fitted.score(&model, &inputs, &device).unwrap();
            let scores = table.column("que").unwrap();
            let auc = auroc(&scores[..24], &scores[24..]).unwrap();
            assert!(auc > 0.95, "{statistics_from:?}: AUROC {auc}");
            let mut relabelled = inputs.clone();
            for i in 0..relabelled.len() {
                relabelled.set_label(i, 1 - relabelled.label(i)).unwrap();
            }
            assert_eq!(fitted.score(&model, &relabelled, &device).unwrap(), table);
        }
    }

    #[test]
    fn bad_settings_and_data_are_refused_with_the_reason() {
        for (alpha, rcond, expected) in [
            (-1.0, 1e-5, "alpha must be finite and at least 0, got -1"),
            (f64::NAN, 1e-5, "alpha must be finite"),
            (4.0, 1.0, "rcond must be in [0, 1), got 1"),
            (4.0, -0.1, "rcond must be in [0, 1)"),
        ] {
            let err = DetectorSettings::Que(QueSettings {
                alpha,
                rcond,
                ..QueSettings::default()
            })
            .build()
            .err()
            .unwrap()
            .to_string();
            assert!(err.contains("invalid settings for que"), "{err}");
            assert!(err.contains(expected), "{err}");
        }
        let model = model();
        let device = default_device();
        let fitted = fit(QueSettings::default(), &model);
        assert!(
            fitted
                .score(&model, &noise(0, 0), &device)
                .unwrap()
                .is_empty()
        );
        let err = fitted
            .score(&model, &noise(1, 0), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 2 samples, got 1"), "{err}");
        let trusted = noise(1, 0);
        let err = Que::new(QueSettings::default())
            .unwrap()
            .fit(&FitData {
                model: &model,
                trusted: &trusted,
                sampling: &trusted,
                batch_size: 4,
                seed: 0,
                device: &device,
            })
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("que cannot be fitted: on the trusted set: a mean and covariance need at least 2 samples, got 1"), "{err}");
    }

    /// Thresholds come from held-back trusted samples scored as a set of their own. Only that
    /// it works is asserted: how well such a threshold carries over to a mixed input set is not a
    /// property of the code (`docs/detectors.md`: at writing, on the shifted mix of the tests
    /// above, it flagged 5 of the 8 shifted inputs for spectral and none for QUE, whose ranking
    /// of that mix is perfect).
    #[test]
    fn thresholds_are_set_on_held_back_trusted_samples_scored_together() {
        use crate::detect::{ThresholdConfig, fit_with_thresholds};
        let model = model();
        let device = default_device();
        let trusted = noise(80, 1);
        let detector = DetectorSettings::Que(QueSettings::default())
            .build()
            .unwrap();
        let data = FitData {
            model: &model,
            trusted: &trusted,
            sampling: &trusted,
            batch_size: 16,
            seed: 0,
            device: &device,
        };
        let thresholded =
            fit_with_thresholds(detector.as_ref(), &data, &ThresholdConfig::default()).unwrap();
        assert_eq!(
            (thresholded.fitted_on, thresholded.threshold_samples),
            (60, 20)
        );
        let threshold = thresholded.threshold("que").unwrap();
        assert!(threshold.is_finite() && threshold > 0.0, "{threshold}");
    }
}
