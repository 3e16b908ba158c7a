//! Loading image classification data sets into memory, splitting them
//! reproducibly, and augmenting them for training; pure Rust, no tensors.
//!
//! [`source::load`] loads a data set by name ([`DatasetKind`]) and split from
//! its folder (see [`source`] for the folder convention) into an
//! [`ImageSet`]: `f32` pixels in [0, 1], N x C x H x W. The format modules
//! ([`idx`], [`mnist_json`], [`cifar`], [`image_folder`]) each offer a parser
//! over bytes (usable for fuzzing) and a loader over paths; every failure is
//! a [`DataError`] naming the file. [`augment`] holds the random crop and
//! flip and the normalisation constants; `batch` turns sets into tensors.

pub mod augment;
pub mod batch;
pub mod cifar;
pub mod dataset;
pub mod error;
pub mod glyphs;
pub mod idx;
pub mod image_folder;
pub mod mnist_json;
pub mod ood_sets;
pub mod sampler;
pub mod source;
pub mod text;

mod files;
#[cfg(test)]
pub(crate) mod test_util;

pub use augment::{Augmentation, Normalization};
pub use batch::{Batch, augmented_batch, batch, images_tensor, labels_tensor};
pub use dataset::{ImageSet, ImageShape, Label};
pub use error::{DataError, Result};
pub use source::{DatasetKind, Split, load};
