//! Host images to device tensors, one batch at a time.
//!
//! Datasets stay on the host as `f32` in `[0, 1]` (an [`ImageSet`]); a batch is gathered into one
//! contiguous buffer and handed to the device in a single copy.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;

use super::augment::Augmentation;
use super::dataset::{ImageSet, Label};

/// Images `[n, c, h, w]` and their labels `[n]`, on a device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Pixels in `[0, 1]`.
    pub images: Tensor<4>,
    /// Class indices.
    pub labels: Tensor<1, Int>,
}

/// The images at `indices` as one tensor.
pub fn images_tensor(set: &ImageSet, indices: &[usize], device: &Device) -> Tensor<4> {
    let shape = set.shape();
    let mut pixels = Vec::with_capacity(indices.len() * shape.num_values());
    for &i in indices {
        pixels.extend_from_slice(set.image(i));
    }
    to_tensor(pixels, set, indices.len(), device)
}

/// Class indices as an integer tensor.
pub fn labels_tensor(labels: &[Label], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    Tensor::from_data(TensorData::new(values, [labels.len()]), device)
}

/// The samples at `indices`, as stored.
pub fn batch(set: &ImageSet, indices: &[usize], device: &Device) -> Batch {
    let labels: Vec<Label> = indices.iter().map(|&i| set.label(i)).collect();
    Batch {
        images: images_tensor(set, indices, device),
        labels: labels_tensor(&labels, device),
    }
}

/// The samples at `indices`, each randomly augmented with `augmentation` drawing from `rng`.
pub fn augmented_batch(
    set: &ImageSet,
    indices: &[usize],
    augmentation: &Augmentation,
    rng: &mut impl Rng,
    device: &Device,
) -> Batch {
    let n = set.shape().num_values();
    let mut pixels = vec![0.0f32; indices.len() * n];
    for (out, &i) in pixels.chunks_exact_mut(n).zip(indices) {
        augmentation.apply(set.image(i), set.shape(), rng, out);
    }
    let labels: Vec<Label> = indices.iter().map(|&i| set.label(i)).collect();
    Batch {
        images: to_tensor(pixels, set, indices.len(), device),
        labels: labels_tensor(&labels, device),
    }
}

fn to_tensor(pixels: Vec<f32>, set: &ImageSet, n: usize, device: &Device) -> Tensor<4> {
    let s = set.shape();
    Tensor::from_data(
        TensorData::new(pixels, [n, s.channels, s.height, s.width]),
        device,
    )
}
