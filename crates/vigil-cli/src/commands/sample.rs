//! `vigil sample`: MAD-FA's localized SGLD chains, writing loss traces.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use vigil_core::data::image_folder::load_image_folder;
use vigil_core::device::default_device;
use vigil_core::io::write_json_atomic;
use vigil_core::madfa::{
    self, BnPolicy, ChainConfig, ChainDiagnostics, ChainObserver, Preconditioner, SgldConfig,
    SplitSizes, TraceLoss,
};

use super::{DataArgs, ModelArgs};
use crate::progress::{bar, interrupt_flag};

/// Sample parameters around a model with localized SGLD and record every trusted and test
/// sample's loss at each draw (MAD-FA). `vigil score` turns the traces into anomaly scores.
///
/// Input is either an attack record (`--record`, written by `vigil attack`): its model, and the
/// reference protocol on its dataset's clean test set (a stratified trusted / sampling / test
/// split per class; trusted and clean test samples kept if classified correctly, triggered
/// test samples if the attack succeeds); or your own model (`--model`) with image folders
/// (`root/<class>/*.png`) for the trusted, sampling and test sets.
///
/// Writes to --out: traces.npz (numpy: `trusted`, `test` [chains, draws, samples],
/// `trusted_labels`, `test_is_anomalous`), diagnostics.json (per chain: loss, distance from
/// w* and the norms of the update's three terms at every step, constant-trace fractions,
/// timings, warnings), task.json and task.npz (the samples, for other implementations), and
/// resume/ (checkpoints every minute and on Ctrl-C: run the
/// same command again to continue, bit for bit). With --chain K only chain K runs and the files
/// are traces-chain-K.npz and diagnostics-chain-K.json; join them with `vigil merge`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Attack record folder written by `vigil attack`.
    #[arg(long, value_name = "DIR", required_unless_present = "model")]
    record: Option<PathBuf>,

    /// Your own model: a vigil checkpoint, or a PyTorch state_dict (.safetensors, .pt, .pth)
    /// described by --arch and the flags beside it.
    #[arg(long, value_name = "FILE", conflicts_with = "record", requires_all = ["trusted", "sampling", "test"])]
    model: Option<PathBuf>,

    #[command(flatten)]
    model_format: ModelArgs,

    /// Trusted image folder (with --model).
    #[arg(long, value_name = "DIR")]
    trusted: Option<PathBuf>,

    /// Sampling image folder, labels from the class folders (with --model).
    #[arg(long, value_name = "DIR")]
    sampling: Option<PathBuf>,

    /// Test image folder of normal inputs (with --model).
    #[arg(long, value_name = "DIR")]
    test: Option<PathBuf>,

    /// Test image folder of known anomalous inputs, for AUROC (with --model).
    #[arg(long, value_name = "DIR")]
    anomalous: Option<PathBuf>,

    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    #[command(flatten)]
    data: DataArgs,

    /// Per-class sizes of the trusted, sampling and test parts of the clean test set (with
    /// --record; the reference uses 250,250,500).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,100,100",
        value_name = "T,S,X"
    )]
    split: Vec<usize>,

    /// Seed of the split (with --record).
    #[arg(long, default_value_t = 0)]
    split_seed: u64,

    /// Kept draws per chain. The defaults (5 chains of 50 draws, one every 5 steps after 50
    /// burn-in steps) are measured in docs/madfa.md: at the reference settings consecutive draws
    /// are strongly correlated, so thinning by 5 loses no AUROC while tracing a fifth as often,
    /// and independent chains are what shrink the spread. The reference protocol is
    /// `--chains 1 --draws 1750 --burn-in 250 --thinning 1`.
    #[arg(long, default_value_t = 50)]
    draws: usize,

    /// Steps before the first kept draw (not traced).
    #[arg(long, default_value_t = 50)]
    burn_in: usize,

    /// Steps per kept draw.
    #[arg(long, default_value_t = 5)]
    thinning: usize,

    /// SGLD step size.
    #[arg(long, default_value_t = 1e-6)]
    lr: f64,

    /// Effective inverse temperature n_beta.
    #[arg(long, default_value_t = 100.0)]
    n_beta: f64,

    /// Localization strength gamma.
    #[arg(long, default_value_t = 1e4)]
    gamma: f64,

    /// Preconditioner: rmsprop (the reference) or plain SGLD.
    #[arg(long, value_enum, default_value_t = SamplerKind::Rmsprop)]
    sampler: SamplerKind,

    /// RMSprop decay.
    #[arg(long, default_value_t = 0.99)]
    rms_alpha: f64,

    /// RMSprop epsilon (added outside the square root; bounds the gain by 1/eps).
    #[arg(long, default_value_t = 0.1)]
    rms_eps: f64,

    /// Sampling minibatch size.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,

    /// Batch size of the trace passes.
    #[arg(long, default_value_t = 256)]
    trace_batch_size: usize,

    /// BatchNorm: reference (steps in train mode, traces with the drifted running statistics)
    /// or frozen (running statistics kept at w*'s).
    #[arg(long, value_enum, default_value_t = BnArg::Reference)]
    bn: BnArg,

    /// Per-sample loss form: reference (-log_softmax, exactly 0 for confident samples in
    /// float32) or precise (log1p of the other classes' odds).
    #[arg(long, value_enum, default_value_t = LossArg::Reference)]
    loss: LossArg,

    /// Number of chains (run one after another).
    #[arg(long, default_value_t = 5, conflicts_with = "chain")]
    chains: usize,

    /// Run only chain K (default: $SLURM_ARRAY_TASK_ID when set), for cluster arrays.
    #[arg(long, value_name = "K")]
    chain: Option<usize>,

    /// Seed of the minibatch order and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Print the run summary (and AUROCs when anomalies are known) as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum SamplerKind {
    Rmsprop,
    Plain,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum BnArg {
    Reference,
    Frozen,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LossArg {
    Reference,
    Precise,
}

impl SampleArgs {
    fn chain_config(&self) -> ChainConfig {
        ChainConfig {
            sgld: SgldConfig {
                lr: self.lr,
                n_beta: self.n_beta,
                gamma: self.gamma,
                preconditioner: match self.sampler {
                    SamplerKind::Rmsprop => Preconditioner::RmsProp {
                        alpha: self.rms_alpha,
                        eps: self.rms_eps,
                    },
                    SamplerKind::Plain => Preconditioner::Identity,
                },
                batch_size: self.batch_size,
            },
            draws: self.draws,
            burn_in: self.burn_in,
            thinning: self.thinning,
            bn: match self.bn {
                BnArg::Reference => BnPolicy::Reference,
                BnArg::Frozen => BnPolicy::Frozen,
            },
            loss: match self.loss {
                LossArg::Reference => TraceLoss::Reference,
                LossArg::Precise => TraceLoss::Precise,
            },
            trace_batch_size: self.trace_batch_size,
            seed: self.seed,
        }
    }

    /// The chains to run: `--chain`, else $SLURM_ARRAY_TASK_ID, else `0..--chains`.
    fn chains(&self) -> Result<(Vec<usize>, bool)> {
        if let Some(k) = self.chain {
            return Ok((vec![k], true));
        }
        if let Ok(id) = std::env::var("SLURM_ARRAY_TASK_ID") {
            let k = id
                .parse()
                .with_context(|| format!("SLURM_ARRAY_TASK_ID `{id}` is not a chain index"))?;
            return Ok((vec![k], true));
        }
        if self.chains == 0 {
            bail!("--chains must be at least 1");
        }
        Ok(((0..self.chains).collect(), false))
    }
}

/// Progress bar per chain; Ctrl-C checkpoints and stops.
struct ChainProgress {
    bar: Option<ProgressBar>,
    interrupted: Arc<AtomicBool>,
}

impl ChainObserver for ChainProgress {
    fn chain_started(&mut self, chain: usize, total: usize, done: usize) {
        let bar = bar(total as u64, format!("chain {chain}"));
        bar.set_position(done as u64);
        self.bar = Some(bar);
    }

    fn step_finished(&mut self, _step: usize, loss: f64, distance: f64) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(format!("loss {loss:.4} |w-w*| {distance:.3e}"));
        }
    }

    fn chain_finished(&mut self, d: &ChainDiagnostics) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!(
            "chain {}: {} steps in {:.0}s + traces {:.0}s; final |w-w*| {:.3e}; drift/noise {:.1e}; constant traces: {:.1}% trusted, {:.1}% test",
            d.chain,
            d.loss.len(),
            d.step_seconds,
            d.trace_seconds,
            d.distance.last().copied().unwrap_or(0.0),
            d.median_drift_to_noise,
            100.0 * d.constant_trusted_fraction,
            100.0 * d.constant_test_fraction
        );
        for w in &d.warnings {
            eprintln!("warning: chain {}: {w}", d.chain);
        }
    }

    fn should_stop(&mut self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}

fn folder(path: &Option<PathBuf>, what: &str) -> Result<vigil_core::data::ImageSet> {
    let path = path
        .as_ref()
        .with_context(|| format!("--{what} is required with --model"))?;
    load_image_folder(path).with_context(|| format!("loading the {what} images"))
}

pub fn run(args: SampleArgs) -> Result<ExitCode> {
    let device = default_device();
    let config = args.chain_config();
    config.validate()?;
    let (chains, single) = args.chains()?;
    let started = std::time::Instant::now();
    let (classifier, task, data) = if let Some(record) = &args.record {
        let [trusted, sampling, test] = <[usize; 3]>::try_from(args.split.as_slice())
            .map_err(|_| anyhow::anyhow!("--split takes three sizes: trusted,sampling,test"))?;
        let sizes = SplitSizes {
            trusted,
            sampling,
            test,
        };
        let loaded = madfa::record_task(
            record,
            args.data.data_dir.as_deref(),
            sizes,
            args.split_seed,
            args.trace_batch_size,
            &device,
        )
        .with_context(|| format!("preparing MAD-FA on the attack record {}", record.display()))?;
        let s = &loaded.summary;
        eprintln!(
            "{} ({}): trusted {}/{} correct, sampling {}, clean test {}/{} correct, triggered test {}/{} attacked successfully",
            record.display(),
            loaded.manifest.attack,
            s.trusted.1,
            s.trusted.0,
            s.sampling,
            s.clean_test.1,
            s.clean_test.0,
            s.triggered_test.1,
            s.triggered_test.0
        );
        let data = serde_json::json!({
            "record": record.display().to_string(),
            "attack": loaded.manifest.attack,
            "dataset": loaded.manifest.dataset,
            "split_per_class": sizes,
            "split_seed": args.split_seed,
            "summary": s,
        });
        (loaded.classifier, loaded.task, data)
    } else {
        let model = args.model.as_ref().context("give --record or --model")?;
        let classifier = args.model_format.load(model, &device)?;
        let anomalous = match &args.anomalous {
            Some(_) => Some(folder(&args.anomalous, "anomalous")?),
            None => None,
        };
        let task = madfa::user_task(
            folder(&args.trusted, "trusted")?,
            folder(&args.sampling, "sampling")?,
            folder(&args.test, "test")?,
            anomalous,
        )?;
        let data = serde_json::json!({
            "model": model.display().to_string(),
            "trusted": args.trusted.as_ref().map(|p| p.display().to_string()),
            "sampling": args.sampling.as_ref().map(|p| p.display().to_string()),
            "test": args.test.as_ref().map(|p| p.display().to_string()),
            "anomalous": args.anomalous.as_ref().map(|p| p.display().to_string()),
        });
        (classifier, task, data)
    };
    eprintln!(
        "sampling {} chain(s) of {} steps ({} burn-in, {} draws, thinning {}), tracing {} trusted + {} test samples per draw",
        chains.len(),
        config.total_steps(),
        config.burn_in,
        config.draws,
        config.thinning,
        task.trusted.len(),
        task.test.len()
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    write_json_atomic(&args.out.join("task.json"), &data)?;
    task.save_npz(&args.out.join("task.npz"))?;
    let mut observer = ChainProgress {
        bar: None,
        interrupted: interrupt_flag(),
    };
    let outcome = madfa::run_chains(
        &classifier,
        &task,
        &config,
        &chains,
        data,
        Some(&args.out.join("resume")),
        &device,
        &mut observer,
    )?;
    let Some((traces, diagnostics)) = outcome else {
        eprintln!("stopped; run the same command again to continue");
        return Ok(ExitCode::from(130));
    };
    let suffix = if single {
        format!("-chain-{}", chains[0])
    } else {
        String::new()
    };
    let trace_path = args.out.join(format!("traces{suffix}.npz"));
    traces.save(&trace_path)?;
    write_json_atomic(
        &args.out.join(format!("diagnostics{suffix}.json")),
        &diagnostics,
    )?;
    eprintln!(
        "wrote {} in {:.0}s",
        trace_path.display(),
        started.elapsed().as_secs_f64()
    );
    let report = auroc_report(&traces)?;
    if args.json {
        let chains: Vec<_> = diagnostics
            .iter()
            .map(|d| {
                serde_json::json!({
                    "chain": d.chain,
                    "step_seconds": d.step_seconds,
                    "trace_seconds": d.trace_seconds,
                    "final_distance": d.distance.last(),
                    "median_drift_to_noise": d.median_drift_to_noise,
                    "constant_trusted_fraction": d.constant_trusted_fraction,
                    "constant_test_fraction": d.constant_test_fraction,
                    "warnings": d.warnings,
                })
            })
            .collect();
        let settings: serde_json::Value = traces
            .settings_json
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        println!(
            "{}",
            serde_json::json!({
                "traces": trace_path.display().to_string(),
                "auroc": report.as_ref().map(|r| &r.auroc),
                "normal": report.as_ref().map(|r| r.normal),
                "anomalous": report.as_ref().map(|r| r.anomalous),
                "trusted": traces.n_trusted(),
                "seconds": started.elapsed().as_secs_f64(),
                "threads": rayon::current_num_threads(),
                "settings": settings,
                "chains": chains,
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The AUROC of every score when the anomalies are known (printed on stderr).
fn auroc_report(traces: &madfa::LossTraces) -> Result<Option<madfa::ScoreReport>> {
    let Some(flags) = &traces.test_is_anomalous else {
        return Ok(None);
    };
    if !flags.iter().any(|&f| f) || flags.iter().all(|&f| f) {
        return Ok(None);
    }
    let coupling = madfa::coupling(traces, 0)?;
    let scores = madfa::anomaly_scores(&coupling, &traces.trusted_labels);
    let report = madfa::evaluate_scores(&scores, flags)?;
    for (name, auroc) in &report.auroc {
        eprintln!("  AUROC {name:>10}: {auroc:.4}");
    }
    Ok(Some(report))
}
