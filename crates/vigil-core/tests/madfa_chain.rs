//! MAD-FA chains: reproducible from their seed alone, resumable bit for bit, mergeable, and
//! BatchNorm-safe (a chain never moves the original model's running statistics).

mod common;

use std::path::PathBuf;

use burn::module::Module;
use vigil_core::device::default_device;
use vigil_core::madfa::chain::sampling_batch;
use vigil_core::madfa::{
    BnPolicy, ChainConfig, ChainObserver, LossTraces, MadError, MadTask, Preconditioner, Quiet,
    SgldConfig, StepDraws, TraceForm, TraceLoss, run_chains, user_task,
};
use vigil_core::models::{Architecture, Classifier, ModelSpec, Network};

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
    observer: &mut impl ChainObserver,
) -> Option<LossTraces> {
    run_chains(
        w_star,
        &task(),
        config,
        chains,
        serde_json::json!({"test": true}),
        resume.map(PathBuf::as_path),
        &default_device(),
        observer,
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

impl ChainObserver for StopAfter {
    fn step_finished(&mut self, _: usize, _: f64, _: f64) {
        self.seen += 1;
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

/// One step's draws: step, minibatch indices, noise per parameter.
type Draws = (usize, Vec<usize>, Vec<(String, Vec<f32>)>);

/// Keeps every step's draws, as `vigil sample --record-steps` does for one chain.
struct KeepDraws {
    chain: usize,
    steps: Vec<Draws>,
}

impl ChainObserver for KeepDraws {
    fn records_draws(&mut self, chain: usize) -> bool {
        chain == self.chain
    }
    fn step_draws(&mut self, chain: usize, draws: &StepDraws<'_>) -> Result<(), MadError> {
        assert_eq!(chain, self.chain);
        self.steps
            .push((draws.step, draws.indices.to_vec(), draws.noise.to_vec()));
        Ok(())
    }
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
    let run_with = |observer: &mut KeepDraws| {
        run_chains(
            &w_star,
            &task(),
            &config,
            &[0, 1],
            serde_json::json!({"test": true}),
            None,
            &default_device(),
            observer,
        )
        .unwrap()
        .unwrap()
    };
    // A chain number the run does not have: nothing is recorded.
    let mut none = KeepDraws {
        chain: usize::MAX,
        steps: Vec::new(),
    };
    let (plain, _) = run_with(&mut none);
    assert!(none.steps.is_empty());
    let mut keep = KeepDraws {
        chain: 1,
        steps: Vec::new(),
    };
    let (recorded, diagnostics) = run_with(&mut keep);
    assert_eq!(plain, recorded);
    assert_eq!(keep.steps.len(), config.total_steps());
    let floats: usize = keep.steps[0].2.iter().map(|(_, n)| n.len()).sum();
    assert_eq!(floats, w_star.network.num_params());
    assert!(keep.steps[0].2.iter().any(|(path, _)| path == "fc2.weight"));
    for (step, (s, indices, noise)) in keep.steps.iter().enumerate() {
        assert_eq!(*s, step);
        assert_eq!(
            *indices,
            sampling_batch(task().sampling.len(), 8, config.seed, 1, step)
        );
        // Plain SGLD: the noise term is sqrt(lr) N, whose norm the diagnostics hold.
        let norm = noise
            .iter()
            .flat_map(|(_, n)| n.iter())
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
}
