//! Small out-of-distribution test sets that need no download: uniform and Gaussian noise images,
//! and scikit-learn's bundled 8x8 digits (`sklearn/datasets/data/digits.csv.gz`, from PyPI)
//! upsampled to the ID images' size.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use serde::{Deserialize, Serialize};

use super::DatasetKind;
use super::dataset::{ImageSet, ImageShape, Label};
use super::error::{DataError, Result};
use super::glyphs::{GlyphStyle, LetterSet};
use super::idx::{MNIST_CLASSES, decompress_if_gzip};

/// `n` images of `shape` with every pixel uniform in `[0, 1)`, from a seeded generator.
pub fn uniform_noise(n: usize, shape: ImageShape, seed: u64) -> Result<ImageSet> {
    noise(n, shape, seed, "uniform-noise", |rng| rng.random::<f32>())
}

/// `n` images of `shape` with every pixel drawn from `N(0.5, 0.25^2)` and clipped to `[0, 1]`.
pub fn gaussian_noise(n: usize, shape: ImageShape, seed: u64) -> Result<ImageSet> {
    let normal = Normal::new(0.5f32, 0.25).map_err(|e| DataError::InvalidImageSet {
        origin: "gaussian-noise".into(),
        reason: e.to_string(),
    })?;
    noise(n, shape, seed, "gaussian-noise", |rng| {
        normal.sample(rng).clamp(0.0, 1.0)
    })
}

/// `n` images of one class, `noise`, each pixel drawn by `pixel` from a generator seeded by `seed`.
fn noise(
    n: usize,
    shape: ImageShape,
    seed: u64,
    name: &str,
    mut pixel: impl FnMut(&mut StdRng) -> f32,
) -> Result<ImageSet> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pixels = (0..n * shape.num_values())
        .map(|_| pixel(&mut rng))
        .collect();
    ImageSet::new(pixels, vec![0; n], shape, vec!["noise".into()], name)
}

/// Parses scikit-learn's `digits.csv.gz` (raw or gzipped bytes): rows of 64 intensities 0-16
/// (8x8, row-major) and the digit. Returns 1x8x8 images scaled to `[0, 1]`. `path` only names
/// the file in errors.
pub fn parse_sklearn_digits(bytes: &[u8], path: &Path) -> Result<ImageSet> {
    let bytes = decompress_if_gzip(bytes, path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| DataError::InvalidImageSet {
        origin: path.display().to_string(),
        reason: format!("not UTF-8 text: {e}"),
    })?;
    let bad = |line: usize, reason: String| DataError::InvalidImageSet {
        origin: path.display().to_string(),
        reason: format!("line {line}: {reason}"),
    };
    let mut pixels = Vec::new();
    let mut labels: Vec<Label> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let values: Vec<&str> = line.split(',').map(str::trim).collect();
        if values.len() != 65 {
            return Err(bad(
                i + 1,
                format!("{} fields, expected 64 pixels and a label", values.len()),
            ));
        }
        for v in &values[..64] {
            let x: f32 = v
                .parse()
                .map_err(|_| bad(i + 1, format!("pixel `{v}` is not a number")))?;
            if !(0.0..=16.0).contains(&x) {
                return Err(bad(i + 1, format!("pixel {x} outside 0-16")));
            }
            pixels.push(x / 16.0);
        }
        let label: Label = values[64]
            .parse()
            .ok()
            .filter(|&l: &Label| l < 10)
            .ok_or_else(|| bad(i + 1, format!("label `{}` is not a digit", values[64])))?;
        labels.push(label);
    }
    if labels.is_empty() {
        return Err(DataError::NoImages {
            path: path.to_path_buf(),
        });
    }
    let names = MNIST_CLASSES.iter().map(|s| s.to_string()).collect();
    ImageSet::new(
        pixels,
        labels,
        ImageShape::new(1, 8, 8),
        names,
        "sklearn-digits",
    )
}

/// Every image of `set` resized to `side x side` by bilinear interpolation (pixel centres
/// aligned, as PyTorch's `interpolate(mode="bilinear", align_corners=False)`).
pub fn upsample(set: &ImageSet, side: usize) -> Result<ImageSet> {
    resize(set, side, side)
}

/// Every image of `set` resized to `height x width` by bilinear interpolation, channels kept.
pub fn resize(set: &ImageSet, height: usize, width: usize) -> Result<ImageSet> {
    let s = set.shape();
    let (h, w) = (s.height, s.width);
    let out_shape = ImageShape::new(s.channels, height, width);
    if (h, w) == (height, width) {
        return Ok(set.clone());
    }
    let mut pixels = Vec::with_capacity(set.len() * out_shape.num_values());
    let coord = |o: usize, n: usize, out: usize| -> (usize, usize, f32) {
        let x = ((o as f32 + 0.5) * n as f32 / out as f32 - 0.5).clamp(0.0, (n - 1) as f32);
        let x0 = x.floor() as usize;
        (x0, (x0 + 1).min(n - 1), x - x0 as f32)
    };
    for i in 0..set.len() {
        let image = set.image(i);
        for c in 0..s.channels {
            let plane = &image[c * h * w..(c + 1) * h * w];
            for oy in 0..height {
                let (y0, y1, fy) = coord(oy, h, height);
                for ox in 0..width {
                    let (x0, x1, fx) = coord(ox, w, width);
                    let top = plane[y0 * w + x0] * (1.0 - fx) + plane[y0 * w + x1] * fx;
                    let bottom = plane[y1 * w + x0] * (1.0 - fx) + plane[y1 * w + x1] * fx;
                    pixels.push(top * (1.0 - fy) + bottom * fy);
                }
            }
        }
    }
    let labels = (0..set.len()).map(|i| set.label(i)).collect();
    ImageSet::new(
        pixels,
        labels,
        out_shape,
        set.class_names().to_vec(),
        set.source(),
    )
}

/// `set` brought to `shape`: resized bilinearly, then grey repeated into three channels or
/// three channels averaged into grey, so any OOD set can be shown to any model.
pub fn conform(set: &ImageSet, shape: ImageShape) -> Result<ImageSet> {
    let resized = resize(set, shape.height, shape.width)?;
    let from = resized.shape().channels;
    if from == shape.channels {
        return Ok(resized);
    }
    let plane = shape.height * shape.width;
    let mut pixels = Vec::with_capacity(resized.len() * shape.num_values());
    for i in 0..resized.len() {
        let image = resized.image(i);
        match (from, shape.channels) {
            (1, c) => (0..c).for_each(|_| pixels.extend_from_slice(image)),
            (f, 1) => pixels.extend(
                (0..plane).map(|p| (0..f).map(|c| image[c * plane + p]).sum::<f32>() / f as f32),
            ),
            (f, t) => {
                return Err(DataError::InvalidImageSet {
                    origin: set.source().to_string(),
                    reason: format!("cannot turn {f}-channel images into {t}-channel ones"),
                });
            }
        }
    }
    let labels = (0..resized.len()).map(|i| resized.label(i)).collect();
    ImageSet::new(
        pixels,
        labels,
        shape,
        resized.class_names().to_vec(),
        set.source(),
    )
}

/// Where scikit-learn's `digits.csv.gz` usually is: `$VIGIL_SKLEARN_DIGITS`, then the
/// `site-packages`/`dist-packages` folders of the system's, `/usr/local`'s, the user's and
/// pyenv's Pythons.
pub fn find_sklearn_digits() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("VIGIL_SKLEARN_DIGITS") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut lib_dirs: Vec<PathBuf> = vec!["/usr/lib".into(), "/usr/local/lib".into()];
    if let Some(home) = &home {
        lib_dirs.push(home.join(".local/lib"));
        if let Ok(versions) = std::fs::read_dir(home.join(".pyenv/versions")) {
            lib_dirs.extend(versions.flatten().map(|v| v.path().join("lib")));
        }
    }
    let tail = Path::new("sklearn/datasets/data/digits.csv.gz");
    for lib in lib_dirs {
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pythons.sort();
        for python in pythons.iter().rev() {
            for packages in ["site-packages", "dist-packages"] {
                let candidate = python.join(packages).join(tail);
                if candidate.is_file() {
                    return Some(candidate);
                }
            }
        }
    }
    None
}

/// A test OOD set vigil builds offline, by name on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OodSource {
    /// Lower-case letters in GNU FreeFont ([`LetterSet::TestOod`]).
    LettersTest,
    /// scikit-learn's 8x8 digits, upsampled; the file found by [`find_sklearn_digits`] unless
    /// given.
    SklearnDigits(Option<PathBuf>),
    /// Uniform noise.
    UniformNoise,
    /// Gaussian noise `N(0.5, 0.25^2)`, clipped.
    GaussianNoise,
    /// The test split of a data set vigil loads (MNIST digits, CIFAR, an image folder), from
    /// its folder if given.
    Dataset(DatasetKind, Option<PathBuf>),
}

/// How far a test OOD set is from the ID data: reports average over each group and over all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OodGroup {
    /// Natural images of another kind (letters, digits, other photos).
    Near,
    /// Far from any natural image (noise), or named far by the user.
    Far,
}

/// A named test OOD set and its group: `NAME[=PATH][@near|@far]` on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OodSetSpec {
    /// Where the images come from.
    pub source: OodSource,
    /// Its group.
    pub group: OodGroup,
}

impl OodSetSpec {
    /// The set's name in reports.
    pub fn name(&self) -> String {
        match &self.source {
            OodSource::LettersTest => LetterSet::TestOod.name().into(),
            OodSource::SklearnDigits(_) => "sklearn-digits".into(),
            OodSource::UniformNoise => "uniform-noise".into(),
            OodSource::GaussianNoise => "gaussian-noise".into(),
            OodSource::Dataset(kind, _) => kind.to_string(),
        }
    }

    /// The images, conformed to `shape`: at most `limit` (a seeded subset; noise sets draw
    /// exactly `limit`, 2,000 without one), letters drawn from the fonts under `font_dir`,
    /// data sets from their folder, else `data_dir`, else vigil's usual places.
    pub fn load(
        &self,
        shape: ImageShape,
        limit: Option<usize>,
        seed: u64,
        font_dir: &Path,
        data_dir: Option<&Path>,
    ) -> Result<ImageSet> {
        let set = match &self.source {
            OodSource::LettersTest => {
                LetterSet::TestOod.render(font_dir, &GlyphStyle::mnist_like(10, seed))?
            }
            OodSource::SklearnDigits(path) => {
                let path = path.clone().or_else(find_sklearn_digits).ok_or_else(|| {
                    DataError::InvalidImageSet {
                        origin: "sklearn-digits".into(),
                        reason: "digits.csv.gz not found: `pip install scikit-learn`, or give \
                                 its path as sklearn-digits=PATH or in $VIGIL_SKLEARN_DIGITS"
                            .into(),
                    }
                })?;
                let bytes = std::fs::read(&path).map_err(|source| DataError::Io {
                    path: path.clone(),
                    source,
                })?;
                parse_sklearn_digits(&bytes, &path)?
            }
            OodSource::UniformNoise => uniform_noise(limit.unwrap_or(2000), shape, seed)?,
            OodSource::GaussianNoise => gaussian_noise(limit.unwrap_or(2000), shape, seed)?,
            OodSource::Dataset(kind, dir) => {
                super::load(*kind, super::Split::Test, dir.as_deref().or(data_dir))?
            }
        };
        conform(&set.limited(limit, seed)?, shape)
    }
}

impl std::str::FromStr for OodSetSpec {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        let (rest, group) = match text.rsplit_once('@') {
            Some((rest, "near")) => (rest, Some(OodGroup::Near)),
            Some((rest, "far")) => (rest, Some(OodGroup::Far)),
            Some((_, other)) => {
                return Err(format!(
                    "unknown OOD group `{other}` in `{text}` (near or far)"
                ));
            }
            None => (text, None),
        };
        let (name, path) = match rest.split_once('=') {
            Some((name, path)) if !path.is_empty() => (name, Some(PathBuf::from(path))),
            Some(_) => return Err(format!("`{text}`: the path after `=` is empty")),
            None => (rest, None),
        };
        let source = match name {
            "letters-test" => OodSource::LettersTest,
            "sklearn-digits" => OodSource::SklearnDigits(path),
            "uniform-noise" => OodSource::UniformNoise,
            "gaussian-noise" => OodSource::GaussianNoise,
            other => match other.parse::<DatasetKind>() {
                Ok(kind) => OodSource::Dataset(kind, path),
                Err(_) => {
                    return Err(format!(
                        "unknown OOD set `{other}` (letters-test, sklearn-digits, uniform-noise, \
                         gaussian-noise, or a data set: mnist, cifar10, cifar100, image-folder=DIR)"
                    ));
                }
            },
        };
        let noise = matches!(source, OodSource::UniformNoise | OodSource::GaussianNoise);
        let group = group.unwrap_or(if noise { OodGroup::Far } else { OodGroup::Near });
        Ok(Self { source, group })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One single-channel `side x side` image of `pixels`.
    fn one_image(pixels: Vec<f32>, side: usize) -> ImageSet {
        ImageSet::new(
            pixels,
            vec![0],
            ImageShape::new(1, side, side),
            vec!["a".into()],
            "t",
        )
        .unwrap()
    }

    #[test]
    fn noise_sets_are_seeded_in_range_and_shaped() {
        let shape = ImageShape::new(1, 4, 4);
        let u = uniform_noise(50, shape, 1).unwrap();
        let g = gaussian_noise(50, shape, 1).unwrap();
        assert_eq!((u.len(), g.len()), (50, 50));
        let all: Vec<f32> = (0..50).flat_map(|i| g.image(i).to_vec()).collect();
        assert!(all.iter().all(|v| (0.0..=1.0).contains(v)));
        let mean = all.iter().sum::<f32>() / all.len() as f32;
        assert!((mean - 0.5).abs() < 0.03, "gaussian mean {mean}");
        assert_eq!(uniform_noise(50, shape, 1).unwrap().image(7), u.image(7));
        assert_ne!(uniform_noise(50, shape, 2).unwrap().image(7), u.image(7));
    }

    #[test]
    fn sklearn_digits_parse_and_bad_rows_are_errors() {
        let mut row: Vec<String> = (0..64).map(|i| (i % 17).to_string()).collect();
        row.push("7".into());
        let text = format!("{}\n{}\n", row.join(","), row.join(","));
        let set = parse_sklearn_digits(text.as_bytes(), Path::new("t.csv")).unwrap();
        assert_eq!((set.len(), set.label(1)), (2, 7));
        assert_eq!(set.image(0)[16], 16.0 / 16.0);
        assert!(parse_sklearn_digits(b"1,2,3\n", Path::new("t")).is_err());
        let mut bad = row.clone();
        bad[3] = "17".into();
        assert!(parse_sklearn_digits(bad.join(",").as_bytes(), Path::new("t")).is_err());
        assert!(parse_sklearn_digits(b"", Path::new("t")).is_err());
        // The real file, where scikit-learn is installed.
        let real = std::process::Command::new("python3")
            .args(["-c", "import sklearn, os; print(os.path.join(os.path.dirname(sklearn.__file__), 'datasets', 'data', 'digits.csv.gz'))"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| std::path::PathBuf::from(s.trim()));
        if let Some(path) = real.filter(|p| p.exists()) {
            let set = parse_sklearn_digits(&std::fs::read(&path).unwrap(), &path).unwrap();
            assert_eq!(set.len(), 1797);
        }
    }

    #[test]
    fn bilinear_upsampling_keeps_constants_and_interpolates() {
        let flat = one_image(vec![0.25; 4], 2);
        let up = upsample(&flat, 6).unwrap();
        assert!(up.image(0).iter().all(|&v| (v - 0.25).abs() < 1e-6));
        // A 1x2 ramp 0 -> 1 upsampled to 4 wide: (0, 0.25, 0.75, 1) with align_corners=False.
        let ramp = one_image(vec![0.0, 1.0, 0.0, 1.0], 2);
        let up = upsample(&ramp, 4).unwrap();
        let row: Vec<f32> = up.image(0)[..4].to_vec();
        for (g, w) in row.iter().zip([0.0, 0.25, 0.75, 1.0]) {
            assert!((g - w).abs() < 1e-6, "{row:?}");
        }
    }

    #[test]
    fn conform_resizes_and_converts_channels() {
        let grey = one_image(vec![0.0, 1.0, 0.0, 1.0], 2);
        let rgb = conform(&grey, ImageShape::new(3, 2, 4)).unwrap();
        assert_eq!(rgb.shape(), ImageShape::new(3, 2, 4));
        let row = [0.0, 0.25, 0.75, 1.0];
        for c in 0..3 {
            for (g, w) in rgb.image(0)[c * 8..c * 8 + 4].iter().zip(row) {
                assert!((g - w).abs() < 1e-6, "{:?}", rgb.image(0));
            }
        }
        let back = conform(&rgb, ImageShape::new(1, 2, 4)).unwrap();
        assert_eq!(back.image(0), &rgb.image(0)[..8]);
        let two = ImageSet::new(
            vec![0.0; 8],
            vec![0],
            ImageShape::new(2, 2, 2),
            vec!["a".into()],
            "t",
        )
        .unwrap();
        assert!(conform(&two, ImageShape::new(3, 2, 2)).is_err());
    }

    #[test]
    fn ood_set_specs_parse_with_paths_and_groups() {
        let spec: OodSetSpec = "letters-test".parse().unwrap();
        assert_eq!(
            (spec.source, spec.group),
            (OodSource::LettersTest, OodGroup::Near)
        );
        let spec: OodSetSpec = "gaussian-noise".parse().unwrap();
        assert_eq!(spec.group, OodGroup::Far);
        let spec: OodSetSpec = "mnist@far".parse().unwrap();
        assert_eq!(spec.source, OodSource::Dataset(DatasetKind::Mnist, None));
        assert_eq!(
            (spec.group, spec.name()),
            (OodGroup::Far, "mnist".to_string())
        );
        let spec: OodSetSpec = "image-folder=/data/textures@far".parse().unwrap();
        assert_eq!(
            spec.source,
            OodSource::Dataset(DatasetKind::ImageFolder, Some("/data/textures".into()))
        );
        let spec: OodSetSpec = "sklearn-digits=/x/digits.csv.gz".parse().unwrap();
        assert_eq!(
            spec.source,
            OodSource::SklearnDigits(Some("/x/digits.csv.gz".into()))
        );
        for bad in ["pictures", "mnist@middle", "image-folder="] {
            assert!(bad.parse::<OodSetSpec>().is_err(), "{bad}");
        }
        // Noise sets come out in the asked shape and number.
        let spec: OodSetSpec = "uniform-noise".parse().unwrap();
        let set = spec
            .load(
                ImageShape::new(3, 5, 5),
                Some(7),
                0,
                Path::new("/nonexistent"),
                None,
            )
            .unwrap();
        assert_eq!((set.len(), set.shape()), (7, ImageShape::new(3, 5, 5)));
    }

    #[test]
    fn image_folders_and_cifar_files_serve_as_ood_sets_in_any_shape() {
        use image::{DynamicImage, ImageFormat, RgbImage};
        let dir = crate::data::test_util::ScratchDir::new("ood-sets-user-data");
        let mut png = std::io::Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(RgbImage::from_pixel(6, 6, image::Rgb([255, 0, 0])))
            .write_to(&mut png, ImageFormat::Png)
            .unwrap();
        for name in ["a.png", "b.png", "c.png"] {
            dir.write(&format!("folder/test/textures/{name}"), png.get_ref());
        }
        let mut record = vec![3u8];
        record.extend(std::iter::repeat_n(255u8, 1024));
        record.extend(std::iter::repeat_n(0u8, 2048));
        dir.write("cifar/test_batch.bin", &[record.clone(), record].concat());

        let mnist_like = ImageShape::new(1, 28, 28);
        let folder = format!("image-folder={}@far", dir.path().join("folder").display());
        let spec: OodSetSpec = folder.parse().unwrap();
        let set = spec
            .load(mnist_like, Some(2), 0, Path::new("/nonexistent"), None)
            .unwrap();
        assert_eq!(
            (set.len(), set.shape(), spec.group),
            (2, mnist_like, OodGroup::Far)
        );
        // Pure red averaged over three channels into grey.
        assert!(set.image(0).iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-6));

        let cifar = format!("cifar10={}", dir.path().join("cifar").display());
        let spec: OodSetSpec = cifar.parse().unwrap();
        let set = spec
            .load(mnist_like, None, 0, Path::new("/nonexistent"), None)
            .unwrap();
        assert_eq!((set.len(), set.shape()), (2, mnist_like));
        let rgb = spec
            .load(
                ImageShape::new(3, 32, 32),
                None,
                0,
                Path::new("/nonexistent"),
                None,
            )
            .unwrap();
        assert_eq!(rgb.image(1)[0], 1.0);
        assert_eq!(rgb.image(1)[1024], 0.0);
    }
}
