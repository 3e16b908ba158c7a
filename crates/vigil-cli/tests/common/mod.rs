//! Helpers shared by the CLI integration tests: temporary folders, running the `vigil` binary,
//! and the tiny generated datasets (Fashion-MNIST-format IDX files and PNG class folders whose
//! class k is a bright bar at row 2 + 2k plus deterministic noise, so a small CNN learns it in
//! an epoch or two).

// Every file under tests/ is its own crate and compiles this module again; a helper that one of
// them does not use would be dead code there.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh, empty temporary folder `<prefix>-<name>-<pid>` for one test (each test file has its
/// own prefix, so tests of different files running at once never share a folder).
pub fn temp_dir(prefix: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `tests/fixtures/<kind>/<name>` of the workspace.
pub fn fixture(kind: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(kind)
        .join(name)
}

/// The `vigil` binary with `args`, on two rayon threads, not yet started.
pub fn vigil_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vigil"));
    command.args(args).env("RAYON_NUM_THREADS", "2");
    command
}

/// Runs `vigil` with `args` to the end.
pub fn vigil(args: &[&str]) -> Output {
    vigil_command(args).output().expect("vigil runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `vigil train --dataset DATASET` of a width-4 small CNN (batch 32, lr 0.05) on `data` into
/// `out` for `epochs` epochs, then `extra` flags; it must succeed.
pub fn train(dataset: &str, data: &Path, out: &Path, epochs: u32, extra: &[&str]) {
    let epochs = epochs.to_string();
    let mut args = vec![
        "train",
        "--dataset",
        dataset,
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        &epochs,
        "--batch-size",
        "32",
        "--width",
        "4",
        "--lr",
        "0.05",
    ];
    args.extend_from_slice(extra);
    let run = vigil(&args);
    assert!(run.status.success(), "train failed: {}", stderr(&run));
}

/// `--model MODEL --trusted T --sampling S --test T`: a model file and the three image folders
/// that `sample`, `calibrate` and `detect` take.
pub fn model_and_sets<'a>(
    model: &'a Path,
    [trusted, sampling, test]: [&'a Path; 3],
) -> [&'a str; 8] {
    [
        "--model",
        model.to_str().unwrap(),
        "--trusted",
        trusted.to_str().unwrap(),
        "--sampling",
        sampling.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
    ]
}

/// Sampler flags for one very short chain of `draws` draws (burn-in 1, every draw kept, a small
/// step): quick, for tests of what a run checks rather than of its scores.
pub fn short_chain(draws: &str) -> [&str; 10] {
    [
        "--chains",
        "1",
        "--draws",
        draws,
        "--burn-in",
        "1",
        "--thinning",
        "1",
        "--lr",
        "1e-5",
    ]
}

/// Marsaglia's xorshift32: the noise of the generated images.
pub struct Xorshift(u32);

impl Xorshift {
    pub fn new(seed: u32) -> Self {
        Self(seed)
    }

    /// The next state, modulo `bound` (at most 256).
    pub fn below(&mut self, bound: u32) -> u8 {
        let state = &mut self.0;
        *state ^= *state << 13;
        *state ^= *state >> 17;
        *state ^= *state << 5;
        (*state % bound) as u8
    }
}

/// One 28x28 grayscale image of class `class`: 190 on row 2 + 2 * class, 0 elsewhere, plus
/// `noise(row, column)`, called pixel by pixel in row-major order.
pub fn bar_image(class: usize, mut noise: impl FnMut(usize, usize) -> u8) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(28 * 28);
    for r in 0..28 {
        for c in 0..28 {
            let bar = if r == 2 + 2 * class { 190 } else { 0 };
            pixels.push(bar + noise(r, c));
        }
    }
    pixels
}

/// 28x28 grayscale images and their labels.
pub struct Images {
    pub pixels: Vec<Vec<u8>>,
    pub labels: Vec<u8>,
}

impl Images {
    /// `n` bar images, image i of class i % 10, with `noise(i, row, column)` added.
    pub fn bars(n: usize, mut noise: impl FnMut(usize, usize, usize) -> u8) -> Images {
        let mut set = Images {
            pixels: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
        };
        for i in 0..n {
            let class = i % 10;
            set.pixels.push(bar_image(class, |r, c| noise(i, r, c)));
            set.labels.push(class as u8);
        }
        set
    }
}

/// `n` bar images with xorshift noise below 60, one stream seeded by 0x1234_5678 ^ `salt`.
pub fn images(n: usize, salt: u32) -> Images {
    let mut noise = Xorshift::new(0x1234_5678 ^ salt);
    Images::bars(n, |_, _, _| noise.below(60))
}

/// Writes `set` as a Fashion-MNIST IDX split `<prefix>-{images-idx3,labels-idx1}-ubyte`.
pub fn write_idx(dir: &Path, prefix: &str, set: &Images) {
    let n = set.labels.len() as u32;
    let mut images = vec![0, 0, 8, 3];
    for v in [n, 28, 28] {
        images.extend_from_slice(&v.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&n.to_be_bytes());
    for (pixels, &label) in set.pixels.iter().zip(&set.labels) {
        images.extend_from_slice(pixels);
        labels.push(label);
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// Writes a learnable Fashion-MNIST-format split of `n` images, [`images`]`(n, salt)`.
pub fn write_idx_dataset(dir: &Path, prefix: &str, n: usize, salt: u32) {
    write_idx(dir, prefix, &images(n, salt));
}

/// `dir/data` holding a learnable Fashion-MNIST-format train split of `n_train` images and a
/// test split of `n_test` (salts `salt` and `salt + 1`).
pub fn idx_data(dir: &Path, n_train: usize, n_test: usize, salt: u32) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_idx_dataset(&data, "train", n_train, salt);
    write_idx_dataset(&data, "t10k", n_test, salt + 1);
    data
}

/// Fashion-MNIST's class names as folder names (`T-shirt/top` cannot be one), in the model's
/// order.
pub const CLASS_FOLDERS: [&str; 10] = [
    "T-shirt_top",
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

/// Saves a 28x28 image of `gray` values as a grayscale PNG or, with `rgb`, as an RGB PNG whose
/// three channels are that gray.
pub fn save_png(path: &Path, gray: &[u8], rgb: bool) {
    if rgb {
        let pixels = gray.iter().flat_map(|&v| [v, v, v]).collect();
        image::RgbImage::from_raw(28, 28, pixels)
            .unwrap()
            .save(path)
            .unwrap();
    } else {
        image::GrayImage::from_raw(28, 28, gray.to_vec())
            .unwrap()
            .save(path)
            .unwrap();
    }
}

/// `root/<folder>/<i>.png` for each `(class, folder)` of `classes`: `per_class` grayscale bar
/// images of that class with xorshift noise below 60, one stream seeded by 0x9e37_79b9 ^ `salt`.
pub fn write_class_folders<S: AsRef<str>>(
    root: &Path,
    classes: impl IntoIterator<Item = (usize, S)>,
    per_class: usize,
    salt: u32,
) {
    let mut noise = Xorshift::new(0x9e37_79b9 ^ salt);
    for (class, name) in classes {
        let folder = root.join(name.as_ref());
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..per_class {
            let pixels = bar_image(class, |_, _| noise.below(60));
            save_png(&folder.join(format!("{i}.png")), &pixels, false);
        }
    }
}

/// An image folder of `per_class` PNGs in each of the [`CLASS_FOLDERS`], drawn as the IDX data.
pub fn write_image_folder(root: &Path, per_class: usize, salt: u32) {
    write_class_folders(root, CLASS_FOLDERS.into_iter().enumerate(), per_class, salt);
}
