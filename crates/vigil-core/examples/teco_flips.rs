//! Why TeCo ranks an attack record's triggered inputs: per corruption, the distribution of the
//! first flipping severity (1-5, 6 = never) on the clean and on the triggered inputs of the
//! record's split, and the mean TeCo score of each. A diagnostic, not part of vigil's API.
//!
//!     cargo run --release -p vigil-core --example teco_flips -- runs/attacks/badnets

use std::path::PathBuf;

use vigil_core::detect::teco::{FittedTeco, TecoSettings, population_std};
use vigil_core::device::default_device;
use vigil_core::madfa::{SplitSizes, record_task};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let record: PathBuf = std::env::args()
        .nth(1)
        .ok_or("usage: teco_flips RECORD_DIR")?
        .into();
    let device = default_device();
    let sizes = SplitSizes {
        trusted: 100,
        sampling: 100,
        test: 100,
    };
    let loaded = record_task(&record, None, sizes, 0, 64, &device)?;
    let truth = loaded
        .task
        .test_is_anomalous
        .clone()
        .ok_or("the record has no ground truth")?;
    let settings = TecoSettings::default();
    let teco = FittedTeco::new(settings.clone(), 0, 64);
    let flips = teco.flip_severities(&loaded.classifier, &loaded.task.test, &device)?;
    println!("record {} ({})", record.display(), loaded.manifest.attack);
    println!(
        "corruption: share of inputs whose prediction first flips at severity 1..5, 6 = never"
    );
    for (ci, c) in settings.corruptions.iter().enumerate() {
        for (label, anomalous) in [("clean", false), ("triggered", true)] {
            let mut counts = [0usize; 7];
            let mut n = 0;
            for (f, &a) in flips.iter().zip(&truth) {
                if a == anomalous {
                    counts[f[ci]] += 1;
                    n += 1;
                }
            }
            let shares: Vec<String> = counts[1..]
                .iter()
                .map(|&k| format!("{:.2}", k as f64 / n as f64))
                .collect();
            println!("{:>18} {label:>9}: {}", c.name(), shares.join(" "));
        }
    }
    for (label, anomalous) in [("clean", false), ("triggered", true)] {
        let scores: Vec<f64> = flips
            .iter()
            .zip(&truth)
            .filter(|&(_, &a)| a == anomalous)
            .map(|(f, _)| population_std(f))
            .collect();
        let never: usize = flips
            .iter()
            .zip(&truth)
            .filter(|&(f, &a)| a == anomalous && f.iter().all(|&s| s == 6))
            .count();
        println!(
            "{label}: mean TeCo score {:.3}; {never} of {} never flip under any corruption",
            scores.iter().sum::<f64>() / scores.len() as f64,
            scores.len()
        );
    }
    Ok(())
}
