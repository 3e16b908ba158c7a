//! `vigil sample`: MAD-FA's localized SGLD chains, writing loss traces.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use vigil_core::data::image_folder::{
    ChannelConversion, FolderLabels, LabelRule, ModelImages, load_image_folder_for_model,
};
use vigil_core::device::default_device;
use vigil_core::madfa::{
    self, BnPolicy, CALIBRATED_CHAINS, CalibrationConfig, ChainConfig, ChainDiagnostics,
    ChainEvent, DEFAULT_TRACE_LOSS, MadTask, Preconditioner, SampleOutcome, SampleReport,
    SampleRunConfig, SamplingPlan, SgldConfig, TraceEvaluation, TraceForm,
};
use vigil_core::models::{Classifier, ModelSpec};
use vigil_core::progress::Progress;

use super::{DataArgs, LossArg, ModelArgs, SplitArgs};
use crate::progress::{Interruptible, bar};

/// Where MAD-FA's model and samples come from (shared by `vigil sample` and `vigil calibrate`).
#[derive(Args, Debug)]
pub struct MadInputArgs {
    /// Attack record folder written by `vigil attack`.
    #[arg(long, value_name = "DIR", required_unless_present = "model")]
    record: Option<PathBuf>,

    /// Your own model: a vigil checkpoint, or a PyTorch state_dict (.safetensors, .pt, .pth)
    /// described by --arch and the flags beside it.
    #[arg(long, value_name = "FILE", conflicts_with = "record", requires_all = ["trusted", "sampling"])]
    model: Option<PathBuf>,

    #[command(flatten)]
    model_format: ModelArgs,

    /// Trusted image folder (with --model).
    #[arg(long, value_name = "DIR")]
    trusted: Option<PathBuf>,

    /// Sampling image folder, labels from the class folders (with --model).
    #[arg(long, value_name = "DIR")]
    sampling: Option<PathBuf>,

    /// Test image folder of normal inputs (with --model; not needed by `vigil calibrate`).
    #[arg(long, value_name = "DIR")]
    test: Option<PathBuf>,

    /// Test image folder of known anomalous inputs, for AUROC (with --model).
    #[arg(long, value_name = "DIR")]
    anomalous: Option<PathBuf>,

    #[command(flatten)]
    data: DataArgs,

    #[command(flatten)]
    split: SplitArgs,
}

/// Settings of `vigil calibrate`, and of `vigil sample --calibrate` (unset: the library's
/// defaults, `CalibrationConfig::defaults`).
#[derive(Args, Debug, Clone)]
pub struct CalibrationArgs {
    /// Candidate localization strengths gamma, in order of preference on ties (each tried with
    /// every --calibrate-n-betas) [default: 1e4].
    #[arg(long, value_delimiter = ',', value_name = "G,..")]
    calibrate_gammas: Vec<f64>,

    /// Candidate inverse temperatures n_beta [default: 100].
    #[arg(long, value_delimiter = ',', value_name = "N,..")]
    calibrate_n_betas: Vec<f64>,

    /// Localization pull per step at the largest preconditioner gain, (lr/2) gamma max G: sets
    /// lr. 1 makes consecutive draws of the flattest weights independent; the reference
    /// settings are 0.05 [default: 1].
    #[arg(long)]
    pull: Option<f64>,

    /// Draws per probe chain (two per candidate; they trace the trusted set only)
    /// [default: 50].
    #[arg(long)]
    probe_draws: Option<usize>,

    /// Steps before the first draw, in the probes and in the recommended run [default: RMSprop's
    /// averaging time 1/(1-alpha), 100 steps; 10 for plain SGLD].
    #[arg(long)]
    probe_burn_in: Option<usize>,

    /// Reliability of the trusted probes' CLC scores between independent runs to aim for
    /// [default: 0.9].
    #[arg(long)]
    target_reliability: Option<f64>,

    /// Fewest draws to recommend, over all chains [default: 600, 150 per chain at the default 4
    /// chains: the anomaly AUROC kept rising up to there on every validation model, whatever the
    /// probes asked for (docs/madfa.md)].
    #[arg(long)]
    min_draws: Option<usize>,

    /// Most draws to recommend, over all chains [default: 1000].
    #[arg(long)]
    max_draws: Option<usize>,
}

impl CalibrationArgs {
    /// The calibration settings around `base` (whose seed, preconditioner, batch sizes,
    /// BatchNorm mode and trace loss are kept).
    pub fn config(&self, base: ChainConfig) -> CalibrationConfig {
        let mut c = CalibrationConfig::defaults(base);
        let gammas: Vec<f64> = if self.calibrate_gammas.is_empty() {
            c.candidates.iter().map(|&(g, _)| g).collect()
        } else {
            self.calibrate_gammas.clone()
        };
        let n_betas: Vec<f64> = if self.calibrate_n_betas.is_empty() {
            let mut n: Vec<f64> = c.candidates.iter().map(|&(_, n)| n).collect();
            n.dedup();
            n
        } else {
            self.calibrate_n_betas.clone()
        };
        c.candidates = n_betas
            .iter()
            .flat_map(|&n| gammas.iter().map(move |&g| (g, n)))
            .collect();
        c.pull = self.pull.unwrap_or(c.pull);
        c.probe_draws = self.probe_draws.unwrap_or(c.probe_draws);
        c.burn_in = self.probe_burn_in.unwrap_or(c.burn_in);
        c.target_reliability = self.target_reliability.unwrap_or(c.target_reliability);
        c.max_draws = self.max_draws.unwrap_or(c.max_draws);
        // A --max-draws below the default floor lowers the floor with it, rather than making
        // the user set both.
        c.min_draws = self.min_draws.unwrap_or(c.min_draws.min(c.max_draws));
        c
    }
}

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
    #[command(flatten)]
    input: MadInputArgs,

    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Choose lr, gamma, n_beta and the number of draws from the trusted and sampling data
    /// first (`vigil calibrate`; written to calibration.json in --out and reused when the
    /// command is run again), then sample with them, the draws spread over --chains.
    #[arg(long, conflicts_with_all = ["draws", "burn_in", "thinning", "lr", "n_beta", "gamma"])]
    calibrate: bool,

    #[command(flatten)]
    calibration: CalibrationArgs,

    /// Kept draws per chain. The defaults (5 chains of 50 draws, one every 5 steps after 50
    /// burn-in steps, at the reference lr, gamma and n_beta) are measured in docs/madfa.md: at
    /// the reference settings consecutive draws are strongly correlated, so thinning by 5 loses
    /// no AUROC while tracing a fifth as often, and independent chains are what shrink the
    /// spread. `--calibrate` chooses lr, gamma, n_beta and the draws from the trusted data
    /// instead, and detects better on both attacks measured there. The reference protocol is
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

    #[command(flatten)]
    base: SamplerArgs,

    /// Number of chains (run one after another) [default: 5; with --calibrate 4, over which
    /// the recommended draws are spread: each chain keeps a share of its own that more draws do
    /// not remove, and more chains average it away (docs/madfa.md)].
    #[arg(long, conflicts_with = "chain")]
    chains: Option<usize>,

    /// Run only chain K (default: $SLURM_ARRAY_TASK_ID when set), for cluster arrays.
    #[arg(long, value_name = "K")]
    chain: Option<usize>,

    /// Print the run summary (and AUROCs when anomalies are known) as JSON on stdout.
    #[arg(long)]
    json: bool,

    /// Write chain 0's random draws (each step's minibatch indices and standard-normal noise,
    /// about 1.7 MB a step for the small CNN) to DIR, so that another implementation can replay
    /// the chain step for step (`bench/peer/madfa_replay.py`; format in
    /// `vigil_core::madfa::record`). A debugging aid for comparing samplers, hence hidden from
    /// --help; it changes no draw and no output.
    #[arg(long, value_name = "DIR", hide = true)]
    record_steps: Option<PathBuf>,
}

/// The sampler's settings that calibration keeps (shared by `vigil sample` and `vigil
/// calibrate`).
#[derive(Args, Debug)]
pub struct SamplerArgs {
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

    /// Batch size of the trace passes. 64 is where vigil's forward pass is fastest on two cores
    /// (`bench/scaling.py`; docs/performance.md); the values do not depend on it.
    #[arg(long, default_value_t = 64)]
    trace_batch_size: usize,

    /// BatchNorm: reference (steps in train mode, traces with the drifted running statistics)
    /// or frozen (running statistics kept at w*'s).
    #[arg(long, value_enum, default_value_t = BnArg::Reference)]
    bn: BnArg,

    /// Per-sample loss the traces record: log (the log of the precise loss: a confident
    /// sample's soft margin, so one draw that multiplies a loss does not dominate its
    /// correlations; docs/madfa.md), precise (log1p of the other classes' odds) or reference
    /// (-log_softmax as the authors' code, exactly 0 for confident samples in float32; the
    /// default before 2026-12-05).
    #[arg(long, value_enum, default_value_t = LossArg::from(DEFAULT_TRACE_LOSS))]
    loss: LossArg,

    /// Traces: exact (the loss of every traced sample at every kept draw, as the reference)
    /// or linearised (loss at w* plus per-sample gradient times the chain's displacement: one
    /// matrix product after the chain instead of a forward pass per draw; docs/madfa.md).
    #[arg(long, value_enum, default_value_t = TracesArg::Exact)]
    traces: TracesArg,

    /// Seed of the minibatch order and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum TracesArg {
    Exact,
    Linearised,
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

impl SamplerArgs {
    /// Chain settings with these sampler settings and the reference's lr, n_beta, gamma, draws,
    /// burn-in and thinning (calibration replaces those).
    pub fn chain_config(&self) -> ChainConfig {
        ChainConfig {
            sgld: SgldConfig {
                preconditioner: match self.sampler {
                    SamplerKind::Rmsprop => Preconditioner::RmsProp {
                        alpha: self.rms_alpha,
                        eps: self.rms_eps,
                    },
                    SamplerKind::Plain => Preconditioner::Identity,
                },
                batch_size: self.batch_size,
                ..SgldConfig::reference()
            },
            bn: match self.bn {
                BnArg::Reference => BnPolicy::Reference,
                BnArg::Frozen => BnPolicy::Frozen,
            },
            loss: self.loss.trace_loss(),
            traces: match self.traces {
                TracesArg::Exact => TraceForm::Exact,
                TracesArg::Linearised => TraceForm::Linearised,
            },
            trace_batch_size: self.trace_batch_size,
            seed: self.seed,
            ..ChainConfig::reference()
        }
    }
}

impl SampleArgs {
    fn chain_config(&self) -> ChainConfig {
        let mut config = self.base.chain_config();
        config.sgld.lr = self.lr;
        config.sgld.n_beta = self.n_beta;
        config.sgld.gamma = self.gamma;
        config.draws = self.draws;
        config.burn_in = self.burn_in;
        config.thinning = self.thinning;
        config
    }

    /// How many chains the run has: --chains, else `CALIBRATED_CHAINS` with --calibrate and 5
    /// without.
    fn chain_count(&self) -> usize {
        self.chains
            .unwrap_or(if self.calibrate { CALIBRATED_CHAINS } else { 5 })
    }

    /// The run these flags ask for. The chain to run alone is `--chain`, else
    /// $SLURM_ARRAY_TASK_ID; without either, every one of the run's chains runs.
    fn run_config(&self) -> Result<SampleRunConfig> {
        let only_chain = match (self.chain, std::env::var("SLURM_ARRAY_TASK_ID")) {
            (Some(k), _) => Some(k),
            (None, Ok(id)) => Some(
                id.parse()
                    .with_context(|| format!("SLURM_ARRAY_TASK_ID `{id}` is not a chain index"))?,
            ),
            (None, Err(_)) => None,
        };
        if only_chain.is_none() && self.chain_count() == 0 {
            bail!("--chains must be at least 1");
        }
        let chain = self.chain_config();
        Ok(SampleRunConfig {
            calibration: self
                .calibrate
                .then(|| self.calibration.config(chain.clone())),
            chain,
            chain_count: self.chain_count(),
            only_chain,
            record_steps: self.record_steps.clone(),
        })
    }
}

/// Progress bar per chain, and the calibration and sampling plan as `vigil sample` announces
/// them (wrapped in [`Interruptible`], Ctrl-C checkpoints and stops).
pub struct ChainProgress {
    bar: Option<ProgressBar>,
    /// Linearised traces: formed after all chains, so a chain's line cannot count constant ones.
    linearised: bool,
}

impl ChainProgress {
    /// Progress of chains whose traces are `linearised` or exact.
    pub fn new(linearised: bool) -> Self {
        Self {
            bar: None,
            linearised,
        }
    }

    fn chain_started(&mut self, chain: usize, total: usize, done: usize) {
        if done > 0 {
            eprintln!("chain {chain}: resuming from its checkpoint at step {done} of {total}");
        }
        let bar = bar(total as u64, format!("chain {chain}"));
        bar.set_position(done as u64);
        self.bar = Some(bar);
    }

    fn chain_finished(&mut self, d: &ChainDiagnostics) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let constant = if self.linearised {
            "linearised traces follow".to_string()
        } else {
            format!(
                "constant traces: {:.1}% trusted, {:.1}% test",
                100.0 * d.constant_trusted_fraction,
                100.0 * d.constant_test_fraction
            )
        };
        eprintln!(
            "chain {}: {} steps in {:.0}s + traces {:.0}s; final |w-w*| {:.3e}; drift/noise {:.1e}; {constant}",
            d.chain,
            d.loss.len(),
            d.step_seconds,
            d.trace_seconds,
            d.distance.last().copied().unwrap_or(0.0),
            d.median_drift_to_noise,
        );
        for w in &d.warnings {
            eprintln!("warning: chain {}: {w}", d.chain);
        }
    }
}

impl Progress<ChainEvent<'_>> for ChainProgress {
    fn report(&mut self, event: ChainEvent<'_>) {
        match event {
            ChainEvent::ChainStarted { chain, total, done } => {
                self.chain_started(chain, total, done);
            }
            ChainEvent::StepFinished { loss, distance, .. } => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                    bar.set_message(format!("loss {loss:.4} |w-w*| {distance:.3e}"));
                }
            }
            ChainEvent::ChainFinished(diagnostics) => self.chain_finished(diagnostics),
            ChainEvent::Resuming(out) => eprintln!(
                "{} holds an earlier run of the same model, data and settings: reusing what it finished",
                out.display()
            ),
            ChainEvent::CalibrationReused(path) => {
                eprintln!("reusing the calibration in {}", path.display());
            }
            ChainEvent::Calibrated(calibration) => {
                super::calibrate::print_calibration(calibration);
            }
            ChainEvent::Sampling(plan) => print_sampling_plan(plan),
        }
    }
}

/// The chains about to run, on stderr.
fn print_sampling_plan(plan: &SamplingPlan<'_>) {
    let config = plan.config;
    eprintln!(
        "sampling {} chain(s) of {} steps ({} burn-in, {} draws, thinning {}), tracing {} trusted + {} test samples per draw",
        plan.chains.len(),
        config.total_steps(),
        config.burn_in,
        config.draws,
        config.thinning,
        plan.trusted,
        plan.test
    );
}

/// Loads the image folder `path` (the `--{what}` flag) for the model `spec`: labels matched to
/// its classes, images checked against its input (see `load_image_folder_for_model`).
pub fn model_folder(
    path: &Path,
    spec: &ModelSpec,
    labels: FolderLabels,
    what: &str,
) -> Result<ModelImages> {
    load_image_folder_for_model(path, spec, labels)
        .with_context(|| format!("loading the {what} images from {}", path.display()))
}

/// Says on stderr, once for all `sets` (`(name, images)`), what was done to fit them to the
/// model: channel conversions, and labels that do not come from matching class names.
pub fn note_folders(sets: &[(&str, &ModelImages)], spec: &ModelSpec) {
    let mut conversions: Vec<(ChannelConversion, Vec<String>)> = Vec::new();
    for (name, images) in sets {
        if let Some((conversion, count)) = images.converted {
            let what = format!("{count} {name}");
            match conversions.iter().position(|(c, _)| *c == conversion) {
                Some(at) => conversions[at].1.push(what),
                None => conversions.push((conversion, vec![what])),
            }
        }
    }
    for (conversion, counts) in conversions {
        eprintln!(
            "note: the model takes {} channel(s): {} ({})",
            spec.input_shape[0],
            conversion.describe(),
            counts.join(", ")
        );
    }
    for (name, images) in sets {
        let unlabelled = images.set.len() - images.n_labelled();
        if images.rule == LabelRule::SortedFolders {
            eprintln!(
                "note: {name}: the model names its classes only by number, so labels follow the class folders' sorted order (torchvision's ImageFolder rule); name the folders 0..{} to say which class each holds",
                spec.num_classes().saturating_sub(1)
            );
        }
        if unlabelled > 0 {
            eprintln!(
                "note: {name}: {unlabelled} image(s) without a class folder matching the model take the model's prediction as their label (scored inputs need none)"
            );
        }
    }
}

/// Prints each set's accuracy under the model on stderr, warning when a labelled set the chain
/// relies on is mostly "wrong": its class folders probably do not hold the classes they name.
pub fn print_accuracy(accuracy: &[madfa::SetAccuracy]) {
    for a in accuracy {
        let Some(fraction) = a.accuracy() else {
            eprintln!("{}: {} images, none labelled", a.set, a.images);
            continue;
        };
        let of = if a.labelled < a.images {
            format!(" of the {} labelled", a.labelled)
        } else {
            String::new()
        };
        eprintln!(
            "{}: {} images, accuracy under the model {:.1}% ({}/{}{of})",
            a.set,
            a.images,
            100.0 * fraction,
            a.correct,
            a.labelled
        );
        if matches!(a.set.as_str(), "trusted" | "sampling") && fraction < 0.5 {
            eprintln!(
                "warning: the model gets only {:.1}% of the {} images right: do their class folders hold the classes they name?",
                100.0 * fraction,
                a.set
            );
        }
    }
}

impl MadInputArgs {
    /// The model, the trusted / sampling / test sets and a description of them, predicted in
    /// batches of `batch_size`. Without `need_test`, `--model` runs need no `--test` folder
    /// (the trusted set stands in for it: calibration never looks at test samples).
    pub fn load(
        &self,
        batch_size: usize,
        need_test: bool,
        device: &Device,
    ) -> Result<(Classifier, MadTask, serde_json::Value)> {
        let loaded = if let Some(record) = &self.record {
            let sizes = self.split.sizes()?;
            let loaded = madfa::record_task(
                record,
                self.data.data_dir.as_deref(),
                sizes,
                self.split.split_seed,
                batch_size,
                device,
            )
            .with_context(|| {
                format!("preparing MAD-FA on the attack record {}", record.display())
            })?;
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
                "split_seed": self.split.split_seed,
                "summary": s,
            });
            (loaded.classifier, loaded.task, data)
        } else {
            let model = self.model.as_ref().context("give --record or --model")?;
            let classifier = self.model_format.load(model, device)?;
            let spec = &classifier.spec;
            let required = |path: &Option<PathBuf>, what: &str| -> Result<ModelImages> {
                let path = path
                    .as_ref()
                    .with_context(|| format!("--{what} is required with --model"))?;
                model_folder(path, spec, FolderLabels::Required, what)
            };
            // Every set is loaded and checked against the model before any work with it.
            let trusted = required(&self.trusted, "trusted")?;
            let sampling = required(&self.sampling, "sampling")?;
            // Scored inputs need no labels: a flat folder, or some classes only, will do.
            let test = match (&self.test, need_test) {
                (None, false) => None,
                (None, true) => bail!("--test is required with --model"),
                (Some(path), _) => Some(model_folder(path, spec, FolderLabels::Optional, "test")?),
            };
            let anomalous = self
                .anomalous
                .as_ref()
                .map(|path| model_folder(path, spec, FolderLabels::Optional, "anomalous"))
                .transpose()?;
            let mut given = vec![("trusted", &trusted), ("sampling", &sampling)];
            given.extend(test.as_ref().map(|t| ("test", t)));
            given.extend(anomalous.as_ref().map(|a| ("anomalous", a)));
            note_folders(&given, spec);
            let label_rules: serde_json::Map<String, serde_json::Value> = given
                .iter()
                .map(|(name, images)| (name.to_string(), images.rule.describe().into()))
                .collect();
            let has_test = test.is_some();
            let sets = madfa::FolderSets {
                test: test.unwrap_or_else(|| trusted.clone()),
                trusted,
                sampling,
                anomalous,
            };
            let built = madfa::folder_task(&classifier, sets, batch_size, device)?;
            // Without --test the trusted set stands in for it: its accuracy is already shown.
            let shown: Vec<_> = built
                .accuracy
                .iter()
                .filter(|a| has_test || a.set != "test")
                .cloned()
                .collect();
            print_accuracy(&shown);
            let paths = |paths: &[PathBuf]| -> Vec<String> {
                paths.iter().map(|p| p.display().to_string()).collect()
            };
            let data = serde_json::json!({
                "model": model.display().to_string(),
                "trusted": self.trusted.as_ref().map(|p| p.display().to_string()),
                "sampling": self.sampling.as_ref().map(|p| p.display().to_string()),
                "test": self.test.as_ref().map(|p| p.display().to_string()),
                "anomalous": self.anomalous.as_ref().map(|p| p.display().to_string()),
                "labels": label_rules,
                "accuracy": shown,
                "trusted_paths": paths(&built.trusted_paths),
                "test_paths": paths(&built.test_paths),
            });
            let task = built.task;
            (classifier, task, data)
        };
        Ok(loaded)
    }
}

impl MadInputArgs {
    /// The files and folders these options read, for `vigil_core::io::check_outputs`.
    /// The model and the four input paths as given, for `vigil detect --text` (files of
    /// prompts, not image folders): (model, trusted, sampling, test, anomalous).
    pub fn given_paths(&self) -> [Option<&PathBuf>; 5] {
        [
            self.model.as_ref(),
            self.trusted.as_ref(),
            self.sampling.as_ref(),
            self.test.as_ref(),
            self.anomalous.as_ref(),
        ]
    }

    pub fn input_paths(&self) -> impl Iterator<Item = &PathBuf> {
        [
            &self.record,
            &self.model,
            &self.trusted,
            &self.sampling,
            &self.test,
            &self.anomalous,
        ]
        .into_iter()
        .flatten()
    }
}

pub fn run(args: SampleArgs) -> Result<ExitCode> {
    let device = default_device();
    let config = args.run_config()?;
    // Before any work: no file this run writes may replace one it reads, and no setting is bad.
    vigil_core::io::check_outputs(args.input.input_paths(), config.output_files(&args.out))?;
    config.validate()?;
    let started = std::time::Instant::now();
    let (classifier, task, data) = args.input.load(args.base.trace_batch_size, true, &device)?;
    let linearised = matches!(args.base.traces, TracesArg::Linearised);
    let mut progress = Interruptible::new(ChainProgress::new(linearised));
    let outcome = madfa::run_sample(
        &config,
        &classifier,
        &task,
        data,
        &args.out,
        &device,
        &mut progress,
    )?;
    let SampleOutcome::Finished(report) = outcome else {
        eprintln!("stopped; run the same command again to continue");
        return Ok(ExitCode::from(130));
    };
    eprintln!(
        "wrote {} in {:.0}s",
        report.traces_path.display(),
        started.elapsed().as_secs_f64()
    );
    print_evaluation(&report.evaluation);
    if let Some(stability) = &report.stability {
        eprintln!("{}", stability.summary(madfa::RECOMMENDED_SCORE));
    }
    if args.json {
        print_sample_json(&report, started);
    }
    Ok(ExitCode::SUCCESS)
}

/// The AUROC of every score when the anomalies are known, or why there is none, on stderr.
fn print_evaluation(evaluation: &TraceEvaluation) {
    match evaluation {
        TraceEvaluation::Unknown => {}
        TraceEvaluation::Undefined(e) => eprintln!("warning: no AUROC for these traces: {e}"),
        TraceEvaluation::Measured(report) => {
            for (name, auroc) in &report.auroc {
                eprintln!("  AUROC {name:>10}: {auroc:.4}");
            }
        }
    }
}

/// The run summary (`--json`): traces, AUROCs, timing, settings and every chain's diagnostics,
/// as one JSON object on stdout.
fn print_sample_json(report: &SampleReport, started: std::time::Instant) {
    let traces = &report.traces;
    let chains: Vec<_> = report
        .diagnostics
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
    let auroc = report.evaluation.report();
    println!(
        "{}",
        serde_json::json!({
            "traces": report.traces_path.display().to_string(),
            "auroc": auroc.map(|r| &r.auroc),
            "normal": auroc.map(|r| r.normal),
            "anomalous": auroc.map(|r| r.anomalous),
            "trusted": traces.n_trusted(),
            "stability": report.stability,
            "seconds": started.elapsed().as_secs_f64(),
            "threads": rayon::current_num_threads(),
            "settings": settings,
            "chains": chains,
        })
    );
}
