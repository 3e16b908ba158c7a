//! An interrupted run resumed from its checkpoint ends exactly where an uninterrupted run does.

mod common;

use burn::module::Module;
use vigil_core::device::default_device;
use vigil_core::models::{Architecture, Classifier, ModelSpec};
use vigil_core::optim::schedule::Schedule;
use vigil_core::optim::sgd::SgdConfig;
use vigil_core::optim::{ParamSlots, param_infos};
use vigil_core::progress::{Progress, Quiet};
use vigil_core::train::{self, TrainConfig, TrainEvent, TrainOutcome, TrainState};

use common::band_dataset as dataset;

fn config() -> TrainConfig {
    TrainConfig {
        dataset: "synthetic".into(),
        epochs: 2,
        batch_size: 16,
        eval_batch_size: 32,
        schedule: Schedule::one_cycle(0.1, 0.25),
        sgd: SgdConfig::default(),
        crop_padding: 1,
        horizontal_flip: true,
        seed: 9,
        train_limit: None,
        test_limit: None,
        robust: None,
        adamw: None,
        text: None,
    }
}

fn fresh(architecture: &Architecture) -> Classifier {
    let device = default_device().autodiff();
    device.seed(4);
    let spec = ModelSpec {
        architecture: architecture.clone(),
        input_shape: [1, 8, 8],
        class_names: vec!["a".into(), "b".into(), "c".into()],
        normalization: None,
    };
    Classifier::new(spec, &device).unwrap()
}

/// Stops the run after `after` batches in all.
struct StopAfter {
    after: usize,
    seen: usize,
}

impl Progress<TrainEvent<'_>> for StopAfter {
    fn report(&mut self, event: TrainEvent<'_>) {
        if let TrainEvent::BatchFinished { .. } = event {
            self.seen += 1;
        }
    }
    fn should_stop(&mut self) -> bool {
        self.seen >= self.after
    }
}

fn weights(c: &Classifier) -> Vec<(String, Vec<f32>)> {
    let net = c.network.valid();
    let mut out = Vec::new();
    for info in param_infos(&net) {
        out.push((info.path, Vec::new()));
    }
    let mut values = Vec::new();
    struct Grab<'a>(&'a mut Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for Grab<'_> {
        fn visit_float<const D: usize>(
            &mut self,
            p: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.0
                .push(p.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    net.visit(&mut Grab(&mut values));
    for (slot, v) in out.iter_mut().zip(values) {
        slot.1 = v;
    }
    out
}

#[test]
fn resumed_run_matches_uninterrupted_run_exactly() {
    // The small CNN, and a BatchNorm network whose running statistics must survive the resume.
    resume_matches(Architecture::SmallCnn {
        width: 4,
        hidden: 8,
    });
    resume_matches(Architecture::PreActResNet18 { width: 2 });
}

fn resume_matches(architecture: Architecture) {
    let device = default_device();
    let train_set = dataset(80, 1);
    let eval_set = dataset(30, 2);
    let root = std::env::temp_dir().join(format!("vigil-resume-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);

    // Uninterrupted.
    let initial = weights(&fresh(&architecture));
    let mut straight = fresh(&architecture);
    let mut slots = ParamSlots::new();
    let mut state = TrainState::new(config());
    let outcome = train::train(
        &mut straight,
        &mut slots,
        &mut state,
        &train_set,
        &eval_set,
        &root.join("a"),
        &device,
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(outcome, TrainOutcome::Finished);
    let straight_history = state.history.clone();

    // Interrupted mid-epoch 0 (batch 3 of 5), then mid-epoch 1, resumed from disk each time.
    let dir = root.join("b");
    let mut c = fresh(&architecture);
    let mut slots = ParamSlots::new();
    let mut state = TrainState::new(config());
    let mut stop = StopAfter { after: 3, seen: 0 };
    let outcome = train::train(
        &mut c, &mut slots, &mut state, &train_set, &eval_set, &dir, &device, &mut stop,
    )
    .unwrap();
    assert_eq!(outcome, TrainOutcome::Interrupted);
    assert_eq!((state.epoch, state.batch), (0, 3));
    let (mut c, mut slots, mut state) = train::load_resume(&dir, &device).unwrap();
    let mut stop = StopAfter { after: 4, seen: 0 };
    let outcome = train::train(
        &mut c, &mut slots, &mut state, &train_set, &eval_set, &dir, &device, &mut stop,
    )
    .unwrap();
    assert_eq!(outcome, TrainOutcome::Interrupted);
    assert_eq!((state.epoch, state.batch), (1, 2));
    let (mut c, mut slots, mut state) = train::load_resume(&dir, &device).unwrap();
    let outcome = train::train(
        &mut c, &mut slots, &mut state, &train_set, &eval_set, &dir, &device, &mut Quiet,
    )
    .unwrap();
    assert_eq!(outcome, TrainOutcome::Finished);

    assert_ne!(weights(&straight), initial, "training changed nothing");
    assert_eq!(weights(&c), weights(&straight), "resumed weights differ");
    let strip = |h: &[train::EpochRecord]| -> Vec<(usize, f64, f64, f64)> {
        h.iter()
            .map(|r| (r.epoch, r.train_loss, r.test_loss, r.test_accuracy))
            .collect()
    };
    assert_eq!(strip(&state.history), strip(&straight_history));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn resume_without_a_run_is_a_clear_error() {
    let missing = std::env::temp_dir().join("vigil-no-such-run");
    let err = train::load_resume::<Classifier>(&missing, &default_device()).unwrap_err();
    assert!(err.to_string().contains("vigil-no-such-run"), "{err}");
}
