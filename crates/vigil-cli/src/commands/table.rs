//! `vigil table`: one Markdown table from several attack records.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use vigil_core::attack::backdoor::record::{self, AttackManifest, AttackResults, files};
use vigil_core::attack::backdoor::{AttackParams, TargetRule};
use vigil_core::checkpoint;
use vigil_core::device::default_device;
use vigil_core::inference::evaluate;
use vigil_core::models::BnMode;

/// Summarise attack records (folders written by `vigil attack`) as a Markdown table: clean
/// accuracy, attack success rate (on non-target-class test images), poisoned samples, epochs
/// and training time. With --clean, also the clean model's accuracy, each drop from it, and the
/// clean model's own "ASR" on each record's triggered test set: how often the trigger alone,
/// without a backdoor, sends an image to the target (a trigger that is merely adversarial would
/// score high there).
#[derive(Args, Debug)]
pub struct TableArgs {
    /// Attack record folders.
    #[arg(required = true)]
    records: Vec<PathBuf>,

    /// A clean training run (folder written by `vigil train`) to compare accuracy against.
    #[arg(long, value_name = "DIR")]
    clean: Option<PathBuf>,
}

pub fn run(args: TableArgs) -> Result<ExitCode> {
    let device = default_device();
    let clean_model = args
        .clean
        .as_ref()
        .map(|dir| {
            let path = dir.join("model.safetensors");
            checkpoint::load_classifier(&path, &device)
                .with_context(|| format!("loading the clean model {}", path.display()))
        })
        .transpose()?;
    let clean_accuracy = match &args.clean {
        Some(dir) => {
            let metrics = std::fs::read_to_string(dir.join("metrics.jsonl"))
                .with_context(|| format!("reading {}/metrics.jsonl", dir.display()))?;
            let last = metrics.lines().last().context("empty metrics.jsonl")?;
            let record: serde_json::Value = serde_json::from_str(last)?;
            let info = checkpoint::inspect(&dir.join("model.safetensors"))?;
            let arch = info.spec.map(|s| s.architecture.name().to_string());
            println!(
                "Clean model ({}): test accuracy {:.2}%\n",
                arch.unwrap_or_default(),
                100.0 * record["test_accuracy"].as_f64().unwrap_or(0.0)
            );
            record["test_accuracy"].as_f64()
        }
        None => None,
    };
    println!(
        "| attack | settings | target | rate | poisoned (+noise) | clean acc | Δ vs clean | ASR | ASR of clean model | epochs | train time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for dir in &args.records {
        let manifest: AttackManifest = record::read_json(dir, files::MANIFEST)?;
        let results: Option<AttackResults> = dir
            .join(files::RESULTS)
            .exists()
            .then(|| record::read_json(dir, files::RESULTS))
            .transpose()?;
        let target = match manifest.rule {
            TargetRule::AllToOne { target } => format!("all-to-one {target}"),
            TargetRule::AllToAll => "all-to-all".to_string(),
        };
        let settings = changed_settings(&manifest);
        let Some(r) = results else {
            println!(
                "| {} | {settings} | {target} | {} | - | unfinished | - | - | - | - | - |",
                manifest.attack, manifest.rate
            );
            continue;
        };
        let delta = clean_accuracy
            .map(|c| format!("{:+.2}", 100.0 * (r.clean_accuracy - c)))
            .unwrap_or_else(|| "-".into());
        let clean_asr = match &clean_model {
            Some(model) => trigger_alone(model, dir, &device)?,
            None => "-".into(),
        };
        let noise = if r.noise_samples > 0 {
            format!(" (+{})", r.noise_samples)
        } else {
            String::new()
        };
        println!(
            "| {} | {settings} | {target} | {} | {}{noise} | {:.2}% | {delta} | {:.2}% | {clean_asr} | {} | {:.0} s |",
            manifest.attack,
            manifest.rate,
            r.poisoned_samples,
            100.0 * r.clean_accuracy,
            100.0 * r.attack_success_rate,
            r.epochs,
            r.train_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The trigger parameters of a record that differ from the attack's defaults, as `name value`
/// pairs (`default` when none do), so two rows of one attack can be told apart.
fn changed_settings(manifest: &AttackManifest) -> String {
    let defaults = AttackParams::defaults(&manifest.attack, manifest.seed)
        .ok()
        .and_then(|d| serde_json::to_value(d).ok());
    let mut changed = Vec::new();
    if let Some(defaults) = defaults {
        diff("", &manifest.params, &defaults, &mut changed);
    }
    if changed.is_empty() {
        "default".into()
    } else {
        changed.join(", ")
    }
}

/// Leaves of `value` that differ from `default` (the clean model's path is not a setting).
fn diff(
    prefix: &str,
    value: &serde_json::Value,
    default: &serde_json::Value,
    out: &mut Vec<String>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                if key == "clean_model" {
                    continue;
                }
                let d = default.get(key).unwrap_or(&serde_json::Value::Null);
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                diff(&name, v, d, out);
            }
        }
        _ if value != default => {
            let shown = match value.as_f64() {
                Some(x) => format!("{}", (x * 1e4).round() / 1e4),
                None => value.to_string(),
            };
            out.push(format!("{prefix} {shown}"));
        }
        _ => {}
    }
}

/// The clean model's accuracy against the target labels of the record's triggered test set, as
/// a percentage (`-` if the images do not fit the model).
fn trigger_alone(
    model: &vigil_core::models::Classifier,
    dir: &std::path::Path,
    device: &burn::tensor::Device,
) -> Result<String> {
    let triggered = record::read_backdoor_test(dir)
        .with_context(|| format!("reading the triggered test set of {}", dir.display()))?;
    let s = triggered.images.shape();
    if [s.channels, s.height, s.width] != model.spec.input_shape || triggered.images.is_empty() {
        return Ok("-".into());
    }
    let outputs = evaluate(model, &triggered.images, None, 512, BnMode::Eval, device);
    Ok(format!("{:.2}%", 100.0 * outputs.accuracy()))
}
