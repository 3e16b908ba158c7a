//! `vigil attack`: poison a training set, train a backdoored model, record everything.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use vigil_core::attack::backdoor::{
    AttackParams, PatchPattern, PatchPosition, SECOND_SEED_OFFSET, TargetRule,
};
use vigil_core::attack::experiment::{
    AttackEvent, AttackOutcome, AttackRunConfig, SecondBackdoor, record_files, run_attack,
};
use vigil_core::data::DatasetKind;
use vigil_core::device::default_device;
use vigil_core::progress::Progress;
use vigil_core::train::TrainEvent;

use super::DataArgs;
use super::training::{SessionPrinter, TrainingArgs};

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

    /// Plant a second backdoor in the same model (several mechanisms in one model): this
    /// attack, all-to-one to --second-target, at the same rate, its plan and random trigger
    /// drawn with --attack-seed + 1 and kept off the first's samples. The trigger flags below
    /// apply to whichever slot uses that attack. Not input-aware.
    #[arg(long, value_enum, value_name = "ATTACK")]
    second_attack: Option<AttackName>,

    /// Target class of the second backdoor (default: --target).
    #[arg(long, value_name = "CLASS", requires = "second_attack")]
    second_target: Option<u16>,

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
    /// The parameters of `attack` from the flags, its random trigger drawn with `seed`.
    fn params(&self, attack: AttackName, seed: u64) -> Result<AttackParams> {
        let name = match attack {
            AttackName::InputAware => "input-aware".to_string(),
            other => format!("{other:?}").to_lowercase(),
        };
        let mut params = AttackParams::defaults(&name, seed)?;
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

    /// The experiment these options ask for, as the library takes it.
    fn run_config(&self) -> Result<AttackRunConfig> {
        let dataset = self.data.dataset.unwrap_or(DatasetKind::FashionMnist);
        Ok(AttackRunConfig {
            params: self.params(self.attack, self.attack_seed)?,
            rule: self.rule(),
            rate: self.rate,
            seed: self.attack_seed,
            dataset,
            data_dir: self.data.data_dir.clone(),
            training: self.training.request(dataset)?,
            resume: self.resume,
            second: self
                .second_attack
                .map(|attack| {
                    Ok::<_, anyhow::Error>(SecondBackdoor {
                        params: self
                            .params(attack, self.attack_seed.wrapping_add(SECOND_SEED_OFFSET))?,
                        rule: TargetRule::AllToOne {
                            target: self.second_target.unwrap_or(self.target),
                        },
                    })
                })
                .transpose()?,
        })
    }
}

impl Progress<AttackEvent<'_>> for SessionPrinter {
    fn report(&mut self, event: AttackEvent<'_>) {
        match event {
            AttackEvent::Poisoned { attack, data } => eprintln!(
                "{attack}: {} training samples triggered, {} noise samples; {} triggered test images",
                data.triggered_count(),
                data.noise_count(),
                data.backdoor_test.images.len()
            ),
            AttackEvent::Train(event) => Progress::<TrainEvent<'_>>::report(self, event),
        }
    }

    fn should_stop(&mut self) -> bool {
        Progress::<TrainEvent<'_>>::should_stop(self)
    }
}

pub fn run(args: AttackArgs) -> Result<ExitCode> {
    let config = args.run_config()?;
    // A record file or checkpoint must not replace a file named on the command line (the
    // library guards the files the attack reads; this guards the others too).
    vigil_core::io::check_outputs(
        [&args.clean_model, &args.patch_png, &args.pattern_png]
            .into_iter()
            .flatten(),
        record_files(&args.out),
    )?;
    let mut printer = SessionPrinter::default();
    let report = match run_attack(&config, &args.out, &default_device(), &mut printer)? {
        AttackOutcome::Recorded(report) => report,
        AttackOutcome::AlreadyRecorded => {
            eprintln!("{}: input-aware run already finished", args.out.display());
            return Ok(ExitCode::SUCCESS);
        }
        AttackOutcome::Interrupted => {
            if !printer.stop_reported {
                eprintln!(
                    "stopped; the run is checkpointed: run the same command again to continue it"
                );
            }
            return Ok(ExitCode::from(130));
        }
    };
    eprintln!(
        "{}: clean accuracy {:.4}, attack success rate {:.4}; record in {}",
        report.attack.mechanism_names().join(" + "),
        report.results.clean_accuracy,
        report.results.attack_success_rate,
        args.out.display()
    );
    for (name, rate) in report
        .attack
        .mechanism_names()
        .iter()
        .zip(&report.results.mechanism_success_rates)
    {
        eprintln!("  {name}: attack success rate {rate:.4}");
    }
    // Through a JSON value, whose keys are sorted, as this line has always been printed.
    println!("{}", serde_json::to_value(&report)?);
    Ok(ExitCode::SUCCESS)
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
