//! `vigil benchmark ood`: OOD detection under attack (docs/halo.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use indicatif::ProgressBar;
use vigil_core::attack::pgd::Pgd;
use vigil_core::benchmark::BenchmarkError;
use vigil_core::benchmark::ood::{
    self, Contender, MadfaInOod, OodBenchmarkConfig, OodBenchmarkData, OodSet, Progress,
};
use vigil_core::data::glyphs::SYSTEM_FONT_DIR;
use vigil_core::data::ood_sets::OodSetSpec;
use vigil_core::data::{DatasetKind, Split};
use vigil_core::device::default_device;
use vigil_core::halo::{Objective, ladder};
use vigil_core::ood::ScoreKind;

use crate::commands::train::{TrainArgs, train_and_report};
use crate::commands::{
    DataArgs, MadfaDetectorArgs, MadfaScoreArg, ModelArgs, limit, parse_fraction, trained_on,
};
use crate::progress::{Interruptible, bar};

/// OOD detection under attack: every model x OOD score, on the ID test set against each test
/// OOD set, clean, with ID inputs attacked (pushed towards a uniform prediction), OOD inputs
/// attacked (made confident), both, both through the score itself (adaptive) and both crafted
/// on another model (transfer, with --transfer-from). Metrics per OOD set and averaged:
/// AUROC, FPR at 95% TPR, AUPR-in, AUPR-out, OOD the positive class; and clean and robust
/// (PGD cross-entropy) accuracy.
///
/// Writes OUT/report.json, OUT/rows.csv and OUT/report.md; every finished stage is saved under
/// OUT/parts, so rerunning the same command after an interruption continues where it stopped.
#[derive(Args, Debug)]
pub struct OodArgs {
    /// A folder of ladder runs (`scripts/halo-ladder.sh`, or --train): evaluates DIR/<objective>
    /// for each of --objectives present, its best.safetensors (lowest validation loss) or else
    /// its model.safetensors.
    #[arg(long, value_name = "DIR")]
    ladder: Option<PathBuf>,

    /// The rungs of the ladder to evaluate (and to train with --train).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "std,oe,trades,trades-oe,halo",
        requires = "ladder"
    )]
    objectives: Vec<String>,

    /// Train the rungs missing from --ladder (or finish interrupted ones) before evaluating,
    /// with these `vigil train` options, e.g. "--epochs 5 --train-limit 12000"; HALO's helper is
    /// the ladder's STD model. The runs print their epochs on stdout, so this excludes --json.
    #[arg(
        long,
        value_name = "FLAGS",
        allow_hyphen_values = true,
        requires = "ladder",
        conflicts_with = "json"
    )]
    train: Option<String>,

    /// A model to evaluate, as NAME=CHECKPOINT (repeatable).
    #[arg(long = "model", value_name = "NAME=PATH", value_parser = parse_named)]
    models: Vec<(String, PathBuf)>,

    /// Craft the transfer attack on this model (a separately trained STD model).
    #[arg(long, value_name = "PATH")]
    transfer_from: Option<PathBuf>,

    #[command(flatten)]
    model_args: ModelArgs,

    #[command(flatten)]
    data: DataArgs,

    /// Test OOD sets, as NAME[=PATH][@near|@far]: letters-test (FreeFont a-z), sklearn-digits,
    /// uniform-noise, gaussian-noise, or a data set's test split (mnist, cifar10, cifar100,
    /// image-folder=DIR).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "letters-test,mnist,sklearn-digits,uniform-noise,gaussian-noise"
    )]
    ood: Vec<OodSetSpec>,

    /// OOD scores to evaluate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "msp,energy,max-logit,odin,mahalanobis,knn,react"
    )]
    scores: Vec<ScoreKind>,

    /// Scores also attacked adaptively (one attack of every set per model and score), or `none`
    /// [default: every score of --scores].
    #[arg(long, value_delimiter = ',', value_parser = parse_adaptive)]
    adaptive: Option<Vec<Option<ScoreKind>>>,

    /// Add MAD-FA beside the OOD scores: its trusted and sampling sets are drawn from the ID test
    /// images outside the ID test set (so give --id-limit), its chains are walked once per model
    /// over every setting, and one of its scores (--madfa-adaptive-score, the recommended one
    /// by default) is attacked adaptively through linearised traces on a subset (docs/madfa.md,
    /// "OOD inputs").
    #[arg(long)]
    madfa: bool,

    #[command(flatten)]
    madfa_detector: MadfaDetectorArgs,

    /// MAD-FA's trusted and sampling images per class.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "T,S",
        default_value = "250,250",
        requires = "madfa"
    )]
    madfa_split: Vec<usize>,

    /// Inputs of the ID test set and of each OOD set attacked through MAD-FA's score (0: none).
    #[arg(long, value_name = "N", default_value_t = 50, requires = "madfa")]
    madfa_adaptive_inputs: usize,

    /// Steps of the adaptive attack on MAD-FA.
    #[arg(long, value_name = "N", default_value_t = 20, requires = "madfa")]
    madfa_adaptive_steps: usize,

    /// The MAD-FA score the adaptive attack pushes (and its rows measure).
    #[arg(long, value_enum, default_value_t = MadfaScoreArg::Recommended, requires = "madfa")]
    madfa_adaptive_score: MadfaScoreArg,

    /// L-infinity radius of every attack.
    #[arg(long, default_value = "8/255", value_parser = parse_fraction)]
    eps: f64,

    /// PGD steps (step size 2.5 eps / steps).
    #[arg(long, default_value_t = 40)]
    steps: usize,

    /// Use the HALO reference's PGD rules (unclipped start, best iterate by batch total).
    #[arg(long)]
    reference_pgd: bool,

    /// Attack and scoring batch size.
    #[arg(long, default_value_t = 200)]
    batch_size: usize,

    /// ID test images (a seeded subset; all if not given).
    #[arg(long, value_name = "N")]
    id_limit: Option<usize>,

    /// Images per OOD set (a seeded subset; noise sets draw this many, 2,000 by default).
    #[arg(long, value_name = "N")]
    ood_limit: Option<usize>,

    /// ID training images the scores are fitted on (a seeded subset).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    fit_limit: usize,

    /// Seed of the subsets and the attacks' random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Folder of font files for the letter sets.
    #[arg(long, value_name = "DIR", default_value = SYSTEM_FONT_DIR)]
    font_dir: PathBuf,

    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_named(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("`{text}`: give a model as NAME=PATH")),
    }
}

fn parse_adaptive(text: &str) -> Result<Option<ScoreKind>, String> {
    if text == "none" {
        Ok(None)
    } else {
        text.parse().map(Some)
    }
}

pub fn run(args: OodArgs) -> Result<ExitCode> {
    let device = default_device();
    // Before any training or attack: the report may not replace a model it evaluates.
    vigil_core::io::check_outputs(
        args.models
            .iter()
            .map(|(_, path)| path)
            .chain(&args.transfer_from),
        ["report.json", "rows.csv", "report.md"].map(|name| args.out.join(name)),
    )?;
    let named = models_to_evaluate(&args, &device)?;
    let load = |name: String, path: &Path| -> Result<Contender> {
        Ok(Contender {
            name,
            model: args.model_args.load(path, &device)?,
        })
    };
    let mut contenders = Vec::new();
    for (name, path) in &named {
        eprintln!("model {name}: {}", path.display());
        contenders.push(load(name.clone(), path)?);
    }
    let transfer = match &args.transfer_from {
        Some(path) => Some(load(path.display().to_string(), path)?),
        None => None,
    };
    let kind = match args.data.dataset {
        Some(kind) => kind,
        None => trained_on(&named[0].1).with_context(|| {
            format!(
                "{} does not say which dataset it was trained on: pass --dataset",
                named[0].1.display()
            )
        })?,
    };
    let data = benchmark_data(&args, kind)?;
    let config = benchmark_config(&args)?;
    let Some(report) = run_with_progress(
        &config,
        &data,
        &contenders,
        transfer.as_ref(),
        &args.out,
        &device,
    )?
    else {
        return Ok(ExitCode::from(130));
    };
    report
        .save(&args.out)
        .with_context(|| format!("writing the report into {}", args.out.display()))?;
    eprintln!("{}", report.to_markdown());
    eprintln!("report: {}", args.out.join("report.md").display());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The models to evaluate, by name: the ladder's rungs (trained first with --train), then the
/// --model ones.
fn models_to_evaluate(args: &OodArgs, device: &Device) -> Result<Vec<(String, PathBuf)>> {
    let mut named = Vec::new();
    if let Some(dir) = &args.ladder {
        let objectives = ladder::objectives(&args.objectives)?;
        if let Some(flags) = &args.train {
            train_ladder(dir, &objectives, flags, device)?;
        }
        named.extend(
            ladder::checkpoints(dir, &objectives)
                .into_iter()
                .map(|(objective, path)| (objective.name().to_string(), path)),
        );
        if named.is_empty() {
            bail!(
                "{} holds no ladder run (std/, oe/, trades/, trades-oe/, halo/ with a checkpoint): train them with scripts/halo-ladder.sh",
                dir.display()
            );
        }
    }
    named.extend(args.models.iter().cloned());
    if named.is_empty() {
        bail!("no model to evaluate: give --ladder DIR or --model NAME=PATH");
    }
    Ok(named)
}

/// The ID sets (test, and training images the scores are fitted on) and the OOD sets.
fn benchmark_data(args: &OodArgs, kind: DatasetKind) -> Result<OodBenchmarkData> {
    let test = args.data.load(kind, Split::Test)?;
    // One seeded split gives the ID test set (as `limit` chooses it) and, with --madfa, the rest
    // as MAD-FA's pool.
    let (id_test, madfa_pool) = match args.id_limit {
        Some(n) if n < test.len() => {
            let (keep, rest) = test.random_split(n, args.seed)?;
            (test.subset(&keep), args.madfa.then(|| test.subset(&rest)))
        }
        _ => (test, None),
    };
    if args.madfa && madfa_pool.is_none() {
        bail!(
            "--madfa draws its trusted and sampling sets from ID test images outside the ID test set: give --id-limit below the test set's {} images",
            id_test.len()
        );
    }
    let id_fit = limit(
        args.data.load(kind, Split::Train)?,
        Some(args.fit_limit),
        args.seed,
    )?;
    let shape = id_test.shape();
    let mut ood = Vec::new();
    for spec in &args.ood {
        let name = spec.name();
        let images = spec
            .load(
                shape,
                args.ood_limit,
                args.seed,
                &args.font_dir,
                args.data.data_dir.as_deref(),
            )
            .with_context(|| format!("preparing the OOD set {name}"))?;
        eprintln!("OOD set {name}: {} images", images.len());
        ood.push(OodSet {
            name,
            group: spec.group,
            images,
        });
    }
    Ok(OodBenchmarkData {
        id_fit,
        id_test,
        ood,
        madfa_pool,
    })
}

/// The attack, scores and batches the options ask for.
fn benchmark_config(args: &OodArgs) -> Result<OodBenchmarkConfig> {
    let &[trusted_per_class, sampling_per_class] = args.madfa_split.as_slice() else {
        bail!("--madfa-split takes two counts, trusted and sampling images per class");
    };
    let mut attack = Pgd::linf(args.eps, args.steps);
    if args.reference_pgd {
        attack = attack.reference();
    }
    Ok(OodBenchmarkConfig {
        attack,
        scores: args.scores.clone(),
        adaptive: match &args.adaptive {
            Some(chosen) => chosen.iter().flatten().copied().collect(),
            None => args.scores.clone(),
        },
        batch_size: args.batch_size,
        seed: args.seed,
        madfa: match args.madfa {
            true => Some(MadfaInOod {
                settings: args.madfa_detector.madfa_settings()?,
                trusted_per_class,
                sampling_per_class,
                adaptive_inputs: args.madfa_adaptive_inputs,
                adaptive_steps: args.madfa_adaptive_steps,
                adaptive_score: args.madfa_adaptive_score.into(),
            }),
            false => None,
        },
    })
}

/// [`ood::run`] in the folder `out` (created if need be) with a progress bar per stage on stderr;
/// `None` when Ctrl-C stopped it between stages (said on stderr).
fn run_with_progress(
    config: &OodBenchmarkConfig,
    data: &OodBenchmarkData,
    contenders: &[Contender],
    transfer: Option<&Contender>,
    out: &Path,
    device: &Device,
) -> Result<Option<ood::OodBenchmarkReport>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut current: Option<ProgressBar> = None;
    let report = ood::run(
        config,
        data,
        contenders,
        transfer,
        Some(out),
        device,
        &mut Interruptible::new(|p: Progress<'_>| match p {
            Progress::Stage {
                model,
                stage,
                images,
            } => {
                if let Some(b) = current.take() {
                    b.finish_and_clear();
                }
                let b = bar(images as u64, model.to_string());
                b.set_message(stage.to_string());
                current = Some(b);
            }
            Progress::Loaded { model, stage } => eprintln!("{model} {stage}: saved earlier"),
            Progress::Images(n) => {
                if let Some(b) = &current {
                    b.inc(n as u64);
                }
            }
        }),
    );
    if let Some(b) = current.take() {
        b.finish_and_clear();
    }
    match report {
        Err(BenchmarkError::Stopped) => {
            eprintln!(
                "stopped; the finished stages are saved: run the same command again to continue"
            );
            Ok(None)
        }
        report => Ok(Some(report.context("running the OOD benchmark")?)),
    }
}

/// Trains every rung of `objectives` in `dir` with the `vigil train` options `flags` (a finished
/// run is left as it is, an interrupted one continues), STD first as HALO's helper. The options
/// are parsed once; each rung is then that run with its objective, folder and helper.
fn train_ladder(dir: &Path, objectives: &[Objective], flags: &str, device: &Device) -> Result<()> {
    // --out is the ladder's own folder here; a rung's folder replaces it below.
    let options: Vec<String> = ["--out".to_string(), dir.display().to_string()]
        .into_iter()
        .chain(flags.split_whitespace().map(String::from))
        .collect();
    let options = TrainArgs::parse_from(&options).context("the --train options")?;
    if options.sets_objective_or_helper() {
        bail!("the --train options may not set --objective or --helper: the ladder sets them");
    }
    for &objective in objectives {
        let name = objective.name();
        let helper = if objective.uses_helper() {
            let helper = ladder::helper(dir);
            if !helper.is_file() {
                bail!(
                    "HALO's helper {} is missing: include std in --objectives",
                    helper.display()
                );
            }
            Some(helper)
        } else {
            None
        };
        let rung = options.rung(objective, ladder::rung_dir(dir, objective), helper);
        eprintln!("ladder: training {name} in {}", rung.out().display());
        let config = rung
            .run_config()
            .with_context(|| format!("the --train options for {name}"))?;
        let code = train_and_report(&config, rung.out(), device)
            .with_context(|| format!("training the {name} rung"))?;
        if code != ExitCode::SUCCESS {
            bail!("training {name} stopped before its end: run the same command again to continue");
        }
    }
    Ok(())
}
