//! CIFAR-10 and CIFAR-100 in their "binary version" layout.
//!
//! A batch file is a sequence of fixed-size records. A CIFAR-10 record is one
//! label byte then 3072 pixel bytes: the 32x32 red plane, then green, then
//! blue, each row-major, which is already the C x H x W layout vigil uses. A
//! CIFAR-100 record has two label bytes (coarse, then fine) before the same
//! 3072 pixel bytes.
//!
//! Files in a CIFAR-10 folder (`cifar-10-batches-bin/` in the official
//! archive): `data_batch_1.bin` .. `data_batch_5.bin` (training, 10,000
//! images each), `test_batch.bin` and the class names in `batches.meta.txt`.
//! In a CIFAR-100 folder (`cifar-100-binary/`): `train.bin`, `test.bin`,
//! `fine_label_names.txt` and `coarse_label_names.txt`. A missing names file
//! falls back to the official names built in here.

use std::path::Path;

use super::dataset::{ImageSet, ImageShape, Label, unit_f32_from_bytes};
use super::error::{DataError, Result};
use super::files::{read_file, read_text};
use super::source::Split;

/// Shape of every CIFAR image: 3 channels (RGB), 32 x 32 pixels.
pub const CIFAR_IMAGE_SHAPE: ImageShape = ImageShape::new(3, 32, 32);

/// Bytes in one CIFAR-10 record: a label byte and the pixels.
pub const CIFAR10_RECORD_LEN: usize = 1 + CIFAR_IMAGE_SHAPE.num_values();

/// Bytes in one CIFAR-100 record: coarse and fine label bytes and the pixels.
pub const CIFAR100_RECORD_LEN: usize = 2 + CIFAR_IMAGE_SHAPE.num_values();

/// CIFAR-10's training batch files, loaded and joined in this order.
pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// CIFAR-10's test batch file.
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";

/// CIFAR-10's class-name file, one name per line.
pub const CIFAR10_NAMES_FILE: &str = "batches.meta.txt";

/// CIFAR-100's training file.
pub const CIFAR100_TRAIN_FILE: &str = "train.bin";

/// CIFAR-100's test file.
pub const CIFAR100_TEST_FILE: &str = "test.bin";

/// CIFAR-100's fine class-name file, one name per line.
pub const CIFAR100_FINE_NAMES_FILE: &str = "fine_label_names.txt";

/// CIFAR-100's coarse (superclass) name file, one name per line.
pub const CIFAR100_COARSE_NAMES_FILE: &str = "coarse_label_names.txt";

/// CIFAR-10's class names, used when `batches.meta.txt` is absent.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100's fine class names, used when `fine_label_names.txt` is absent.
#[rustfmt::skip]
pub const CIFAR100_FINE_CLASSES: [&str; 100] = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
];

/// CIFAR-100's coarse class names, used when `coarse_label_names.txt` is
/// absent.
pub const CIFAR100_COARSE_CLASSES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

/// Which of a CIFAR-100 record's two labels becomes the image's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar100Labels {
    /// The 100 fine classes (what "CIFAR-100" usually means, and what
    /// BackdoorBench uses).
    Fine,
    /// The 20 coarse superclasses.
    Coarse,
}

impl Cifar100Labels {
    /// Offset of this label within a record.
    fn offset(self) -> usize {
        match self {
            Self::Coarse => 0,
            Self::Fine => 1,
        }
    }

    /// The name file and built-in names of this label kind.
    fn names(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::Coarse => (CIFAR100_COARSE_NAMES_FILE, &CIFAR100_COARSE_CLASSES),
            Self::Fine => (CIFAR100_FINE_NAMES_FILE, &CIFAR100_FINE_CLASSES),
        }
    }
}

/// Layout of one kind of record.
struct RecordLayout {
    /// Bytes per record.
    record_len: usize,
    /// Offset of the label byte to keep.
    label_offset: usize,
    /// Offset of the first pixel byte.
    pixels_offset: usize,
}

/// Parses a CIFAR-10 batch file's bytes. `class_names` must have 10 entries;
/// `path` only names the file in errors.
pub fn parse_cifar10_batch(bytes: &[u8], path: &Path, class_names: &[String]) -> Result<ImageSet> {
    let layout = RecordLayout {
        record_len: CIFAR10_RECORD_LEN,
        label_offset: 0,
        pixels_offset: 1,
    };
    parse_records(bytes, path, &layout, class_names)
}

/// Parses a CIFAR-100 file's bytes keeping the `labels` kind of label.
/// `class_names` must match that kind (100 fine or 20 coarse names); `path`
/// only names the file in errors.
pub fn parse_cifar100_batch(
    bytes: &[u8],
    path: &Path,
    labels: Cifar100Labels,
    class_names: &[String],
) -> Result<ImageSet> {
    let layout = RecordLayout {
        record_len: CIFAR100_RECORD_LEN,
        label_offset: labels.offset(),
        pixels_offset: 2,
    };
    parse_records(bytes, path, &layout, class_names)
}

/// Splits `bytes` into records of `layout` and converts them to an image set.
fn parse_records(
    bytes: &[u8],
    path: &Path,
    layout: &RecordLayout,
    class_names: &[String],
) -> Result<ImageSet> {
    check_whole_records(bytes.len(), layout.record_len, path)?;
    let records = bytes.chunks_exact(layout.record_len);
    let mut labels = Vec::with_capacity(records.len());
    let mut pixels = Vec::with_capacity(records.len() * CIFAR_IMAGE_SHAPE.num_values());
    for (index, record) in records.enumerate() {
        labels.push(checked_label(
            record[layout.label_offset],
            index,
            path,
            class_names.len(),
        )?);
        pixels.extend(unit_f32_from_bytes(&record[layout.pixels_offset..]));
    }
    ImageSet::new(
        pixels,
        labels,
        CIFAR_IMAGE_SHAPE,
        class_names.to_vec(),
        path.display().to_string(),
    )
}

/// Fails unless `len` is a positive whole number of records; a partial last
/// record is reported as truncation at `len`, expecting the end of that
/// record.
fn check_whole_records(len: usize, record_len: usize, path: &Path) -> Result<()> {
    if len == 0 {
        return Err(DataError::NoImages {
            path: path.to_path_buf(),
        });
    }
    if !len.is_multiple_of(record_len) {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            len: len as u64,
            expected: ((len / record_len + 1) * record_len) as u64,
        });
    }
    Ok(())
}

/// Returns `label` if it is below `num_classes`.
fn checked_label(label: u8, index: usize, path: &Path, num_classes: usize) -> Result<Label> {
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
}

/// Parses a class-name file: one name per line, surrounding blanks trimmed,
/// empty lines skipped. Fails unless exactly `expected_count` names remain.
pub fn parse_class_names(text: &str, path: &Path, expected_count: usize) -> Result<Vec<String>> {
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() != expected_count {
        return Err(DataError::ClassNames {
            path: path.to_path_buf(),
            found: names.len(),
            expected: expected_count,
        });
    }
    Ok(names)
}

/// Reads class names from `path` if it exists, else returns `defaults`.
fn class_names_or_default(path: &Path, defaults: &[&str]) -> Result<Vec<String>> {
    if path.exists() {
        parse_class_names(&read_text(path)?, path, defaults.len())
    } else {
        Ok(defaults.iter().map(|name| name.to_string()).collect())
    }
}

/// Loads CIFAR-10's `split` from `dir`: the five training batches joined in
/// order, or the test batch.
pub fn load_cifar10(dir: &Path, split: Split) -> Result<ImageSet> {
    let class_names = class_names_or_default(&dir.join(CIFAR10_NAMES_FILE), &CIFAR10_CLASSES)?;
    let files: &[&str] = match split {
        Split::Train => &CIFAR10_TRAIN_FILES,
        Split::Test => &[CIFAR10_TEST_FILE],
    };
    let mut joined: Option<ImageSet> = None;
    for file in files {
        let path = dir.join(file);
        let batch = parse_cifar10_batch(&read_file(&path)?, &path, &class_names)?;
        match joined.as_mut() {
            Some(set) => set.append(&batch)?,
            None => joined = Some(batch),
        }
    }
    let joined = joined.expect("every split has at least one file");
    Ok(joined.with_source(format!("cifar10 {split} ({})", dir.display())))
}

/// Loads CIFAR-100's `split` from `dir` with the `labels` kind of label.
pub fn load_cifar100(dir: &Path, split: Split, labels: Cifar100Labels) -> Result<ImageSet> {
    let (names_file, defaults) = labels.names();
    let class_names = class_names_or_default(&dir.join(names_file), defaults)?;
    let path = dir.join(match split {
        Split::Train => CIFAR100_TRAIN_FILE,
        Split::Test => CIFAR100_TEST_FILE,
    });
    parse_cifar100_batch(&read_file(&path)?, &path, labels, &class_names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::ScratchDir;

    /// A CIFAR-10 record: `label`, then red = 10, green = 20, blue = 30 with
    /// the first red pixel set to `label`.
    fn cifar10_record(label: u8) -> Vec<u8> {
        let mut record = vec![label];
        for value in [10u8, 20, 30] {
            record.extend(std::iter::repeat_n(value, 1024));
        }
        record[1] = label;
        record
    }

    /// A CIFAR-100 record with the given coarse and fine labels.
    fn cifar100_record(coarse: u8, fine: u8) -> Vec<u8> {
        let mut record = vec![coarse, fine];
        record.extend(std::iter::repeat_n(255u8, 3072));
        record
    }

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("class{i}")).collect()
    }

    #[test]
    fn parses_cifar10_records_into_planes() {
        let bytes = [cifar10_record(3), cifar10_record(7)].concat();
        let set = parse_cifar10_batch(&bytes, Path::new("b.bin"), &names(10)).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.labels(), &[3, 7]);
        assert_eq!(set.shape(), CIFAR_IMAGE_SHAPE);
        let image = set.image(1);
        assert_eq!(image[0], 7.0 / 255.0);
        assert_eq!(image[1], 10.0 / 255.0);
        assert_eq!(image[1024], 20.0 / 255.0);
        assert_eq!(image[3071], 30.0 / 255.0);
    }

    #[test]
    fn cifar100_keeps_fine_or_coarse_label() {
        let bytes = [cifar100_record(4, 99), cifar100_record(19, 0)].concat();
        let path = Path::new("train.bin");
        let fine = parse_cifar100_batch(&bytes, path, Cifar100Labels::Fine, &names(100)).unwrap();
        let coarse =
            parse_cifar100_batch(&bytes, path, Cifar100Labels::Coarse, &names(20)).unwrap();
        assert_eq!(fine.labels(), &[99, 0]);
        assert_eq!(coarse.labels(), &[4, 19]);
        assert!(fine.pixels().iter().all(|&v| v == 1.0));
    }

    #[test]
    fn partial_record_reports_truncation_point() {
        let dir = ScratchDir::new("cifar-trunc");
        let mut bytes = [cifar10_record(1), cifar10_record(2)].concat();
        bytes.truncate(CIFAR10_RECORD_LEN + 100);
        let path = dir.write("data_batch_1.bin", &bytes);
        let err = parse_cifar10_batch(&bytes, &path, &names(10)).unwrap_err();
        assert!(matches!(
            err,
            DataError::Truncated {
                len: 3173,
                expected: 6146,
                ..
            }
        ));
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(err.to_string().contains("truncated at byte 3173"));
    }

    #[test]
    fn empty_file_is_reported() {
        let err = parse_cifar10_batch(&[], Path::new("test_batch.bin"), &names(10)).unwrap_err();
        assert!(matches!(err, DataError::NoImages { .. }));
        assert!(err.to_string().contains("test_batch.bin"));
    }

    #[test]
    fn label_out_of_range_is_reported() {
        let bytes = [cifar10_record(1), cifar10_record(10)].concat();
        let err = parse_cifar10_batch(&bytes, Path::new("x.bin"), &names(10)).unwrap_err();
        assert!(matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                ..
            }
        ));
        assert!(err.to_string().contains("x.bin"));
        let bytes = cifar100_record(20, 5);
        let err = parse_cifar100_batch(
            &bytes,
            Path::new("y.bin"),
            Cifar100Labels::Coarse,
            &names(20),
        )
        .unwrap_err();
        assert!(matches!(err, DataError::LabelOutOfRange { label: 20, .. }));
    }

    #[test]
    fn loads_cifar10_folder_with_names_file() {
        let dir = ScratchDir::new("cifar10-dir");
        for (i, file) in CIFAR10_TRAIN_FILES.iter().enumerate() {
            dir.write(file, &[cifar10_record(i as u8), cifar10_record(9)].concat());
        }
        dir.write(CIFAR10_TEST_FILE, &cifar10_record(4));
        let names_text: String = CIFAR10_CLASSES.iter().map(|n| format!("{n}\n")).collect();
        dir.write(CIFAR10_NAMES_FILE, format!("{names_text}\n\n").as_bytes());

        let train = load_cifar10(dir.path(), Split::Train).unwrap();
        assert_eq!(train.len(), 10);
        assert_eq!(train.labels(), &[0, 9, 1, 9, 2, 9, 3, 9, 4, 9]);
        assert_eq!(train.class_names()[0], "airplane");
        assert!(train.source().starts_with("cifar10 train"));
        let test = load_cifar10(dir.path(), Split::Test).unwrap();
        assert_eq!(test.labels(), &[4]);
    }

    #[test]
    fn wrong_names_file_is_reported() {
        let dir = ScratchDir::new("cifar10-names");
        dir.write(CIFAR10_TEST_FILE, &cifar10_record(4));
        let names_path = dir.write(CIFAR10_NAMES_FILE, b"cat\ndog\n");
        let err = load_cifar10(dir.path(), Split::Test).unwrap_err();
        assert!(matches!(
            err,
            DataError::ClassNames {
                found: 2,
                expected: 10,
                ..
            }
        ));
        assert!(err.to_string().contains(&names_path.display().to_string()));
    }

    #[test]
    fn missing_batch_is_named() {
        let dir = ScratchDir::new("cifar10-missing");
        dir.write("data_batch_1.bin", &cifar10_record(0));
        let err = load_cifar10(dir.path(), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert!(err.to_string().contains("data_batch_2.bin"), "{err}");
    }

    #[test]
    fn loads_cifar100_with_builtin_names() {
        let dir = ScratchDir::new("cifar100-dir");
        dir.write(CIFAR100_TEST_FILE, &cifar100_record(3, 42));
        let set = load_cifar100(dir.path(), Split::Test, Cifar100Labels::Fine).unwrap();
        assert_eq!(set.num_classes(), 100);
        assert_eq!(set.class_names()[42], CIFAR100_FINE_CLASSES[42]);
        assert_eq!(set.labels(), &[42]);
    }
}
