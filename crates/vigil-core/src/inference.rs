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

    /// Fraction of each class's samples (by stored label, classes `0..num_classes`) predicted
    /// correctly; 0 for a class without samples.
    pub fn per_class_accuracy(&self, num_classes: usize) -> Vec<f64> {
        let mut counts = vec![(0usize, 0usize); num_classes];
        for (p, l) in self.predicted.iter().zip(&self.labels) {
            if let Some((correct, total)) = counts.get_mut(usize::from(*l)) {
                *total += 1;
                *correct += usize::from(p == l);
            }
        }
        counts
            .iter()
            .map(|&(correct, total)| correct as f64 / total.max(1) as f64)
            .collect()
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

/// A classifier's accuracy and mean loss on a labelled set, overall and per class (what
/// `vigil eval` reports).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SetEvaluation {
    /// Samples evaluated.
    pub samples: usize,
    /// Fraction predicted correctly.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub mean_loss: f64,
    /// Each class's name and accuracy, in label order.
    pub per_class_accuracy: Vec<(String, f64)>,
}

/// Evaluates `classifier` on every sample of `set` (BatchNorm in eval mode, batches of
/// `batch_size`).
pub fn evaluate_set(
    classifier: &Classifier,
    set: &ImageSet,
    batch_size: usize,
    device: &Device,
) -> SetEvaluation {
    let outputs = evaluate(classifier, set, None, batch_size, BnMode::Eval, device);
    SetEvaluation {
        samples: set.len(),
        accuracy: outputs.accuracy(),
        mean_loss: outputs.mean_loss(),
        per_class_accuracy: set
            .class_names()
            .iter()
            .cloned()
            .zip(outputs.per_class_accuracy(set.num_classes()))
            .collect(),
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

#[cfg(test)]
mod tests {
    use super::SampleOutputs;

    #[test]
    fn per_class_accuracy_counts_each_stored_label() {
        let outputs = SampleOutputs {
            losses: vec![0.0; 5],
            predicted: vec![0, 1, 1, 2, 0],
            labels: vec![0, 0, 1, 2, 2],
        };
        // Class 0: 1 of 2 right; class 1: 1 of 1; class 2: 1 of 2; class 3: no samples.
        assert_eq!(outputs.per_class_accuracy(4), [0.5, 1.0, 0.5, 0.0]);
    }
}
