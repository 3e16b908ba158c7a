//! Telling anomalous mechanisms apart: offline MAD-FA on a model with several backdoors.
//!
//! A flagged input's couplings with the trusted samples (the row of the Pearson matrix MAD-FA
//! scores from) are its **signature**: inputs that run on the same mechanism should co-vary with
//! the same trusted samples. [`analyse`] takes a `vigil sample` run on a record with two
//! backdoors (`vigil attack --second-attack`), flags the test inputs whose recommended MAD-FA
//! score exceeds the trusted samples' `1 - fpr` quantile, clusters the flagged triggered
//! inputs' signatures with k-means (k chosen without labels, by split-half stability), and
//! measures the
//! adjusted Rand index against the backdoor that made each input. The baseline gets the same
//! inputs and the same clustering on its own features, the model's penultimate activations.
//! Every feature kind is also clustered over all triggered inputs, flagged or not.
//! Method notes: docs/madfa.md, "Several mechanisms in one model".

pub mod cluster;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::attack::backdoor::record::{self, AttackManifest, files as record_files};
use crate::detect::DetectError;
use crate::detect::latent::penultimate_features;
use crate::io::{IoError, check_outputs, write_atomic, write_json_atomic};
use crate::madfa::MadError;
use crate::madfa::scores::{anomaly_scores, by_sample, coupling, standardize};
use crate::madfa::task::{RecordRun, open_record_run};
use crate::metrics::threshold_for_fpr_of_finite;
use crate::report::bars::ChartError;
use crate::report::scatter::{ScatterPanel, scatter_panels_svg};
pub use cluster::KRule;
use cluster::{adjusted_rand_index, choose_k, kmeans, principal_components_2d};

/// File names a mechanism analysis writes.
pub mod files {
    /// The report ([`super::MechanismReport`]).
    pub const REPORT: &str = "mechanisms.json";
    /// Every clustered input: mechanism and cluster under each feature kind.
    pub const ASSIGNMENTS: &str = "assignments.csv";
    /// Signatures in 2-D, coloured by truth and by cluster.
    pub const PICTURE: &str = "signatures.svg";
}

/// Errors of a mechanism analysis.
#[derive(Debug, thiserror::Error)]
pub enum MechanismError {
    /// The record has fewer than two backdoors, or the run's inputs do not match it.
    #[error("{0}")]
    Mismatch(String),
    /// A setting is out of range.
    #[error("invalid mechanism analysis settings: {0}")]
    InvalidConfig(String),
    /// The task cannot be rebuilt or scored.
    #[error(transparent)]
    Mad(#[from] MadError),
    /// The record cannot be read.
    #[error(transparent)]
    Record(#[from] record::RecordError),
    /// The baseline's features cannot be computed.
    #[error(transparent)]
    Features(#[from] DetectError),
    /// The picture cannot be drawn.
    #[error("drawing {}: {source}", files::PICTURE)]
    Picture {
        /// Why.
        source: ChartError,
    },
    /// An output cannot be written.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A mechanism analysis, as data.
#[derive(Debug, Clone, PartialEq)]
pub struct MechanismConfig {
    /// The attack record (two backdoors).
    pub record: PathBuf,
    /// A `vigil sample --record` run on it (`task.json` and `traces.npz`).
    pub run: PathBuf,
    /// Folder of the dataset's files (`None`: the default places).
    pub data_dir: Option<PathBuf>,
    /// Where the report, assignments and picture go.
    pub out: PathBuf,
    /// Trusted false-positive rate of the flagging threshold.
    pub fpr: f64,
    /// Largest number of clusters tried (from 2).
    pub max_k: usize,
    /// k-means restarts per k.
    pub restarts: usize,
    /// How k is chosen.
    pub k_rule: KRule,
    /// Seed of the k-means seeding.
    pub seed: u64,
    /// Batch size of the feature pass.
    pub batch_size: usize,
}

impl MechanismConfig {
    /// The defaults for `record`, `run` and `out`: 5% FPR, k from 2 to 6 chosen by split-half
    /// stability, 10 restarts, seed 0.
    pub fn new(record: PathBuf, run: PathBuf, out: PathBuf) -> Self {
        Self {
            record,
            run,
            data_dir: None,
            out,
            fpr: 0.05,
            max_k: 6,
            restarts: 10,
            k_rule: KRule::Stability,
            seed: 0,
            batch_size: 256,
        }
    }

    fn validate(&self) -> Result<(), MechanismError> {
        if !(self.fpr > 0.0 && self.fpr < 1.0) {
            return Err(MechanismError::InvalidConfig(format!(
                "--fpr {} is not in (0, 1)",
                self.fpr
            )));
        }
        if self.max_k < 2 {
            return Err(MechanismError::InvalidConfig(format!(
                "--max-k {} leaves no k to try (k starts at 2)",
                self.max_k
            )));
        }
        if self.restarts == 0 || self.batch_size == 0 {
            return Err(MechanismError::InvalidConfig(
                "restarts and batch size must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Most inputs drawn in each panel of the picture.
const PICTURE_POINTS: usize = 400;

/// What each input's features are.
pub const FEATURE_KINDS: [&str; 5] = [
    "madfa.traces",
    "madfa.traces_off_trusted",
    "madfa.trusted_couplings",
    "madfa.class_couplings",
    "penultimate",
];

/// Share of the trusted traces' variance whose principal directions
/// [`off_trusted_directions`] removes. Fixed at 0.8 before the held-out test (the rule of
/// `scripts/mechanisms-trace-analysis.py`, found on the first two pairs; any count of 12-300
/// directions separated them).
pub const TRUSTED_VARIANCE_REMOVED: f64 = 0.8;

/// Each row of `test` (traces `[n, draws]`) z-scored, with the principal directions of the
/// z-scored `trusted` traces that explain `share` of their variance (the fewest that reach it)
/// projected out, z-scored again and divided by `sqrt(draws)` (so two rows' squared distance
/// is 2 (1 - their correlation)). Returns the rows and the number of directions removed;
/// `None` when the trusted traces' covariance cannot be decomposed (non-finite values) or has
/// no variance.
pub fn off_trusted_directions(
    test: ndarray::ArrayView2<f64>,
    trusted: ndarray::ArrayView2<f64>,
    share: f64,
) -> Option<(ndarray::Array2<f64>, usize)> {
    let draws = trusted.ncols();
    if test.ncols() != draws || trusted.nrows() == 0 {
        return None;
    }
    let mut z = standardize(trusted);
    let mean = z.mean_axis(ndarray::Axis(0))?;
    z -= &mean;
    let covariance = z.t().dot(&z);
    let eigen = crate::detect::latent::symmetric_eigen(covariance.as_slice()?, draws)?;
    let total: f64 = eigen.values.iter().map(|v| v.max(0.0)).sum();
    if total <= 0.0 {
        return None;
    }
    let mut explained = 0.0;
    let mut removed = 0;
    for value in &eigen.values {
        if explained >= share * total {
            break;
        }
        explained += value.max(0.0);
        removed += 1;
    }
    let mut x = standardize(test);
    for direction in &eigen.vectors[..removed] {
        let d = ndarray::ArrayView1::from(direction.as_slice());
        let along = x.dot(&d);
        for (mut row, a) in x.outer_iter_mut().zip(&along) {
            row.scaled_add(-a, &d);
        }
    }
    let mut out = standardize(x.view());
    out /= (draws as f64).sqrt();
    Some((out, removed))
}

/// One clustering: a feature kind on a set of inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusteringRow {
    /// One of [`FEATURE_KINDS`].
    pub features: String,
    /// `flagged` (triggered inputs MAD-FA flags) or `triggered` (all of them).
    pub inputs: String,
    /// Inputs clustered.
    pub n: usize,
    /// Of them, made by each backdoor.
    pub per_mechanism: Vec<usize>,
    /// Clusters chosen by the report's rule.
    pub k: usize,
    /// `(k, mean silhouette)` for every k tried.
    pub silhouettes: Vec<(usize, Option<f64>)>,
    /// `(k, split-half stability)` for every k tried.
    pub stabilities: Vec<(usize, Option<f64>)>,
    /// Adjusted Rand index of the clusters against the backdoors.
    pub ari: f64,
    /// The number of backdoors among the inputs (what k would be if it were known).
    pub true_k: usize,
    /// ARI of k-means with `true_k` clusters: how well the features separate the backdoors when
    /// the number is given (not available to a user without labels; reported beside the
    /// label-free choice).
    pub ari_true_k: f64,
}

/// The outcome of [`analyse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MechanismReport {
    /// The record's backdoors, by mechanism index.
    pub mechanisms: Vec<String>,
    /// The score that flags inputs.
    pub flagging_score: String,
    /// Its threshold at the trusted `fpr` on the trusted samples' leave-one-out scores
    /// ([`crate::metrics::threshold_for_fpr`]; flagged: at least it).
    pub threshold: f64,
    /// The trusted false-positive rate asked for.
    pub fpr: f64,
    /// Clean test inputs flagged / scored.
    pub clean_flagged: (usize, usize),
    /// Triggered test inputs flagged / scored, per backdoor.
    pub triggered_flagged: Vec<(usize, usize)>,
    /// Every clustering.
    pub rows: Vec<ClusteringRow>,
    /// Settings: k range, rule, restarts, seed.
    pub max_k: usize,
    /// How k was chosen.
    pub k_rule: KRule,
    /// k-means restarts per k.
    pub restarts: usize,
    /// Seed of the k-means seeding.
    pub seed: u64,
    /// Principal directions of the trusted traces removed from `madfa.traces_off_trusted`
    /// (those explaining [`TRUSTED_VARIANCE_REMOVED`] of their variance; 0 in reports made
    /// before that signature).
    #[serde(default)]
    pub trusted_directions_removed: usize,
}

/// Runs the analysis `config` describes and writes its report, assignments and picture.
pub fn analyse(
    config: &MechanismConfig,
    device: &Device,
) -> Result<MechanismReport, MechanismError> {
    config.validate()?;
    let out = &config.out;
    check_outputs(
        [config.run.join("task.json"), config.run.join("traces.npz")],
        [files::REPORT, files::ASSIGNMENTS, files::PICTURE].map(|f| out.join(f)),
    )?;
    let manifest: AttackManifest = record::read_json(&config.record, record_files::MANIFEST)?;
    let names = manifest.mechanism_names();
    if names.len() < 2 {
        return Err(MechanismError::Mismatch(format!(
            "{} holds one backdoor ({}); a mechanism analysis needs a record with two (vigil attack --second-attack)",
            config.record.display(),
            names[0]
        )));
    }
    let RecordRun { loaded, traces, .. } = open_record_run(
        &config.record,
        &config.run,
        config.data_dir.as_deref(),
        config.batch_size,
        device,
    )?;
    let task = &loaded.task;
    let (Some(flags), Some(mechanisms)) = (&task.test_is_anomalous, &task.anomaly_mechanisms)
    else {
        return Err(MechanismError::Mismatch(
            "the record's task does not say which inputs are triggered".into(),
        ));
    };

    let coupled = coupling(&traces, 0)?;
    let scores = anomaly_scores(&coupled, &traces.trusted_labels);
    let threshold = threshold_for_fpr_of_finite(
        &coupled.trusted_leave_one_out.clc_plus_class_ccc,
        config.fpr,
    )
    .map_err(|e| MechanismError::Mismatch(format!("the trusted scores: {e}")))?;
    let flagged: Vec<bool> = scores
        .clc_plus_class_ccc
        .iter()
        .map(|&s| s >= threshold)
        .collect();
    let anomalous: Vec<usize> = (0..flags.len()).filter(|&i| flags[i]).collect();
    let mechanism_of = |position: usize| usize::from(mechanisms[position]);
    let clean: Vec<usize> = (0..flags.len()).filter(|&i| !flags[i]).collect();
    let mut triggered_flagged = vec![(0, 0); names.len()];
    for (position, &i) in anomalous.iter().enumerate() {
        let m = mechanism_of(position).min(names.len() - 1);
        triggered_flagged[m].1 += 1;
        if flagged[i] {
            triggered_flagged[m].0 += 1;
        }
    }

    // Features of every triggered input, `[n_anomalous, dim]` per kind.
    let mut classes: Vec<i64> = traces.trusted_labels.clone();
    classes.sort_unstable();
    classes.dedup();
    let members: Vec<Vec<usize>> = classes
        .iter()
        .map(|c| {
            (0..traces.trusted_labels.len())
                .filter(|&j| traces.trusted_labels[j] == *c)
                .collect()
        })
        .collect();
    let n_trusted = coupled.pearson.ncols();
    let mut trusted_couplings = Vec::with_capacity(anomalous.len() * n_trusted);
    let mut class_couplings = Vec::with_capacity(anomalous.len() * classes.len());
    for &i in &anomalous {
        let row = coupled.pearson.row(i);
        trusted_couplings.extend(row.iter());
        class_couplings.extend(
            members
                .iter()
                .map(|m| m.iter().map(|&j| row[j]).sum::<f64>() / m.len() as f64),
        );
    }
    let triggered_images = task.test.subset(&anomalous);
    let (penultimate, penultimate_dim) = penultimate_features(
        "mechanisms",
        &loaded.classifier,
        &triggered_images,
        config.batch_size,
        device,
    )?;
    // Each input's own trace, z-scored over the draws and divided by sqrt(draws): the squared
    // distance of two is 2 (1 - their correlation), so k-means groups inputs whose losses move
    // together, whatever the trusted samples do.
    let test_traces = standardize(by_sample(traces.test.view(), 0).view());
    let draws = test_traces.ncols();
    let mut own_traces = Vec::with_capacity(anomalous.len() * draws);
    for &i in &anomalous {
        own_traces.extend(test_traces.row(i).iter().map(|v| v / (draws as f64).sqrt()));
    }
    // The same traces with what clean inputs' traces share projected out: the source class an
    // input came from moves its trace as much as the backdoor does (docs/madfa.md).
    let trusted_traces = by_sample(traces.trusted.view(), 0);
    let (residual, removed) = off_trusted_directions(
        test_traces.select(ndarray::Axis(0), &anomalous).view(),
        trusted_traces.view(),
        TRUSTED_VARIANCE_REMOVED,
    )
    .ok_or_else(|| {
        MechanismError::Mismatch("the trusted traces have no principal directions".into())
    })?;
    let residual_traces: Vec<f64> = residual.iter().copied().collect();
    let kinds: [(&str, &[f64], usize); 5] = [
        (FEATURE_KINDS[0], &own_traces, draws),
        (FEATURE_KINDS[1], &residual_traces, draws),
        (FEATURE_KINDS[2], &trusted_couplings, n_trusted),
        (FEATURE_KINDS[3], &class_couplings, classes.len()),
        (FEATURE_KINDS[4], &penultimate, penultimate_dim),
    ];

    let truth: Vec<usize> = (0..anomalous.len()).map(mechanism_of).collect();
    let flagged_positions: Vec<usize> = (0..anomalous.len())
        .filter(|&p| flagged[anomalous[p]])
        .collect();
    let all_positions: Vec<usize> = (0..anomalous.len()).collect();
    let mut rows = Vec::new();
    let mut assignments: Vec<Vec<Option<usize>>> = vec![vec![None; kinds.len()]; anomalous.len()];
    let mut panels = Vec::new();
    for (inputs, positions) in [
        ("flagged", &flagged_positions),
        ("triggered", &all_positions),
    ] {
        for (kind_index, (kind, features, dim)) in kinds.iter().enumerate() {
            let points: Vec<f64> = positions
                .iter()
                .flat_map(|&p| features[p * dim..(p + 1) * dim].iter().copied())
                .collect();
            let own_truth: Vec<usize> = positions.iter().map(|&p| truth[p]).collect();
            let mut per_mechanism = vec![0; names.len()];
            for &t in &own_truth {
                per_mechanism[t.min(names.len() - 1)] += 1;
            }
            let Some(chosen) = choose_k(
                &points,
                *dim,
                2..=config.max_k,
                config.k_rule,
                config.restarts,
                config.seed,
            ) else {
                return Err(MechanismError::Mismatch(format!(
                    "{} {inputs} inputs cannot be clustered into 2 to {} groups by {kind} (too few, or identical)",
                    positions.len(),
                    config.max_k
                )));
            };
            let ari =
                adjusted_rand_index(&own_truth, &chosen.clustering.labels).unwrap_or(f64::NAN);
            let true_k = per_mechanism.iter().filter(|&&n| n > 0).count();
            let ari_true_k = if true_k == chosen.k {
                ari
            } else {
                kmeans(&points, *dim, true_k.max(1), config.restarts, config.seed)
                    .and_then(|fit| adjusted_rand_index(&own_truth, &fit.labels))
                    .unwrap_or(f64::NAN)
            };
            if inputs == "flagged" {
                for (&p, &c) in positions.iter().zip(&chosen.clustering.labels) {
                    assignments[p][kind_index] = Some(c);
                }
                if let Some(projected) = principal_components_2d(&points, *dim) {
                    // The picture draws an even spread of at most PICTURE_POINTS inputs, so the
                    // SVG stays small; the clustering used them all.
                    let n = projected.len();
                    let shown: Vec<usize> = (0..n.min(PICTURE_POINTS))
                        .map(|j| j * n / n.min(PICTURE_POINTS))
                        .collect();
                    for (colouring, groups, group_names) in [
                        ("backdoor", &own_truth, names.clone()),
                        (
                            "cluster",
                            &chosen.clustering.labels,
                            (0..chosen.k).map(|c| format!("cluster {c}")).collect(),
                        ),
                    ] {
                        panels.push(ScatterPanel {
                            title: format!("{kind}: by {colouring}"),
                            points: shown.iter().map(|&j| projected[j]).collect(),
                            groups: shown.iter().map(|&j| groups[j]).collect(),
                            group_names,
                        });
                    }
                }
            }
            rows.push(ClusteringRow {
                features: kind.to_string(),
                inputs: inputs.to_string(),
                n: positions.len(),
                per_mechanism,
                k: chosen.k,
                silhouettes: chosen.silhouettes,
                stabilities: chosen.stabilities,
                ari,
                true_k,
                ari_true_k,
            });
        }
    }

    let report = MechanismReport {
        mechanisms: names.clone(),
        flagging_score: format!("madfa.{}", crate::madfa::scores::RECOMMENDED_SCORE),
        threshold,
        fpr: config.fpr,
        clean_flagged: (clean.iter().filter(|&&i| flagged[i]).count(), clean.len()),
        triggered_flagged,
        rows,
        max_k: config.max_k,
        k_rule: config.k_rule,
        restarts: config.restarts,
        seed: config.seed,
        trusted_directions_removed: removed,
    };
    write_assignments(
        &out.join(files::ASSIGNMENTS),
        &anomalous,
        &task.test_ids,
        &truth,
        &names,
        &flagged,
        &assignments,
    )?;
    let svg =
        scatter_panels_svg(&panels, 2).map_err(|source| MechanismError::Picture { source })?;
    write_atomic(&out.join(files::PICTURE), svg.as_bytes())?;
    write_json_atomic(&out.join(files::REPORT), &report)?;
    Ok(report)
}

/// One CSV row per triggered input: its test position and source id, its backdoor, whether it
/// was flagged, and its cluster under each feature kind (empty when not flagged).
fn write_assignments(
    path: &Path,
    anomalous: &[usize],
    test_ids: &[i64],
    truth: &[usize],
    names: &[String],
    flagged: &[bool],
    assignments: &[Vec<Option<usize>>],
) -> Result<(), IoError> {
    let mut text = String::from("test_index,source_id,backdoor,flagged");
    for kind in FEATURE_KINDS {
        text.push(',');
        text.push_str(kind);
    }
    text.push('\n');
    for (position, &i) in anomalous.iter().enumerate() {
        text.push_str(&format!(
            "{i},{},{},{}",
            test_ids[i],
            names[truth[position].min(names.len() - 1)],
            flagged[i]
        ));
        for cluster in &assignments[position] {
            text.push(',');
            if let Some(c) = cluster {
                text.push_str(&c.to_string());
            }
        }
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Trusted traces in a known 2-D subspace of the draws (one direction three times the
    /// other's spread) plus faint noise; test traces that add a third direction. Removing 80%
    /// of the trusted variance removes the first direction only, 95% both; what is left of a
    /// test trace is its component off the removed directions, z-scored.
    #[test]
    fn the_top_trusted_directions_are_projected_out_and_the_rest_kept() {
        let draws = 40;
        let wave = |f: f64, phase: f64| -> Vec<f64> {
            (0..draws).map(|t| (f * t as f64 + phase).sin()).collect()
        };
        let (a, b, c) = (wave(0.31, 0.0), wave(0.77, 1.0), wave(1.9, 0.4));
        let mut noise_state = 7u64;
        let mut noise = || {
            noise_state = noise_state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1);
            ((noise_state >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 1e-3
        };
        let trusted = Array2::from_shape_fn((200, draws), |(i, t)| {
            let (u, v) = (((i * 37) % 17) as f64 - 8.0, ((i * 11) % 13) as f64 - 6.0);
            3.0 * u * a[t] + v * b[t]
        }) + Array2::from_shape_fn((200, draws), |_| noise());
        let test = Array2::from_shape_fn((3, draws), |(i, t)| {
            (i as f64 + 1.0) * a[t] + 2.0 * b[t] + (1.0 + i as f64) * c[t]
        });
        let (out, removed) = off_trusted_directions(test.view(), trusted.view(), 0.8).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(out.dim(), (3, draws));
        // Each row has unit norm (up to the z-score's epsilon) and zero mean.
        for row in out.outer_iter() {
            assert!((row.dot(&row) - 1.0).abs() < 1e-6);
            assert!(row.sum().abs() < 1e-9);
        }
        let (both, removed) = off_trusted_directions(test.view(), trusted.view(), 0.95).unwrap();
        assert_eq!(removed, 2);
        // With both trusted directions gone, every test row is what is left of `c` off the
        // plane of `a` and `b` (after z-scoring): the three rows coincide.
        for i in 1..3 {
            let d = (&both.row(i) - &both.row(0)).mapv(f64::abs).sum();
            assert!(d < 1e-2, "row {i} differs by {d}");
        }
        // And differ from the rows that kept `b`.
        let d = (&both.row(0) - &out.row(0)).mapv(f64::abs).sum();
        assert!(d > 0.1, "{d}");
        // Shapes that do not fit are refused.
        assert!(
            off_trusted_directions(test.view(), trusted.slice(ndarray::s![.., ..10]), 0.8)
                .is_none()
        );
    }
}
