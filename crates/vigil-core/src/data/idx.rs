//! IDX files, the format of MNIST and Fashion-MNIST: `*-images-idx3-ubyte`
//! and `*-labels-idx1-ubyte`, raw or gzipped.
//!
//! Layout (all integers big-endian): a 4-byte magic number `00 00 08 NN`
//! (`08` = unsigned bytes, `NN` = number of dimensions), one `u32` per
//! dimension, then the values row-major. Images are `[count, rows, cols]`
//! (magic `0x803`), labels `[count]` (magic `0x801`). Compression is detected
//! from the gzip magic bytes `1f 8b`, not from the file name, so renamed or
//! pre-decompressed files load the same way.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use super::dataset::{ImageSet, ImageShape, Label, unit_f32_from_bytes};
use super::error::{DataError, Result};
use super::files::read_file;

/// Magic number of an IDX file of unsigned-byte images (3 dimensions).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;

/// Magic number of an IDX file of unsigned-byte labels (1 dimension).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// First two bytes of every gzip stream.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Largest decompressed size accepted (1 GiB, 20x Fashion-MNIST's training
/// images), so a malicious gzip file cannot exhaust memory.
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 30;

/// Fashion-MNIST's class names; label `i` is `FASHION_MNIST_CLASSES[i]`.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// MNIST's class names: the digits `"0"` to `"9"`.
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Images parsed from an IDX image file, before conversion to `f32`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Shape of one image: 1 channel x rows x cols.
    pub shape: ImageShape,
    /// Number of images.
    pub count: usize,
    /// `count * rows * cols` intensities, 0 = black, 255 = white.
    pub pixels: Vec<u8>,
}

/// Returns `bytes` decompressed if they start with the gzip magic, otherwise
/// unchanged. `path` only names the file in errors.
pub fn decompress_if_gzip<'a>(bytes: &'a [u8], path: &Path) -> Result<Cow<'a, [u8]>> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut decompressed = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED_BYTES + 1)
        .read_to_end(&mut decompressed)
        .map_err(|source| DataError::Gzip {
            path: path.to_path_buf(),
            source,
        })?;
    if decompressed.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(DataError::DecompressedTooLarge {
            path: path.to_path_buf(),
            limit: MAX_DECOMPRESSED_BYTES,
        });
    }
    Ok(Cow::Owned(decompressed))
}

/// Parses an IDX image file (raw or gzipped bytes). `path` only names the
/// file in errors.
pub fn parse_idx_images(bytes: &[u8], path: &Path) -> Result<IdxImages> {
    let bytes = decompress_if_gzip(bytes, path)?;
    let (dims, body) = split_header(&bytes, path, IDX_IMAGES_MAGIC, "IDX unsigned-byte images")?;
    let [count, rows, cols] = [dims[0], dims[1], dims[2]];
    if count == 0 {
        return Err(DataError::NoImages {
            path: path.to_path_buf(),
        });
    }
    Ok(IdxImages {
        shape: ImageShape::new(1, rows, cols),
        count,
        pixels: body.to_vec(),
    })
}

/// Parses an IDX label file (raw or gzipped bytes) into one byte per item.
/// `path` only names the file in errors.
pub fn parse_idx_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let bytes = decompress_if_gzip(bytes, path)?;
    let (_, body) = split_header(&bytes, path, IDX_LABELS_MAGIC, "IDX unsigned-byte labels")?;
    Ok(body.to_vec())
}

/// Checks the magic number and that the length matches the header, and
/// returns the dimensions and the value bytes.
fn split_header<'a>(
    bytes: &'a [u8],
    path: &Path,
    expected_magic: u32,
    expected_format: &'static str,
) -> Result<(Vec<usize>, &'a [u8])> {
    let num_dims = (expected_magic & 0xff) as usize;
    let header_len = 4 + 4 * num_dims;
    let truncated = |expected: u64| DataError::Truncated {
        path: path.to_path_buf(),
        len: bytes.len() as u64,
        expected,
    };
    let magic = read_u32_be(bytes, 0).ok_or_else(|| truncated(header_len as u64))?;
    if magic != expected_magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
            expected: expected_magic,
            expected_format,
        });
    }
    let dims: Vec<usize> = (0..num_dims)
        .map(|dim| read_u32_be(bytes, 4 + 4 * dim).map(|value| value as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| truncated(header_len as u64))?;
    let expected_len = header_len as u128 + dims.iter().map(|&dim| dim as u128).product::<u128>();
    let expected_len = u64::try_from(expected_len).unwrap_or(u64::MAX);
    let actual_len = bytes.len() as u64;
    if actual_len < expected_len {
        return Err(truncated(expected_len));
    }
    if actual_len > expected_len {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            len: actual_len,
            expected: expected_len,
        });
    }
    Ok((dims, &bytes[header_len..]))
}

/// Reads a big-endian `u32` at `offset`, or `None` past the end.
fn read_u32_be(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset + 4)?;
    Some(u32::from_be_bytes(word.try_into().ok()?))
}

/// Builds an image set from parsed IDX images and labels, checking that they
/// hold the same number of items and that every label names one of
/// `class_names`.
pub fn idx_image_set(
    images: IdxImages,
    images_path: &Path,
    labels: &[u8],
    labels_path: &Path,
    class_names: &[&str],
) -> Result<ImageSet> {
    if images.count != labels.len() {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            images: images.count,
            labels_path: labels_path.to_path_buf(),
            labels: labels.len(),
        });
    }
    let labels = checked_labels(labels, labels_path, class_names.len())?;
    ImageSet::new(
        unit_f32_from_bytes(&images.pixels),
        labels,
        images.shape,
        class_names.iter().map(|name| name.to_string()).collect(),
        images_path.display().to_string(),
    )
}

/// Converts label bytes to labels, failing on the first one that is not
/// below `num_classes`.
pub(crate) fn checked_labels(bytes: &[u8], path: &Path, num_classes: usize) -> Result<Vec<Label>> {
    bytes
        .iter()
        .enumerate()
        .map(|(index, &label)| {
            if usize::from(label) < num_classes {
                Ok(Label::from(label))
            } else {
                Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    index,
                    label: u64::from(label),
                    num_classes,
                })
            }
        })
        .collect()
}

/// Loads an IDX image file and its label file (each raw or gzipped).
pub fn load_idx(images_path: &Path, labels_path: &Path, class_names: &[&str]) -> Result<ImageSet> {
    let images = parse_idx_images(&read_file(images_path)?, images_path)?;
    let labels = parse_idx_labels(&read_file(labels_path)?, labels_path)?;
    idx_image_set(images, images_path, &labels, labels_path, class_names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{ScratchDir, gzip};

    /// An IDX image file of `count` images of `rows x cols`, pixel value
    /// `(image + row + col) % 256`.
    fn idx_images_bytes(count: u32, rows: u32, cols: u32) -> Vec<u8> {
        let mut bytes = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for dim in [count, rows, cols] {
            bytes.extend_from_slice(&dim.to_be_bytes());
        }
        for image in 0..count {
            for row in 0..rows {
                for col in 0..cols {
                    bytes.push(((image + row + col) % 256) as u8);
                }
            }
        }
        bytes
    }

    /// An IDX label file holding `labels`.
    fn idx_labels_bytes(labels: &[u8]) -> Vec<u8> {
        let mut bytes = IDX_LABELS_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        bytes.extend_from_slice(labels);
        bytes
    }

    /// Writes an image and a label file; returns their paths.
    fn write_pair(
        dir: &ScratchDir,
        images: &[u8],
        labels: &[u8],
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        (
            dir.write("images-idx3-ubyte", images),
            dir.write("labels-idx1-ubyte", labels),
        )
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
    fn loads_raw_and_gzipped_files_alike() {
        let dir = ScratchDir::new("idx-ok");
        let images = idx_images_bytes(3, 2, 4);
        let labels = idx_labels_bytes(&[2, 0, 9]);
        // Gzipped content under names without `.gz`: detection is by magic.
        let (raw_images, raw_labels) = write_pair(&dir, &images, &labels);
        let gz_images = dir.write("gz/images", &gzip(&images));
        let gz_labels = dir.write("gz/labels", &gzip(&labels));

        let raw = load_idx(&raw_images, &raw_labels, &MNIST_CLASSES).unwrap();
        let gz = load_idx(&gz_images, &gz_labels, &MNIST_CLASSES).unwrap();
        assert_eq!(raw.pixels(), gz.pixels());
        assert_eq!(raw.shape(), ImageShape::new(1, 2, 4));
        assert_eq!(raw.labels(), &[2, 0, 9]);
        assert_eq!(raw.len(), 3);
        // Image 1, row 1, col 3 has value (1 + 1 + 3) / 255.
        assert_eq!(raw.image(1)[4 + 3], 5.0 / 255.0);
        assert_eq!(raw.class_names()[9], "9");
    }

    #[test]
    fn bad_magic_says_found_and_expected() {
        let dir = ScratchDir::new("idx-magic");
        // A label file where an image file is expected.
        let (images, labels) = write_pair(&dir, &idx_labels_bytes(&[1]), &idx_labels_bytes(&[1]));
        let err = load_idx(&images, &labels, &MNIST_CLASSES).unwrap_err();
        assert!(matches!(
            err,
            DataError::BadMagic {
                found: 0x801,
                expected: 0x803,
                ..
            }
        ));
        assert_names(&err, &images);
        assert!(
            err.to_string().contains("0x00000801, expected 0x00000803"),
            "{err}"
        );
    }

    #[test]
    fn truncated_body_says_where_and_how_long() {
        let dir = ScratchDir::new("idx-trunc");
        let mut images = idx_images_bytes(2, 3, 3);
        images.truncate(16 + 10);
        let (images_path, labels_path) =
            write_pair(&dir, &gzip(&images), &idx_labels_bytes(&[0, 1]));
        let err = load_idx(&images_path, &labels_path, &MNIST_CLASSES).unwrap_err();
        assert!(matches!(
            err,
            DataError::Truncated {
                len: 26,
                expected: 34,
                ..
            }
        ));
        assert_names(&err, &images_path);
        assert!(
            err.to_string()
                .contains("truncated at byte 26 (expected 34 bytes)")
        );
    }

    #[test]
    fn truncated_header_is_reported() {
        let path = Path::new("short.idx");
        let err = parse_idx_images(&[0, 0, 8], path).unwrap_err();
        assert!(matches!(
            err,
            DataError::Truncated {
                len: 3,
                expected: 16,
                ..
            }
        ));
        let err = parse_idx_images(&[0, 0, 8, 3, 0, 0], path).unwrap_err();
        assert!(matches!(
            err,
            DataError::Truncated {
                len: 6,
                expected: 16,
                ..
            }
        ));
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let mut labels = idx_labels_bytes(&[1, 2]);
        labels.push(7);
        let err = parse_idx_labels(&labels, Path::new("labels.idx")).unwrap_err();
        assert!(matches!(
            err,
            DataError::TrailingBytes {
                len: 11,
                expected: 10,
                ..
            }
        ));
        assert!(err.to_string().contains("labels.idx"));
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let dir = ScratchDir::new("idx-count");
        let (images, labels) =
            write_pair(&dir, &idx_images_bytes(3, 2, 2), &idx_labels_bytes(&[0, 1]));
        let err = load_idx(&images, &labels, &MNIST_CLASSES).unwrap_err();
        assert!(matches!(
            err,
            DataError::CountMismatch {
                images: 3,
                labels: 2,
                ..
            }
        ));
        assert_names(&err, &images);
        assert_names(&err, &labels);
        assert!(err.to_string().starts_with("3 images in "));
    }

    #[test]
    fn label_out_of_range_is_reported() {
        let dir = ScratchDir::new("idx-label");
        let (images, labels) = write_pair(
            &dir,
            &idx_images_bytes(2, 2, 2),
            &idx_labels_bytes(&[0, 10]),
        );
        let err = load_idx(&images, &labels, &MNIST_CLASSES).unwrap_err();
        assert!(matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                num_classes: 10,
                ..
            }
        ));
        assert_names(&err, &labels);
    }

    #[test]
    fn broken_gzip_is_reported() {
        let dir = ScratchDir::new("idx-gzip");
        let mut gz = gzip(&idx_images_bytes(2, 2, 2));
        gz.truncate(gz.len() / 2);
        let path = dir.write("images.gz", &gz);
        let err = parse_idx_images(&gz, &path).unwrap_err();
        assert!(matches!(err, DataError::Gzip { .. }), "{err}");
        assert_names(&err, &path);
    }

    #[test]
    fn empty_image_file_is_reported() {
        let err = parse_idx_images(&idx_images_bytes(0, 28, 28), Path::new("e.idx")).unwrap_err();
        assert!(matches!(err, DataError::NoImages { .. }));
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let dir = ScratchDir::new("idx-missing");
        let missing = dir.path().join("nope-idx3-ubyte.gz");
        let err = load_idx(&missing, &missing, &MNIST_CLASSES).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert_names(&err, &missing);
    }

    #[test]
    fn huge_header_dimensions_do_not_allocate() {
        let mut bytes = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for _ in 0..3 {
            bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let err = parse_idx_images(&bytes, Path::new("huge")).unwrap_err();
        assert!(matches!(
            err,
            DataError::Truncated {
                expected: u64::MAX,
                ..
            }
        ));
    }

    #[test]
    fn parsers_never_panic_on_prefixes_and_bit_flips() {
        let good = idx_images_bytes(2, 3, 3);
        for len in 0..good.len() {
            let _ = parse_idx_images(&good[..len], Path::new("p"));
            let _ = parse_idx_labels(&good[..len], Path::new("p"));
        }
        for position in 0..good.len() {
            let mut flipped = good.clone();
            flipped[position] ^= 0xff;
            let _ = parse_idx_images(&flipped, Path::new("p"));
        }
    }

    #[test]
    fn real_fashion_mnist_if_installed() {
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        let images = dir.join("t10k-images-idx3-ubyte.gz");
        if !images.exists() {
            println!(
                "skipped: {} not found (run scripts/setup-data.sh)",
                images.display()
            );
            return;
        }
        let labels = dir.join("t10k-labels-idx1-ubyte.gz");
        let set = load_idx(&images, &labels, &FASHION_MNIST_CLASSES).unwrap();
        assert_eq!(set.len(), 10_000);
        assert_eq!(set.shape(), ImageShape::new(1, 28, 28));
        assert_eq!(set.class_counts(), vec![1000; 10]);
        assert!(set.pixels().iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
