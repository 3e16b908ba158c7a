//! `vigil detect` end to end on tiny data: detectors fitted on trusted folders, thresholds set on
//! held-back trusted samples only, every input scored and flagged, the truth measured when known.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-detect-{name}-{}", std::process::id()));
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

/// Anomalous inputs: the class bars plus a bright 6x6 patch in a corner (a BadNets-like trigger).
fn write_patched_folder(root: &Path, per_class: usize, salt: u32) {
    write_image_folder(root, per_class, salt);
    for entry in std::fs::read_dir(root).unwrap() {
        for file in std::fs::read_dir(entry.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let mut image = image::open(&path).unwrap().to_luma8();
            for y in 20..26 {
                for x in 20..26 {
                    image.put_pixel(x, y, image::Luma([255]));
                }
            }
            image.save(&path).unwrap();
        }
    }
}

#[test]
fn detect_fits_on_trusted_data_scores_every_input_and_measures_the_truth() {
    let dir = temp_dir("e2e");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_idx_dataset(&data, "train", 300, 1);
    write_idx_dataset(&data, "t10k", 50, 2);
    let model = dir.join("model");
    train(&data, &model, "1");
    let (trusted, sampling, test) = (dir.join("trusted"), dir.join("sampling"), dir.join("test"));
    write_image_folder(&trusted, 8, 10);
    write_image_folder(&sampling, 2, 11);
    write_image_folder(&test, 2, 12);
    let (patched, other) = (dir.join("patched"), dir.join("patched-2"));
    write_patched_folder(&patched, 2, 13);
    write_patched_folder(&other, 1, 14);

    let detect = |anomalous: &Path, out: &Path| {
        let model = model.join("model.safetensors");
        let run = vigil(&[
            "detect",
            "--model",
            model.to_str().unwrap(),
            "--trusted",
            trusted.to_str().unwrap(),
            "--sampling",
            sampling.to_str().unwrap(),
            "--test",
            test.to_str().unwrap(),
            "--anomalous",
            anomalous.to_str().unwrap(),
            "--detectors",
            "mahalanobis,msp,knn",
            "--batch-size",
            "16",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert!(run.status.success(), "{}", stderr(&run));
        serde_json::from_slice::<serde_json::Value>(&run.stdout).unwrap()
    };
    let out = dir.join("detect");
    let report = detect(&patched, &out);
    // 20 clean and 20 patched inputs; 80 trusted, a quarter (2 per class) held back.
    assert_eq!(report["inputs"], 40);
    assert_eq!(report["anomalous"], 20);
    let detectors = report["detectors"].as_array().unwrap();
    let names: Vec<&str> = detectors
        .iter()
        .map(|d| d["detector"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mahalanobis", "msp", "knn"]);
    for d in detectors {
        assert_eq!(
            (d["fitted_on"].as_u64(), d["held_out"].as_u64()),
            (Some(60), Some(20))
        );
        let column = &d["columns"][0];
        let flags = column["flags"].as_array().unwrap();
        let flagged = flags.iter().filter(|f| f.as_bool().unwrap()).count();
        assert_eq!(column["flagged"].as_u64(), Some(flagged as u64));
        let auroc = column["evaluation"]["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{auroc}");
    }
    // A bright patch is far from every trusted feature: Mahalanobis sees it.
    let mahalanobis = detectors[0]["columns"][0]["evaluation"]["auroc"]
        .as_f64()
        .unwrap();
    assert!(mahalanobis > 0.9, "Mahalanobis AUROC {mahalanobis}");

    // scores.csv: a header naming every column and one row per input, its file first.
    let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "index,path,is_anomalous,mahalanobis.mahalanobis,mahalanobis.mahalanobis.flagged,msp.msp,msp.msp.flagged,knn.knn,knn.knn.flagged"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 40);
    assert!(
        rows[0].starts_with("0,") && rows[0].contains(".png"),
        "{}",
        rows[0]
    );
    assert!(out.join("report.json").exists());

    // Thresholds come from the trusted data alone: other inputs, the same thresholds.
    let again = detect(&other, &dir.join("detect-2"));
    for (a, b) in detectors.iter().zip(again["detectors"].as_array().unwrap()) {
        assert_eq!(a["columns"][0]["threshold"], b["columns"][0]["threshold"]);
    }
    // An unknown detector is refused by name before any work, listing the known ones.
    let bad = vigil(&[
        "detect",
        "--record",
        "nowhere",
        "--detectors",
        "nope",
        "--out",
        "x",
    ]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("unknown detector `nope`"),
        "{}",
        stderr(&bad)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
