//! Functional-attribution scores: how strongly each test sample's loss co-varies with the
//! trusted samples' losses over the draws (`docs/madfa.md`, as the reference's `analyze.py`).
//!
//! Every function is pure, over `[samples, draws]` matrices in f64. A trace is z-scored over
//! draws as `(l - mean) / (std + 1e-8)` with the population std, Pearson is
//! `dot(z_test, z_trusted) / draws`, and Lin's concordance is
//! `2 cov / (var_x + var_y + (mu_x - mu_y)^2 + 1e-8)` with population moments. So a constant
//! trace (a confident sample whose float32 loss stays exactly 0) correlates 0 with everything,
//! never NaN. The benign scores are higher for samples the trusted set explains; vigil reports
//! their negatives as anomaly scores (higher = more anomalous). A fifth score adds CLC and
//! Class CCC after putting each on the scale of the trusted samples' own leave-one-out scores
//! ([`TrustedScale`]).

use ndarray::{Array2, ArrayView2, ArrayView3, Axis, concatenate, s};
use serde::{Deserialize, Serialize};

use super::MadError;
use super::traces::LossTraces;

/// Guard added to the std (z-scores) and to the CCC denominator, as in the reference.
pub const EPSILON: f64 = 1e-8;

/// The names of the six detection scores, in report order (the recommended one last).
pub const SCORE_NAMES: [&str; 6] = [
    "mean_corr",
    "clc",
    "mean_ccc",
    "class_ccc",
    "nearest_corr",
    "clc_plus_class_ccc",
];

/// How many most-correlated trusted samples [`AnomalyScores::nearest_corr`] averages.
/// Chosen on one OOD model (the reduced HALO ladder's STD rung, where 1, 5 and 20 gave mean
/// AUROC 0.984, 0.983 and 0.976 against CLC's 0.936), and checked on models that took no part
/// in choosing it (docs/madfa.md, "Why k-NN beats MAD-FA on OOD inputs").
pub const NEAREST_TRUSTED: usize = 5;

/// The score vigil recommends and its detector reports first: [`AnomalyScores::clc_plus_class_ccc`].
/// With the default log-loss traces CLC alone is the best score on some validation models and
/// falls behind Class CCC on others (the PyTorch peer's BadNets: 0.930 ± 0.022 against 0.997 ±
/// 0.001 over 5 seeds); their standardised sum holds on all of them (0.991 ± 0.003 there;
/// docs/madfa.md, "Stable on models it was not tuned on"). CLC was the detector's primary score
/// until 2026-12-05.
pub const RECOMMENDED_SCORE: &str = "clc_plus_class_ccc";

/// `[chains, draws, n]` traces as `[n, chains * (draws - burn_in)]` in f64: burn-in dropped per
/// chain, then the chains concatenated along the draws.
pub fn by_sample(traces: ArrayView3<f32>, burn_in: usize) -> Array2<f64> {
    let kept: Vec<_> = traces
        .outer_iter()
        .map(|chain| chain.slice(s![burn_in.., ..]).mapv(f64::from))
        .collect();
    let views: Vec<_> = kept.iter().map(|a| a.view()).collect();
    let stacked = concatenate(Axis(0), &views).unwrap_or_else(|_| Array2::zeros((0, 0)));
    stacked.reversed_axes().as_standard_layout().into_owned()
}

/// Per-row mean and population variance.
fn moments(x: ArrayView2<f64>) -> (Vec<f64>, Vec<f64>) {
    let t = x.ncols().max(1) as f64;
    x.outer_iter()
        .map(|row| {
            let mean = row.sum() / t;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / t;
            (mean, var)
        })
        .unzip()
}

fn centered(x: ArrayView2<f64>, means: &[f64]) -> Array2<f64> {
    let mut out = x.to_owned();
    for (mut row, m) in out.outer_iter_mut().zip(means) {
        row -= *m;
    }
    out
}

/// Rows z-scored over draws: `(l - mean) / (std + 1e-8)`, population std.
pub fn standardize(x: ArrayView2<f64>) -> Array2<f64> {
    let (means, vars) = moments(x);
    let mut out = centered(x, &means);
    for (mut row, v) in out.outer_iter_mut().zip(&vars) {
        row /= v.sqrt() + EPSILON;
    }
    out
}

/// Pearson correlation of every test trace with every trusted trace, `[n_test, n_trusted]`.
pub fn pearson_matrix(test: ArrayView2<f64>, trusted: ArrayView2<f64>) -> Array2<f64> {
    let t = test.ncols().max(1) as f64;
    standardize(test).dot(&standardize(trusted).t()) / t
}

/// Population covariance of every test trace with every trusted trace, `[n_test, n_trusted]`.
pub fn covariance_matrix(test: ArrayView2<f64>, trusted: ArrayView2<f64>) -> Array2<f64> {
    let t = test.ncols().max(1) as f64;
    let (mt, _) = moments(test);
    let (mr, _) = moments(trusted);
    centered(test, &mt).dot(&centered(trusted, &mr).t()) / t
}

/// Lin's concordance correlation of every test trace with every trusted trace,
/// `2 cov / (var_x + var_y + (mu_x - mu_y)^2 + 1e-8)`, `[n_test, n_trusted]`.
pub fn ccc_matrix(test: ArrayView2<f64>, trusted: ArrayView2<f64>) -> Array2<f64> {
    let (mt, vt) = moments(test);
    let (mr, vr) = moments(trusted);
    let mut out = covariance_matrix(test, trusted);
    for (i, mut row) in out.outer_iter_mut().enumerate() {
        for (j, c) in row.iter_mut().enumerate() {
            *c = 2.0 * *c / (vt[i] + vr[j] + (mt[i] - mr[j]).powi(2) + EPSILON);
        }
    }
    out
}

/// Per row, the mean of its `k` largest entries (all of them when the row is shorter), leaving
/// out the diagonal when `leave_out_diagonal` (a square trusted-by-trusted matrix): Nearest
/// Corr.
pub fn nearest_mean(matrix: ArrayView2<f64>, k: usize, leave_out_diagonal: bool) -> Vec<f64> {
    matrix
        .outer_iter()
        .enumerate()
        .map(|(i, row)| {
            let mut values: Vec<f64> = row
                .iter()
                .enumerate()
                .filter(|&(j, _)| !(leave_out_diagonal && j == i))
                .map(|(_, &v)| v)
                .collect();
            let k = k.min(values.len());
            if k == 0 {
                return f64::NEG_INFINITY;
            }
            values.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            values[..k].iter().sum::<f64>() / k as f64
        })
        .collect()
}

/// Mean of each row over all trusted samples (Mean Corr, Mean CCC).
pub fn mean_over_trusted(matrix: ArrayView2<f64>) -> Vec<f64> {
    let n = matrix.ncols().max(1) as f64;
    matrix.outer_iter().map(|row| row.sum() / n).collect()
}

/// Per row, the mean over the trusted samples of each class, then the maximum over classes
/// (CLC, Class CCC). Classes are the distinct `trusted_labels`; a class without trusted samples
/// does not exist here, so it is skipped.
pub fn class_max_over_trusted(matrix: ArrayView2<f64>, trusted_labels: &[i64]) -> Vec<f64> {
    class_max(matrix, trusted_labels, false)
}

/// Per row, the mean over each class's members (other than the row's own sample when
/// `leave_out_diagonal`, for a square trusted-by-trusted matrix), then the maximum over the
/// classes that keep a member.
fn class_max(matrix: ArrayView2<f64>, labels: &[i64], leave_out_diagonal: bool) -> Vec<f64> {
    let mut classes: Vec<i64> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let members: Vec<Vec<usize>> = classes
        .iter()
        .map(|c| (0..labels.len()).filter(|&j| labels[j] == *c).collect())
        .collect();
    matrix
        .outer_iter()
        .enumerate()
        .map(|(i, row)| {
            members
                .iter()
                .filter_map(|m| {
                    let others = m.iter().filter(|&&j| !(leave_out_diagonal && j == i));
                    let count = others.clone().count();
                    (count > 0).then(|| others.map(|&j| row[j]).sum::<f64>() / count as f64)
                })
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect()
}

/// The six anomaly scores of every test sample (higher = more anomalous: the negated
/// coupling scores, and the standardised sum of two of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyScores {
    /// `-` mean Pearson correlation with the trusted set.
    pub mean_corr: Vec<f64>,
    /// `-` class-level correlation (max over classes of the class-mean correlation).
    pub clc: Vec<f64>,
    /// `-` mean concordance with the trusted set.
    pub mean_ccc: Vec<f64>,
    /// `-` class-level concordance.
    pub class_ccc: Vec<f64>,
    /// `-` mean correlation with the [`NEAREST_TRUSTED`] most correlated trusted samples, of
    /// any class: a local neighbourhood in coupling space, where CLC averages a whole class.
    /// On OOD inputs the class mean dilutes the coupling an ID input has with its few nearest
    /// trusted samples (docs/madfa.md, "Why k-NN beats MAD-FA on OOD inputs").
    #[serde(default)]
    pub nearest_corr: Vec<f64>,
    /// CLC and Class CCC, each standardised by the trusted samples' own leave-one-out scores
    /// ([`TrustedScale`]), summed: CLC sees only how traces co-vary, Class CCC their levels too,
    /// and on the validation models each fails where the other holds (docs/madfa.md, "Stable
    /// on models it was not tuned on").
    #[serde(default)]
    pub clc_plus_class_ccc: Vec<f64>,
}

impl AnomalyScores {
    /// The scores by name, in [`SCORE_NAMES`] order.
    pub fn named(&self) -> [(&'static str, &[f64]); 6] {
        [
            (SCORE_NAMES[0], &self.mean_corr),
            (SCORE_NAMES[1], &self.clc),
            (SCORE_NAMES[2], &self.mean_ccc),
            (SCORE_NAMES[3], &self.class_ccc),
            (SCORE_NAMES[4], &self.nearest_corr),
            (SCORE_NAMES[5], &self.clc_plus_class_ccc),
        ]
    }
}

/// Mean and population standard deviation of a score over the trusted samples, each scored
/// leave-one-out against the others ([`leave_one_out_scores`]): the yardstick that puts CLC and
/// Class CCC on one scale. Only finite scores count (a trusted sample alone in its class with
/// no other class has none); with fewer than two, or all equal, the scale is the identity
/// (mean 0, sd 1), so the sum is still defined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Standardisation {
    /// Mean of the finite leave-one-out scores.
    pub mean: f64,
    /// Their population standard deviation.
    pub sd: f64,
}

impl Standardisation {
    /// The standardisation of `scores` (see the type).
    pub fn of(scores: &[f64]) -> Self {
        let finite: Vec<f64> = scores.iter().copied().filter(|v| v.is_finite()).collect();
        let n = finite.len() as f64;
        if finite.len() < 2 {
            return Self { mean: 0.0, sd: 1.0 };
        }
        let mean = finite.iter().sum::<f64>() / n;
        let sd = (finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        if sd > 0.0 {
            Self { mean, sd }
        } else {
            Self { mean: 0.0, sd: 1.0 }
        }
    }

    /// `(x - mean) / sd`.
    pub fn apply(&self, x: f64) -> f64 {
        (x - self.mean) / self.sd
    }
}

/// How the trusted samples score against each other, leave-one-out: the scale of
/// [`AnomalyScores::clc_plus_class_ccc`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrustedScale {
    /// Of the CLC anomaly score.
    pub clc: Standardisation,
    /// Of the Class CCC anomaly score.
    pub class_ccc: Standardisation,
}

impl TrustedScale {
    /// The scale of the trusted samples' leave-one-out CLC and Class CCC anomaly scores.
    pub fn of(clc: &[f64], class_ccc: &[f64]) -> Self {
        Self {
            clc: Standardisation::of(clc),
            class_ccc: Standardisation::of(class_ccc),
        }
    }

    /// The standardised sum of one sample's CLC and Class CCC anomaly scores.
    pub fn sum(&self, clc: f64, class_ccc: f64) -> f64 {
        self.clc.apply(clc) + self.class_ccc.apply(class_ccc)
    }
}

/// Correlation and CCC matrices of a trace file after dropping `burn_in` draws per chain.
pub struct Coupling {
    /// Pearson, `[n_test, n_trusted]`.
    pub pearson: Array2<f64>,
    /// Lin's concordance, `[n_test, n_trusted]`.
    pub ccc: Array2<f64>,
    /// Population covariance, `[n_test, n_trusted]` (the BIF is its negative).
    pub covariance: Array2<f64>,
    /// How many traces were constant over the draws used.
    pub constant: ConstantTraces,
    /// Every trusted sample scored against the other trusted samples
    /// ([`leave_one_out_scores`]): the thresholds' scores, and the scale of the summed score.
    pub trusted_leave_one_out: AnomalyScores,
}

/// Traces that do not move over the draws used. A constant trace has no correlation with
/// anything (scored 0), so constant trusted traces pull every test sample's score toward 0
/// and constant test traces score 0 whatever their mechanism; when every trusted trace is
/// constant every score is 0 and the AUROC 0.5, so [`coupling`] refuses that case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstantTraces {
    /// Constant trusted traces.
    pub trusted: usize,
    /// Trusted traces in all.
    pub n_trusted: usize,
    /// Constant test traces.
    pub test: usize,
    /// Test traces in all.
    pub n_test: usize,
}

impl ConstantTraces {
    /// One line per kind of constant trace present, with count and fraction (empty if none).
    pub fn warnings(&self) -> Vec<String> {
        let share = |k: usize, n: usize| 100.0 * k as f64 / n.max(1) as f64;
        let mut out = Vec::new();
        if self.trusted > 0 {
            out.push(format!(
                "{} of {} trusted traces ({:.1}%) are constant over the draws used: they correlate 0 with every test trace and pull every score toward 0",
                self.trusted,
                self.n_trusted,
                share(self.trusted, self.n_trusted)
            ));
        }
        if self.test > 0 {
            out.push(format!(
                "{} of {} test traces ({:.1}%) are constant over the draws used: they score 0 whatever their mechanism (often confident samples whose float32 loss is exactly 0 under `--loss reference`; `--loss log`, the default, or `--loss precise` give them a trace)",
                self.test,
                self.n_test,
                share(self.test, self.n_test)
            ));
        }
        out
    }
}

/// Rows of a `[samples, draws]` matrix whose values are all equal (exactly: a trace that moves
/// by one ulp is not constant).
pub fn constant_rows(x: ArrayView2<f64>) -> usize {
    x.outer_iter()
        .filter(|row| row.iter().all(|&v| Some(&v) == row.first()))
        .count()
}

/// Couplings of the test traces to the trusted traces, after dropping `burn_in` draws of every
/// chain. Refuses traces holding a value no score can use (naming it) and traces whose trusted
/// samples are all constant; reports how many are constant in [`Coupling::constant`].
pub fn coupling(traces: &LossTraces, burn_in: usize) -> Result<Coupling, MadError> {
    if burn_in >= traces.draws() {
        return Err(MadError::InvalidConfig(format!(
            "burn-in {burn_in} leaves no draws (the traces have {} per chain)",
            traces.draws()
        )));
    }
    if let Some(reason) = traces.first_bad_value() {
        return Err(MadError::Data(reason));
    }
    let test = by_sample(traces.test.view(), burn_in);
    let trusted = by_sample(traces.trusted.view(), burn_in);
    if trusted.nrows() == 0 {
        return Err(MadError::InvalidConfig("the trusted set is empty".into()));
    }
    let constant = ConstantTraces {
        trusted: constant_rows(trusted.view()),
        n_trusted: trusted.nrows(),
        test: constant_rows(test.view()),
        n_test: test.nrows(),
    };
    if constant.trusted == constant.n_trusted {
        return Err(MadError::Data(format!(
            "all {} trusted traces are constant over the {} draws used: every correlation with them is undefined, so every score would be 0 and every AUROC 0.5; the chain did not move the trusted losses (check lr; with `--loss reference`, try `--loss log`)",
            constant.n_trusted,
            trusted.ncols()
        )));
    }
    let trusted_leave_one_out = trusted_against_each_other(trusted.view(), &traces.trusted_labels);
    Ok(Coupling {
        pearson: pearson_matrix(test.view(), trusted.view()),
        ccc: ccc_matrix(test.view(), trusted.view()),
        covariance: covariance_matrix(test.view(), trusted.view()),
        constant,
        trusted_leave_one_out,
    })
}

/// Every trusted sample scored against the other trusted samples (`[samples, draws]`).
fn trusted_against_each_other(trusted: ArrayView2<f64>, labels: &[i64]) -> AnomalyScores {
    let pearson = pearson_matrix(trusted, trusted);
    let ccc = ccc_matrix(trusted, trusted);
    let neg = |v: Vec<f64>| v.into_iter().map(|x| -x).collect::<Vec<f64>>();
    let everyone = vec![0; labels.len()];
    let clc = neg(class_max(pearson.view(), labels, true));
    let class_ccc = neg(class_max(ccc.view(), labels, true));
    let scale = TrustedScale::of(&clc, &class_ccc);
    let clc_plus_class_ccc = clc
        .iter()
        .zip(&class_ccc)
        .map(|(&a, &b)| scale.sum(a, b))
        .collect();
    AnomalyScores {
        mean_corr: neg(class_max(pearson.view(), &everyone, true)),
        clc,
        mean_ccc: neg(class_max(ccc.view(), &everyone, true)),
        class_ccc,
        nearest_corr: neg(nearest_mean(pearson.view(), NEAREST_TRUSTED, true)),
        clc_plus_class_ccc,
    }
}

/// The anomaly scores of every test sample from its couplings.
pub fn anomaly_scores(coupling: &Coupling, trusted_labels: &[i64]) -> AnomalyScores {
    let neg = |v: Vec<f64>| v.into_iter().map(|x| -x).collect::<Vec<f64>>();
    let clc = neg(class_max_over_trusted(
        coupling.pearson.view(),
        trusted_labels,
    ));
    let class_ccc = neg(class_max_over_trusted(coupling.ccc.view(), trusted_labels));
    let loo = &coupling.trusted_leave_one_out;
    let scale = TrustedScale::of(&loo.clc, &loo.class_ccc);
    let clc_plus_class_ccc = clc
        .iter()
        .zip(&class_ccc)
        .map(|(&a, &b)| scale.sum(a, b))
        .collect();
    AnomalyScores {
        mean_corr: neg(mean_over_trusted(coupling.pearson.view())),
        clc,
        mean_ccc: neg(mean_over_trusted(coupling.ccc.view())),
        class_ccc,
        nearest_corr: neg(nearest_mean(
            coupling.pearson.view(),
            NEAREST_TRUSTED,
            false,
        )),
        clc_plus_class_ccc,
    }
}

/// The anomaly scores of every trusted sample against the other trusted samples, after dropping
/// `burn_in` draws of every chain: what [`anomaly_scores`] gives a test sample with sample
/// `i`'s traces when `i` is left out of the trusted set (a class whose only trusted sample is
/// `i` does not exist for it). So these scores are distributed as a fresh clean input's, and
/// set thresholds on the whole trusted set without a held-back part (`docs/detectors.md`).
pub fn leave_one_out_scores(
    traces: &LossTraces,
    burn_in: usize,
) -> Result<AnomalyScores, MadError> {
    if burn_in >= traces.draws() {
        return Err(MadError::InvalidConfig(format!(
            "burn-in {burn_in} leaves no draws (the traces have {} per chain)",
            traces.draws()
        )));
    }
    let trusted = by_sample(traces.trusted.view(), burn_in);
    if trusted.nrows() < 2 {
        return Err(MadError::InvalidConfig(format!(
            "leave-one-out scores need at least 2 trusted samples, got {}",
            trusted.nrows()
        )));
    }
    Ok(trusted_against_each_other(
        trusted.view(),
        &traces.trusted_labels,
    ))
}

/// Detection quality of every score on a trace file whose test samples carry anomaly flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreReport {
    /// AUROC of each score (anomalous = positive), by name.
    pub auroc: std::collections::BTreeMap<String, f64>,
    /// Normal test samples.
    pub normal: usize,
    /// Anomalous test samples.
    pub anomalous: usize,
}

/// AUROC of each anomaly score against the flags (`true` = anomalous).
pub fn evaluate_scores(
    scores: &AnomalyScores,
    is_anomalous: &[bool],
) -> Result<ScoreReport, MadError> {
    let mut auroc = std::collections::BTreeMap::new();
    for (name, values) in scores.named() {
        let (mut normal, mut anomalous) = (Vec::new(), Vec::new());
        for (&v, &flag) in values.iter().zip(is_anomalous) {
            if flag {
                anomalous.push(v)
            } else {
                normal.push(v)
            }
        }
        let value = crate::metrics::auroc(&normal, &anomalous)
            .map_err(|e| MadError::Data(format!("AUROC of {name}: {e}")))?;
        auroc.insert(name.to_string(), value);
    }
    let anomalous = is_anomalous.iter().filter(|&&f| f).count();
    Ok(ScoreReport {
        auroc,
        normal: is_anomalous.len() - anomalous,
        anomalous,
    })
}

/// One trusted sample's share in explaining a test sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    /// Position of the trusted sample in the trace file.
    pub trusted: usize,
    /// Pearson correlation of the two traces.
    pub correlation: f64,
    /// The covariance-form Bayesian influence, `-Cov(l_test, l_trusted)` (negative = the two
    /// losses move together).
    pub bif: f64,
}

/// For every test sample, the `k` trusted samples whose traces correlate most with its own,
/// strongest first (ties broken by position).
pub fn top_attributions(coupling: &Coupling, k: usize) -> Vec<Vec<Attribution>> {
    ranked_attributions(coupling, k, true)
}

/// For every test sample, the `k` trusted samples whose traces correlate least with its own
/// (most negative first; ties broken by position): the trusted behaviour it moves against.
pub fn bottom_attributions(coupling: &Coupling, k: usize) -> Vec<Vec<Attribution>> {
    ranked_attributions(coupling, k, false)
}

fn ranked_attributions(coupling: &Coupling, k: usize, most: bool) -> Vec<Vec<Attribution>> {
    coupling
        .pearson
        .outer_iter()
        .zip(coupling.covariance.outer_iter())
        .map(|(corr, cov)| {
            let mut order: Vec<usize> = (0..corr.len()).collect();
            order.sort_by(|&a, &b| {
                let by_value = if most {
                    corr[b].total_cmp(&corr[a])
                } else {
                    corr[a].total_cmp(&corr[b])
                };
                by_value.then(a.cmp(&b))
            });
            order
                .into_iter()
                .take(k)
                .map(|j| Attribution {
                    trusted: j,
                    correlation: corr[j],
                    bif: -cov[j],
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, array};

    /// Expected values from numpy 2.x in float64, written independently of this code by
    /// `tests/fixtures/madfa/score_fixture.py` (printed there as these constants).
    fn fixture() -> (Array2<f64>, Array2<f64>, Vec<i64>) {
        let trusted = array![
            [0.10, 0.30, 0.20, 0.50, 0.40, 0.60],
            [1.00, 0.80, 0.90, 0.60, 0.70, 0.40],
            [0.20, 0.25, 0.30, 0.50, 0.45, 0.70],
            [0.05, 0.05, 0.05, 0.05, 0.05, 0.05],
        ];
        let test = array![
            [0.30, 0.50, 0.40, 0.80, 0.60, 0.90],
            [0.00, 0.00, 0.00, 0.00, 0.00, 0.00],
            [0.50, 0.10, 0.40, 0.20, 0.30, 0.35],
        ];
        (test, trusted, vec![0, 1, 0, 1])
    }

    fn assert_all_close(got: &[f64], expected: &[f64], what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}");
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!((g - e).abs() < 1e-9, "{what}[{i}]: {g} vs {e}");
        }
    }

    #[test]
    fn scores_match_numpy() {
        let (test, trusted, labels) = fixture();
        let pearson = pearson_matrix(test.view(), trusted.view());
        let ccc = ccc_matrix(test.view(), trusted.view());
        let cov = covariance_matrix(test.view(), trusted.view());
        // score_fixture.py output.
        assert_all_close(pearson.as_slice().unwrap(), &PEARSON, "pearson");
        assert_all_close(ccc.as_slice().unwrap(), &CCC, "ccc");
        assert_all_close(cov.as_slice().unwrap(), &COV, "cov");
        assert_all_close(&mean_over_trusted(pearson.view()), &MEAN_CORR, "mean corr");
        assert_all_close(
            &class_max_over_trusted(pearson.view(), &labels),
            &CLC,
            "clc",
        );
        assert_all_close(&mean_over_trusted(ccc.view()), &MEAN_CCC, "mean ccc");
        assert_all_close(
            &class_max_over_trusted(ccc.view(), &labels),
            &CLASS_CCC,
            "class ccc",
        );
    }

    #[test]
    fn constant_traces_score_zero_not_nan() {
        let (test, trusted, _) = fixture();
        let pearson = pearson_matrix(test.view(), trusted.view());
        let ccc = ccc_matrix(test.view(), trusted.view());
        for j in 0..4 {
            assert_eq!(pearson[[1, j]], 0.0);
            assert_eq!(ccc[[1, j]], 0.0);
        }
        // A constant trusted trace: zero up to the rounding of its mean.
        assert!(pearson[[0, 3]].abs() < 1e-20 && ccc[[2, 3]].abs() < 1e-20);
        assert!(pearson.iter().chain(ccc.iter()).all(|v| v.is_finite()));
    }

    /// Test traces driven by the same factor as the trusted traces score as coupled; traces
    /// driven by an independent factor score as uncoupled; the anomaly scores rank them.
    #[test]
    fn coupled_traces_separate_from_uncoupled_ones() {
        let draws = 400;
        let mut state = 0x1234_5678u64;
        let mut noise = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let shared: Vec<f64> = (0..draws).map(|_| noise()).collect();
        let foreign: Vec<f64> = (0..draws).map(|_| noise()).collect();
        let trace = |factor: &[f64], noise: &mut dyn FnMut() -> f64| -> Vec<f32> {
            factor
                .iter()
                .map(|f| (1.0 + f + 0.3 * noise()) as f32)
                .collect()
        };
        let n_trusted = 6;
        let mut trusted = Array3::<f32>::zeros((1, draws, n_trusted));
        for j in 0..n_trusted {
            let t = trace(&shared, &mut noise);
            for d in 0..draws {
                trusted[[0, d, j]] = t[d];
            }
        }
        let mut test = Array3::<f32>::zeros((1, draws, 4));
        for i in 0..4 {
            let t = trace(if i < 2 { &shared } else { &foreign }, &mut noise);
            for d in 0..draws {
                test[[0, d, i]] = t[d];
            }
        }
        let traces = LossTraces {
            trusted,
            test,
            trusted_labels: vec![0, 0, 0, 1, 1, 1],
            test_is_anomalous: Some(vec![false, false, true, true]),
            chain_indices: None,
            trusted_ids: None,
            test_ids: None,
            test_labels: None,
            settings_json: None,
        };
        let c = coupling(&traces, 50).unwrap();
        let scores = anomaly_scores(&c, &traces.trusted_labels);
        for (name, s) in scores.named() {
            let worst_normal = s[0].max(s[1]);
            let best_anomaly = s[2].min(s[3]);
            assert!(worst_normal < best_anomaly, "{name}: {s:?}");
        }
        let top = top_attributions(&c, 2);
        assert_eq!(top[0].len(), 2);
        assert!(top[0][0].correlation >= top[0][1].correlation);
        assert!(top[0][0].bif < 0.0, "coupled losses have negative BIF");
        // The least attributed are the same ranking from the other end.
        let n_trusted = c.pearson.ncols();
        let all = top_attributions(&c, n_trusted);
        let bottom = bottom_attributions(&c, 2);
        for (t, b) in all.iter().zip(&bottom) {
            assert_eq!(b[0].correlation, t[n_trusted - 1].correlation);
            assert!(b[0].correlation <= b[1].correlation);
        }
        assert!(coupling(&traces, 400).is_err());
    }

    fn traces_of(trusted: Array3<f32>, test: Array3<f32>, labels: Vec<i64>) -> LossTraces {
        LossTraces::new(trusted, test, labels)
    }

    /// The traces of the numpy-checked score tests (built as in the Python below) and their
    /// anomaly scores.
    fn sin_cos_traces_and_scores() -> (LossTraces, AnomalyScores) {
        let trusted = Array3::from_shape_fn((2, 9, 7), |(c, d, i)| {
            ((((c * 31 + d * 17 + i * 13) % 23) as f64 / 7.0).sin() + 0.1 * i as f64) as f32
        });
        let test = Array3::from_shape_fn((2, 9, 3), |(c, d, i)| {
            ((((c * 7 + d * 11 + i * 5) % 19) as f64 / 5.0).cos() + 0.05 * i as f64) as f32
        });
        let labels = vec![0, 1, 0, 1, 0, 1, 2];
        let traces = traces_of(trusted, test, labels.clone());
        let scores = anomaly_scores(&coupling(&traces, 0).unwrap(), &labels);
        (traces, scores)
    }

    /// CLC, Class CCC and their standardised sum against `scores()` of
    /// scripts/madfa-fused-score.py (numpy 2.4.6, f64), on traces built there with the same
    /// formulas in f64 and rounded to float32:
    /// ```python
    /// tr[c, d, i] = np.float32(np.sin(((c*31 + d*17 + i*13) % 23) / 7.0) + 0.1*i)  # 2 x 9 x 7
    /// te[c, d, i] = np.float32(np.cos(((c*7 + d*11 + i*5) % 19) / 5.0) + 0.05*i)   # 2 x 9 x 3
    /// labels = [0, 1, 0, 1, 0, 1, 2]; chains concatenated along the draws
    /// ```
    #[test]
    fn clc_plus_class_ccc_matches_numpy() {
        let (traces, scores) = sin_cos_traces_and_scores();
        let want: [(&str, [f64; 3]); 3] = [
            (
                "clc",
                [
                    -0.21823480562748096,
                    -0.16292235439461836,
                    -0.14446684327871118,
                ],
            ),
            (
                "class_ccc",
                [
                    -0.0667584437704213,
                    -0.031174155869895415,
                    -0.04690672408021903,
                ],
            ),
            (
                "clc_plus_class_ccc",
                [2.36089859012407, 2.7903214602351674, 2.7740888545462434],
            ),
        ];
        for (name, values) in want {
            let got = scores
                .named()
                .into_iter()
                .find(|(n, _)| *n == name)
                .unwrap()
                .1;
            for (g, w) in got.iter().zip(values) {
                assert!((g - w).abs() < 1e-9, "{name}: {got:?} vs {values:?}");
            }
        }
        // The trusted samples' own summed scores use the same scale: standardised, they have
        // mean 0 per part, so their sum has mean 0.
        let loo = leave_one_out_scores(&traces, 0).unwrap();
        let mean = loo.clc_plus_class_ccc.iter().sum::<f64>() / 7.0;
        assert!(mean.abs() < 1e-12, "{mean}");
    }

    /// Nearest Corr (k = 5 of 7 trusted samples) of the test samples and, leave-one-out, of
    /// the trusted ones, on the traces of `clc_plus_class_ccc_matches_numpy`, against
    /// scripts/madfa-nearest-constants.py (numpy, f64).
    #[test]
    fn nearest_corr_matches_numpy() {
        assert_eq!(NEAREST_TRUSTED, 5, "the constants below are for k = 5");
        let (traces, scores) = sin_cos_traces_and_scores();
        assert_all_close(
            &scores.nearest_corr,
            &[
                -0.09486336750979703,
                -0.08552138863487338,
                -0.09629182751483824,
            ],
            "nearest corr",
        );
        let loo = leave_one_out_scores(&traces, 0).unwrap();
        assert_all_close(
            &loo.nearest_corr,
            &[
                0.029216614000995532,
                0.039196418029847656,
                0.0005476230756642275,
                0.048364919554653565,
                -0.00464598154728395,
                0.05702793465806253,
                0.014143537627616354,
            ],
            "nearest corr, trusted leave-one-out",
        );
        // Fewer trusted samples than k: the mean of all of them; none left: minus infinity.
        let m = array![[0.1, 0.4, 0.2], [0.3, -0.5, 0.9]];
        assert_all_close(&nearest_mean(m.view(), 2, false), &[0.3, 0.6], "top 2");
        assert_all_close(
            &nearest_mean(m.view(), 9, false),
            &[0.7 / 3.0, 0.7 / 3.0],
            "all",
        );
        let one = array![[1.0]];
        assert_eq!(nearest_mean(one.view(), 5, true), vec![f64::NEG_INFINITY]);
    }

    #[test]
    fn standardisation_falls_back_to_the_identity_when_undefined() {
        let unit = Standardisation { mean: 0.0, sd: 1.0 };
        assert_eq!(Standardisation::of(&[]), unit);
        assert_eq!(Standardisation::of(&[2.0, f64::INFINITY]), unit);
        assert_eq!(Standardisation::of(&[3.0, 3.0, 3.0]), unit);
        let s = Standardisation::of(&[1.0, 3.0, f64::INFINITY]);
        assert_eq!((s.mean, s.sd), (2.0, 1.0));
        assert_eq!(s.apply(4.0), 2.0);
    }

    #[test]
    fn constant_traces_are_counted_and_all_constant_trusted_traces_refused() {
        // Trusted sample 0 and test sample 0 never move; the others do.
        let trusted = Array3::from_shape_fn((2, 3, 2), |(c, d, i)| (i * (c * 3 + d)) as f32);
        let test = Array3::from_shape_fn((2, 3, 4), |(c, d, i)| (i * (c + d)) as f32);
        let c = coupling(&traces_of(trusted, test.clone(), vec![0, 1]), 0).unwrap();
        let expected = ConstantTraces {
            trusted: 1,
            n_trusted: 2,
            test: 1,
            n_test: 4,
        };
        assert_eq!(c.constant, expected);
        let warnings = c.constant.warnings();
        assert!(warnings[0].starts_with("1 of 2 trusted traces (50.0%) are constant"));
        assert!(warnings[1].starts_with("1 of 4 test traces (25.0%) are constant"));

        // Every trusted trace constant: every score would be 0 and every AUROC 0.5.
        let flat = Array3::from_elem((2, 3, 2), 0.25f32);
        let err = coupling(&traces_of(flat, test, vec![0, 1]), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("all 2 trusted traces are constant over the 6 draws"),
            "{err}"
        );
    }

    #[test]
    fn a_non_finite_trace_is_refused_by_name_and_position() {
        let mut trusted = Array3::from_shape_fn((2, 3, 2), |(c, d, i)| (i + c + d) as f32);
        trusted[[1, 2, 0]] = f32::NAN;
        let test = Array3::from_shape_fn((2, 3, 1), |(c, d, _)| (c * d) as f32);
        let err = coupling(&traces_of(trusted, test, vec![0, 1]), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`trusted` holds NaN at chain 1, draw 2, sample 0"),
            "{err}"
        );
    }

    #[test]
    fn leave_one_out_scores_equal_scoring_each_trusted_sample_against_the_others() {
        // 7 trusted samples in 3 classes (class 2 has a single member), 2 chains of 9 draws.
        let trusted = Array3::from_shape_fn((2, 9, 7), |(c, d, i)| {
            (((c * 31 + d * 17 + i * 13) % 23) as f32 / 7.0).sin() + 0.1 * i as f32
        });
        let labels = vec![0, 1, 0, 1, 0, 1, 2];
        let traces = traces_of(
            trusted.clone(),
            trusted.slice(s![.., .., 0..1]).to_owned(),
            labels.clone(),
        );
        let loo = leave_one_out_scores(&traces, 2).unwrap();
        for i in 0..7 {
            // The brute-force way: sample i as the only test sample, the others as trusted.
            let others: Vec<usize> = (0..7).filter(|&j| j != i).collect();
            let rest = trusted.select(Axis(2), &others);
            let alone = trusted.slice(s![.., .., i..i + 1]).to_owned();
            let rest_labels = others.iter().map(|&j| labels[j]).collect::<Vec<_>>();
            let c = coupling(&traces_of(rest, alone, rest_labels.clone()), 2).unwrap();
            let expected = anomaly_scores(&c, &rest_labels);
            // The five coupling scores; the summed one is standardised by the whole trusted
            // set, not by the six others, and is checked against numpy in its own test.
            for ((name, got), (_, want)) in loo.named().iter().zip(expected.named()).take(5) {
                assert!(
                    (got[i] - want[0]).abs() < 1e-12,
                    "{name} of trusted sample {i}: {} vs {}",
                    got[i],
                    want[0]
                );
            }
        }
        assert!(leave_one_out_scores(&traces, 9).is_err());
        let one = traces_of(trusted.slice(s![.., .., 0..1]).to_owned(), trusted, vec![0]);
        assert!(leave_one_out_scores(&one, 0).is_err());
    }

    #[test]
    fn burn_in_is_dropped_per_chain_before_chains_are_joined() {
        let traces = Array3::from_shape_fn((2, 3, 1), |(c, d, _)| (c * 10 + d) as f32);
        let joined = by_sample(traces.view(), 1);
        assert_eq!(joined, array![[1.0, 2.0, 11.0, 12.0]]);
    }

    const PEARSON: [f64; 12] = [
        0.9921608287819764,
        -0.9857907006791881,
        0.9460138134897914,
        -7.519632578324811e-26,
        0.0,
        0.0,
        0.0,
        0.0,
        -0.4302009254366758,
        0.34556747416339895,
        -0.11222632837478508,
        -7.774951796392958e-26,
    ];
    const CCC: [f64; 12] = [
        0.5584415149266351,
        -0.774869036923337,
        0.6356588555976256,
        -7.801234980771538e-34,
        0.0,
        0.0,
        0.0,
        0.0,
        -0.3999999165217565,
        0.07516147656393052,
        -0.09160303665287885,
        -2.299617569463258e-33,
    ];
    const COV: [f64; 12] = [
        0.03583333333333333,
        -0.04111111111111112,
        0.034166666666666665,
        -1.2839532962581572e-34,
        0.0,
        0.0,
        0.0,
        0.0,
        -0.009583333333333333,
        0.008888888888888889,
        -0.002500000000000002,
        -9.62964972193618e-35,
    ];
    const MEAN_CORR: [f64; 3] = [0.23809598539814494, 0.0, -0.04921494491201549];
    const CLC: [f64; 3] = [0.9690873211358839, 0.0, 0.17278373708169947];
    const MEAN_CCC: [f64; 3] = [0.10480783340023092, 0.0, -0.1041103691526762];
    const CLASS_CCC: [f64; 3] = [0.5970501852621304, 0.0, 0.03758073828196526];
}
