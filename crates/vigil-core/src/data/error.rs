//! The one error type of the data module.
//!
//! Every loader reports problems as a [`DataError`] that names the file (or
//! data set) involved and says what was expected, so a user can fix the data
//! without reading the source. Loaders never panic on malformed input.

use std::path::PathBuf;

use super::dataset::ImageShape;

/// Shorthand for results whose error is a [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong while finding, reading, parsing or splitting
/// a data set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file or folder could not be opened or read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// File or folder that failed.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// The file starts like gzip (1f 8b) but does not decompress.
    #[error("{}: invalid gzip data: {source}", .path.display())]
    Gzip {
        /// The gzipped file.
        path: PathBuf,
        /// What the decompressor reported.
        #[source]
        source: std::io::Error,
    },

    /// The gzipped file expands past the size any supported data set needs;
    /// refusing protects against decompression bombs.
    #[error("{}: decompresses to more than {limit} bytes", .path.display())]
    DecompressedTooLarge {
        /// The gzipped file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },

    /// The file does not start with the magic number of the expected format.
    #[error(
        "{}: bad magic number 0x{found:08x}, expected 0x{expected:08x} ({expected_format})",
        .path.display()
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes, big-endian.
        found: u32,
        /// The magic number of the expected format.
        expected: u32,
        /// Human name of the expected format.
        expected_format: &'static str,
    },

    /// The file ends before the data its header (or record size) promises.
    #[error("{}: truncated at byte {len} (expected {expected} bytes)", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its actual length in bytes (after decompression).
        len: u64,
        /// The length needed to hold what the format promises.
        expected: u64,
    },

    /// The file holds more bytes than its header describes.
    #[error(
        "{}: {len} bytes but the header describes {expected}; the file has trailing data",
        .path.display()
    )]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Its actual length in bytes (after decompression).
        len: u64,
        /// The length its header describes.
        expected: u64,
    },

    /// An image file and its label file disagree on the number of items.
    #[error(
        "{images} images in {} but {labels} labels in {}",
        .images_path.display(),
        .labels_path.display()
    )]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// How many images it holds.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// How many labels it holds.
        labels: usize,
    },

    /// The images do not have the shape the data set requires.
    #[error("{origin}: {expected} expected, got {found}")]
    WrongShape {
        /// File or data set whose images are wrong.
        origin: String,
        /// Shape (C x H x W) that was required.
        expected: ImageShape,
        /// Shape that was found.
        found: ImageShape,
    },

    /// A label is not a valid class index.
    #[error(
        "{}: label {label} of item {index} is out of range (the data set has {num_classes} classes)",
        .path.display()
    )]
    LabelOutOfRange {
        /// The file holding the label.
        path: PathBuf,
        /// Position of the item in the file, from 0.
        index: usize,
        /// The offending label.
        label: u64,
        /// Number of classes; valid labels are 0..num_classes.
        num_classes: usize,
    },

    /// A pixel value is not a finite number in [0, 1].
    #[error("{}: value {value} at position {index} is outside [0, 1]", .path.display())]
    PixelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Position of the value in the file's flat array, from 0.
        index: usize,
        /// The offending value.
        value: f64,
    },

    /// A flat array of pixel values does not split into whole images.
    #[error("{}: {values} values is not a whole number of {shape} images", .path.display())]
    PartialImage {
        /// The file.
        path: PathBuf,
        /// Number of values found.
        values: usize,
        /// Shape of one image.
        shape: ImageShape,
    },

    /// The file is well formed but holds no images.
    #[error("{}: contains no images", .path.display())]
    NoImages {
        /// The file.
        path: PathBuf,
    },

    /// An image in an image folder could not be decoded.
    #[error("cannot decode image {}: {source}", .path.display())]
    UnreadableImage {
        /// The image file.
        path: PathBuf,
        /// What the decoder reported.
        #[source]
        source: image::ImageError,
    },

    /// A folder that should hold class folders or images holds none.
    #[error("{}: {what}", .path.display())]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
        /// What was missing.
        what: &'static str,
    },

    /// An image in an image folder differs in size from the first one.
    #[error(
        "{}: image is {found_width}x{found_height} but {} is {expected_width}x{expected_height}; \
         all images must have the same width x height",
        .path.display(),
        .first_path.display()
    )]
    MixedImageSizes {
        /// The first image whose size differs.
        path: PathBuf,
        /// Its width in pixels.
        found_width: usize,
        /// Its height in pixels.
        found_height: usize,
        /// The image that set the expected size.
        first_path: PathBuf,
        /// Width of the first image.
        expected_width: usize,
        /// Height of the first image.
        expected_height: usize,
    },

    /// Images (a file, or a whole set) that the model they are meant for
    /// cannot take: another size, channel count or class count.
    #[error("{origin}: {reason}")]
    NotForModel {
        /// The image file or the set's source.
        origin: String,
        /// What differs, with both values.
        reason: String,
    },

    /// A class folder whose name is none of the model's class names.
    #[error(
        "{}: class folder {folder:?} names none of the model's classes ({}); folders are matched \
         to class names ignoring case and the characters ' ', '_', '-' and '/'",
        .path.display(),
        .classes.join(", ")
    )]
    UnknownClassFolder {
        /// The image folder's root.
        path: PathBuf,
        /// The folder name that matched nothing.
        folder: String,
        /// The model's class names.
        classes: Vec<String>,
    },

    /// Two class folders name the same class of the model.
    #[error("{}: class folders {first:?} and {second:?} both name the model's class {class:?}", .path.display())]
    DuplicateClassFolder {
        /// The image folder's root.
        path: PathBuf,
        /// The first folder.
        first: String,
        /// The second folder.
        second: String,
        /// The class both name.
        class: String,
    },

    /// Folders labelled by their sorted order (the model names its classes
    /// only by number) must be exactly one per class.
    #[error(
        "{}: {folders} class folders, but the model has {classes} classes named only by number, \
         so labels would follow the folders' sorted order, which needs one folder per class; name \
         the folders 0..{} after the classes they hold",
        .path.display(),
        .classes.saturating_sub(1)
    )]
    SortedFoldersCount {
        /// The image folder's root.
        path: PathBuf,
        /// Class folders found.
        folders: usize,
        /// The model's number of classes.
        classes: usize,
    },

    /// The file is not valid JSON or not in the expected JSON layout.
    #[error("{}: invalid JSON: {source}", .path.display())]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// What the JSON parser reported.
        #[source]
        source: serde_json::Error,
    },

    /// A class-name file lists the wrong number of names.
    #[error("{}: {found} class names, expected {expected}", .path.display())]
    ClassNames {
        /// The class-name file.
        path: PathBuf,
        /// Number of non-empty lines found.
        found: usize,
        /// Number of classes the data set has.
        expected: usize,
    },

    /// An image folder has more classes than a label can index.
    #[error("{}: {count} class folders, at most {max} are supported", .path.display())]
    TooManyClasses {
        /// The image folder.
        path: PathBuf,
        /// Number of class folders found.
        count: usize,
        /// Largest supported number of classes.
        max: usize,
    },

    /// No directory holding the data set was found.
    #[error("{dataset} not found: looked in {}; {hint}", join_paths(.looked_in))]
    DatasetNotFound {
        /// Data set name, e.g. `cifar10`.
        dataset: String,
        /// Every directory that was tried, in order.
        looked_in: Vec<PathBuf>,
        /// How to install it or point vigil at it.
        hint: String,
    },

    /// A data set name that vigil does not know.
    #[error("unknown data set {name:?}; known data sets: {known}")]
    UnknownDataset {
        /// The name given.
        name: String,
        /// Comma-separated known names.
        known: String,
    },

    /// A class has too few samples for a stratified split.
    #[error(
        "{origin}: class {class_name:?} has {available} samples but the split needs {requested}"
    )]
    NotEnoughSamples {
        /// The data set being split.
        origin: String,
        /// Name of the class that is short.
        class_name: String,
        /// Samples of that class in the data set.
        available: usize,
        /// Samples of that class the split asked for.
        requested: usize,
    },

    /// A split asked for more images than the set holds.
    #[error("{origin}: cannot take {requested} of {available} images")]
    SplitTooLarge {
        /// The data set being split.
        origin: String,
        /// Images asked for.
        requested: usize,
        /// Images in the set.
        available: usize,
    },

    /// Two image sets cannot be joined.
    #[error("cannot join {first} and {second}: {reason}")]
    IncompatibleSets {
        /// The first set's source.
        first: String,
        /// The second set's source.
        second: String,
        /// What differs.
        reason: String,
    },

    /// Letters could not be drawn from fonts ([`glyphs`](super::glyphs)).
    #[error("cannot draw the glyph set {set}: {reason}")]
    Glyphs {
        /// The set's name.
        set: String,
        /// What went wrong and how to fix it.
        reason: String,
    },

    /// Pixels, labels, shape and class names passed to
    /// [`ImageSet::new`](super::dataset::ImageSet::new) do not fit together.
    #[error("{origin}: inconsistent image set: {reason}")]
    InvalidImageSet {
        /// The set's source.
        origin: String,
        /// What does not fit.
        reason: String,
    },
}

/// Joins paths as `a, b, c` for error messages.
fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl DataError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
