//! Image folders: `root/<class_name>/<image>.png|jpg|jpeg`, the layout of
//! torchvision's `ImageFolder`, for data sets that ship as picture files.
//!
//! Classes are the sub-folders of `root` sorted by name (label 0 is the first
//! name), and each class's images are sorted by file name, so the same folder
//! always loads in the same order. Hidden entries (names starting with `.`)
//! and files with other extensions are ignored. All images must have the same
//! width and height. Grayscale images (with or without alpha) load as one
//! channel and colour images as three (RGB, alpha dropped); if a folder mixes
//! the two, the grayscale ones are repeated into three equal channels so the
//! set stays uniform, as torchvision's RGB conversion would.

use std::path::{Path, PathBuf};

use image::DynamicImage;

use super::dataset::{ImageSet, ImageShape, Label};
use super::error::{DataError, Result};
use super::files::{read_file, sorted_entries};
use crate::models::ModelSpec;

/// File extensions (compared case-insensitively) loaded as images.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// One decoded image, channels first, values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedImage {
    /// Shape: 1 channel for grayscale, 3 for colour.
    pub shape: ImageShape,
    /// `shape.num_values()` values, C x H x W.
    pub values: Vec<f32>,
}

/// Decodes PNG or JPEG bytes (format detected from the content) into a
/// channels-first image. `path` only names the file in errors.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<DecodedImage> {
    let image = decode_dynamic(bytes, path)?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    if image.color().has_color() {
        let interleaved = image.to_rgb32f().into_raw();
        Ok(DecodedImage {
            shape: ImageShape::new(3, height, width),
            values: channels_first(&interleaved, 3),
        })
    } else {
        Ok(DecodedImage {
            shape: ImageShape::new(1, height, width),
            values: image.to_luma32f().into_raw(),
        })
    }
}

/// Decodes PNG or JPEG bytes (format detected from the content); `path` only
/// names the file in errors.
///
/// The decoder may allocate at most [`MAX_DECODED_BYTES`]: a header can claim a size the few
/// bytes behind it never fill (a 472-byte JPEG claiming 65296x2063 pixels made the f32 copies
/// take 3 GB, found by fuzzing), so the claim is refused before any buffer exists.
fn decode_dynamic(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
    let unreadable = |source| DataError::UnreadableImage {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| unreadable(image::ImageError::IoError(e)))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    reader.decode().map_err(unreadable)
}

/// Most bytes one decoded image may take (48 MiB: 16.7 megapixels in RGB, far beyond the images
/// a classifier here takes). Its two f32 copies then stay under 400 MB.
pub const MAX_DECODED_BYTES: u64 = 48 << 20;

/// Reorders pixel-interleaved values (H x W x C) into planes (C x H x W).
fn channels_first(interleaved: &[f32], channels: usize) -> Vec<f32> {
    let plane_len = interleaved.len() / channels;
    let mut planar = vec![0.0; interleaved.len()];
    for (pixel, values) in interleaved.chunks_exact(channels).enumerate() {
        for (channel, &value) in values.iter().enumerate() {
            planar[channel * plane_len + pixel] = value;
        }
    }
    planar
}

/// Whether a directory entry's name is hidden (starts with `.`).
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with('.'))
}

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
fn has_image_extension(path: &Path) -> bool {
    path.extension().is_some_and(|extension| {
        let extension = extension.to_string_lossy().to_ascii_lowercase();
        IMAGE_EXTENSIONS.contains(&extension.as_str())
    })
}

/// The class folders under `root`, sorted by name, as `(name, path)`. Fails
/// if there are none or more than a [`Label`] can index.
pub fn class_folders(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let folders: Vec<(String, PathBuf)> = sorted_entries(root)?
        .into_iter()
        .filter(|path| path.is_dir() && !is_hidden(path))
        .map(|path| {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name, path)
        })
        .collect();
    if folders.is_empty() {
        return Err(DataError::EmptyFolder {
            path: root.to_path_buf(),
            what: "no class folders (expected <root>/<class_name>/<image>.png|jpg|jpeg)",
        });
    }
    let max = usize::from(Label::MAX) + 1;
    if folders.len() > max {
        return Err(DataError::TooManyClasses {
            path: root.to_path_buf(),
            count: folders.len(),
            max,
        });
    }
    Ok(folders)
}

/// The image files in one class folder, sorted by file name. Fails if there
/// are none.
pub fn image_files(class_folder: &Path) -> Result<Vec<PathBuf>> {
    let files: Vec<PathBuf> = sorted_entries(class_folder)?
        .into_iter()
        .filter(|path| path.is_file() && !is_hidden(path) && has_image_extension(path))
        .collect();
    if files.is_empty() {
        return Err(DataError::EmptyFolder {
            path: class_folder.to_path_buf(),
            what: "class folder holds no .png, .jpg or .jpeg images",
        });
    }
    Ok(files)
}

/// A decoded image with its file and label, before the set is assembled.
struct LoadedImage {
    path: PathBuf,
    label: Label,
    image: DecodedImage,
}

/// Loads every image under `root` into one set (see the module docs for
/// the layout and rules).
pub fn load_image_folder(root: &Path) -> Result<ImageSet> {
    let classes = class_folders(root)?;
    let mut loaded: Vec<LoadedImage> = Vec::new();
    for (label, (_, folder)) in classes.iter().enumerate() {
        for path in image_files(folder)? {
            let image = decode_image(&read_file(&path)?, &path)?;
            if let Some(first) = loaded.first() {
                check_same_size(first, &path, &image)?;
            }
            let label = Label::try_from(label).expect("class count checked against Label::MAX");
            loaded.push(LoadedImage { path, label, image });
        }
    }
    assemble(
        loaded,
        classes.into_iter().map(|(name, _)| name).collect(),
        root,
    )
}

/// Fails with [`DataError::MixedImageSizes`] unless `image` at `path` has
/// the width and height of `first`.
fn check_same_size(first: &LoadedImage, path: &Path, image: &DecodedImage) -> Result<()> {
    let expected = first.image.shape;
    let found = image.shape;
    if (found.height, found.width) == (expected.height, expected.width) {
        return Ok(());
    }
    Err(DataError::MixedImageSizes {
        path: path.to_path_buf(),
        found_width: found.width,
        found_height: found.height,
        first_path: first.path.clone(),
        expected_width: expected.width,
        expected_height: expected.height,
    })
}

/// Joins same-sized decoded images into a set, widening grayscale images to
/// three channels if any image is in colour.
fn assemble(loaded: Vec<LoadedImage>, class_names: Vec<String>, root: &Path) -> Result<ImageSet> {
    let Some(first) = loaded.first() else {
        return Err(DataError::EmptyFolder {
            path: root.to_path_buf(),
            what: "no images",
        });
    };
    let channels = loaded
        .iter()
        .map(|entry| entry.image.shape.channels)
        .max()
        .unwrap_or(1);
    let shape = ImageShape::new(channels, first.image.shape.height, first.image.shape.width);
    let mut pixels = Vec::with_capacity(loaded.len() * shape.num_values());
    let mut labels = Vec::with_capacity(loaded.len());
    for entry in loaded {
        let repeats = channels / entry.image.shape.channels;
        for _ in 0..repeats {
            pixels.extend_from_slice(&entry.image.values);
        }
        labels.push(entry.label);
    }
    ImageSet::new(
        pixels,
        labels,
        shape,
        class_names,
        root.display().to_string(),
    )
}

/// Whether the images of a set loaded for a model need class labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderLabels {
    /// Every image sits in a non-empty class folder naming one of the model's
    /// classes: sets whose labels are used (trusted, sampling, evaluation).
    Required,
    /// Images may also sit directly in the root, and class folders may be
    /// missing or empty: inputs that are only scored (test, anomalous), such
    /// as triggered images, which exist only for the backdoor's source
    /// classes. Images without a class are marked unlabelled.
    Optional,
}

/// How the class folders of a set were tied to the model's classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelRule {
    /// Folder names matched the model's class names, ignoring case and the
    /// characters ' ', '_', '-' and '/' (`Ankle_boot` is "Ankle boot").
    ClassNames,
    /// The model names its classes `0..K` and the folders carry those numbers.
    ClassIndices,
    /// The model names its classes only by number and the folders otherwise:
    /// label `i` is the `i`-th folder in sorted order (torchvision's
    /// `ImageFolder` rule), which agrees with the model only if the folders
    /// sort in the order the model was trained with.
    SortedFolders,
    /// No image has a class (a flat folder, or, for a set whose labels are
    /// optional, folders that cannot be tied to the model's classes).
    Unlabelled,
}

impl LabelRule {
    /// A short description for reports, e.g. `folder names = class names`.
    pub fn describe(self) -> &'static str {
        match self {
            LabelRule::ClassNames => "class folders matched to the model's class names",
            LabelRule::ClassIndices => "class folders named by the model's class numbers",
            LabelRule::SortedFolders => {
                "labels follow the class folders' sorted order (the model names its classes only by number)"
            }
            LabelRule::Unlabelled => "no labels",
        }
    }
}

/// A channel conversion applied so that images fit the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelConversion {
    /// RGB to one channel with the ITU-R 601-2 luma weights, exactly as
    /// PIL's `convert("L")` computes it on 8-bit images (what torchvision's
    /// `Grayscale` calls): `(19595 R + 38470 G + 7471 B + 2^15) >> 16`.
    RgbToGray,
    /// Grayscale repeated into three equal channels, as PIL's
    /// `convert("RGB")` (torchvision's default image loader).
    GrayToRgb,
}

impl ChannelConversion {
    /// What the conversion does, for a note to the user.
    pub fn describe(self) -> &'static str {
        match self {
            ChannelConversion::RgbToGray => {
                "RGB images converted to grayscale with ITU-R 601 luma weights (as PIL's convert(\"L\") and torchvision's Grayscale)"
            }
            ChannelConversion::GrayToRgb => {
                "grayscale images repeated into three channels (as PIL's convert(\"RGB\"), torchvision's default loader)"
            }
        }
    }
}

/// An image folder loaded for a model: every image has the model's input
/// shape and every label is the index of one of the model's classes.
#[derive(Debug, Clone)]
pub struct ModelImages {
    /// The images, with the model's class names. Unlabelled images carry
    /// label 0 until the caller gives them one (see `labelled`).
    pub set: ImageSet,
    /// Whether each image's label came from its class folder.
    pub labelled: Vec<bool>,
    /// The file each image was read from.
    pub paths: Vec<PathBuf>,
    /// How class folders became labels.
    pub rule: LabelRule,
    /// The channel conversion applied, and to how many images.
    pub converted: Option<(ChannelConversion, usize)>,
}

impl ModelImages {
    /// Number of images whose label came from a class folder.
    pub fn n_labelled(&self) -> usize {
        self.labelled.iter().filter(|&&l| l).count()
    }
}

/// Loads the images under `root` for a model described by `spec`, checking
/// each against the model before any work is done with it.
///
/// Labels are the model's class indices, never the folders' positions alone:
/// class folders are matched to `spec.class_names` by name (see
/// [`LabelRule::ClassNames`]); folders named by class numbers `0..K` take
/// those numbers, whatever the classes are called ([`LabelRule::ClassIndices`]);
/// a model whose classes are named `0..K` (a plain state_dict) with folders
/// named otherwise takes the folders' sorted order ([`LabelRule::SortedFolders`]).
/// A folder that names no class is an error listing the model's classes.
///
/// Every image must have the model's height and width (the error names the
/// file and both sizes). Grayscale and RGB images are converted to the
/// model's channel count ([`ChannelConversion`]); any other combination is
/// an error. `labels` says whether the set needs labels ([`FolderLabels`]).
pub fn load_image_folder_for_model(
    root: &Path,
    spec: &ModelSpec,
    labels: FolderLabels,
) -> Result<ModelImages> {
    let max = usize::from(Label::MAX) + 1;
    if spec.class_names.len() > max {
        return Err(DataError::TooManyClasses {
            path: root.to_path_buf(),
            count: spec.class_names.len(),
            max,
        });
    }
    let entries = sorted_entries(root)?;
    let folders: Vec<(String, PathBuf)> = entries
        .iter()
        .filter(|path| path.is_dir() && !is_hidden(path))
        .map(|path| (entry_name(path), path.clone()))
        .collect();
    if labels == FolderLabels::Required && folders.is_empty() {
        return Err(DataError::EmptyFolder {
            path: root.to_path_buf(),
            what: "no class folders (expected <root>/<class_name>/<image>.png|jpg|jpeg)",
        });
    }
    let (classes, rule) = folder_classes(root, &folders, &spec.class_names, labels)?;

    // Images directly in the root have no class; only sets without labels take them.
    let mut files: Vec<(PathBuf, Option<Label>)> = Vec::new();
    if labels == FolderLabels::Optional {
        files.extend(
            entries
                .iter()
                .filter(|path| is_image_file(path))
                .map(|path| (path.clone(), None)),
        );
    }
    for ((_, folder), class) in folders.iter().zip(classes) {
        let images = match labels {
            FolderLabels::Required => image_files(folder)?,
            FolderLabels::Optional => image_files_or_none(folder)?,
        };
        files.extend(images.into_iter().map(|path| (path, class)));
    }
    if files.is_empty() {
        return Err(DataError::EmptyFolder {
            path: root.to_path_buf(),
            what: "no .png, .jpg or .jpeg images, in the folder or in its class folders",
        });
    }

    let shape = ImageShape::from(spec.input_shape);
    let mut pixels = Vec::new();
    let mut set_labels = Vec::with_capacity(files.len());
    let mut labelled = Vec::with_capacity(files.len());
    let mut converted = None;
    let mut n_converted = 0;
    let mut paths = Vec::with_capacity(files.len());
    for (path, label) in files {
        let (values, conversion) = decode_for_model(&read_file(&path)?, &path, shape)?;
        pixels.extend_from_slice(&values);
        if conversion.is_some() {
            converted = conversion;
            n_converted += 1;
        }
        set_labels.push(label.unwrap_or(0));
        labelled.push(label.is_some());
        paths.push(path);
    }
    let set = ImageSet::new(
        pixels,
        set_labels,
        shape,
        spec.class_names.clone(),
        root.display().to_string(),
    )?;
    Ok(ModelImages {
        set,
        labelled,
        paths,
        rule,
        converted: converted.map(|c| (c, n_converted)),
    })
}

/// The file or folder name of `path` (lossy UTF-8).
fn entry_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Whether `path` is a visible image file.
fn is_image_file(path: &Path) -> bool {
    path.is_file() && !is_hidden(path) && has_image_extension(path)
}

/// The image files in one class folder, sorted by file name; none is fine.
fn image_files_or_none(class_folder: &Path) -> Result<Vec<PathBuf>> {
    Ok(sorted_entries(class_folder)?
        .into_iter()
        .filter(|path| is_image_file(path))
        .collect())
}

/// A class name reduced to what survives as a folder name: lower case, with
/// every run of ' ', '_', '-', '/' or '\' as one `_`, so that `T-shirt_top`
/// and "T-shirt/top" (a `/` cannot be in a folder name) are the same class.
fn class_key(name: &str) -> String {
    name.split(|c: char| c.is_whitespace() || matches!(c, '_' | '-' | '/' | '\\'))
        .filter(|part| !part.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join("_")
}

/// The index of the class `folder` names: an exact match first, else the
/// only class with the same [`class_key`]. Several such classes is no match:
/// the folder has to be named exactly.
fn match_class(folder: &str, classes: &[String]) -> Option<usize> {
    if let Some(exact) = classes.iter().position(|class| class == folder) {
        return Some(exact);
    }
    let key = class_key(folder);
    let mut matches = classes
        .iter()
        .enumerate()
        .filter(|(_, class)| class_key(class) == key);
    match (matches.next(), matches.next()) {
        (Some((index, _)), None) => Some(index),
        _ => None,
    }
}

/// A folder name that is a class number (decimal digits only).
fn class_number(folder: &str) -> Option<usize> {
    if folder.is_empty() || !folder.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    folder.parse().ok()
}

/// The model's class for each of `folders` (see
/// [`load_image_folder_for_model`]), and the rule that gave it.
fn folder_classes(
    root: &Path,
    folders: &[(String, PathBuf)],
    classes: &[String],
    labels: FolderLabels,
) -> Result<(Vec<Option<Label>>, LabelRule)> {
    if folders.is_empty() {
        return Ok((Vec::new(), LabelRule::Unlabelled));
    }
    let unknown = |folder: &str| DataError::UnknownClassFolder {
        path: root.to_path_buf(),
        folder: folder.to_string(),
        classes: classes.to_vec(),
    };
    let named_by_number = classes
        .iter()
        .enumerate()
        .all(|(index, name)| *name == index.to_string());
    let numbers: Option<Vec<usize>> = folders.iter().map(|(name, _)| class_number(name)).collect();
    let (indices, rule): (Vec<Option<usize>>, LabelRule) = match numbers {
        // Folders named 0..K are class numbers, whatever the classes are called: that is
        // what a user who numbered them means (and what torchvision's sorted order gives for
        // up to ten classes).
        Some(numbers) => {
            if let Some(((name, _), _)) = folders
                .iter()
                .zip(&numbers)
                .find(|(_, number)| **number >= classes.len())
            {
                return Err(unknown(name));
            }
            (
                numbers.into_iter().map(Some).collect(),
                LabelRule::ClassIndices,
            )
        }
        _ if named_by_number => {
            if folders.len() == classes.len() {
                (
                    (0..folders.len()).map(Some).collect(),
                    LabelRule::SortedFolders,
                )
            } else if labels == FolderLabels::Optional {
                // The set needs no labels, and these folders cannot give the right ones.
                (vec![None; folders.len()], LabelRule::Unlabelled)
            } else {
                return Err(DataError::SortedFoldersCount {
                    path: root.to_path_buf(),
                    folders: folders.len(),
                    classes: classes.len(),
                });
            }
        }
        _ => {
            let indices = folders
                .iter()
                .map(|(name, _)| {
                    match_class(name, classes)
                        .map(Some)
                        .ok_or_else(|| unknown(name))
                })
                .collect::<Result<Vec<_>>>()?;
            (indices, LabelRule::ClassNames)
        }
    };
    let mut owner: Vec<Option<&str>> = vec![None; classes.len()];
    let mut labels_out = Vec::with_capacity(indices.len());
    for ((name, _), index) in folders.iter().zip(indices) {
        let Some(index) = index else {
            labels_out.push(None);
            continue;
        };
        if let Some(first) = owner[index] {
            return Err(DataError::DuplicateClassFolder {
                path: root.to_path_buf(),
                first: first.to_string(),
                second: name.clone(),
                class: classes[index].clone(),
            });
        }
        owner[index] = Some(name);
        let label = Label::try_from(index).map_err(|_| DataError::TooManyClasses {
            path: root.to_path_buf(),
            count: classes.len(),
            max: usize::from(Label::MAX) + 1,
        })?;
        labels_out.push(Some(label));
    }
    Ok((labels_out, rule))
}

/// Decodes one image for a model taking `shape` inputs: its planes (C x H x
/// W, values in [0, 1]) converted to the model's channels, and the
/// conversion if one was needed. Fails, naming `path`, if its size differs
/// from the model's or its channels cannot be converted.
fn decode_for_model(
    bytes: &[u8],
    path: &Path,
    shape: ImageShape,
) -> Result<(Vec<f32>, Option<ChannelConversion>)> {
    let image = decode_dynamic(bytes, path)?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    let not_for_model = |reason: String| DataError::NotForModel {
        origin: path.display().to_string(),
        reason,
    };
    if (height, width) != (shape.height, shape.width) {
        return Err(not_for_model(format!(
            "image is {width}x{height} pixels (width x height) but the model takes {}x{} ({shape} inputs)",
            shape.width, shape.height
        )));
    }
    let colour = image.color().has_color();
    match (colour, shape.channels) {
        (false, 1) => Ok((image.to_luma32f().into_raw(), None)),
        (true, 3) => Ok((channels_first(&image.to_rgb32f().into_raw(), 3), None)),
        (true, 1) => Ok((luma_601(&image), Some(ChannelConversion::RgbToGray))),
        (false, 3) => {
            let plane = image.to_luma32f().into_raw();
            Ok((plane.repeat(3), Some(ChannelConversion::GrayToRgb)))
        }
        (_, channels) => Err(not_for_model(format!(
            "image is {} but the model takes {channels} channels; vigil converts only between grayscale (1 channel) and RGB (3)",
            if colour { "RGB" } else { "grayscale" }
        ))),
    }
}

/// The ITU-R 601-2 luma of a colour image, one plane in [0, 1]: PIL's
/// integer formula on 8-bit images (bit for bit what `convert("L")` gives),
/// the same weights in floating point on deeper ones.
fn luma_601(image: &DynamicImage) -> Vec<f32> {
    match image {
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => image
            .to_rgb8()
            .pixels()
            .map(|pixel| {
                let [r, g, b] = pixel.0.map(u32::from);
                let luma = (19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16;
                luma as f32 / 255.0
            })
            .collect(),
        _ => image
            .to_rgb32f()
            .pixels()
            .map(|pixel| {
                let [r, g, b] = pixel.0;
                0.299 * r + 0.587 * g + 0.114 * b
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_header_claiming_more_pixels_than_the_bytes_hold_is_refused_before_decoding() {
        // Found by the `image` fuzz target: 472 bytes of JPEG claiming 65296 x 2063 pixels; it
        // decoded to 3 GB of buffers. Now the decoder's allocation limit refuses it.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/regressions/image/jpeg-claiming-65296x2063");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 472);
        let err = decode_image(&bytes, &path).unwrap_err().to_string();
        assert!(err.contains("jpeg-claiming-65296x2063"), "{err}");
        assert!(err.to_lowercase().contains("limit"), "{err}");
    }

    use std::io::Cursor;

    use image::{DynamicImage, GrayImage, ImageFormat, RgbaImage};

    use super::*;
    use crate::data::test_util::ScratchDir;

    /// Encodes `image` in `format`.
    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    /// A `width x height` grayscale PNG whose pixel (x, y) is `10 * x + y`.
    fn gray_png(width: u32, height: u32) -> Vec<u8> {
        let image = GrayImage::from_fn(width, height, |x, y| image::Luma([(10 * x + y) as u8]));
        encode(&DynamicImage::ImageLuma8(image), ImageFormat::Png)
    }

    /// A `width x height` RGBA PNG with red = x, green = y, blue = 200 and a
    /// half-transparent alpha that must be dropped.
    fn rgba_png(width: u32, height: u32) -> Vec<u8> {
        let image = RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([x as u8, y as u8, 200, 128])
        });
        encode(&DynamicImage::ImageRgba8(image), ImageFormat::Png)
    }

    fn assert_names(err: &DataError, path: &Path) {
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "{message:?} should name {}",
            path.display()
        );
    }

    #[test]
    fn loads_grayscale_classes_in_name_order() {
        let dir = ScratchDir::new("folder-gray");
        dir.write("zebra/b.png", &gray_png(3, 2));
        dir.write("zebra/a.PNG", &gray_png(3, 2));
        dir.write("ant/only.png", &gray_png(3, 2));
        dir.write("ant/notes.txt", b"ignored");
        dir.write("ant/.hidden.png", b"ignored");
        dir.write("README", b"ignored: not a folder");
        let set = load_image_folder(dir.path()).unwrap();
        assert_eq!(set.class_names(), &["ant".to_string(), "zebra".to_string()]);
        assert_eq!(set.labels(), &[0, 1, 1]);
        assert_eq!(set.shape(), ImageShape::new(1, 2, 3));
        // Pixel (x = 2, y = 1) is row 1, column 2.
        assert_eq!(set.image(0)[3 + 2], 21.0 / 255.0);
    }

    #[test]
    fn rgba_becomes_three_planes_without_alpha() {
        let dir = ScratchDir::new("folder-rgba");
        dir.write("only/x.png", &rgba_png(4, 3));
        let set = load_image_folder(dir.path()).unwrap();
        assert_eq!(set.shape(), ImageShape::new(3, 3, 4));
        let image = set.image(0);
        let plane = 12;
        // Pixel (x = 3, y = 2): red 3, green 2, blue 200.
        let at = 2 * 4 + 3;
        assert_eq!(image[at], 3.0 / 255.0);
        assert_eq!(image[plane + at], 2.0 / 255.0);
        assert_eq!(image[2 * plane + at], 200.0 / 255.0);
    }

    #[test]
    fn jpeg_loads_as_colour() {
        let dir = ScratchDir::new("folder-jpeg");
        let image = image::RgbImage::from_pixel(8, 8, image::Rgb([250, 10, 10]));
        dir.write(
            "red/x.jpg",
            &encode(&DynamicImage::ImageRgb8(image), ImageFormat::Jpeg),
        );
        let set = load_image_folder(dir.path()).unwrap();
        assert_eq!(set.shape(), ImageShape::new(3, 8, 8));
        assert!((set.image(0)[0] - 250.0 / 255.0).abs() < 0.05);
    }

    #[test]
    fn mixed_gray_and_colour_widens_gray() {
        let dir = ScratchDir::new("folder-mixed-channels");
        dir.write("a/gray.png", &gray_png(2, 2));
        dir.write("b/rgba.png", &rgba_png(2, 2));
        let set = load_image_folder(dir.path()).unwrap();
        assert_eq!(set.shape().channels, 3);
        let gray = set.image(0);
        assert_eq!(gray[..4], gray[4..8]);
        assert_eq!(gray[..4], gray[8..]);
    }

    #[test]
    fn mixed_sizes_name_the_first_mismatch() {
        let dir = ScratchDir::new("folder-sizes");
        let first = dir.write("a/1.png", &gray_png(4, 4));
        dir.write("a/2.png", &gray_png(4, 4));
        let odd = dir.write("b/1.png", &gray_png(5, 4));
        dir.write("b/2.png", &gray_png(6, 4));
        let err = load_image_folder(dir.path()).unwrap_err();
        assert!(matches!(
            err,
            DataError::MixedImageSizes {
                found_width: 5,
                found_height: 4,
                expected_width: 4,
                ..
            }
        ));
        assert_names(&err, &odd);
        assert_names(&err, &first);
    }

    #[test]
    fn unreadable_image_is_named() {
        let dir = ScratchDir::new("folder-bad");
        dir.write("a/good.png", &gray_png(2, 2));
        let bad = dir.write("a/junk.jpg", b"this is not a jpeg");
        let err = load_image_folder(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::UnreadableImage { .. }), "{err}");
        assert_names(&err, &bad);
    }

    #[test]
    fn truncated_png_is_unreadable_not_a_panic() {
        let bytes = gray_png(16, 16);
        for len in [0, 8, 20, bytes.len() / 2] {
            let err = decode_image(&bytes[..len], Path::new("t.png")).unwrap_err();
            assert!(matches!(err, DataError::UnreadableImage { .. }), "{err}");
        }
    }

    #[test]
    fn empty_root_is_reported() {
        let dir = ScratchDir::new("folder-empty");
        dir.write("stray.png", &gray_png(2, 2));
        let err = load_image_folder(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::EmptyFolder { .. }));
        assert_names(&err, dir.path());
    }

    #[test]
    fn empty_class_folder_is_reported() {
        let dir = ScratchDir::new("folder-empty-class");
        dir.write("a/1.png", &gray_png(2, 2));
        dir.write("b/readme.txt", b"no images");
        let err = load_image_folder(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::EmptyFolder { .. }));
        assert_names(&err, &dir.path().join("b"));
    }

    /// A small-CNN spec taking `channels x size x size` inputs with `classes`.
    fn spec(channels: usize, size: usize, classes: &[&str]) -> ModelSpec {
        ModelSpec {
            architecture: crate::models::Architecture::SmallCnn {
                width: 4,
                hidden: 8,
            },
            input_shape: [channels, size, size],
            class_names: classes.iter().map(|c| c.to_string()).collect(),
            normalization: None,
        }
    }

    /// Fashion-MNIST's names for three of its classes, in the model's order.
    const NAMED: [&str; 3] = ["T-shirt/top", "Trouser", "Ankle boot"];

    #[test]
    fn class_folders_are_matched_to_the_model_class_names() {
        let dir = ScratchDir::new("model-folder-names");
        // Sorted, these are Ankle_boot, T-shirt_top, trouser: indices 0, 1, 2 by position, but
        // the model's classes 2, 0, 1.
        dir.write("Ankle_boot/a.png", &gray_png(4, 4));
        dir.write("T-shirt_top/a.png", &gray_png(4, 4));
        dir.write("trouser/a.png", &gray_png(4, 4));
        let loaded =
            load_image_folder_for_model(dir.path(), &spec(1, 4, &NAMED), FolderLabels::Required)
                .unwrap();
        assert_eq!(loaded.set.labels(), &[2, 0, 1]);
        assert_eq!(loaded.rule, LabelRule::ClassNames);
        assert_eq!(loaded.set.class_names()[0], "T-shirt/top");
        assert_eq!(loaded.labelled, vec![true; 3]);
        assert_eq!(loaded.paths[0], dir.path().join("Ankle_boot/a.png"));
    }

    #[test]
    fn a_folder_naming_no_class_is_an_error_listing_the_classes() {
        let dir = ScratchDir::new("model-folder-unknown");
        dir.write("Trouser/a.png", &gray_png(4, 4));
        dir.write("Sneakers/a.png", &gray_png(4, 4));
        for labels in [FolderLabels::Required, FolderLabels::Optional] {
            let err =
                load_image_folder_for_model(dir.path(), &spec(1, 4, &NAMED), labels).unwrap_err();
            assert!(
                matches!(&err, DataError::UnknownClassFolder { folder, .. } if folder == "Sneakers"),
                "{err}"
            );
            let message = err.to_string();
            assert!(
                message.contains("T-shirt/top, Trouser, Ankle boot"),
                "{message}"
            );
        }
    }

    #[test]
    fn two_folders_for_one_class_are_refused() {
        let dir = ScratchDir::new("model-folder-duplicate");
        dir.write("Ankle boot/a.png", &gray_png(4, 4));
        dir.write("ankle_boot/a.png", &gray_png(4, 4));
        let err =
            load_image_folder_for_model(dir.path(), &spec(1, 4, &NAMED), FolderLabels::Required)
                .unwrap_err();
        assert!(
            matches!(err, DataError::DuplicateClassFolder { .. }),
            "{err}"
        );
    }

    #[test]
    fn numbered_folders_are_class_numbers_for_a_named_model_too() {
        let dir = ScratchDir::new("named-model-numbered-folders");
        dir.write("2/a.png", &gray_png(4, 4));
        dir.write("0/a.png", &gray_png(4, 4));
        let loaded =
            load_image_folder_for_model(dir.path(), &spec(1, 4, &NAMED), FolderLabels::Required)
                .unwrap();
        assert_eq!(loaded.set.labels(), &[0, 2]);
        assert_eq!(loaded.rule, LabelRule::ClassIndices);
        // A number beyond the model's classes names none of them.
        dir.write("99/a.png", &gray_png(4, 4));
        let err =
            load_image_folder_for_model(dir.path(), &spec(1, 4, &NAMED), FolderLabels::Required)
                .unwrap_err();
        assert!(
            matches!(&err, DataError::UnknownClassFolder { folder, .. } if folder == "99"),
            "{err}"
        );
    }

    #[test]
    fn numbered_classes_take_numbered_folders() {
        let dir = ScratchDir::new("model-folder-numbers");
        dir.write("10/a.png", &gray_png(4, 4));
        dir.write("2/a.png", &gray_png(4, 4));
        let numbered: Vec<String> = (0..11).map(|c| c.to_string()).collect();
        let numbered: Vec<&str> = numbered.iter().map(String::as_str).collect();
        let loaded =
            load_image_folder_for_model(dir.path(), &spec(1, 4, &numbered), FolderLabels::Required)
                .unwrap();
        // Sorted by name "10" comes first; it is class 10, not 0.
        assert_eq!(loaded.set.labels(), &[10, 2]);
        assert_eq!(loaded.rule, LabelRule::ClassIndices);
        let err = load_image_folder_for_model(
            dir.path(),
            &spec(1, 4, &["0", "1", "2"]),
            FolderLabels::Required,
        )
        .unwrap_err();
        assert!(
            matches!(&err, DataError::UnknownClassFolder { folder, .. } if folder == "10"),
            "{err}"
        );
    }

    #[test]
    fn numbered_classes_with_named_folders_follow_sorted_order_only_when_complete() {
        let dir = ScratchDir::new("model-folder-sorted");
        dir.write("dog/a.png", &gray_png(4, 4));
        dir.write("cat/a.png", &gray_png(4, 4));
        let two = spec(1, 4, &["0", "1"]);
        let loaded = load_image_folder_for_model(dir.path(), &two, FolderLabels::Required).unwrap();
        assert_eq!(loaded.rule, LabelRule::SortedFolders);
        assert_eq!(loaded.set.labels(), &[0, 1]);
        let three = spec(1, 4, &["0", "1", "2"]);
        let err =
            load_image_folder_for_model(dir.path(), &three, FolderLabels::Required).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::SortedFoldersCount {
                    folders: 2,
                    classes: 3,
                    ..
                }
            ),
            "{err}"
        );
        // A set that needs no labels takes the images unlabelled instead.
        let loaded =
            load_image_folder_for_model(dir.path(), &three, FolderLabels::Optional).unwrap();
        assert_eq!(loaded.rule, LabelRule::Unlabelled);
        assert_eq!(loaded.n_labelled(), 0);
    }

    #[test]
    fn optional_labels_take_flat_folders_missing_and_empty_classes() {
        let dir = ScratchDir::new("model-folder-optional");
        dir.write("loose1.png", &gray_png(4, 4));
        dir.write("loose2.png", &gray_png(4, 4));
        dir.write("Trouser/a.png", &gray_png(4, 4));
        dir.write("Ankle boot/notes.txt", b"no images");
        let loaded =
            load_image_folder_for_model(dir.path(), &spec(1, 4, &NAMED), FolderLabels::Optional)
                .unwrap();
        assert_eq!(loaded.set.len(), 3);
        assert_eq!(loaded.labelled, vec![false, false, true]);
        assert_eq!(loaded.set.label(2), 1);
        // Required labels refuse the empty class folder, and a flat folder has no classes.
        let err =
            load_image_folder_for_model(dir.path(), &spec(1, 4, &NAMED), FolderLabels::Required)
                .unwrap_err();
        assert!(matches!(err, DataError::EmptyFolder { .. }), "{err}");
        assert_names(&err, &dir.path().join("Ankle boot"));
        let flat = ScratchDir::new("model-folder-flat");
        flat.write("x.png", &gray_png(4, 4));
        let loaded =
            load_image_folder_for_model(flat.path(), &spec(1, 4, &NAMED), FolderLabels::Optional)
                .unwrap();
        assert_eq!((loaded.set.len(), loaded.rule), (1, LabelRule::Unlabelled));
        let err =
            load_image_folder_for_model(flat.path(), &spec(1, 4, &NAMED), FolderLabels::Required)
                .unwrap_err();
        assert!(matches!(err, DataError::EmptyFolder { .. }), "{err}");
    }

    #[test]
    fn rgb_becomes_gray_exactly_as_pil_convert_l() {
        let dir = ScratchDir::new("model-folder-rgb-to-gray");
        let pixels = [[10, 200, 30], [255, 0, 0], [1, 2, 3], [255, 255, 255]];
        let image = image::RgbImage::from_fn(2, 2, |x, y| image::Rgb(pixels[(2 * y + x) as usize]));
        dir.write(
            "Trouser/rgb.png",
            &encode(&DynamicImage::ImageRgb8(image), ImageFormat::Png),
        );
        let loaded =
            load_image_folder_for_model(dir.path(), &spec(1, 2, &NAMED), FolderLabels::Required)
                .unwrap();
        assert_eq!(loaded.set.shape(), ImageShape::new(1, 2, 2));
        // (19595 R + 38470 G + 7471 B + 32768) >> 16, by hand: 124, 76, 2, 255.
        let expected: Vec<f32> = [124u8, 76, 2, 255]
            .iter()
            .map(|&v| f32::from(v) / 255.0)
            .collect();
        assert_eq!(loaded.set.image(0), &expected[..]);
        assert_eq!(loaded.converted, Some((ChannelConversion::RgbToGray, 1)));
    }

    #[test]
    fn gray_is_repeated_into_three_channels() {
        let dir = ScratchDir::new("model-folder-gray-to-rgb");
        dir.write("Trouser/gray.png", &gray_png(4, 4));
        dir.write("Trouser/rgba.png", &rgba_png(4, 4));
        let loaded =
            load_image_folder_for_model(dir.path(), &spec(3, 4, &NAMED), FolderLabels::Required)
                .unwrap();
        assert_eq!(loaded.set.shape(), ImageShape::new(3, 4, 4));
        let gray = loaded.set.image(0);
        assert_eq!(gray[..16], gray[16..32]);
        assert_eq!(gray[..16], gray[32..]);
        assert_eq!(gray[4 + 2], 21.0 / 255.0);
        assert_eq!(loaded.converted, Some((ChannelConversion::GrayToRgb, 1)));
    }

    #[test]
    fn channels_other_than_gray_and_rgb_are_refused() {
        let dir = ScratchDir::new("model-folder-four-channels");
        let bad = dir.write("Trouser/x.png", &rgba_png(4, 4));
        let err =
            load_image_folder_for_model(dir.path(), &spec(4, 4, &NAMED), FolderLabels::Required)
                .unwrap_err();
        assert!(matches!(err, DataError::NotForModel { .. }), "{err}");
        assert!(err.to_string().contains("4 channels"), "{err}");
        assert_names(&err, &bad);
    }

    #[test]
    fn another_size_than_the_model_input_names_the_file_and_both_sizes() {
        let dir = ScratchDir::new("model-folder-size");
        dir.write("Trouser/a.png", &gray_png(4, 4));
        let bad = dir.write("Trouser/b.png", &gray_png(6, 5));
        let err =
            load_image_folder_for_model(dir.path(), &spec(1, 4, &NAMED), FolderLabels::Required)
                .unwrap_err();
        assert!(matches!(err, DataError::NotForModel { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("6x5") && message.contains("4x4"),
            "{message}"
        );
        assert_names(&err, &bad);
    }

    #[test]
    fn missing_root_is_an_io_error() {
        let dir = ScratchDir::new("folder-missing");
        let missing = dir.path().join("nope");
        let err = load_image_folder(&missing).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert_names(&err, &missing);
    }
}
