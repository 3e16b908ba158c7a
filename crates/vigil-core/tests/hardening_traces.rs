//! Issue 24, bad numbers in runs: what a run would store is checked before it runs. A chain
//! index the trace file's int64 `chain_indices` cannot hold is refused (it used to be stored
//! as -1), and so is a run whose traces cannot fit in memory (it used to try to allocate them).

mod common;

use vigil_core::device::default_device;
use vigil_core::madfa::{
    ChainConfig, MadError, Quiet, SgldConfig, TraceForm, check_run, run_chains, user_task,
};
use vigil_core::models::{Architecture, Classifier, ModelSpec};

use common::band_dataset as dataset;

fn tiny_cnn() -> Classifier {
    let spec = ModelSpec {
        architecture: Architecture::SmallCnn {
            width: 4,
            hidden: 8,
        },
        input_shape: [1, 8, 8],
        class_names: vec!["a".into(), "b".into(), "c".into()],
        normalization: None,
    };
    Classifier::new(spec, &default_device()).unwrap()
}

fn config(draws: usize) -> ChainConfig {
    ChainConfig {
        sgld: SgldConfig {
            lr: 1e-4,
            n_beta: 10.0,
            gamma: 100.0,
            batch_size: 8,
            ..SgldConfig::reference()
        },
        draws,
        burn_in: 0,
        thinning: 1,
        ..ChainConfig::reference()
    }
}

#[test]
fn a_chain_index_beyond_int64_is_refused_before_any_chain_runs() {
    let model = tiny_cnn();
    let task = user_task(dataset(6, 1), dataset(8, 2), dataset(4, 3), None).unwrap();
    let beyond = i64::MAX as usize + 1;
    let err = run_chains(
        &model,
        &task,
        &config(3),
        &[beyond],
        serde_json::json!({}),
        None,
        &default_device(),
        &mut Quiet,
        None,
    )
    .err()
    .unwrap();
    assert!(matches!(err, MadError::Traces(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("chain index 9223372036854775808 does not fit"),
        "{err}"
    );
    assert_eq!(
        check_run(&model, &task, &config(3), &[0, 4]).unwrap(),
        [0, 4]
    );
}

#[test]
fn traces_that_cannot_fit_in_memory_are_refused_with_the_size_needed() {
    let model = tiny_cnn();
    let task = user_task(dataset(6, 1), dataset(8, 2), dataset(4, 3), None).unwrap();
    // `vigil sample --draws 99999999999`: 10 samples x 1e11 draws x 4 bytes x 2 = 8 TB.
    let huge = config(99_999_999_999);
    let err = run_chains(
        &model,
        &task,
        &huge,
        &[0],
        serde_json::json!({}),
        None,
        &default_device(),
        &mut Quiet,
        None,
    )
    .err()
    .unwrap();
    assert!(matches!(err, MadError::Memory(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(
            "the loss traces of 1 chain(s) x 99999999999 draws x 10 samples would need 8.0 TB"
        ),
        "{text}"
    );
    // Linearised chains count their displacements too; sizes that overflow are refused, not
    // wrapped around.
    let mut linearised = config(usize::MAX / 2);
    linearised.traces = TraceForm::Linearised;
    let err = check_run(&model, &task, &linearised, &[0, 1]).unwrap_err();
    assert!(err.to_string().contains("displacements"), "{err}");
    assert!(check_run(&model, &task, &config(50), &[0, 1]).is_ok());
    // A step count that would wrap is refused by the settings' own check.
    let mut wrapping = config(usize::MAX / 2);
    wrapping.thinning = 4;
    assert!(wrapping.validate().is_err());
}

#[test]
fn calibration_probes_and_recommendations_beyond_memory_are_refused_before_calibrating() {
    let model = tiny_cnn();
    // Two trusted samples in each of three classes: a set calibration can split.
    let task = user_task(dataset(6, 1), dataset(8, 2), dataset(4, 3), None).unwrap();
    let base = vigil_core::madfa::CalibrationConfig::defaults(config(3));
    base.check_run(&model, &task, &[0, 1]).unwrap();
    // `--probe-draws 99999999999`: the probes alone would need terabytes.
    let probes = vigil_core::madfa::CalibrationConfig {
        probe_draws: 99_999_999_999,
        ..base.clone()
    };
    let err = probes.check_run(&model, &task, &[0, 1]).unwrap_err();
    assert!(matches!(err, MadError::Memory(_)), "{err:?}");
    // `--max-draws 99999999999`: the longest run calibration could recommend.
    let recommended = vigil_core::madfa::CalibrationConfig {
        max_draws: 99_999_999_999,
        ..base
    };
    let err = recommended.check_run(&model, &task, &[0, 1]).unwrap_err();
    assert!(matches!(err, MadError::Memory(_)), "{err:?}");
}
