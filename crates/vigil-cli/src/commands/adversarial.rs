//! `vigil adversarial`: attack a trained model's test set with PGD and write the adversarial
//! images as an attack record, for `vigil detect --record` and `vigil benchmark backdoor`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use vigil_core::attack::adversarial::{
    AdversarialConfig, AdversarialError, Attacked, AttackedModel, describe,
    write_adversarial_record,
};
use vigil_core::attack::pgd::Pgd;
use vigil_core::data::Split;
use vigil_core::device::default_device;

use super::{DataArgs, ModelArgs, parse_fraction, trained_on};
use crate::progress::{Interruptible, bar};

/// Attack a trained model's test set with L-infinity PGD and write an attack record of the
/// successful adversarial images.
///
/// Every test image the model classifies correctly (for --target, every one not of the target
/// class) is attacked through the model: untargeted, the cross-entropy of its true label pushed
/// up; with --target, the target's pushed down. The images the attack succeeds on (untargeted:
/// now misclassified; targeted: now the target) are kept, labelled with the class they now
/// receive, as the record's triggered test set. So `vigil detect --record DIR` and `vigil
/// benchmark backdoor DIR` score clean test inputs against adversarial ones, with everything
/// they do for backdoors. The folder --out gets model.safetensors (the attacked model),
/// attack.json (attack `pgd`, its settings, rule `untargeted` or all-to-one), backdoor_test.*,
/// examples.png and results.json (clean accuracy, and the success rate over the attacked
/// images). Nothing is trained.
#[derive(Args, Debug)]
pub struct AdversarialArgs {
    /// Checkpoint written by `vigil train` or `vigil attack` (model.safetensors), or a PyTorch
    /// state_dict with --arch.
    model: PathBuf,

    #[command(flatten)]
    model_args: ModelArgs,

    #[command(flatten)]
    data: DataArgs,

    /// Record folder to write.
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,

    /// L-infinity radius, in [0, 1] pixel units (`8/255` or `0.0314`).
    #[arg(long, default_value = "8/255", value_parser = parse_fraction)]
    eps: f64,

    /// PGD steps (step size 2.5 eps / steps, uniform random start, best iterate per image).
    #[arg(long, default_value_t = 10)]
    steps: usize,

    /// Push every image to this class instead of away from its own.
    #[arg(long, value_name = "CLASS")]
    target: Option<u16>,

    /// Seed of the random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Images attacked at once (the random starts depend on it).
    #[arg(long, default_value_t = 256)]
    batch_size: usize,

    /// Print the record's attack.json and results.json as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: AdversarialArgs) -> Result<ExitCode> {
    let device = default_device();
    let dataset = args
        .data
        .dataset
        .or_else(|| trained_on(&args.model))
        .context("the checkpoint does not say which dataset it was trained on: pass --dataset")?;
    let classifier = args.model_args.load(&args.model, &device)?;
    let test = args.data.load(dataset, Split::Test)?;
    let config = AdversarialConfig {
        pgd: Pgd::linf(args.eps, args.steps),
        target: args.target,
        seed: args.seed,
        batch_size: args.batch_size,
    };
    eprintln!(
        "{} on {} ({} test images)",
        describe(&config),
        args.model.display(),
        test.len()
    );
    let mut progress_bar = None;
    let model = AttackedModel {
        file: &args.model,
        classifier: &classifier,
        dataset,
        test: &test,
    };
    let report = write_adversarial_record(
        &args.out,
        model,
        &config,
        &device,
        &mut Interruptible::new(|a: Attacked| {
            let b = progress_bar.get_or_insert_with(|| bar(a.total as u64, "pgd".into()));
            b.set_position(a.done as u64);
        }),
    );
    if let Some(b) = progress_bar.take() {
        b.finish_and_clear();
    }
    let report = match report {
        Err(AdversarialError::Stopped) => {
            eprintln!("stopped before the attack finished; nothing was written");
            return Ok(ExitCode::from(130));
        }
        report => report.with_context(|| format!("writing {}", args.out.display()))?,
    };
    let r = &report.results;
    eprintln!(
        "clean accuracy {:.2}%; attacked {} images, {} succeeded ({:.2}%) in {:.0} s; record: {}",
        100.0 * r.clean_accuracy,
        report.attempted,
        r.backdoor_test_size,
        100.0 * r.attack_success_rate,
        report.seconds,
        args.out.display()
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}
