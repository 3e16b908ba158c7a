//! Training-time augmentation and per-data-set normalisation constants.
//!
//! Both follow BackdoorBench (`utils/aggregate_block/dataset_and_transform_generate.py`,
//! `get_transform` and `get_dataset_normalization`) so results stay
//! comparable with it: training images are randomly cropped after zero
//! padding of 4 pixels on every data set, CIFAR-10 images are also flipped
//! horizontally with probability 1/2, and then every image is normalised
//! per channel as `(x - mean) / std`.
//!
//! Augmentation works on one image's [0, 1] values (C x H x W) and must run
//! before normalisation, so that padding is black (0) exactly as in
//! torchvision, where `RandomCrop` pads the picture before `Normalize`. The
//! caller passes the random number generator, which makes every epoch
//! reproducible from a seed.

use rand::Rng;

use super::dataset::ImageShape;
use super::source::DatasetKind;

/// Zero padding, in pixels on every side, before the random crop
/// (BackdoorBench's `random_crop_padding`).
pub const DEFAULT_CROP_PADDING: usize = 4;

/// Per-channel mean and standard deviation for `(x - mean) / std`.
///
/// A single value applies to every channel, as torchvision broadcasts
/// `Normalize([0.5], [0.5])`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Mean per channel, or one mean for all channels.
    pub mean: &'static [f32],
    /// Standard deviation per channel, or one for all channels.
    pub std: &'static [f32],
}

/// CIFAR-10's normalisation in BackdoorBench (taken there from WaNet).
pub const CIFAR10_NORMALIZATION: Normalization = Normalization {
    mean: &[0.4914, 0.4822, 0.4465],
    std: &[0.247, 0.243, 0.261],
};

/// CIFAR-100's normalisation in BackdoorBench.
pub const CIFAR100_NORMALIZATION: Normalization = Normalization {
    mean: &[0.5071, 0.4865, 0.4409],
    std: &[0.2673, 0.2564, 0.2762],
};

/// MNIST's normalisation in BackdoorBench, mapping [0, 1] to [-1, 1]; vigil
/// also uses it for Fashion-MNIST and image folders (BackdoorBench's folder
/// data sets use the MNIST transform too).
pub const MNIST_NORMALIZATION: Normalization = Normalization {
    mean: &[0.5],
    std: &[0.5],
};

impl Normalization {
    /// The constants vigil uses for `kind`.
    pub const fn for_kind(kind: DatasetKind) -> Normalization {
        match kind {
            DatasetKind::Cifar10 => CIFAR10_NORMALIZATION,
            DatasetKind::Cifar100 => CIFAR100_NORMALIZATION,
            DatasetKind::FashionMnist | DatasetKind::Mnist | DatasetKind::ImageFolder => {
                MNIST_NORMALIZATION
            }
        }
    }

    /// Mean for `channel` (the single mean if only one is given).
    pub fn mean_of(&self, channel: usize) -> f32 {
        pick_channel(self.mean, channel)
    }

    /// Standard deviation for `channel` (the single one if only one is given).
    pub fn std_of(&self, channel: usize) -> f32 {
        pick_channel(self.std, channel)
    }

    /// The per-channel statistics a model with `channels` input channels stores in its spec
    /// (vigil normalises inside the model, so triggers and attacks work in `[0, 1]`).
    pub fn for_channels(&self, channels: usize) -> crate::models::Normalization {
        crate::models::Normalization {
            mean: (0..channels).map(|c| self.mean_of(c)).collect(),
            std: (0..channels).map(|c| self.std_of(c)).collect(),
        }
    }
}

/// `values[channel]`, or `values[0]` when one value covers all channels.
fn pick_channel(values: &[f32], channel: usize) -> f32 {
    if values.len() == 1 {
        values[0]
    } else {
        values[channel]
    }
}

/// Which random augmentations to apply to training images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augmentation {
    /// Zero padding before a random crop back to the original size; 0
    /// disables cropping.
    pub crop_padding: usize,
    /// Whether to mirror left-right with probability 1/2.
    pub horizontal_flip: bool,
}

impl Augmentation {
    /// No augmentation: images pass through unchanged.
    pub const NONE: Augmentation = Augmentation {
        crop_padding: 0,
        horizontal_flip: false,
    };

    /// BackdoorBench's training augmentation for `kind`: a random crop with
    /// [`DEFAULT_CROP_PADDING`] for every data set, plus a random horizontal
    /// flip for CIFAR-10 only (BackdoorBench flips no other data set).
    pub const fn for_kind(kind: DatasetKind) -> Augmentation {
        Augmentation {
            crop_padding: DEFAULT_CROP_PADDING,
            horizontal_flip: matches!(kind, DatasetKind::Cifar10),
        }
    }

    /// Writes an augmented copy of `image` (C x H x W, values in [0, 1]) to
    /// `out`: random crop first, then random flip, as in BackdoorBench.
    /// Draws from `rng` in a fixed order, so the same generator state gives
    /// the same result.
    ///
    /// # Panics
    /// If `image` or `out` does not have `shape.num_values()` values.
    pub fn apply(&self, image: &[f32], shape: ImageShape, rng: &mut impl Rng, out: &mut [f32]) {
        random_crop_with_padding(image, shape, self.crop_padding, rng, out);
        if self.horizontal_flip {
            random_horizontal_flip(out, shape, rng);
        }
    }
}

/// Pads `image` with `padding` zeros on every side and writes the H x W
/// window whose top-left corner is at (`top`, `left`) in the padded image to
/// `out`. `top == left == padding` reproduces the image.
///
/// # Panics
/// If `top` or `left` exceeds `2 * padding`, or `image` or `out` does not
/// have `shape.num_values()` values.
pub fn crop_with_zero_padding(
    image: &[f32],
    shape: ImageShape,
    padding: usize,
    top: usize,
    left: usize,
    out: &mut [f32],
) {
    let values = shape.num_values();
    assert_eq!(image.len(), values, "image does not have shape {shape}");
    assert_eq!(out.len(), values, "output does not have shape {shape}");
    assert!(
        top <= 2 * padding && left <= 2 * padding,
        "crop offset beyond padding"
    );
    let (height, width) = (shape.height, shape.width);
    // Output column x reads source column x + left - padding; keep the
    // columns where that lies inside the image.
    let first_x = padding.saturating_sub(left).min(width);
    let end_x = (width + padding)
        .saturating_sub(left)
        .min(width)
        .max(first_x);
    let len = end_x - first_x;
    let source_first_x = (first_x + left).saturating_sub(padding);
    for (source_plane, out_plane) in image
        .chunks_exact(shape.plane_len())
        .zip(out.chunks_exact_mut(shape.plane_len()))
    {
        for (y, out_row) in out_plane.chunks_exact_mut(width).enumerate() {
            out_row.fill(0.0);
            let source_y = (y + top).checked_sub(padding).filter(|&sy| sy < height);
            let Some(source_y) = source_y.filter(|_| len > 0) else {
                continue;
            };
            let source_row = &source_plane[source_y * width..(source_y + 1) * width];
            out_row[first_x..end_x]
                .copy_from_slice(&source_row[source_first_x..source_first_x + len]);
        }
    }
}

/// Crops at a uniformly random offset after zero padding (torchvision's
/// `RandomCrop(size, padding)`), writing to `out`. With `padding == 0` it
/// copies the image and draws nothing from `rng`.
///
/// # Panics
/// If `image` or `out` does not have `shape.num_values()` values.
pub fn random_crop_with_padding(
    image: &[f32],
    shape: ImageShape,
    padding: usize,
    rng: &mut impl Rng,
    out: &mut [f32],
) {
    if padding == 0 {
        out.copy_from_slice(image);
        return;
    }
    let top = rng.random_range(0..=2 * padding);
    let left = rng.random_range(0..=2 * padding);
    crop_with_zero_padding(image, shape, padding, top, left, out);
}

/// Mirrors an image left-right in place.
///
/// # Panics
/// If `image` does not have `shape.num_values()` values.
pub fn flip_horizontal(image: &mut [f32], shape: ImageShape) {
    assert_eq!(
        image.len(),
        shape.num_values(),
        "image does not have shape {shape}"
    );
    image
        .chunks_exact_mut(shape.width)
        .for_each(<[f32]>::reverse);
}

/// Mirrors an image left-right in place with probability 1/2; returns
/// whether it did.
pub fn random_horizontal_flip(image: &mut [f32], shape: ImageShape, rng: &mut impl Rng) -> bool {
    let flip = rng.random_bool(0.5);
    if flip {
        flip_horizontal(image, shape);
    }
    flip
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const SHAPE: ImageShape = ImageShape::new(3, 5, 6);

    /// An image whose value at (c, y, x) is distinct and inside (0, 1].
    fn numbered_image() -> Vec<f32> {
        (1..=SHAPE.num_values())
            .map(|i| i as f32 / SHAPE.num_values() as f32)
            .collect()
    }

    fn at(image: &[f32], c: usize, y: usize, x: usize) -> f32 {
        image[(c * SHAPE.height + y) * SHAPE.width + x]
    }

    #[test]
    fn centred_crop_is_identity() {
        let image = numbered_image();
        let mut out = vec![0.0; image.len()];
        crop_with_zero_padding(&image, SHAPE, 4, 4, 4, &mut out);
        assert_eq!(out, image);
    }

    #[test]
    fn corner_crop_shifts_and_pads_with_zeros() {
        let image = numbered_image();
        let mut out = vec![-1.0; image.len()];
        // Window at the padded image's top-left: content moves down 2, right 3.
        crop_with_zero_padding(&image, SHAPE, 4, 2, 1, &mut out);
        for c in 0..3 {
            for y in 0..SHAPE.height {
                for x in 0..SHAPE.width {
                    let expected = if y >= 2 && x >= 3 {
                        at(&image, c, y - 2, x - 3)
                    } else {
                        0.0
                    };
                    assert_eq!(at(&out, c, y, x), expected, "c={c} y={y} x={x}");
                }
            }
        }
        // Padding wider than the image leaves nothing.
        crop_with_zero_padding(&image, SHAPE, 8, 16, 16, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn flip_is_an_exact_mirror() {
        let image = numbered_image();
        let mut flipped = image.clone();
        flip_horizontal(&mut flipped, SHAPE);
        for c in 0..3 {
            for y in 0..SHAPE.height {
                for x in 0..SHAPE.width {
                    assert_eq!(at(&flipped, c, y, x), at(&image, c, y, SHAPE.width - 1 - x));
                }
            }
        }
        flip_horizontal(&mut flipped, SHAPE);
        assert_eq!(flipped, image);
    }

    /// Augments `numbered_image()` 20 times from one seeded generator.
    fn augment_many(augmentation: Augmentation, seed: u64) -> Vec<Vec<f32>> {
        let image = numbered_image();
        let mut rng = StdRng::seed_from_u64(seed);
        (0..20)
            .map(|_| {
                let mut out = vec![0.0; image.len()];
                augmentation.apply(&image, SHAPE, &mut rng, &mut out);
                out
            })
            .collect()
    }

    #[test]
    fn augmentation_keeps_shape_and_range() {
        let cifar = Augmentation::for_kind(DatasetKind::Cifar10);
        for out in augment_many(cifar, 5) {
            assert_eq!(out.len(), SHAPE.num_values());
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn augmentation_is_deterministic_per_seed() {
        let cifar = Augmentation::for_kind(DatasetKind::Cifar10);
        assert_eq!(augment_many(cifar, 11), augment_many(cifar, 11));
        assert_ne!(augment_many(cifar, 11), augment_many(cifar, 12));
        let outputs = augment_many(cifar, 11);
        assert!(
            outputs.iter().any(|out| out != &outputs[0]),
            "images should vary"
        );
    }

    #[test]
    fn no_augmentation_copies() {
        let outputs = augment_many(Augmentation::NONE, 1);
        assert!(outputs.iter().all(|out| out == &numbered_image()));
    }

    #[test]
    fn backdoorbench_choices_per_kind() {
        assert!(Augmentation::for_kind(DatasetKind::Cifar10).horizontal_flip);
        assert!(!Augmentation::for_kind(DatasetKind::Cifar100).horizontal_flip);
        assert!(!Augmentation::for_kind(DatasetKind::FashionMnist).horizontal_flip);
        assert_eq!(Augmentation::for_kind(DatasetKind::Mnist).crop_padding, 4);
    }

    #[test]
    fn normalization_uses_per_channel_or_broadcast_constants() {
        let cifar = CIFAR10_NORMALIZATION.for_channels(3);
        assert_eq!(cifar.mean, vec![0.4914, 0.4822, 0.4465]);
        assert_eq!(cifar.std, vec![0.247, 0.243, 0.261]);
        let gray = MNIST_NORMALIZATION.for_channels(3);
        assert_eq!(gray.mean, vec![0.5; 3]);
        assert_eq!(
            Normalization::for_kind(DatasetKind::FashionMnist),
            MNIST_NORMALIZATION
        );
    }
}
