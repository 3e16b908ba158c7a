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

use super::dataset::{ImageSet, ImageShape, Label};
use super::error::{DataError, Result};
use super::files::{read_file, sorted_entries};

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
    let image = image::load_from_memory(bytes).map_err(|source| DataError::UnreadableImage {
        path: path.to_path_buf(),
        source,
    })?;
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

#[cfg(test)]
mod tests {
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

    #[test]
    fn missing_root_is_an_io_error() {
        let dir = ScratchDir::new("folder-missing");
        let missing = dir.path().join("nope");
        let err = load_image_folder(&missing).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert_names(&err, &missing);
    }
}
