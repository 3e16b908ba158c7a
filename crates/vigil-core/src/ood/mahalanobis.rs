//! Mahalanobis distance on penultimate features (Lee et al. 2018, without their input
//! preprocessing and layer ensemble): class means and one shared covariance fitted on ID
//! training features; the score is the distance to the closest class mean,
//! `min_c (f - mu_c)^T Sigma^-1 (f - mu_c)`.

use burn::tensor::{Device, Tensor, TensorData};

use super::{OodError, OodScore, ScoreKind, features_of, on_device_of};
use crate::data::ImageSet;
use crate::models::{BnMode, Classifier};

/// Mahalanobis score; [`OodScore::fit`] must run first.
#[derive(Debug, Clone, Default)]
pub struct Mahalanobis {
    /// Batch size of the feature pass while fitting.
    pub batch_size: usize,
    fitted: Option<Fitted>,
}

#[derive(Debug, Clone)]
/// What scoring needs, built once at fit on the plain device. Features and means are taken
/// relative to `centre`, the fit features' mean: the expansion the score uses
/// (`f P f - 2 f P mu + mu P mu`) cancels catastrophically in float32 when every feature
/// shares a large offset (a language model's residual stream), and centring removes it.
struct Fitted {
    /// Mean of the fit features, `[1, dim]`.
    centre: Tensor<2>,
    /// Class means minus `centre`, `[classes, dim]`.
    means: Tensor<2>,
    /// Inverse of the shared covariance, `[dim, dim]`.
    precision: Tensor<2>,
    /// `mu_c^T Sigma^-1 mu_c` of every class, `[1, classes]`.
    mean_norms: Tensor<2>,
}

impl Mahalanobis {
    /// An unfitted score whose fit reads features in batches of `batch_size`.
    pub fn new(batch_size: usize) -> Self {
        Self {
            batch_size,
            fitted: None,
        }
    }

    /// Fits class means and the inverse shared covariance from features `[n, dim]` and labels,
    /// kept on `device`.
    pub fn fit_features(
        &mut self,
        features: &[f64],
        dim: usize,
        labels: &[usize],
        device: &Device,
    ) -> Result<(), OodError> {
        let fail = |reason: String| OodError::Fit {
            score: "mahalanobis",
            reason,
        };
        let n = labels.len();
        if dim == 0 || n == 0 || features.len() != n * dim {
            return Err(fail(format!(
                "{} feature values for {n} samples of dimension {dim}",
                features.len()
            )));
        }
        let classes = labels.iter().max().map_or(0, |m| m + 1);
        let mut means = vec![0.0; classes * dim];
        let mut counts = vec![0usize; classes];
        for (row, &c) in features.chunks_exact(dim).zip(labels) {
            counts[c] += 1;
            for (m, v) in means[c * dim..(c + 1) * dim].iter_mut().zip(row) {
                *m += v;
            }
        }
        for (c, &count) in counts.iter().enumerate() {
            if count == 0 {
                return Err(fail(format!("class {c} has no training sample")));
            }
            for m in &mut means[c * dim..(c + 1) * dim] {
                *m /= count as f64;
            }
        }
        let mut covariance = vec![0.0; dim * dim];
        let mut centred = vec![0.0; dim];
        for (row, &c) in features.chunks_exact(dim).zip(labels) {
            for (k, v) in centred.iter_mut().enumerate() {
                *v = row[k] - means[c * dim + k];
            }
            for a in 0..dim {
                for b in 0..=a {
                    covariance[a * dim + b] += centred[a] * centred[b];
                }
            }
        }
        for a in 0..dim {
            for b in 0..=a {
                let v = covariance[a * dim + b] / n as f64;
                covariance[a * dim + b] = v;
                covariance[b * dim + a] = v;
            }
        }
        let precision = ridged_precision(covariance, dim)
            .ok_or_else(|| fail("the feature covariance is not positive definite".into()))?;
        let mut centre = vec![0.0; dim];
        for row in features.chunks_exact(dim) {
            for (c, v) in centre.iter_mut().zip(row) {
                *c += v / n as f64;
            }
        }
        for mean in means.chunks_exact_mut(dim) {
            for (m, c) in mean.iter_mut().zip(&centre) {
                *m -= c;
            }
        }
        // mu_c^T P mu_c in float64.
        let mean_norms: Vec<f64> = means
            .chunks_exact(dim)
            .map(|mu| {
                (0..dim)
                    .map(|a| {
                        mu[a]
                            * (0..dim)
                                .map(|b| precision[a * dim + b] * mu[b])
                                .sum::<f64>()
                    })
                    .sum()
            })
            .collect();
        let device = device.clone().inner();
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let precision =
            Tensor::<2>::from_data(TensorData::new(f32s(&precision), [dim, dim]), &device);
        let means = Tensor::<2>::from_data(TensorData::new(f32s(&means), [classes, dim]), &device);
        let centre = Tensor::<2>::from_data(TensorData::new(f32s(&centre), [1, dim]), &device);
        let mean_norms =
            Tensor::<2>::from_data(TensorData::new(f32s(&mean_norms), [1, classes]), &device);
        self.fitted = Some(Fitted {
            centre,
            means,
            precision,
            mean_norms,
        });
        Ok(())
    }

    /// Scores of features `[n, dim]` (a tensor, so the score is differentiable in them).
    pub fn score_features(&self, features: Tensor<2>) -> Result<Tensor<1>, OodError> {
        let fitted = self
            .fitted
            .as_ref()
            .ok_or(OodError::NotFitted("mahalanobis"))?;
        let [n, dim] = features.dims();
        let fitted_dim = fitted.precision.dims()[0];
        if dim != fitted_dim {
            return Err(OodError::Fit {
                score: "mahalanobis",
                reason: format!("fitted on {fitted_dim}-dimensional features, given {dim}"),
            });
        }
        let precision = on_device_of(fitted.precision.clone(), &features);
        let means = on_device_of(fitted.means.clone(), &features);
        let mm = on_device_of(fitted.mean_norms.clone(), &features);
        let centre = on_device_of(fitted.centre.clone(), &features);
        let features = features - centre;
        // (f - mu)^T P (f - mu) = f P f - 2 f P mu + mu P mu, for every sample and class (f and
        // mu centred); a distance is never negative, which rounding can still make it by a hair.
        let fp = features.clone().matmul(precision);
        let ff = (fp.clone() * features).sum_dim(1); // [n, 1]
        let fm = fp.matmul(means.transpose()); // [n, classes]
        let distances = ff - fm.mul_scalar(2.0) + mm;
        Ok(distances.min_dim(1).reshape([n]).clamp_min(0.0))
    }
}

impl OodScore for Mahalanobis {
    fn name(&self) -> &'static str {
        ScoreKind::Mahalanobis.name()
    }

    fn fit(
        &mut self,
        model: &Classifier,
        id_train: &ImageSet,
        device: &Device,
    ) -> Result<(), OodError> {
        let (features, dim, labels) = features_of(model, id_train, self.batch_size.max(1), device);
        self.fit_features(&features, dim, &labels, device)
    }

    fn score(&self, model: &Classifier, x: Tensor<4>) -> Result<Tensor<1>, OodError> {
        self.score_features(model.features(x, BnMode::Eval))
    }
}

/// The inverse of `covariance` (`dim x dim`) after adding a ridge of 1e-6 times its mean
/// variance to the diagonal, or `None` if it is still not positive definite. The ridge keeps dead
/// (always-zero) features, such as ReLU units that never fire, from making it singular.
pub(crate) fn ridged_precision(mut covariance: Vec<f64>, dim: usize) -> Option<Vec<f64>> {
    let ridge = 1e-6
        * (0..dim)
            .map(|i| covariance[i * dim + i])
            .sum::<f64>()
            .max(1e-12)
        / dim as f64;
    for i in 0..dim {
        covariance[i * dim + i] += ridge;
    }
    invert_spd(&covariance, dim)
}

/// Inverse of a symmetric positive definite `dim x dim` matrix through its Cholesky factor, or
/// `None` if it is not positive definite.
pub(crate) fn invert_spd(a: &[f64], dim: usize) -> Option<Vec<f64>> {
    // a = L L^T.
    let mut l = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * dim + k] * l[j * dim + k]).sum();
            if i == j {
                let d = a[i * dim + i] - s;
                if d <= 0.0 || !d.is_finite() {
                    return None;
                }
                l[i * dim + i] = d.sqrt();
            } else {
                l[i * dim + j] = (a[i * dim + j] - s) / l[j * dim + j];
            }
        }
    }
    // L^-1 by forward substitution, then a^-1 = L^-T L^-1.
    let mut inv_l = vec![0.0; dim * dim];
    for col in 0..dim {
        for i in col..dim {
            let s: f64 = (col..i)
                .map(|k| l[i * dim + k] * inv_l[k * dim + col])
                .sum();
            let rhs = if i == col { 1.0 } else { 0.0 };
            inv_l[i * dim + col] = (rhs - s) / l[i * dim + i];
        }
    }
    let mut out = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in 0..=i {
            let v: f64 = (i..dim)
                .map(|k| inv_l[k * dim + i] * inv_l[k * dim + j])
                .sum();
            out[i * dim + j] = v;
            out[j * dim + i] = v;
        }
    }
    Some(out)
}
