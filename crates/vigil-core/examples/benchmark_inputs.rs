//! The inputs `vigil benchmark backdoor` scores for an attack record, in its order, with what
//! the evaluation knows about each: whether it is triggered and its true class (a triggered
//! input's is its clean original's). A diagnostic for joining a benchmark part's per-input
//! scores with classes, not part of vigil's API.
//!
//!     cargo run --release -p vigil-core --example benchmark_inputs -- runs/attacks/badnets \
//!         > inputs.csv
//!
//! Uses the benchmark's default split (100 per class for trusted, sampling and test, seed 0).

use std::path::PathBuf;

use vigil_core::attack::backdoor::record::read_backdoor_test;
use vigil_core::device::default_device;
use vigil_core::madfa::{SplitSizes, record_task};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let record: PathBuf = std::env::args()
        .nth(1)
        .ok_or("usage: benchmark_inputs RECORD_DIR")?
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
    let triggered = read_backdoor_test(&record)?;
    println!("position,is_triggered,true_class,target_or_label");
    for (i, (&anomalous, &id)) in truth.iter().zip(&loaded.task.test_ids).enumerate() {
        let label = loaded.task.test.label(i);
        // A triggered input's id is its clean original's index in the test set.
        let true_class = if anomalous {
            let id = usize::try_from(id)?;
            let position = triggered
                .original_indices
                .iter()
                .position(|&o| o == id)
                .ok_or("a triggered input outside the record's triggered set")?;
            triggered.original_labels[position]
        } else {
            label
        };
        println!("{i},{},{true_class},{label}", u8::from(anomalous));
    }
    Ok(())
}
