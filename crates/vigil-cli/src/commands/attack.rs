//! `vigil attack`: poison a training set, train a backdoored model, record everything.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use vigil_core::attack::backdoor::record::{self, AttackManifest, AttackResults, files};
use vigil_core::attack::backdoor::{
    AttackParams, BuildContext, InputAwareConfig, InputAwareOutcome, PatchPattern, PatchPosition,
    TargetRule, measure, poison, train_input_aware, triggered_test_set,
};
use vigil_core::data::{ImageSet, Split};
use vigil_core::device::default_device;
use vigil_core::report::grid::{amplified_difference, image_grid_png};

use super::training::{TrainingArgs, data_selection, drive, open_run};
use super::{DataArgs, limit};

/// Mount a backdoor attack: poison the training set, train on it, and write an attack record.
///
/// The folder --out gets attack.json (attack, parameters, target rule, rate, seed), poison.json
/// (poisoned training indices, their labels and how they were altered), backdoor_test.* (every
/// test image the rule covers, triggered, with its original index and label), examples.png
/// (clean images, triggered images, amplified difference), the training run (model.safetensors,
/// metrics.jsonl, resume/) and results.json (clean accuracy and attack success rate, the latter
/// on non-target-class test images). Ctrl-C checkpoints; repeating the command resumes.
///
/// Attacks: badnets (3x3 white patch, bottom-right), blended (noise pattern, alpha 0.2), sig
/// (sinusoid, clean-label: poisons target-class images only), wanet (warping field, k 4,
/// s 0.5, noise mode with cross ratio 2), lc (label-consistent: target-class images perturbed
/// by PGD against --clean-model, eps 16/255, plus a four-corner checkerboard), lf (a smooth
/// universal perturbation searched against --clean-model, DCT window 6, eps 0.1), trojannn (a
/// 5x5 patch generated to excite the most connected penultimate units of --clean-model), ssba
/// (a sample-specific residual of at most 0.05 from a small encoder trained to hide a code),
/// input-aware (pattern and mask generators trained with the classifier; poisons 10% of every
/// batch, crosses another 10%; resumes like any run).
/// Defaults are BackdoorBench's: all-to-one, target 0,
/// poisoning rate 10%.
#[derive(Args, Debug)]
pub struct AttackArgs {
    /// The attack.
    #[arg(long, value_enum)]
    attack: AttackName,

    #[command(flatten)]
    data: DataArgs,

    /// Record folder to write.
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,

    /// Continue the run in --out with its own configuration.
    #[arg(long)]
    resume: bool,

    /// Target class of an all-to-one attack.
    #[arg(long, default_value_t = 0)]
    target: u16,

    /// All-to-all: class y goes to (y + 1) mod K.
    #[arg(long)]
    all_to_all: bool,

    /// Fraction of the training set poisoned (BackdoorBench counts it over the whole set,
    /// also for clean-label attacks).
    #[arg(long, default_value_t = 0.1)]
    rate: f64,

    /// Seed of the poisoning choice and of random triggers (WaNet's field).
    #[arg(long, default_value_t = 0)]
    attack_seed: u64,

    /// BadNets: side of the square patch.
    #[arg(long, default_value_t = 3)]
    patch_size: usize,

    /// BadNets: checkerboard instead of a white square.
    #[arg(long)]
    checkerboard: bool,

    /// BadNets: a PNG to use as the patch (its alpha channel is the mask), placed at
    /// --patch-position.
    #[arg(long, value_name = "PNG")]
    patch_png: Option<PathBuf>,

    /// BadNets: where the patch goes: bottom-right (default), bottom-left, top-right or
    /// top-left, each with an optional margin in pixels (`top-left:2`), or the patch's top-left
    /// pixel as ROW,COL (`10,12`).
    #[arg(long, value_name = "WHERE", default_value = "bottom-right", value_parser = parse_position)]
    patch_position: PatchPosition,

    /// Blended: weight of the pattern.
    #[arg(long, default_value_t = 0.2)]
    alpha: f64,

    /// Blended: an image to blend in (default: a fixed noise pattern).
    #[arg(long, value_name = "PNG")]
    pattern_png: Option<PathBuf>,

    /// SIG: amplitude on the 0..255 scale.
    #[arg(long, default_value_t = 40.0)]
    sig_delta: f64,

    /// SIG: periods across the image.
    #[arg(long, default_value_t = 6.0)]
    sig_frequency: f64,

    /// SIG: amplitude of the test-time signal, 0..255 scale (default: --sig-delta, as
    /// BackdoorBench). The attacker is not bound by stealth at test time; Barni et al. study a
    /// test-time amplitude different from the training one.
    #[arg(long, value_name = "DELTA")]
    sig_test_delta: Option<f64>,

    /// WaNet: warping strength s.
    #[arg(long, default_value_t = 0.5)]
    wanet_s: f64,

    /// WaNet: control grid size k.
    #[arg(long, default_value_t = 4)]
    wanet_k: usize,

    /// WaNet: noise-mode samples per poisoned sample (0 disables noise mode).
    #[arg(long, default_value_t = 2.0)]
    cross_ratio: f64,

    /// LC, LF: the clean model the trigger is computed against (a vigil checkpoint).
    #[arg(long, value_name = "FILE")]
    clean_model: Option<PathBuf>,

    /// LC: L-infinity radius of the adversarial perturbation, in 1/255 units.
    #[arg(long, default_value_t = 16.0)]
    lc_eps: f64,

    /// LC: PGD steps.
    #[arg(long, default_value_t = 10)]
    lc_steps: usize,

    /// LF: L-infinity bound of the perturbation.
    #[arg(long, default_value_t = 0.1)]
    lf_eps: f64,

    /// SSBA: largest residual per pixel.
    #[arg(long, default_value_t = 0.05)]
    ssba_eps: f64,

    /// TrojanNN: side of the generated patch.
    #[arg(long, default_value_t = 5)]
    trojan_patch_size: usize,

    /// LC: trigger contrast in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    lc_amplitude: f32,

    #[command(flatten)]
    training: TrainingArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AttackName {
    Badnets,
    Blended,
    Sig,
    Wanet,
    /// Label-consistent (needs --clean-model).
    Lc,
    /// Low-frequency universal perturbation (needs --clean-model).
    Lf,
    /// A patch generated to excite neurons of --clean-model.
    Trojannn,
    /// Sample-specific invisible residual from a small trained encoder.
    Ssba,
    /// Input-dependent trigger from generators trained with the classifier.
    InputAware,
}

impl AttackArgs {
    fn params(&self) -> Result<AttackParams> {
        let name = match self.attack {
            AttackName::InputAware => "input-aware".to_string(),
            other => format!("{other:?}").to_lowercase(),
        };
        let mut params = AttackParams::defaults(&name, self.attack_seed)?;
        match &mut params {
            AttackParams::Badnets {
                patch_size,
                pattern,
                position,
                patch_png,
            } => {
                *patch_size = self.patch_size;
                if self.checkerboard {
                    *pattern = PatchPattern::Checkerboard;
                }
                *position = self.patch_position;
                patch_png.clone_from(&self.patch_png);
            }
            AttackParams::Blended {
                alpha, pattern_png, ..
            } => {
                *alpha = self.alpha;
                pattern_png.clone_from(&self.pattern_png);
            }
            AttackParams::Sig {
                delta,
                frequency,
                test_delta,
            } => {
                *delta = self.sig_delta;
                *frequency = self.sig_frequency;
                *test_delta = self.sig_test_delta;
            }
            AttackParams::Wanet(config) => {
                config.s = self.wanet_s;
                config.k = self.wanet_k;
                config.cross_ratio = self.cross_ratio;
            }
            AttackParams::Lc {
                amplitude,
                perturbation,
                clean_model,
            } => {
                *amplitude = self.lc_amplitude;
                perturbation.eps = self.lc_eps / 255.0;
                perturbation.steps = self.lc_steps;
                clean_model.clone_from(&self.clean_model);
            }
            AttackParams::Lf {
                search,
                clean_model,
            } => {
                search.eps = self.lf_eps;
                clean_model.clone_from(&self.clean_model);
            }
            AttackParams::Trojannn {
                search,
                clean_model,
            } => {
                search.patch_size = self.trojan_patch_size;
                clean_model.clone_from(&self.clean_model);
            }
            AttackParams::Ssba(config) => config.eps = self.ssba_eps,
            AttackParams::InputAware(_) => {}
        }
        Ok(params)
    }

    fn rule(&self) -> TargetRule {
        if self.all_to_all {
            TargetRule::AllToAll
        } else {
            TargetRule::AllToOne {
                target: self.target,
            }
        }
    }
}

pub fn run(args: AttackArgs) -> Result<ExitCode> {
    let device = default_device();
    // Reject bad options before spending time on data.
    args.training.architecture()?;
    // ... and a record file or checkpoint that would replace the clean model or a trigger image.
    vigil_core::io::check_outputs(
        [&args.clean_model, &args.patch_png, &args.pattern_png]
            .into_iter()
            .flatten(),
        super::train::run_files()
            .chain(
                [
                    files::MANIFEST,
                    files::POISON,
                    files::BACKDOOR_TEST_IMAGES,
                    files::BACKDOOR_TEST_INDEX,
                    files::RESULTS,
                    files::EXAMPLES,
                ]
                .map(PathBuf::from),
            )
            .map(|name| args.out.join(name)),
    )?;
    let (kind, train_limit, test_limit, seed) =
        data_selection(&args.out, args.resume, args.data.dataset, &args.training)?;
    let saved: Option<AttackManifest> = args
        .out
        .join(files::MANIFEST)
        .exists()
        .then(|| record::read_json(&args.out, files::MANIFEST))
        .transpose()?;
    let manifest = match (&saved, args.resume) {
        (Some(saved), true) => saved.clone(),
        _ => {
            let params = args.params()?;
            let manifest = AttackManifest {
                attack: params.name().to_string(),
                params: serde_json::to_value(&params)?,
                rule: args.rule(),
                rate: args.rate,
                seed: args.attack_seed,
                dataset: kind.to_string(),
                vigil_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            if let Some(saved) = &saved
                && *saved != manifest
            {
                bail!(
                    "{} holds a record of another attack configuration; pass --resume to continue it, or choose another --out",
                    args.out.display()
                );
            }
            manifest
        }
    };
    let params: AttackParams = serde_json::from_value(manifest.params.clone())
        .context("attack parameters in attack.json")?;

    let train_set = limit(args.data.load(kind, Split::Train)?, train_limit, seed)?;
    let test_set = limit(args.data.load(kind, Split::Test)?, test_limit, seed)?;
    if let AttackParams::InputAware(config) = params {
        return run_input_aware(
            &args, &manifest, config, kind, &train_set, &test_set, &device,
        );
    }
    let attack = params.build(&BuildContext {
        train: &train_set,
        rule: manifest.rule,
        device: &device,
    })?;
    let data = poison(
        attack.as_ref(),
        &train_set,
        &test_set,
        manifest.rule,
        manifest.rate,
        manifest.seed,
    )?;
    eprintln!(
        "{}: {} training samples triggered, {} noise samples; {} triggered test images",
        manifest.attack,
        data.triggered_count(),
        data.noise_count(),
        data.backdoor_test.images.len()
    );
    if saved.is_none() {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        record::write_json(&args.out, files::MANIFEST, &manifest)?;
        record::write_plan(&args.out, &data.plan)?;
        record::write_backdoor_test(&args.out, &data.backdoor_test)?;
        write_examples(
            &args.out.join(files::EXAMPLES),
            &test_set,
            &data.backdoor_test.images,
            &data.backdoor_test.original_indices,
        )?;
    }

    let mut run = open_run(
        &args.out,
        args.resume,
        &args.training,
        kind,
        &train_set,
        &device,
    )?;
    let code = drive(&mut run, &data.train, &test_set, &args.out, &device)?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let (clean_accuracy, attack_success_rate) = measure(
        &run.classifier,
        &test_set,
        &data.backdoor_test,
        512,
        &device,
    );
    let results = AttackResults {
        clean_accuracy,
        attack_success_rate,
        clean_test_size: test_set.len(),
        backdoor_test_size: data.backdoor_test.images.len(),
        poisoned_samples: data.triggered_count(),
        noise_samples: data.noise_count(),
        epochs: run.state.history.len(),
        train_seconds: run.state.history.iter().map(|r| r.seconds).sum(),
    };
    record::write_json(&args.out, files::RESULTS, &results)?;
    eprintln!(
        "{}: clean accuracy {:.4}, attack success rate {:.4}; record in {}",
        manifest.attack,
        clean_accuracy,
        attack_success_rate,
        args.out.display()
    );
    println!(
        "{}",
        serde_json::to_string(&serde_json::json!({ "attack": manifest, "results": results }))?
    );
    Ok(ExitCode::SUCCESS)
}

/// Input-Aware trains its trigger with the classifier, so it has its own flow: no poisoned
/// dataset up front; the run folder and its resume files are those of any training run, plus the
/// generators.
fn run_input_aware(
    args: &AttackArgs,
    manifest: &AttackManifest,
    config: InputAwareConfig,
    kind: vigil_core::data::DatasetKind,
    train_set: &ImageSet,
    test_set: &ImageSet,
    device: &burn::tensor::Device,
) -> Result<ExitCode> {
    if args.out.join(files::RESULTS).exists() {
        eprintln!("{}: input-aware run already finished", args.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    record::write_json(&args.out, files::MANIFEST, manifest)?;
    // Poisoning is dynamic (a fraction of every batch), so the plan lists no fixed samples.
    record::write_plan(&args.out, &Default::default())?;
    let mut run = open_run(
        &args.out,
        args.resume,
        &args.training,
        kind,
        train_set,
        device,
    )?;
    if run.state.step == 0 {
        run.announce(
            " with input-aware generators",
            train_set.len(),
            test_set.len(),
        );
    }
    let mut progress = run.progress();
    let outcome = train_input_aware(
        &mut run.classifier,
        &mut run.slots,
        &mut run.state,
        train_set,
        test_set,
        manifest.rule,
        config,
        &args.out,
        device,
        &mut progress,
    )?;
    drop(progress);
    let InputAwareOutcome::Finished(attack) = outcome else {
        eprintln!("stopped; the run is checkpointed: run the same command again to continue it");
        return Ok(ExitCode::from(130));
    };
    let history = &run.state.history;
    let backdoor = triggered_test_set(test_set, &attack, manifest.rule)?;
    record::write_backdoor_test(&args.out, &backdoor)?;
    write_examples(
        &args.out.join(files::EXAMPLES),
        test_set,
        &backdoor.images,
        &backdoor.original_indices,
    )?;
    let (clean_accuracy, attack_success_rate) =
        measure(&run.classifier, test_set, &backdoor, 512, device);
    let results = AttackResults {
        clean_accuracy,
        attack_success_rate,
        clean_test_size: test_set.len(),
        backdoor_test_size: backdoor.images.len(),
        poisoned_samples: 0,
        noise_samples: 0,
        epochs: history.len(),
        train_seconds: history.iter().map(|r| r.seconds).sum(),
    };
    record::write_json(&args.out, files::RESULTS, &results)?;
    eprintln!(
        "input-aware: clean accuracy {clean_accuracy:.4}, attack success rate {attack_success_rate:.4}; record in {}",
        args.out.display()
    );
    println!(
        "{}",
        serde_json::to_string(&serde_json::json!({ "attack": manifest, "results": results }))?
    );
    Ok(ExitCode::SUCCESS)
}

/// Eight clean test images, their triggered versions and the amplified difference.
fn write_examples(
    path: &std::path::Path,
    clean: &ImageSet,
    triggered: &ImageSet,
    original_indices: &[usize],
) -> Result<()> {
    let n = triggered.len().min(8);
    let clean_row: Vec<&[f32]> = (0..n).map(|i| clean.image(original_indices[i])).collect();
    let triggered_row: Vec<&[f32]> = (0..n).map(|i| triggered.image(i)).collect();
    let diffs: Vec<Vec<f32>> = clean_row
        .iter()
        .zip(&triggered_row)
        .map(|(c, t)| amplified_difference(c, t))
        .collect();
    let diff_row: Vec<&[f32]> = diffs.iter().map(Vec::as_slice).collect();
    let png = image_grid_png(&[clean_row, triggered_row, diff_row], clean.shape(), 4)
        .context("drawing examples.png")?;
    vigil_core::io::write_atomic(path, &png)?;
    Ok(())
}

/// Parses `--patch-position`: a corner with an optional `:margin`, or `ROW,COL`.
fn parse_position(text: &str) -> Result<PatchPosition, String> {
    let number = |s: &str, what: &str| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| format!("{what} `{s}` is not a whole number of pixels"))
    };
    if let Some((row, col)) = text.split_once(',') {
        return Ok(PatchPosition::At {
            row: number(row, "row")?,
            col: number(col, "column")?,
        });
    }
    let (corner, margin) = match text.split_once(':') {
        Some((corner, margin)) => (corner, number(margin, "margin")?),
        None => (text, 0),
    };
    match corner.trim() {
        "bottom-right" => Ok(PatchPosition::BottomRight { margin }),
        "bottom-left" => Ok(PatchPosition::BottomLeft { margin }),
        "top-right" => Ok(PatchPosition::TopRight { margin }),
        "top-left" => Ok(PatchPosition::TopLeft { margin }),
        other => Err(format!(
            "`{other}` is not a position: use bottom-right, bottom-left, top-right, top-left (optionally `:MARGIN`) or ROW,COL"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_positions_parse() {
        assert_eq!(
            parse_position("bottom-right"),
            Ok(PatchPosition::BottomRight { margin: 0 })
        );
        assert_eq!(
            parse_position("top-left:2"),
            Ok(PatchPosition::TopLeft { margin: 2 })
        );
        assert_eq!(
            parse_position("10, 12"),
            Ok(PatchPosition::At { row: 10, col: 12 })
        );
        assert!(parse_position("middle").is_err());
        assert!(parse_position("top-left:x").is_err());
        assert!(parse_position("3,-1").is_err());
    }
}
