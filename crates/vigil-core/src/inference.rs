//! Forward passes over whole datasets: per-sample losses, predictions and accuracy.
//!
//! This is the hot path of MAD-FA (per-sample losses of thousands of inputs at every draw) and
//! of every evaluation, so it batches, runs without autodiff, and copies each batch's results
//! to the host once.

use burn::module::Module;
use burn::tensor::Device;

use crate::data::{ImageSet, Label, batch};
use crate::loss::{cross_entropy_per_sample, predictions};
use crate::models::{BnMode, Classifier};

/// Per-sample results of a forward pass over a dataset, in the order of the indices given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleOutputs {
    /// Cross-entropy against the stored labels.
    pub losses: Vec<f32>,
    /// Arg-max predictions.
    pub predicted: Vec<Label>,
    /// The stored labels.
    pub labels: Vec<Label>,
}

impl SampleOutputs {
    /// Fraction of samples predicted correctly (0 for an empty set).
    pub fn accuracy(&self) -> f64 {
        if self.labels.is_empty() {
            return 0.0;
        }
        let correct = self
            .predicted
            .iter()
            .zip(&self.labels)
            .filter(|(p, l)| p == l)
            .count();
        correct as f64 / self.labels.len() as f64
    }

    /// Mean loss (0 for an empty set).
    pub fn mean_loss(&self) -> f64 {
        if self.losses.is_empty() {
            return 0.0;
        }
        self.losses.iter().map(|&l| f64::from(l)).sum::<f64>() / self.losses.len() as f64
    }
}

impl Classifier {
    /// A copy for inference: same weights, no autodiff tracking.
    pub fn for_inference(&self) -> Classifier {
        Classifier {
            network: self.network.valid(),
            spec: self.spec.clone(),
        }
    }
}

/// Runs `classifier` over the samples of `set` at `indices` (all samples if `None`) in batches of
/// `batch_size`, BatchNorm in `bn` mode, and returns per-sample losses and predictions.
pub fn evaluate(
    classifier: &Classifier,
    set: &ImageSet,
    indices: Option<&[usize]>,
    batch_size: usize,
    bn: BnMode,
    device: &Device,
) -> SampleOutputs {
    let model = classifier.for_inference();
    let all: Vec<usize>;
    let indices = match indices {
        Some(indices) => indices,
        None => {
            all = (0..set.len()).collect();
            &all
        }
    };
    let mut out = SampleOutputs {
        losses: Vec::with_capacity(indices.len()),
        predicted: Vec::with_capacity(indices.len()),
        labels: indices.iter().map(|&i| set.label(i)).collect(),
    };
    let device = device.clone().inner();
    for chunk in indices.chunks(batch_size.max(1)) {
        let b = batch(set, chunk, &device);
        let logits = model.forward(b.images, bn);
        let losses = cross_entropy_per_sample(logits.clone(), b.labels);
        let predicted = predictions(logits);
        out.losses.extend(losses.into_data().iter::<f32>());
        out.predicted
            .extend(predicted.into_data().iter::<i64>().map(|p| p as Label));
    }
    out
}
