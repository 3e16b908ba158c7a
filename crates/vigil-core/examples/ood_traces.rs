//! Why k-NN beats MAD-FA on OOD inputs (issue 27): the per-input view the OOD benchmark does
//! not keep. For one Fashion-MNIST model, the benchmark's data (600 ID test images, the rest of
//! the test split as MAD-FA's pool, 300 images of each default OOD set, 10,000 training images
//! for the fitted scores; seed 0), every OOD score of every input and MAD-FA's traces of every
//! input, written for `scripts/ood-traces-analysis.py`. A diagnostic, not part of vigil's API.
//!
//!     cargo run --release -p vigil-core --example ood_traces -- \
//!         runs/halo-ladder-reduced/std/best.safetensors runs/ood-traces/std [250 250]
//!
//! Writes `scores.csv` (set, index, predicted class, every OOD score, every MAD-FA column) and
//! `traces.npz` (MAD-FA's trace file: the ID test images as `test`, the OOD sets joined, in
//! order, as the anomalous inputs after them).

use std::io::Write;
use std::path::{Path, PathBuf};

use vigil_core::checkpoint::load_classifier;
use vigil_core::data::glyphs::SYSTEM_FONT_DIR;
use vigil_core::data::ood_sets::OodSetSpec;
use vigil_core::data::{DatasetKind, ImageSet, Split, load};
use vigil_core::detect::FitData;
use vigil_core::detect::madfa::{Madfa, MadfaSettings};
use vigil_core::device::default_device;
use vigil_core::madfa::{Quiet, anomaly_scores, coupling, run_chains, user_task};
use vigil_core::models::BnMode;
use vigil_core::ood::{ScoreKind, score_set};

const OOD_SETS: [&str; 5] = [
    "letters-test",
    "mnist",
    "sklearn-digits",
    "uniform-noise",
    "gaussian-noise",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model_path), Some(out)) = (args.first(), args.get(1)) else {
        return Err(
            "usage: ood_traces MODEL OUT_DIR [TRUSTED_PER_CLASS SAMPLING_PER_CLASS]".into(),
        );
    };
    let per_class = |i: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args.get(i).map(|s| s.parse()).transpose()?.unwrap_or(250))
    };
    let (trusted_per_class, sampling_per_class) = (per_class(2)?, per_class(3)?);
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let device = default_device();
    let model = load_classifier(Path::new(model_path), &device)?;
    let seed = 0;

    let test = load(DatasetKind::FashionMnist, Split::Test, None)?;
    let (keep, rest) = test.random_split(600, seed)?;
    let (id_test, pool) = (test.subset(&keep), test.subset(&rest));
    let id_fit =
        load(DatasetKind::FashionMnist, Split::Train, None)?.limited(Some(10_000), seed)?;
    let mut ood: Vec<(String, ImageSet)> = Vec::new();
    for name in OOD_SETS {
        let spec: OodSetSpec = name.parse()?;
        let images = spec.load(
            id_test.shape(),
            Some(300),
            seed,
            Path::new(SYSTEM_FONT_DIR),
            None,
        )?;
        ood.push((name.to_string(), images));
    }

    // Every post-hoc OOD score, as the benchmark fits and applies them.
    let mut columns: Vec<(String, Vec<f64>)> = Vec::new();
    for kind in ScoreKind::ALL {
        let mut score = kind.build(256);
        score.fit(&model, &id_fit, &device)?;
        let mut values = score_set(score.as_ref(), &model, &id_test, 256, &device)?;
        for (_, images) in &ood {
            values.extend(score_set(score.as_ref(), &model, images, 256, &device)?);
        }
        eprintln!("{}: scored", kind.name());
        columns.push((kind.name().to_string(), values));
    }

    // MAD-FA as the benchmark fits it, then one walk with the OOD sets as the anomalous inputs.
    let parts = pool.stratified_split(&[trusted_per_class, sampling_per_class], seed)?;
    let (trusted, sampling) = (pool.subset(&parts[0]), pool.subset(&parts[1]));
    let settings = MadfaSettings::default();
    let chains: Vec<usize> = (0..settings.chains).collect();
    let fitted = Madfa::new(settings)?.fit_madfa(&FitData {
        model: &model,
        trusted: &trusted,
        sampling: &sampling,
        batch_size: 256,
        seed,
        device: &device,
    })?;
    eprintln!("MAD-FA calibrated: {:?}", fitted.chain_config());
    let mut ood_joined = ood[0].1.with_placeholder_labels(trusted.class_names())?;
    for (_, images) in &ood[1..] {
        ood_joined.append(&images.with_placeholder_labels(trusted.class_names())?)?;
    }
    let task = user_task(trusted, sampling, id_test.clone(), Some(ood_joined))?;
    let (traces, _) = run_chains(
        &model,
        &task,
        fitted.chain_config(),
        &chains,
        serde_json::json!({ "diagnostic": "ood_traces", "model": model_path }),
        None,
        &device,
        &mut Quiet,
        None,
    )?
    .ok_or("the chains were stopped")?;
    traces.save(&out.join("traces.npz"))?;
    let madfa = anomaly_scores(&coupling(&traces, 0)?, &traces.trusted_labels);
    for (name, values) in madfa.named() {
        columns.push((format!("madfa-{name}"), values.to_vec()));
    }

    // The task's test set is the ID test images with the OOD sets joined after them.
    let predictions =
        vigil_core::inference::evaluate(&model, &task.test, None, 256, BnMode::Eval, &device)
            .predicted;
    let mut csv = std::io::BufWriter::new(std::fs::File::create(out.join("scores.csv"))?);
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    writeln!(csv, "set,index,predicted,{}", names.join(","))?;
    let mut row = 0;
    let sets = std::iter::once(("fashion-mnist", id_test.len()))
        .chain(ood.iter().map(|(n, s)| (n.as_str(), s.len())));
    for (set, len) in sets {
        for index in 0..len {
            let values: Vec<String> = columns.iter().map(|(_, v)| v[row].to_string()).collect();
            writeln!(
                csv,
                "{set},{index},{},{}",
                predictions[row],
                values.join(",")
            )?;
            row += 1;
        }
    }
    csv.flush()?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
