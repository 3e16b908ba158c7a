//! MAD-FA chains: reproducible from their seed alone, resumable bit for bit, mergeable, and
//! BatchNorm-safe (a chain never moves the original model's running statistics).

mod common;

use std::path::PathBuf;

use burn::module::Module;
use vigil_core::device::default_device;
use vigil_core::madfa::chain::sampling_batch;
use vigil_core::madfa::{
    BnPolicy, ChainConfig, ChainEvent, LossTraces, MadTask, Preconditioner, Quiet, SgldConfig,
    StepRecorder, TraceForm, TraceLoss, run_chains, user_task,
};
use vigil_core::models::{Architecture, Classifier, ModelSpec, Network};
use vigil_core::progress::Progress;

use common::band_dataset as dataset;

fn model(architecture: Architecture) -> Classifier {
    let spec = ModelSpec {
        architecture,
        input_shape: [1, 8, 8],
        class_names: vec!["a".into(), "b".into(), "c".into()],
        normalization: None,
    };
    Classifier::new(spec, &default_device()).unwrap()
}

/// The small CNN at width 4, hidden 8: the model most tests here sample around.
fn tiny_cnn() -> Classifier {
    model(Architecture::SmallCnn {
        width: 4,
        hidden: 8,
    })
}

fn task() -> MadTask {
    user_task(
        dataset(12, 1),
        dataset(20, 2),
        dataset(9, 3),
        Some(dataset(6, 4)),
    )
    .unwrap()
}

/// Settings where every term of the update matters on this tiny model.
fn config(bn: BnPolicy) -> ChainConfig {
    ChainConfig {
        sgld: SgldConfig {
            lr: 1e-4,
            n_beta: 10.0,
            gamma: 100.0,
            batch_size: 8,
            ..SgldConfig::reference()
        },
        draws: 5,
        burn_in: 3,
        thinning: 2,
        bn,
        loss: TraceLoss::Precise,
        traces: TraceForm::Exact,
        trace_batch_size: 7,
        seed: 11,
    }
}

fn run(
    w_star: &Classifier,
    config: &ChainConfig,
    chains: &[usize],
    resume: Option<&PathBuf>,
    progress: &mut impl for<'e> Progress<ChainEvent<'e>>,
) -> Option<LossTraces> {
    run_chains(
        w_star,
        &task(),
        config,
        chains,
        serde_json::json!({"test": true}),
        resume.map(PathBuf::as_path),
        &default_device(),
        progress,
        None,
    )
    .unwrap()
    .map(|(traces, _)| traces)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-madfa-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Stops after `after` steps in all.
struct StopAfter {
    after: usize,
    seen: usize,
}

impl Progress<ChainEvent<'_>> for StopAfter {
    fn report(&mut self, event: ChainEvent<'_>) {
        if let ChainEvent::StepFinished { .. } = event {
            self.seen += 1;
        }
    }
    fn should_stop(&mut self) -> bool {
        self.seen >= self.after
    }
}

#[test]
fn same_seed_same_traces_and_the_chain_moves() {
    let w_star = tiny_cnn();
    let config = config(BnPolicy::Reference);
    // Another thread drawing from burn's device RNG while the chains run must not matter.
    let noise = std::thread::spawn(|| {
        for _ in 0..50 {
            let _ = tiny_cnn();
        }
    });
    let a = run(&w_star, &config, &[0], None, &mut Quiet).unwrap();
    let b = run(&w_star, &config, &[0], None, &mut Quiet).unwrap();
    noise.join().unwrap();
    assert_eq!(a, b);
    assert_eq!(a.trusted.shape(), &[1, 5, 12]);
    assert_eq!(a.test.shape(), &[1, 5, 15]);
    // The traces change from draw to draw: the parameters move.
    assert!(
        a.test
            .iter()
            .zip(a.test.iter().skip(15))
            .any(|(x, y)| x != y)
    );
    let other_seed = ChainConfig { seed: 12, ..config };
    let c = run(&w_star, &other_seed, &[0], None, &mut Quiet).unwrap();
    assert_ne!(a.test, c.test);
}

/// The trace loss only decides what is recorded, never where the chain goes: `--loss log` walks
/// the same draws as `--loss precise` and records the natural log of its traces.
#[test]
fn log_traces_are_the_log_of_the_precise_traces_of_the_same_draws() {
    let w_star = tiny_cnn();
    let precise = run(
        &w_star,
        &config(BnPolicy::Reference),
        &[0, 1],
        None,
        &mut Quiet,
    )
    .unwrap();
    let log_config = ChainConfig {
        loss: TraceLoss::Log,
        ..config(BnPolicy::Reference)
    };
    let log = run(&w_star, &log_config, &[0, 1], None, &mut Quiet).unwrap();
    for (p, l) in [(&precise.trusted, &log.trusted), (&precise.test, &log.test)] {
        assert_eq!(p.shape(), l.shape());
        for (&p, &l) in p.iter().zip(l.iter()) {
            assert!(p > 0.0, "precise loss {p} should be positive");
            let want = f64::from(p).ln();
            assert!(
                (f64::from(l) - want).abs() <= 1e-5 * want.abs().max(1.0),
                "log trace {l} vs ln(precise) {want}"
            );
        }
    }
}

#[test]
fn interrupted_chains_resume_bit_for_bit_and_merge_equals_one_run() {
    let w_star = tiny_cnn();
    let config = config(BnPolicy::Reference);
    let uninterrupted = run(&w_star, &config, &[0, 1], None, &mut Quiet).unwrap();

    // Stop during burn-in of chain 0, mid-draws of chain 0, and in chain 1; resume each time.
    let dir = scratch("resume");
    for after in [2, 7, 16] {
        let stopped = run(
            &w_star,
            &config,
            &[0, 1],
            Some(&dir),
            &mut StopAfter { after, seen: 0 },
        );
        assert!(
            stopped.is_none(),
            "the run should have stopped after {after} steps"
        );
    }
    let resumed = run(&w_star, &config, &[0, 1], Some(&dir), &mut Quiet).unwrap();
    assert_eq!(resumed.trusted, uninterrupted.trusted);
    assert_eq!(resumed.test, uninterrupted.test);

    // Chains run one by one and merged equal the two-chain run.
    let one = run(&w_star, &config, &[1], None, &mut Quiet).unwrap();
    let zero = run(&w_star, &config, &[0], None, &mut Quiet).unwrap();
    let merged = LossTraces::merge(vec![("one".into(), one), ("zero".into(), zero)]).unwrap();
    assert_eq!(merged.trusted, uninterrupted.trusted);
    assert_eq!(merged.test, uninterrupted.test);
    assert_eq!(merged.chain_indices, Some(vec![0, 1]));

    // A checkpoint of other settings is refused, not silently mixed in.
    let other = ChainConfig { seed: 99, ..config };
    let err = run_chains(
        &w_star,
        &task(),
        &other,
        &[0],
        serde_json::Value::Null,
        Some(&dir),
        &default_device(),
        &mut Quiet,
        None,
    )
    .expect_err("other settings must be refused");
    assert!(err.to_string().contains("other settings"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn linearised_traces_follow_the_exact_ones_near_w_star_and_resume_bit_for_bit() {
    let w_star = tiny_cnn();
    // Small steps, so the chain stays where the loss is nearly linear.
    let exact = ChainConfig {
        sgld: SgldConfig {
            lr: 1e-7,
            ..config(BnPolicy::Reference).sgld
        },
        draws: 20,
        thinning: 1,
        ..config(BnPolicy::Reference)
    };
    let linear = ChainConfig {
        traces: TraceForm::Linearised,
        ..exact.clone()
    };
    let a = run(&w_star, &exact, &[0], None, &mut Quiet).unwrap();
    let b = run(&w_star, &linear, &[0], None, &mut Quiet).unwrap();
    assert_eq!(a.test.shape(), b.test.shape());
    // Per sample, over the draws: the linearised trace moves with the exact one.
    let mut correlations = Vec::new();
    for (x, y) in [(&a.trusted, &b.trusted), (&a.test, &b.test)] {
        for i in 0..x.shape()[2] {
            let e: Vec<f64> = (0..20).map(|d| f64::from(x[[0, d, i]])).collect();
            let l: Vec<f64> = (0..20).map(|d| f64::from(y[[0, d, i]])).collect();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let (me, ml) = (mean(&e), mean(&l));
            let cov: f64 = e.iter().zip(&l).map(|(p, q)| (p - me) * (q - ml)).sum();
            let ve: f64 = e.iter().map(|p| (p - me).powi(2)).sum();
            let vl: f64 = l.iter().map(|q| (q - ml).powi(2)).sum();
            // Both traces sit near the loss at w*.
            assert!(
                (me - ml).abs() < 1e-2 * me.abs().max(1e-3),
                "sample {i}: {me} vs {ml}"
            );
            if ve > 0.0 && vl > 0.0 {
                correlations.push(cov / (ve * vl).sqrt());
            }
        }
    }
    correlations.sort_by(f64::total_cmp);
    let median = correlations[correlations.len() / 2];
    assert!(
        median > 0.95,
        "median correlation {median}: {correlations:?}"
    );

    // A linearised chain stopped mid-draws resumes to the same traces.
    let dir = scratch("linearised-resume");
    let stopped = run(
        &w_star,
        &linear,
        &[0],
        Some(&dir),
        &mut StopAfter { after: 9, seen: 0 },
    );
    assert!(stopped.is_none());
    let resumed = run(&w_star, &linear, &[0], Some(&dir), &mut Quiet).unwrap();
    assert_eq!(resumed, b);
    let _ = std::fs::remove_dir_all(&dir);
}

fn running_mean(c: &Classifier) -> Vec<f32> {
    let Network::PreActResNet18(net) = &c.network else {
        unreachable!()
    };
    net.layer1[0]
        .bn1
        .running_mean
        .value_sync()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn batch_norm_chains_leave_the_model_alone_and_the_modes_differ() {
    let w_star = model(Architecture::PreActResNet18 { width: 2 });
    let before = running_mean(&w_star);
    let reference = run(
        &w_star,
        &config(BnPolicy::Reference),
        &[0],
        None,
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(
        running_mean(&w_star),
        before,
        "the chain moved w*'s running statistics"
    );
    let frozen = run(&w_star, &config(BnPolicy::Frozen), &[0], None, &mut Quiet).unwrap();
    assert_eq!(running_mean(&w_star), before);
    // Reference mode traces with drifted statistics, frozen mode with w*'s: they differ.
    assert_ne!(reference.test, frozen.test);
    assert!(w_star.network.num_params() > 0);
}

#[test]
fn calibration_sets_lr_from_the_pull_and_rejects_a_chain_that_leaves_the_model() {
    use vigil_core::madfa::{CalibrationConfig, calibrate};
    let w_star = tiny_cnn();
    let task = task();
    let mut base = config(BnPolicy::Reference);
    base.sgld.n_beta = 10.0;
    let mut settings = CalibrationConfig::defaults(base);
    // A gentle candidate, and one whose noise (gamma 1e-3: lr 200, per-weight noise ~45 a
    // step) wrecks the model's function: it diverges or its loss rise rejects it.
    settings.candidates = vec![(1e3, 10.0), (1e-3, 10.0)];
    settings.probe_draws = 6;
    settings.burn_in = 2;
    settings.min_draws = 5;
    settings.max_draws = 500;
    let run = |settings: &CalibrationConfig| {
        calibrate(
            &w_star,
            &task.trusted,
            &task.sampling,
            settings,
            &default_device(),
            &mut Quiet,
        )
        .unwrap()
    };
    let c = run(&settings);
    assert_eq!(c.candidates.len(), 2);
    assert_eq!((c.reference_size, c.probe_size), (6, 6));
    let gentle = &c.candidates[0];
    // (lr/2) gamma max G = pull 1 with max G = 1/eps = 10.
    assert!(
        (gentle.lr - 2.0 / (1e3 * 10.0)).abs() < 1e-15,
        "{}",
        gentle.lr
    );
    assert!(gentle.rejected.is_none(), "{:?}", gentle.rejected);
    let wild = &c.candidates[1];
    assert!(
        wild.rejected
            .as_deref()
            .is_some_and(|r| r.contains("loss rose") || r.contains("diverged")),
        "{wild:?}"
    );
    assert_eq!(c.chosen, 0);
    assert_eq!(c.recommended.sgld.gamma, 1e3);
    assert_eq!(c.recommended.sgld.lr, gentle.lr);
    assert_eq!(c.recommended.thinning, 1);
    assert!((5..=500).contains(&c.recommended.draws));
    // Deterministic: the same settings give the same calibration.
    let again = run(&settings);
    assert_eq!(again.candidates[0].clc_reliability, gentle.clc_reliability);
    assert_eq!(again.recommended, c.recommended);
    // A run with linearised traces is calibrated on exact probe traces (the same reliabilities
    // and draws), and keeps its own trace form.
    settings.base.traces = TraceForm::Linearised;
    let linearised = run(&settings);
    assert_eq!(
        linearised.candidates[0].clc_reliability,
        gentle.clc_reliability
    );
    assert_eq!(linearised.recommended.draws, c.recommended.draws);
    assert_eq!(linearised.recommended.traces, TraceForm::Linearised);
}

/// One step's draws as a [`StepRecorder`] wrote them: minibatch indices, and the noise of
/// every parameter flat, in the manifest's order.
fn read_step(dir: &std::path::Path, step: usize) -> (Vec<usize>, Vec<f32>) {
    let file = std::fs::File::open(dir.join(format!("step-{step:05}.npz"))).unwrap();
    let mut npz = ndarray_npy::NpzReader::new(file).unwrap();
    let indices: ndarray::Array1<i64> = npz.by_name("indices").unwrap();
    let noise: ndarray::Array1<f32> = npz.by_name("noise").unwrap();
    (
        indices.iter().map(|&i| i as usize).collect(),
        noise.to_vec(),
    )
}

#[test]
fn recording_the_draws_changes_nothing_and_they_are_the_steps_own() {
    let w_star = tiny_cnn();
    let config = ChainConfig {
        sgld: SgldConfig {
            preconditioner: Preconditioner::Identity,
            ..config(BnPolicy::Reference).sgld
        },
        ..config(BnPolicy::Reference)
    };
    let run_with = |recorder: &mut StepRecorder| {
        run_chains(
            &w_star,
            &task(),
            &config,
            &[0, 1],
            serde_json::json!({"test": true}),
            None,
            &default_device(),
            &mut Quiet,
            Some(recorder),
        )
        .unwrap()
        .unwrap()
    };
    // A chain number the run does not have: nothing is recorded.
    let none_dir = scratch("record-none");
    let (plain, _) = run_with(&mut StepRecorder::new(&none_dir, usize::MAX, &config));
    assert!(!none_dir.exists());
    let dir = scratch("record-steps");
    let (recorded, diagnostics) = run_with(&mut StepRecorder::new(&dir, 1, &config));
    assert_eq!(plain, recorded);
    // Every step of chain 1, from step 0, and nothing else.
    let steps = std::fs::read_dir(&dir).unwrap().count() - 1;
    assert_eq!(steps, config.total_steps());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        (manifest["chain"].as_u64(), manifest["first_step"].as_u64()),
        (Some(1), Some(0))
    );
    let params = manifest["params"].as_array().unwrap();
    let floats: u64 = params.iter().map(|p| p["numel"].as_u64().unwrap()).sum();
    assert_eq!(floats as usize, w_star.network.num_params());
    assert!(params.iter().any(|p| p["path"] == "fc2.weight"));
    for step in 0..steps {
        let (indices, noise) = read_step(&dir, step);
        assert_eq!(noise.len(), floats as usize);
        assert_eq!(
            indices,
            sampling_batch(task().sampling.len(), 8, config.seed, 1, step)
        );
        // Plain SGLD: the noise term is sqrt(lr) N, whose norm the diagnostics hold.
        let norm = noise
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt();
        let expected = diagnostics[1].noise_norm[step];
        assert!(
            (config.sgld.lr.sqrt() * norm - expected).abs() < 1e-5 * expected,
            "step {step}: {} vs {expected}",
            config.sgld.lr.sqrt() * norm
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
