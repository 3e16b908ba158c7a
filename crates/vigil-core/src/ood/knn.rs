//! k nearest neighbours on normalised features (Sun et al. 2022): the distance from an input's
//! L2-normalised penultimate features to its `k`-th nearest neighbour among the ID training
//! set's normalised features.

use burn::tensor::{Device, Tensor, TensorData};

use super::{OodError, OodScore, ScoreKind, features_of, on_device_of};
use crate::data::ImageSet;
use crate::models::{BnMode, Classifier};

/// The k-NN score; [`OodScore::fit`] stores the ID training features.
#[derive(Debug, Clone)]
pub struct Knn {
    /// Which neighbour (1 = the nearest). The paper uses 50 on CIFAR-10's 50,000 images.
    pub k: usize,
    /// Batch size of the feature pass while fitting.
    pub batch_size: usize,
    /// The normalised training features `[n, dim]`, on the plain device, built once at fit.
    bank: Option<Tensor<2>>,
}

impl Knn {
    /// An unfitted score using the `k`-th neighbour.
    pub fn new(k: usize, batch_size: usize) -> Self {
        Self {
            k,
            batch_size,
            bank: None,
        }
    }

    /// Stores ID training features `[n, dim]` (normalised here) on `device`.
    pub fn fit_features(
        &mut self,
        features: &[f64],
        dim: usize,
        device: &Device,
    ) -> Result<(), OodError> {
        let n = features.len().checked_div(dim).unwrap_or(0);
        if dim == 0 || n < self.k || self.k == 0 || features.len() != n * dim {
            return Err(OodError::Fit {
                score: "knn",
                reason: format!(
                    "k = {} needs at least k training samples, got {n} of dimension {dim}",
                    self.k
                ),
            });
        }
        let mut bank = Vec::with_capacity(features.len());
        for row in features.chunks_exact(dim) {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            bank.extend(row.iter().map(|v| (v / norm) as f32));
        }
        self.bank = Some(Tensor::from_data(
            TensorData::new(bank, [n, dim]),
            &device.clone().inner(),
        ));
        Ok(())
    }

    /// Scores of features `[n, dim]` (differentiable in them).
    pub fn score_features(&self, features: Tensor<2>) -> Result<Tensor<1>, OodError> {
        let bank = self.bank.as_ref().ok_or(OodError::NotFitted("knn"))?;
        let [n, d] = features.dims();
        let dim = bank.dims()[1];
        if d != dim {
            return Err(OodError::Fit {
                score: "knn",
                reason: format!("fitted on {dim}-dimensional features, given {d}"),
            });
        }
        let bank = on_device_of(bank.clone(), &features);
        let norm = features
            .clone()
            .powi_scalar(2)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        let z = features / norm;
        // |z - b|^2 = 2 - 2 z.b for unit vectors; the k-th smallest distance.
        let squared = z
            .matmul(bank.transpose())
            .mul_scalar(-2.0)
            .add_scalar(2.0)
            .clamp_min(0.0);
        let kth = squared.sort(1).narrow(1, self.k - 1, 1).reshape([n]);
        Ok(kth.add_scalar(1e-12).sqrt())
    }
}

impl OodScore for Knn {
    fn name(&self) -> &'static str {
        ScoreKind::Knn.name()
    }

    fn fit(
        &mut self,
        model: &Classifier,
        id_train: &ImageSet,
        device: &Device,
    ) -> Result<(), OodError> {
        let (features, dim, _) = features_of(model, id_train, self.batch_size.max(1), device);
        self.fit_features(&features, dim, device)
    }

    fn score(&self, model: &Classifier, x: Tensor<4>) -> Result<Tensor<1>, OodError> {
        self.score_features(model.features(x, BnMode::Eval))
    }
}
