//! Small out-of-distribution test sets that need no download: uniform and Gaussian noise images,
//! and scikit-learn's bundled 8x8 digits (`sklearn/datasets/data/digits.csv.gz`, from PyPI)
//! upsampled to the ID images' size.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use super::dataset::{ImageSet, ImageShape, Label};
use super::error::{DataError, Result};
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

/// Every image of a single-channel `set` resized to `side x side` by bilinear interpolation
/// (pixel centres aligned, as `align_corners=False`).
pub fn upsample(set: &ImageSet, side: usize) -> Result<ImageSet> {
    let s = set.shape();
    let (h, w) = (s.height, s.width);
    let out_shape = ImageShape::new(s.channels, side, side);
    let mut pixels = Vec::with_capacity(set.len() * out_shape.num_values());
    let coord = |o: usize, n: usize| -> (usize, usize, f32) {
        let x = ((o as f32 + 0.5) * n as f32 / side as f32 - 0.5).clamp(0.0, (n - 1) as f32);
        let x0 = x.floor() as usize;
        (x0, (x0 + 1).min(n - 1), x - x0 as f32)
    };
    for i in 0..set.len() {
        let image = set.image(i);
        for c in 0..s.channels {
            let plane = &image[c * h * w..(c + 1) * h * w];
            for oy in 0..side {
                let (y0, y1, fy) = coord(oy, h);
                for ox in 0..side {
                    let (x0, x1, fx) = coord(ox, w);
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let flat = ImageSet::new(
            vec![0.25; 4],
            vec![0],
            ImageShape::new(1, 2, 2),
            vec!["a".into()],
            "t",
        )
        .unwrap();
        let up = upsample(&flat, 6).unwrap();
        assert!(up.image(0).iter().all(|&v| (v - 0.25).abs() < 1e-6));
        // A 1x2 ramp 0 -> 1 upsampled to 4 wide: (0, 0.25, 0.75, 1) with align_corners=False.
        let ramp = ImageSet::new(
            vec![0.0, 1.0, 0.0, 1.0],
            vec![0],
            ImageShape::new(1, 2, 2),
            vec!["a".into()],
            "t",
        )
        .unwrap();
        let up = upsample(&ramp, 4).unwrap();
        let row: Vec<f32> = up.image(0)[..4].to_vec();
        for (g, w) in row.iter().zip([0.0, 0.25, 0.75, 1.0]) {
            assert!((g - w).abs() < 1e-6, "{row:?}");
        }
    }
}
