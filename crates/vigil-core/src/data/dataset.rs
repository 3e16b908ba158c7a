//! In-memory labelled image sets and the seeded splits vigil builds from them.
//!
//! Every loader produces an [`ImageSet`]: all pixels as `f32` in [0, 1] in one
//! contiguous N x C x H x W buffer (so a batch is one slice copy away from a
//! tensor), one class label per image and the class names. Splits return
//! index lists rather than copies so callers can keep several views of one
//! set cheaply and materialise them with [`ImageSet::subset`].

use std::fmt;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::error::{DataError, Result};

/// A class label: the index of the class in [`ImageSet::class_names`].
pub type Label = u16;

/// The shape of one image, channels first (C x H x W), as the models expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageShape {
    /// Colour channels: 1 for grayscale, 3 for RGB.
    pub channels: usize,
    /// Rows of pixels.
    pub height: usize,
    /// Columns of pixels.
    pub width: usize,
}

impl ImageShape {
    /// Builds a shape from channels, height and width.
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    /// Number of `f32` values one image occupies (C * H * W).
    pub const fn num_values(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// [`num_values`](Self::num_values), or `None` if it overflows (a shape read from a file).
    pub const fn checked_num_values(&self) -> Option<usize> {
        match self.channels.checked_mul(self.height) {
            Some(plane) => plane.checked_mul(self.width),
            None => None,
        }
    }

    /// Number of pixels in one channel plane (H * W).
    pub const fn plane_len(&self) -> usize {
        self.height * self.width
    }
}

impl From<[usize; 3]> for ImageShape {
    /// From a model's `[channels, height, width]` input shape.
    fn from([channels, height, width]: [usize; 3]) -> Self {
        Self::new(channels, height, width)
    }
}

impl fmt::Display for ImageShape {
    /// Formats as `CxHxW`, e.g. `3x32x32`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// Converts 8-bit pixel intensities to `f32` in [0, 1] (`v / 255`), the same
/// scaling as torchvision's `ToTensor`.
pub(crate) fn unit_f32_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes.iter().map(|&byte| f32::from(byte) / 255.0).collect()
}

/// A labelled set of equally shaped images held in memory.
///
/// Invariants, checked by [`ImageSet::new`] and kept by every method:
/// `pixels.len() == labels.len() * shape.num_values()` and every label is
/// below `class_names.len()`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pixels: Vec<f32>,
    labels: Vec<Label>,
    shape: ImageShape,
    class_names: Vec<String>,
    source: String,
}

impl ImageSet {
    /// Builds a set from pixels in N x C x H x W order with values in [0, 1],
    /// one label per image, the image shape, the class names (label `i` names
    /// `class_names[i]`) and a human-readable description of where the data
    /// came from, used in error messages and reports.
    pub fn new(
        pixels: Vec<f32>,
        labels: Vec<Label>,
        shape: ImageShape,
        class_names: Vec<String>,
        source: impl Into<String>,
    ) -> Result<Self> {
        let set = Self {
            pixels,
            labels,
            shape,
            class_names,
            source: source.into(),
        };
        set.check_invariants()?;
        Ok(set)
    }

    /// Verifies the invariants documented on the type.
    fn check_invariants(&self) -> Result<()> {
        // First, and checked: a shape read from a file may overflow even with no images.
        let Some(image_values) = self.shape.checked_num_values() else {
            return Err(self.inconsistent(format!(
                "image shape {} holds more values than memory can address",
                self.shape
            )));
        };
        let expected_values = self.labels.len().checked_mul(image_values);
        if expected_values != Some(self.pixels.len()) {
            return Err(self.inconsistent(format!(
                "{} values do not make {} images of {}",
                self.pixels.len(),
                self.labels.len(),
                self.shape
            )));
        }
        if image_values == 0 {
            return Err(self.inconsistent(format!("image shape {} is empty", self.shape)));
        }
        if let Some((index, &label)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, label)| usize::from(**label) >= self.class_names.len())
        {
            return Err(self.inconsistent(format!(
                "label {label} of image {index} is out of range ({} classes)",
                self.class_names.len()
            )));
        }
        Ok(())
    }

    /// Builds the error for a set whose parts do not fit together.
    fn inconsistent(&self, reason: String) -> DataError {
        DataError::InvalidImageSet {
            origin: self.source.clone(),
            reason,
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Shape of every image.
    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// All pixels, N x C x H x W, values in [0, 1].
    pub fn pixels(&self) -> &[f32] {
        &self.pixels
    }

    /// One label per image.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// Names of the classes; label `i` means `class_names()[i]`.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Number of classes (not all of which need to occur in the set).
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Where the images came from, e.g. `fashion-mnist train (/usr/share/...)`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Replaces the description of where the images came from.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Pixels of image `index`, C x H x W.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn image(&self, index: usize) -> &[f32] {
        let size = self.shape.num_values();
        &self.pixels[index * size..(index + 1) * size]
    }

    /// Mutable pixels of image `index`, e.g. to stamp a trigger on it.
    /// Callers must keep values in [0, 1].
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn image_mut(&mut self, index: usize) -> &mut [f32] {
        let size = self.shape.num_values();
        &mut self.pixels[index * size..(index + 1) * size]
    }

    /// Label of image `index`.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn label(&self, index: usize) -> Label {
        self.labels[index]
    }

    /// Changes the label of image `index`, e.g. to a backdoor target class.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn set_label(&mut self, index: usize, label: Label) -> Result<()> {
        if usize::from(label) >= self.class_names.len() {
            return Err(self.inconsistent(format!(
                "label {label} is out of range ({} classes)",
                self.class_names.len()
            )));
        }
        self.labels[index] = label;
        Ok(())
    }

    /// Fails with [`DataError::WrongShape`] unless the images are `expected`,
    /// so a model built for one shape is never fed another.
    pub fn check_shape(&self, expected: ImageShape) -> Result<()> {
        if self.shape == expected {
            Ok(())
        } else {
            Err(DataError::WrongShape {
                origin: self.source.clone(),
                expected,
                found: self.shape,
            })
        }
    }

    /// Fails with [`DataError::NotForModel`] unless a model taking `input`
    /// images (`[channels, height, width]`) and predicting `num_classes`
    /// classes can take this set: same image shape, and no more classes than
    /// the model has (a label the model cannot predict would index past its
    /// logits). Every path that feeds a set to a model checks this first.
    pub fn check_model_input(&self, input: [usize; 3], num_classes: usize) -> Result<()> {
        let expected = ImageShape::from(input);
        let reason = if self.shape.channels != expected.channels {
            format!(
                "the images have {} channel(s) but the model takes {} ({expected} inputs)",
                self.shape.channels, expected.channels
            )
        } else if (self.shape.height, self.shape.width) != (expected.height, expected.width) {
            format!(
                "the images are {}x{} pixels (width x height) but the model takes {}x{} ({expected} inputs)",
                self.shape.width, self.shape.height, expected.width, expected.height
            )
        } else if self.num_classes() > num_classes {
            format!(
                "the set has {} classes but the model predicts {num_classes}",
                self.num_classes()
            )
        } else {
            return Ok(());
        };
        Err(DataError::NotForModel {
            origin: self.source.clone(),
            reason,
        })
    }

    /// A new set holding copies of the images at `indices`, in that order
    /// (repeats allowed), with the same shape, class names and source.
    ///
    /// # Panics
    /// If any index is `>= self.len()`; indices come from this set's own
    /// splits, so an out-of-range one is a programming error.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.shape.num_values());
        let mut labels = Vec::with_capacity(indices.len());
        for &index in indices {
            pixels.extend_from_slice(self.image(index));
            labels.push(self.labels[index]);
        }
        ImageSet {
            pixels,
            labels,
            shape: self.shape,
            class_names: self.class_names.clone(),
            source: self.source.clone(),
        }
    }

    /// A new set with this set's images followed by `other`'s. Both must have
    /// the same image shape and class names.
    pub fn concat(&self, other: &ImageSet) -> Result<ImageSet> {
        let mut joined = self.clone();
        joined.append(other)?;
        Ok(joined)
    }

    /// Appends `other`'s images to this set, e.g. to join CIFAR-10's five
    /// training batches. Both must have the same image shape and class names.
    /// The source becomes `"<self> + <other>"` when they differ.
    pub fn append(&mut self, other: &ImageSet) -> Result<()> {
        let incompatible = |reason: String| DataError::IncompatibleSets {
            first: self.source.clone(),
            second: other.source.clone(),
            reason,
        };
        if self.shape != other.shape {
            return Err(incompatible(format!(
                "image shapes differ ({} vs {})",
                self.shape, other.shape
            )));
        }
        if self.class_names != other.class_names {
            return Err(incompatible("class names differ".to_string()));
        }
        self.pixels.extend_from_slice(&other.pixels);
        self.labels.extend_from_slice(&other.labels);
        if self.source != other.source {
            self.source = format!("{} + {}", self.source, other.source);
        }
        Ok(())
    }

    /// Number of images of each class, indexed by label; classes absent from
    /// the set count 0.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &label in &self.labels {
            counts[usize::from(label)] += 1;
        }
        counts
    }

    /// Indices of the images of each class, ascending, indexed by label.
    pub fn indices_by_class(&self) -> Vec<Vec<usize>> {
        let mut by_class = vec![Vec::new(); self.num_classes()];
        for (index, &label) in self.labels.iter().enumerate() {
            by_class[usize::from(label)].push(index);
        }
        by_class
    }

    /// Splits the set into disjoint parts with exactly `per_class[k]` images of
    /// every class in part `k`, e.g. `[250, 250, 500]` for a trusted, a
    /// sampling and a test part. Returns one ascending index list per part.
    ///
    /// Deterministic: one `StdRng` seeded with `seed` shuffles each class's
    /// indices in label order, and part `k` takes the next `per_class[k]` of
    /// them. The same seed gives the same parts (for the same `rand` version);
    /// images not needed by any part are left out. Fails with
    /// [`DataError::NotEnoughSamples`] if a class has fewer than the sum of
    /// `per_class`.
    pub fn stratified_split(&self, per_class: &[usize], seed: u64) -> Result<Vec<Vec<usize>>> {
        let needed: usize = per_class.iter().sum();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut parts = vec![Vec::new(); per_class.len()];
        for (class, mut indices) in self.indices_by_class().into_iter().enumerate() {
            if indices.len() < needed {
                return Err(DataError::NotEnoughSamples {
                    origin: self.source.clone(),
                    class_name: self.class_names[class].clone(),
                    available: indices.len(),
                    requested: needed,
                });
            }
            indices.shuffle(&mut rng);
            let mut rest = indices.as_slice();
            for (part, &count) in parts.iter_mut().zip(per_class) {
                let (taken, remaining) = rest.split_at(count);
                part.extend_from_slice(taken);
                rest = remaining;
            }
        }
        for part in &mut parts {
            part.sort_unstable();
        }
        Ok(parts)
    }

    /// The same images, every label 0, under `class_names`: for a consumer that never reads
    /// the labels (a detector scoring inputs) but must join the set with labelled data of
    /// another label space (OOD images beside ID ones).
    pub fn with_placeholder_labels(&self, class_names: &[String]) -> Result<ImageSet> {
        if class_names.is_empty() {
            return Err(self.inconsistent("no class name to label the images with".into()));
        }
        ImageSet::new(
            self.pixels.clone(),
            vec![0; self.len()],
            self.shape,
            class_names.to_vec(),
            self.source.clone(),
        )
    }

    /// At most `limit` of the images, chosen by a seeded shuffle ([`ImageSet::random_split`]);
    /// the whole set if `limit` is `None` or not smaller than it.
    pub fn limited(self, limit: Option<usize>, seed: u64) -> Result<ImageSet> {
        match limit {
            Some(n) if n < self.len() => {
                let (keep, _) = self.random_split(n, seed)?;
                Ok(self.subset(&keep))
            }
            _ => Ok(self),
        }
    }

    /// Splits all indices into a random part of `first_len` images and the
    /// rest, e.g. 45,000 training and 5,000 validation images. Both lists are
    /// ascending. Deterministic for a given `seed` (and `rand` version).
    /// Fails with [`DataError::SplitTooLarge`] if `first_len > self.len()`.
    pub fn random_split(&self, first_len: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
        if first_len > self.len() {
            return Err(DataError::SplitTooLarge {
                origin: self.source.clone(),
                requested: first_len,
                available: self.len(),
            });
        }
        let mut indices: Vec<usize> = (0..self.len()).collect();
        indices.shuffle(&mut StdRng::seed_from_u64(seed));
        let mut second = indices.split_off(first_len);
        indices.sort_unstable();
        second.sort_unstable();
        Ok((indices, second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set of 1x2x2 images where image `i` is filled with `i / 100` and
    /// labelled `labels[i]`, with `num_classes` classes named `c0`, `c1`, ...
    fn toy_set(labels: &[Label], num_classes: usize) -> ImageSet {
        let shape = ImageShape::new(1, 2, 2);
        let pixels = (0..labels.len())
            .flat_map(|i| std::iter::repeat_n(i as f32 / 100.0, shape.num_values()))
            .collect();
        let names = (0..num_classes).map(|c| format!("c{c}")).collect();
        ImageSet::new(pixels, labels.to_vec(), shape, names, "toy").unwrap()
    }

    /// `n_per_class` images of each of `num_classes` classes, interleaved.
    fn balanced_set(num_classes: usize, n_per_class: usize) -> ImageSet {
        let labels: Vec<Label> = (0..num_classes * n_per_class)
            .map(|i| (i % num_classes) as Label)
            .collect();
        toy_set(&labels, num_classes)
    }

    #[test]
    fn shape_displays_as_c_x_h_x_w() {
        assert_eq!(ImageShape::new(3, 32, 32).to_string(), "3x32x32");
        assert_eq!(ImageShape::new(3, 32, 32).num_values(), 3072);
    }

    #[test]
    fn new_rejects_inconsistent_parts() {
        let shape = ImageShape::new(1, 2, 2);
        let names = vec!["a".to_string()];
        let short = ImageSet::new(vec![0.0; 7], vec![0, 0], shape, names.clone(), "src");
        assert!(matches!(short, Err(DataError::InvalidImageSet { .. })));
        let bad_label = ImageSet::new(vec![0.0; 4], vec![1], shape, names, "src");
        let err = bad_label.unwrap_err();
        assert!(matches!(err, DataError::InvalidImageSet { .. }));
        assert!(err.to_string().starts_with("src:"), "{err}");
    }

    #[test]
    fn image_returns_the_right_slice() {
        let set = toy_set(&[0, 1, 0], 2);
        assert_eq!(set.len(), 3);
        assert_eq!(set.image(2), &[0.02; 4]);
        assert_eq!(set.label(1), 1);
    }

    #[test]
    fn subset_copies_images_and_labels_in_order() {
        let set = toy_set(&[0, 1, 0, 1], 2);
        let sub = set.subset(&[3, 0]);
        assert_eq!(sub.len(), 2);
        assert_eq!(sub.image(0), set.image(3));
        assert_eq!(sub.image(1), set.image(0));
        assert_eq!(sub.labels(), &[1, 0]);
        assert_eq!(sub.class_names(), set.class_names());
    }

    #[test]
    fn concat_joins_and_rejects_mismatches() {
        let a = toy_set(&[0, 1], 2);
        let b = toy_set(&[1], 2).with_source("other");
        let joined = a.concat(&b).unwrap();
        assert_eq!(joined.labels(), &[0, 1, 1]);
        assert_eq!(joined.image(2), b.image(0));
        assert_eq!(joined.source(), "toy + other");

        let three_classes = toy_set(&[0], 3);
        let err = a.concat(&three_classes).unwrap_err();
        assert!(matches!(err, DataError::IncompatibleSets { .. }), "{err}");
    }

    #[test]
    fn class_counts_count_every_class() {
        let set = toy_set(&[0, 2, 2, 0, 2], 4);
        assert_eq!(set.class_counts(), vec![2, 0, 3, 0]);
    }

    #[test]
    fn check_shape_reports_expected_and_found() {
        let set = toy_set(&[0], 1);
        let err = set.check_shape(ImageShape::new(3, 32, 32)).unwrap_err();
        assert!(matches!(err, DataError::WrongShape { .. }));
        assert_eq!(err.to_string(), "toy: 3x32x32 expected, got 1x2x2");
    }

    #[test]
    fn set_label_checks_range() {
        let mut set = toy_set(&[0, 0], 2);
        set.set_label(1, 1).unwrap();
        assert_eq!(set.labels(), &[0, 1]);
        assert!(set.set_label(0, 2).is_err());
    }

    #[test]
    fn placeholder_labels_keep_the_images_and_take_the_given_classes() {
        let set = balanced_set(3, 2);
        let names = vec!["x".to_string(), "y".to_string()];
        let relabelled = set.with_placeholder_labels(&names).unwrap();
        assert_eq!(relabelled.pixels(), set.pixels());
        assert_eq!(relabelled.class_names(), names.as_slice());
        assert!(relabelled.labels().iter().all(|&l| l == 0));
        assert!(set.with_placeholder_labels(&[]).is_err());
    }

    #[test]
    fn stratified_split_takes_exact_counts_per_class() {
        let set = balanced_set(3, 20);
        let parts = set.stratified_split(&[2, 3, 5], 7).unwrap();
        assert_eq!(parts.len(), 3);
        for (part, per_class) in parts.iter().zip([2, 3, 5]) {
            assert_eq!(set.subset(part).class_counts(), vec![per_class; 3]);
            assert!(part.windows(2).all(|pair| pair[0] < pair[1]));
        }
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 30, "parts must be disjoint");
    }

    #[test]
    fn stratified_split_is_deterministic_per_seed() {
        let set = balanced_set(4, 50);
        let first = set.stratified_split(&[5, 5, 10], 1).unwrap();
        let again = set.stratified_split(&[5, 5, 10], 1).unwrap();
        let other = set.stratified_split(&[5, 5, 10], 2).unwrap();
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

    #[test]
    fn stratified_split_names_the_short_class() {
        let set = toy_set(&[0, 0, 0, 1, 1], 2);
        let err = set.stratified_split(&[2, 1], 0).unwrap_err();
        match &err {
            DataError::NotEnoughSamples {
                class_name,
                available,
                requested,
                ..
            } => assert_eq!((class_name.as_str(), *available, *requested), ("c1", 2, 3)),
            other => panic!("unexpected error {other}"),
        }
        assert!(err.to_string().contains("toy"));
    }

    #[test]
    fn random_split_partitions_all_indices_deterministically() {
        let set = balanced_set(2, 50);
        let (train, validation) = set.random_split(90, 3).unwrap();
        assert_eq!((train.len(), validation.len()), (90, 10));
        let mut all = [train.clone(), validation.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(
            set.random_split(90, 3).unwrap(),
            (train.clone(), validation)
        );
        assert_ne!(set.random_split(90, 4).unwrap().0, train);
    }

    #[test]
    fn random_split_rejects_too_many() {
        let set = balanced_set(2, 2);
        let err = set.random_split(5, 0).unwrap_err();
        assert!(matches!(
            err,
            DataError::SplitTooLarge {
                requested: 5,
                available: 4,
                ..
            }
        ));
    }
}
