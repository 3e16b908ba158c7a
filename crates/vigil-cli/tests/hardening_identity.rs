//! Run identity (issue 24): an output folder's reusable state (chain checkpoints, calibration,
//! task files, traces) is reused only by a run of the same model, data and settings; any other
//! run is refused before it writes a byte, and a resumed run says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-identity-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Fashion-MNIST-format IDX split: class k is a bright bar at row 2 + 2k plus noise.
fn write_idx_dataset(dir: &Path, prefix: &str, n: usize, salt: u32) {
    let mut images = vec![0, 0, 8, 3];
    for v in [n as u32, 28, 28] {
        images.extend_from_slice(&v.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&(n as u32).to_be_bytes());
    let mut state = 0x1234_5678u32 ^ salt;
    for i in 0..n {
        let class = (i % 10) as u8;
        labels.push(class);
        for r in 0..28 {
            for _ in 0..28 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let noise = (state % 60) as u8;
                let bar = if r == 2 + 2 * class as usize { 190 } else { 0 };
                images.push(bar + noise);
            }
        }
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// Fashion-MNIST's class names as folder names (`T-shirt/top` cannot be one).
const CLASS_FOLDERS: [&str; 10] = [
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

/// An image folder of `per_class` 28x28 grayscale PNGs per class, drawn as the IDX data.
fn write_image_folder(root: &Path, per_class: usize, salt: u32) {
    let mut state = 0x9e37_79b9u32 ^ salt;
    for (class, name) in CLASS_FOLDERS.iter().enumerate() {
        let folder = root.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..per_class {
            let pixels: Vec<u8> = (0..28 * 28)
                .map(|p| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let bar = if p / 28 == 2 + 2 * class { 190 } else { 0 };
                    bar + (state % 60) as u8
                })
                .collect();
            image::GrayImage::from_raw(28, 28, pixels)
                .unwrap()
                .save(folder.join(format!("{i}.png")))
                .unwrap();
        }
    }
}

fn vigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("vigil runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `dir` with its bytes, to show that a refused run changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn train(data: &Path, out: &Path, seed: &str) {
    let run = vigil(&[
        "train",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--width",
        "4",
        "--lr",
        "0.05",
        "--seed",
        seed,
    ]);
    assert!(run.status.success(), "train failed: {}", stderr(&run));
}

#[test]
fn sample_and_calibrate_reuse_only_their_own_run_and_refusals_write_nothing() {
    let dir = temp_dir("sample");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_idx_dataset(&data, "train", 200, 1);
    write_idx_dataset(&data, "t10k", 50, 2);
    let (model_a, model_b) = (dir.join("a"), dir.join("b"));
    train(&data, &model_a, "1");
    train(&data, &model_b, "2");
    let (trusted, sampling, test, other_trusted) = (
        dir.join("trusted"),
        dir.join("sampling"),
        dir.join("test"),
        dir.join("trusted-2"),
    );
    write_image_folder(&trusted, 3, 10);
    write_image_folder(&sampling, 3, 11);
    write_image_folder(&test, 2, 12);
    write_image_folder(&other_trusted, 3, 13);

    let out = dir.join("madfa");
    let sample = |model: &Path, trusted: &Path, extra: &[&str]| {
        let model = model.join("model.safetensors");
        let mut args = vec![
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--trusted",
            trusted.to_str().unwrap(),
            "--sampling",
            sampling.to_str().unwrap(),
            "--test",
            test.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--chains",
            "1",
            "--batch-size",
            "10",
        ];
        args.extend_from_slice(extra);
        vigil(&args)
    };
    let short = [
        "--draws",
        "3",
        "--burn-in",
        "1",
        "--thinning",
        "1",
        "--lr",
        "1e-5",
    ];

    // A folder holding chain checkpoints of an earlier vigil (no identity) is refused, as
    // nothing says whose chains they are.
    std::fs::create_dir_all(out.join("resume/chain-0")).unwrap();
    let old = sample(&model_a, &trusted, &short);
    assert!(!old.status.success());
    assert!(
        stderr(&old).contains("already holds resume"),
        "{}",
        stderr(&old)
    );
    assert!(!out.join("task.json").exists());
    std::fs::remove_dir_all(&out).unwrap();

    let first = sample(&model_a, &trusted, &short);
    assert!(first.status.success(), "{}", stderr(&first));
    let finished = snapshot(&out);
    assert!(finished.keys().any(|p| p.ends_with("traces.npz")));

    // Another model into the same folder: refused, naming the weights, and nothing changed
    // (the old chain was once reused and reported "done").
    let other_model = sample(&model_b, &trusted, &short);
    assert!(!other_model.status.success());
    let err = stderr(&other_model);
    assert!(
        err.contains("another model (weights of `model` differ)"),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(snapshot(&out), finished, "a refused run changed the folder");

    // Other data (another trusted set), and other settings: the same.
    let other_data = sample(&model_a, &other_trusted, &short);
    assert!(!other_data.status.success());
    assert!(
        stderr(&other_data).contains("other data (`trusted` differ)"),
        "{}",
        stderr(&other_data)
    );
    let mut reseeded = short.to_vec();
    reseeded.extend_from_slice(&["--seed", "9"]);
    let other_settings = sample(&model_a, &trusted, &reseeded);
    assert!(!other_settings.status.success());
    assert!(
        stderr(&other_settings).contains("chain.seed: 0 here, 9 asked"),
        "{}",
        stderr(&other_settings)
    );
    assert_eq!(snapshot(&out), finished, "a refused run changed the folder");

    // The same run again reuses the folder and says so.
    let again = sample(&model_a, &trusted, &short);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("reusing"), "{}", stderr(&again));

    // --calibrate reuses calibration.json only for its own model: another model is refused
    // and the calibration file is left as it was.
    let calibrated = dir.join("calibrated");
    let calibrate = |model: &Path| {
        let model = model.join("model.safetensors");
        vigil(&[
            "sample",
            "--calibrate",
            "--model",
            model.to_str().unwrap(),
            "--trusted",
            trusted.to_str().unwrap(),
            "--sampling",
            sampling.to_str().unwrap(),
            "--test",
            test.to_str().unwrap(),
            "--out",
            calibrated.to_str().unwrap(),
            "--batch-size",
            "10",
            "--probe-draws",
            "4",
            "--probe-burn-in",
            "2",
            "--min-draws",
            "4",
            "--max-draws",
            "4",
        ])
    };
    let run = calibrate(&model_a);
    assert!(run.status.success(), "{}", stderr(&run));
    let calibration = std::fs::read(calibrated.join("calibration.json")).unwrap();
    let refused = calibrate(&model_b);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("another model"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        std::fs::read(calibrated.join("calibration.json")).unwrap(),
        calibration
    );
    let again = calibrate(&model_a);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("reusing the calibration"),
        "{}",
        stderr(&again)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
