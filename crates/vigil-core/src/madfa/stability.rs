//! How stable a run's scores are, measured from the run alone (no anomaly labels): split-chain
//! reliability.
//!
//! The chains are cut into two halves (even and odd chains; with one chain, the first and second
//! half of its draws), each half scores every sample on its own, and the Pearson correlation
//! across samples of the two halves' scores is the half-run reliability `r`. The whole run
//! averages twice the draws, so its reliability is the Spearman-Brown extrapolation
//! `2 r / (1 + r)`. A run whose chains tell different stories about which inputs are anomalous
//! has a low figure, whatever the inputs are; a user sees it without knowing any anomaly.
//!
//! Two sets are measured: the test inputs (their scores are what a detector ranks) and the
//! trusted samples, scored leave-one-out ([`leave_one_out_scores`]).

use std::collections::BTreeMap;

use ndarray::{Axis, s};
use serde::{Deserialize, Serialize};

use super::MadError;
use super::scores::{AnomalyScores, anomaly_scores, coupling, leave_one_out_scores};
use super::traces::LossTraces;

/// How the run was cut in two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitKind {
    /// Even chains against odd chains.
    Chains,
    /// One chain: its first half of draws against its second (consecutive draws are correlated,
    /// so this flatters a slowly mixing chain).
    Draws,
}

/// The reliability of one score over one set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reliability {
    /// Pearson correlation across samples between the two halves' scores; `None` when one half
    /// gives every sample the same score.
    pub half: Option<f64>,
    /// Spearman-Brown extrapolation to the whole run, `2 half / (1 + half)` (`None` with `half`,
    /// and for `half <= -1`).
    pub full: Option<f64>,
}

/// Split-run reliability of every score, on the test inputs and on the trusted samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreStability {
    /// How the run was cut in two.
    pub split: SplitKind,
    /// Per score name, over the test inputs (at least 3 needed, else empty).
    pub test: BTreeMap<String, Reliability>,
    /// Per score name, over the trusted samples scored leave-one-out (at least 3 needed).
    pub trusted: BTreeMap<String, Reliability>,
}

impl ScoreStability {
    /// One line for a report: the full-run reliability of `score` on both sets.
    pub fn summary(&self, score: &str) -> String {
        let shown = |set: &BTreeMap<String, Reliability>| {
            set.get(score)
                .and_then(|r| r.full)
                .map_or("n/a".to_string(), |r| format!("{r:.3}"))
        };
        let split = match self.split {
            SplitKind::Chains => "even vs odd chains",
            SplitKind::Draws => "first vs second half of the draws",
        };
        format!(
            "split-run reliability of {score} ({split}, Spearman-Brown): {} on the test inputs, {} on the trusted samples",
            shown(&self.test),
            shown(&self.trusted)
        )
    }
}

/// Split-run reliability of `traces` (burn-in already dropped). Refuses a single chain with
/// fewer than 4 draws (each half needs 2 to correlate anything).
pub fn split_run_stability(traces: &LossTraces) -> Result<ScoreStability, MadError> {
    let (split, halves) = halves(traces)?;
    let [a, b] = halves;
    let score_test = |t: &LossTraces| -> Result<AnomalyScores, MadError> {
        Ok(anomaly_scores(&coupling(t, 0)?, &t.trusted_labels))
    };
    let test = if traces.n_test() >= 3 {
        compare(&score_test(&a)?, &score_test(&b)?)
    } else {
        BTreeMap::new()
    };
    let trusted = if traces.n_trusted() >= 3 {
        compare(&leave_one_out_scores(&a, 0)?, &leave_one_out_scores(&b, 0)?)
    } else {
        BTreeMap::new()
    };
    Ok(ScoreStability {
        split,
        test,
        trusted,
    })
}

/// The two halves of the run.
fn halves(traces: &LossTraces) -> Result<(SplitKind, [LossTraces; 2]), MadError> {
    let pick = |trusted, test| LossTraces {
        trusted,
        test,
        ..traces.clone()
    };
    if traces.chains() >= 2 {
        let even: Vec<usize> = (0..traces.chains()).step_by(2).collect();
        let odd: Vec<usize> = (1..traces.chains()).step_by(2).collect();
        let half = |chains: &[usize]| {
            pick(
                traces.trusted.select(Axis(0), chains),
                traces.test.select(Axis(0), chains),
            )
        };
        return Ok((SplitKind::Chains, [half(&even), half(&odd)]));
    }
    let draws = traces.draws();
    if draws < 4 {
        return Err(MadError::InvalidConfig(format!(
            "a split-run reliability of one chain needs at least 4 draws, got {draws}"
        )));
    }
    let mid = draws / 2;
    Ok((
        SplitKind::Draws,
        [
            pick(
                traces.trusted.slice(s![.., ..mid, ..]).to_owned(),
                traces.test.slice(s![.., ..mid, ..]).to_owned(),
            ),
            pick(
                traces.trusted.slice(s![.., mid.., ..]).to_owned(),
                traces.test.slice(s![.., mid.., ..]).to_owned(),
            ),
        ],
    ))
}

fn compare(a: &AnomalyScores, b: &AnomalyScores) -> BTreeMap<String, Reliability> {
    a.named()
        .into_iter()
        .zip(b.named())
        .map(|((name, x), (_, y))| {
            let half = pearson(x, y);
            let full = half.filter(|&r| r > -1.0).map(|r| 2.0 * r / (1.0 + r));
            (name.to_string(), Reliability { half, full })
        })
        .collect()
}

/// Pearson correlation of two equally long vectors; `None` when either is constant.
fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn traces(trusted: Array3<f32>, test: Array3<f32>, labels: Vec<i64>) -> LossTraces {
        LossTraces::new(trusted, test, labels)
    }

    fn wave(c: usize, d: usize, i: usize, salt: usize) -> f32 {
        (((c * 7 + d * 13 + i * 29 + salt) % 31) as f32 / 5.0).sin() + 0.05 * (i * d) as f32
    }

    #[test]
    fn split_run_reliability_correlates_the_two_halves_scores() {
        // 4 chains x 6 draws; 5 trusted samples in 2 classes, 4 test samples.
        let trusted = Array3::from_shape_fn((4, 6, 5), |(c, d, i)| wave(c, d, i, 0));
        let test = Array3::from_shape_fn((4, 6, 4), |(c, d, i)| wave(c, d, i, 3));
        let labels = vec![0, 1, 0, 1, 1];
        let run = traces(trusted.clone(), test.clone(), labels.clone());
        let stability = split_run_stability(&run).unwrap();
        assert_eq!(stability.split, SplitKind::Chains);
        // By hand: chains 0 and 2 against chains 1 and 3, scored separately.
        let half = |chains: [usize; 2]| {
            traces(
                trusted.select(Axis(0), &chains),
                test.select(Axis(0), &chains),
                labels.clone(),
            )
        };
        let (even, odd) = (half([0, 2]), half([1, 3]));
        let scores = |t: &LossTraces| anomaly_scores(&coupling(t, 0).unwrap(), &labels);
        let (se, so) = (scores(&even), scores(&odd));
        for ((name, x), (_, y)) in se.named().into_iter().zip(so.named()) {
            // Pearson the long way: covariance over the product of the standard deviations.
            let n = x.len() as f64;
            let mean = |v: &[f64]| v.iter().sum::<f64>() / n;
            let (mx, my) = (mean(x), mean(y));
            let cov = x
                .iter()
                .zip(y)
                .map(|(a, b)| (a - mx) * (b - my))
                .sum::<f64>()
                / n;
            let sd =
                |v: &[f64], m: f64| (v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / n).sqrt();
            let r = cov / (sd(x, mx) * sd(y, my));
            let got = stability.test[name];
            assert!(
                (got.half.unwrap() - r).abs() < 1e-12,
                "{name}: {got:?} vs {r}"
            );
            assert!((got.full.unwrap() - 2.0 * r / (1.0 + r)).abs() < 1e-12);
        }
        let loo = |t: &LossTraces| leave_one_out_scores(t, 0).unwrap();
        let r = pearson(&loo(&even).clc, &loo(&odd).clc).unwrap();
        assert!((stability.trusted["clc"].half.unwrap() - r).abs() < 1e-12);

        // Identical halves are perfectly reliable.
        let twice = ndarray::concatenate(Axis(0), &[trusted.view(), trusted.view()]).unwrap();
        let twice_test = ndarray::concatenate(Axis(0), &[test.view(), test.view()]).unwrap();
        let same = traces(
            twice.select(Axis(0), &[0, 4, 1, 5]),
            twice_test.select(Axis(0), &[0, 4, 1, 5]),
            labels.clone(),
        );
        let perfect = split_run_stability(&same).unwrap();
        for r in perfect.test.values().chain(perfect.trusted.values()) {
            assert!((r.half.unwrap() - 1.0).abs() < 1e-9 && (r.full.unwrap() - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn one_chain_is_split_by_draws_and_needs_four() {
        let trusted = Array3::from_shape_fn((1, 8, 4), |(c, d, i)| wave(c, d, i, 1));
        let test = Array3::from_shape_fn((1, 8, 3), |(c, d, i)| wave(c, d, i, 2));
        let run = traces(trusted.clone(), test.clone(), vec![0, 0, 1, 1]);
        let stability = split_run_stability(&run).unwrap();
        assert_eq!(stability.split, SplitKind::Draws);
        assert_eq!(
            stability.test.len(),
            crate::madfa::scores::SCORE_NAMES.len()
        );
        let short = traces(
            trusted.slice(s![.., ..3, ..]).to_owned(),
            test.slice(s![.., ..3, ..]).to_owned(),
            vec![0, 0, 1, 1],
        );
        let err = split_run_stability(&short).unwrap_err().to_string();
        assert!(err.contains("at least 4 draws"), "{err}");
        // A constant score has no correlation: None, not NaN.
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[0.0, 1.0, 2.0]), None);
    }
}
